//! Knocks by other servers' users (server-server API, "Knocking upon a room"; rooms v7+):
//! `make_knock` and `send_knock`, on the same checks as joins ([`super::join`]).

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId,
    events::{StateEventType, room::member::MembershipState},
};
use serde_json::{json, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    service::{Services, sync::INVITE_STATE_TYPES},
};

impl Services {
    /// `GET /make_knock/{roomId}/{userId}`: the knock template for `user_id` of `origin`,
    /// if the room is here, its version among `supported` and the knock allowed by the
    /// room's rules (a `knock` or `knock_restricted` join rule, a version with knocking, no
    /// ban, not already joined: 403 otherwise, see [`crate::service::rooms::Rooms::member_template`]).
    pub fn make_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        self.check_member_request(origin, room_id, user_id, supported)?;
        self.rooms
            .member_template(room_id, user_id, json!({ "membership": "knock" }))
    }

    /// `PUT /v1/send_knock/{roomId}/{eventId}`: `raw`, a knock by a user of `origin`
    /// signed by `origin`, checked like a join (format, fields, signatures, content hash,
    /// its id) and accepted into the room as a live event; answered with the room's
    /// stripped state as full events ([`Self::knock_room_state`]).
    pub async fn send_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let knock_id = self
            .send_member_event(origin, room_id, event_id, raw, &MembershipState::Knock)
            .await?;
        tracing::info!(room = %room_id, knock = %knock_id, "remote knock accepted");
        self.knock_room_state(room_id)
    }

    /// `knock_room_state`: the room's current state events of the kinds an invitee or
    /// knocker sees (the create event first), in federation form: since Matrix 1.16 they
    /// are full PDUs, which the knocking server checks and strips for its client (S2S
    /// `send_knock` response; client-server API "Stripped state").
    pub fn knock_room_state(&self, room_id: &RoomId) -> Result<Vec<Box<RawJsonValue>>> {
        let mut ids: Vec<OwnedEventId> = Vec::with_capacity(INVITE_STATE_TYPES.len());
        for kind in INVITE_STATE_TYPES {
            if let Some(pdu) =
                self.rooms
                    .current_state_event(room_id, &StateEventType::from(*kind), "")?
            {
                ids.push(pdu.event_id);
            }
        }
        if ids.is_empty() {
            return Err(Error::internal(format!(
                "room {room_id} has no create event"
            )));
        }
        self.federation_pdus(&ids)
    }
}
