//! Knocking on a room on another server (server-server API, "Knocking upon a room"; rooms
//! v7+): `make_knock` on a server in the room gives an event template, which we complete
//! and sign as a join's ([`Services::sign_member_template`]); `send_knock` answers with the
//! room's stripped state. This server stays outside the room: the knock is recorded in the
//! user's membership index with that state ([`crate::service::rooms::Rooms::set_outside_membership`]),
//! so the room shows in `/sync` under `rooms.knock` (and in sliding sync). Taking the knock
//! back ([`Services::retract_remote_knock`]) is a leave through a server in the room
//! (`make_leave` / `send_leave`, as rejecting a remote invite), or here alone when none
//! can be reached.

use ruma::{
    OwnedServerName, RoomId, RoomVersionId, UserId,
    api::federation::membership::{RawStrippedState, create_knock_event, prepare_knock_event},
    events::{AnyStrippedStateEvent, room::member::MembershipState},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::join::versions;
use crate::{
    Error, Result,
    service::{Services, rooms::verify::Dropped},
};

/// Stripped state events kept from a `send_knock` answer at most (the spec's list has 7
/// kinds; a server sending more is cut off).
const MAX_KNOCK_STATE: usize = 50;

impl Services {
    /// A knock for `user` on `room_id` through `server` (see [`Services::member_remote`]).
    pub(super) async fn knock_through(
        &self,
        server: &OwnedServerName,
        room_id: &RoomId,
        user: &UserId,
        content: JsonValue,
    ) -> Result<()> {
        let client = self
            .federation
            .reach(server, &format!("knocking on {room_id}"))?
            .clone();
        let mut request =
            prepare_knock_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = versions();
        let template = client.send(server, request).await?;
        let version = template.room_version;
        // The user's own member event, as the client sees it among the stripped state.
        let own = json!({
            "type": "m.room.member",
            "state_key": user,
            "sender": user,
            "content": content.clone(),
        });
        let (event_id, raw) =
            self.sign_member_template(server, room_id, user, &version, &template.event, content)?;
        let answer = client
            .send(
                server,
                create_knock_event::v1::Request::new(room_id.to_owned(), event_id, raw),
            )
            .await?;
        let mut state = self
            .knock_state_from(server, room_id, &version, answer.knock_room_state)
            .await;
        state.push(
            Raw::new(&own)
                .map_err(|e| Error::internal(e.to_string()))?
                .cast_unchecked(),
        );
        if !self
            .rooms
            .set_outside_membership(room_id, user, MembershipState::Knock, state)
            .await?
        {
            // The room came to be held here meanwhile (another user joined it): its
            // member events are the truth now; the knock arrives through it.
            tracing::info!(%room_id, %user, "knock made while the room became known here");
        }
        Ok(())
    }

    /// `user` takes back their knock through another server on `room_id` (client
    /// `/leave`; S2S "Leaving Rooms (Rejecting Invites)": "Leaves are used to ... retract
    /// knocks"): `make_leave` / `send_leave` through each server the knock's stripped state
    /// names (its events' senders), then the room id's, until one takes it; when none does,
    /// the knock is withdrawn here alone, so it leaves the user's sync (as a rejected
    /// remote invite). Either way the user's entry becomes a leave. 403 without such a
    /// knock.
    pub async fn retract_remote_knock(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let state = self
            .rooms
            .outside_knock(room_id, user)?
            .ok_or_else(|| Error::forbidden("You have not knocked on this room."))?;
        let mut servers: Vec<OwnedServerName> = Vec::new();
        let mut version = RoomVersionId::V1;
        for event in &state {
            let Ok(event) = event.deserialize_as_unchecked::<JsonValue>() else {
                continue;
            };
            if event["type"] == "m.room.create"
                && let Some(given) = event["content"]["room_version"].as_str()
                && let Ok(given) = RoomVersionId::try_from(given)
            {
                version = given;
            }
            if let Some(server) = event["sender"]
                .as_str()
                .and_then(|sender| UserId::parse(sender).ok())
                .map(|sender| sender.server_name().to_owned())
                && !servers.contains(&server)
            {
                servers.push(server);
            }
        }
        if let Some(server) = room_id.server_name()
            && !servers.iter().any(|known| known == server)
        {
            servers.push(server.to_owned());
        }
        let mut left = false;
        for server in servers
            .iter()
            .filter(|server| **server != self.config.server_name)
        {
            match self
                .leave_through(server, room_id, user, reason, &version)
                .await
            {
                Ok(_) => {
                    left = true;
                    break;
                }
                Err(error) => {
                    tracing::info!(%server, %room_id, %error, "retracting a knock failed")
                }
            }
        }
        if !left {
            tracing::info!(%room_id, %user, "knock retracted here only");
        }
        let mut content = json!({ "membership": "leave" });
        if let Some(reason) = reason {
            content["reason"] = reason.into();
        }
        let own = json!({
            "type": "m.room.member",
            "state_key": user,
            "sender": user,
            "content": content,
        });
        let own = Raw::new(&own)
            .map_err(|e| Error::internal(e.to_string()))?
            .cast_unchecked();
        self.rooms
            .set_outside_membership(room_id, user, MembershipState::Leave, vec![own])
            .await?;
        Ok(())
    }

    /// The stripped state of a `send_knock` answer, for the client: full events (Matrix
    /// 1.16) are checked (signatures, content hash, this room, a state event) and
    /// stripped, those that fail are left out ("Entries which are improperly signed or
    /// formatted SHOULD be removed"); already stripped ones (older servers) are kept as
    /// they are. At most [`MAX_KNOCK_STATE`].
    async fn knock_state_from(
        &self,
        server: &OwnedServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        given: Vec<RawStrippedState>,
    ) -> Vec<Raw<AnyStrippedStateEvent>> {
        let mut state = Vec::new();
        for entry in given.into_iter().take(MAX_KNOCK_STATE) {
            match entry {
                RawStrippedState::Pdu(pdu) => match self.verify_pdu(&pdu, version).await {
                    Ok(event)
                        if event.room_id == room_id
                            && event.pdu.state_key.is_some()
                            && !event.redacted_on_receipt =>
                    {
                        state.push(event.pdu.to_stripped_state_event());
                    }
                    Ok(event) => {
                        tracing::info!(%server, event_id = %event.event_id, "knock state event left out")
                    }
                    Err(Dropped(reason)) => {
                        tracing::info!(%server, %reason, "knock state event dropped")
                    }
                },
                #[allow(deprecated)]
                RawStrippedState::Stripped(stripped) => state.push(stripped),
                _ => tracing::info!(%server, "knock state entry of an unknown form dropped"),
            }
        }
        state
    }
}
