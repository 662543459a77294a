//! This server as the *resident* server of its rooms, for other servers (server-server API,
//! "Joining Rooms", "Retrieving events", "Backfilling and retrieving missing events"):
//!
//! - [`Services::make_join`] and [`Services::send_join`]: another server's user joins a room
//!   here (the template, then the signed event, accepted through the room core like any
//!   remote event, answered with the state before it and its auth chain);
//! - [`Services::make_knock`] and [`Services::send_knock`]: the same for a knock (rooms
//!   v7+), answered with the room's stripped state (as full events);
//! - [`Services::make_leave`] and [`Services::send_leave`] ([`leave`]): another server's
//!   user leaves, or rejects an invite to, a room here, the same way;
//! - the read endpoints another server in a room uses to fill gaps: one event
//!   ([`Services::federation_event`]), the state before an event ([`Services::state_at`]),
//!   an event's auth chain ([`Services::event_auth`]), the prev events it misses
//!   ([`Services::missing_events`]) and older history ([`Services::backfill`]).
//!
//! [`join`] has the joins (and what knocks and leaves share with them), [`knock`] the
//! knocks, [`leave`] the leaves, [`read`] the reads (and the walks); what all need is here.
//!
//! Who may read: a server with a user joined in the room's current state (as Synapse's
//! `assert_host_in_room`); otherwise 403. Events are served in federation form (the stored
//! PDU without `unsigned` and `event_id`), never rejected ones, and without state only
//! through `/event`; an event the asking server may not see by the room's history
//! visibility at that event is served redacted (as Synapse's `filter_events_for_server`).

mod join;
mod knock;
mod leave;
mod read;

use ruma::{
    OwnedEventId, OwnedUserId, RoomId, ServerName,
    events::{
        StateEventType,
        room::{member::MembershipState, server_acl::RoomServerAclEventContent},
    },
};
use serde_json::value::RawValue as RawJsonValue;

pub use self::{
    join::JoinAnswer,
    read::{StateAt, backfill_walk, missing_events_walk},
};
use crate::{Error, Result, service::Services};

/// `get_missing_events`: events when the request names no `limit` (the spec's default).
pub const DEFAULT_MISSING_LIMIT: usize = 10;
/// `get_missing_events` and `/backfill`: events per answer at most, whatever the request
/// asks (Synapse caps both at 100).
pub const MAX_WALK_LIMIT: usize = 100;
/// Events a walk looks at per answer at most (hidden, rejected and state-less ones are
/// looked at but not returned), so a request never walks a whole room.
pub(super) const MAX_WALK_VISITS: usize = 1_000;

fn not_in_room(origin: &ServerName) -> Error {
    Error::forbidden(format!("{origin} is not in this room."))
}

/// A stored event as other servers get it: the signed PDU, without `unsigned` (ours, never
/// signed) and `event_id` (rooms v3+: the id is the reference hash, not a field).
pub fn federation_form(mut stored: serde_json::Value) -> Result<Box<RawJsonValue>> {
    if let Some(object) = stored.as_object_mut() {
        object.remove("unsigned");
        object.remove("event_id");
    }
    serde_json::value::to_raw_value(&stored)
        .map_err(|e| Error::internal(format!("PDU serialisation: {e}")))
}

impl Services {
    /// 403 `M_FORBIDDEN` when the room's current `m.room.server_acl` denies `origin` (S2S
    /// "Server Access Control Lists": `make_join`, `send_join`, `/state`, `/state_ids`,
    /// `/backfill`, `/event_auth` and `get_missing_events` must check it; `/send` per PDU).
    pub fn check_server_acl(&self, origin: &ServerName, room_id: &RoomId) -> Result<()> {
        if self.server_acl_allows(origin, room_id)? {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "{origin} is denied by the room's server ACL."
            )))
        }
    }

    /// Whether the room's current `m.room.server_acl` lets `origin` in (a storage error is
    /// an error, never a denial). Content that does not parse denies nobody.
    pub fn server_acl_allows(&self, origin: &ServerName, room_id: &RoomId) -> Result<bool> {
        let Some(acl) =
            self.rooms
                .current_state_event(room_id, &StateEventType::RoomServerAcl, "")?
        else {
            return Ok(true);
        };
        Ok(
            match serde_json::from_str::<RoomServerAclEventContent>(acl.content.get()) {
                Ok(acl) => acl.is_allowed(origin),
                Err(_) => true,
            },
        )
    }

    /// 403 unless the server ACL allows `origin` and it has a user joined in the room's
    /// current state; its users with a membership in the room otherwise (for [`Serve`]).
    /// One scan of the room's membership index (there is no index by server).
    pub(crate) fn require_server_in_room(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
    ) -> Result<Vec<OwnedUserId>> {
        self.check_server_acl(origin, room_id)?;
        let mut joined = false;
        let mut users = Vec::new();
        for (user, membership) in self.rooms.members(room_id)? {
            if user.server_name() == origin {
                joined |= membership == MembershipState::Join;
                users.push(user);
            }
        }
        if joined {
            Ok(users)
        } else {
            Err(not_in_room(origin))
        }
    }

    /// Stored events in federation form, as they are (no visibility filter: state and auth
    /// chains are what a server in the room needs to check events).
    pub fn federation_pdus(&self, ids: &[OwnedEventId]) -> Result<Vec<Box<RawJsonValue>>> {
        ids.iter()
            .map(|id| {
                let stored = self
                    .rooms
                    .pdu_json(id)?
                    .ok_or_else(|| Error::internal(format!("event {id} is not stored")))?;
                federation_form(stored)
            })
            .collect()
    }
}

#[cfg(test)]
mod query_tests;
#[cfg(test)]
mod tests;
