//! Out-of-band memberships: an invite another server sent one of our users to a room this
//! server is not in (server-server API, "Inviting to a room"), and the user's rejection of
//! it ("Leaving Rooms (Rejecting Invites)"). Neither is part of a room DAG we hold, so the
//! events are kept beside the user's membership index entry, in the same batch, and `/sync`
//! and sliding sync show them through the same paths as local invites and leaves
//! (`sync::invite_state`, `sync::invited_by_ignored`).
//!
//! Tree owned here: `userroomid_remoteinvite`: `user 0xFF room` → [`RemoteInvite`] (JSON).
//! Removed when the user joins the room or forgets it.

use ruma::{
    OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{AnyStrippedStateEvent, room::member::MembershipState},
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{Rooms, pair_key, pdu::Pdu};
use crate::{Error, Result};

/// An invite from another server for one of our users, to a room this server holds no
/// state of (or no current state: no local member is joined).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RemoteInvite {
    pub version: RoomVersionId,
    /// The invite event as stored (signed by both servers, with `event_id`).
    pub invite: Pdu,
    /// The room's stripped state the inviting server sent (`invite_room_state`), each
    /// `{type, state_key, content, sender}`, without the invite itself.
    pub stripped: Vec<JsonValue>,
    /// The user's rejection, once made: shown in `/sync`'s `leave` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave: Option<Pdu>,
}

impl RemoteInvite {
    /// The inviter.
    pub fn sender(&self) -> &OwnedUserId {
        &self.invite.sender
    }

    /// The stripped state an invitee sees: the room's, then their own member event.
    pub fn invite_state(&self) -> Result<Vec<Raw<AnyStrippedStateEvent>>> {
        let mut events = Vec::with_capacity(self.stripped.len() + 1);
        for event in &self.stripped {
            let raw = serde_json::value::to_raw_value(event)
                .map_err(|e| Error::internal(format!("stripped state: {e}")))?;
            events.push(Raw::from_json(raw));
        }
        events.push(self.invite.to_stripped_state_event());
        Ok(events)
    }
}

impl Rooms {
    /// The out-of-band invite (or its rejection) of `user_id` to `room_id`, if any.
    pub fn remote_invite(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<RemoteInvite>> {
        Ok(self
            .remote_invites
            .get(&pair_key(user_id.as_str(), room_id.as_str()))?)
    }

    /// The out-of-band invite of `user_id` to `room_id` when it is their current membership
    /// (not rejected, not replaced by a membership from the room itself).
    pub fn pending_remote_invite(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<RemoteInvite>> {
        if self.membership(room_id, user_id)? != Some(MembershipState::Invite) {
            return Ok(None);
        }
        Ok(self
            .remote_invite(room_id, user_id)?
            .filter(|invite| invite.leave.is_none()))
    }

    /// Records `invite` for its invitee, with their membership index entries, at the next
    /// stream position, in one batch, durably; wakes the invitee's syncs.
    pub async fn record_remote_invite(&self, invite: RemoteInvite) -> Result<()> {
        let user = invite
            .invite
            .state_key
            .as_deref()
            .and_then(|key| UserId::parse(key).ok())
            .ok_or_else(|| Error::internal("remote invite without an invitee"))?;
        self.record_out_of_band(&user, MembershipState::Invite, &invite)
            .await
    }

    /// Records the rejection `leave` of the out-of-band invite of `user_id` to `room_id`.
    pub async fn record_remote_rejection(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        leave: Pdu,
    ) -> Result<()> {
        let mut invite = self
            .remote_invite(room_id, user_id)?
            .ok_or_else(|| Error::not_found("No invite to this room."))?;
        invite.leave = Some(leave);
        self.record_out_of_band(user_id, MembershipState::Leave, &invite)
            .await
    }

    async fn record_out_of_band(
        &self,
        user: &UserId,
        membership: MembershipState,
        invite: &RemoteInvite,
    ) -> Result<()> {
        let room_id = invite.invite.room_id();
        let (count, ()) = self.stream.commit(|count, batch| {
            batch.insert_json(
                &self.remote_invites,
                pair_key(user.as_str(), room_id.as_str()),
                invite,
            );
            self.index_membership(batch, &room_id, user, membership, count)?;
            Ok(())
        })?;
        self.stream.touch([user], count);
        self.db.persist().await?;
        Ok(())
    }

    /// Drops the out-of-band record (the user joined the room, or forgot it).
    pub fn drop_remote_invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.remote_invites
            .remove(&pair_key(user_id.as_str(), room_id.as_str()))?;
        Ok(())
    }
}
