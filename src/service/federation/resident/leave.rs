//! Leaves for other servers' users (server-server API, "Leaving Rooms (Rejecting
//! Invites)"): `make_leave` and `send_leave` (v2). A user of another server invited to a
//! room here rejects the invite this way (their server is not in the room), or leaves a
//! room their server cannot send to itself.

use ruma::{
    CanonicalJsonObject, EventId, RoomId, RoomVersionId, ServerName, UserId,
    events::room::member::MembershipState,
};
use serde_json::{json, value::RawValue as RawJsonValue};

use crate::{Error, Result, service::Services};

impl Services {
    /// `GET /make_leave/{roomId}/{userId}`: the leave template for `user_id` of `origin`,
    /// if the room is here and the rules let them leave (they are invited, joined or
    /// knocking).
    pub fn make_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden(format!(
                "{user_id} is not a user of {origin}."
            )));
        }
        self.rooms.existing(room_id)?;
        self.check_server_acl(origin, room_id)?;
        self.rooms
            .member_template(room_id, user_id, json!({ "membership": "leave" }))
    }

    /// `PUT /v2/send_leave/{roomId}/{eventId}`: `raw`, a leave of a user of `origin` signed
    /// by `origin`, is checked (format, the fields of a leave by its sender, signatures,
    /// content hash, its id) and accepted into the room as a live event, as `send_join`.
    pub async fn send_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
    ) -> Result<()> {
        let leave_id = self
            .send_member_event(origin, room_id, event_id, raw, &MembershipState::Leave)
            .await?;
        tracing::info!(room = %room_id, leave = %leave_id, "remote leave accepted");
        Ok(())
    }
}
