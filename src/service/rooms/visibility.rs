//! History visibility (client-server API, "Room History Visibility", server behaviour):
//! whether a user may see an event, decided by the room's state *at that event*.
//!
//! 1. `world_readable` at the event: allow.
//! 2. The user's membership at the event was `join`: allow.
//! 3. `shared`, and the user joined at any point after the event: allow.
//! 4. Membership `invite` and `invited`: allow.
//! 5. Otherwise deny.
//!
//! For `m.room.history_visibility` events and the user's own member events, the state
//! before *or* after the event may allow it.
//!
//! One check walks a page of events; the facts per state hash are memoised, and events that
//! change no state share their state hash, so a page costs a few state lookups.

use std::collections::HashMap;

use ruma::{
    RoomId, UserId,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
};

use super::{Rooms, pdu::Pdu, pos::Pos, state::StateHash};
use crate::Result;

/// History visibility and the user's membership in one state.
#[derive(Clone)]
struct Facts {
    visibility: String,
    membership: Option<String>,
}

pub struct Visibility<'a> {
    rooms: &'a Rooms,
    user_id: &'a UserId,
    /// The user is or was in the room, and has not forgotten it.
    member: bool,
    /// Events before this position are covered by rule 3 (`shared`): the user is joined now
    /// (`Pos::MAX`), or was until they left at this position; `Pos::MIN` if they never
    /// joined.
    joined_until: Pos,
    memo: HashMap<StateHash, Facts>,
}

impl Rooms {
    /// A visibility checker for `user_id` in `room_id`.
    pub fn visibility<'a>(
        &'a self,
        room_id: &RoomId,
        user_id: &'a UserId,
    ) -> Result<Visibility<'a>> {
        let membership = self.remembered_membership(room_id, user_id)?;
        let joined_until = match membership {
            Some(MembershipState::Join) => Pos::MAX,
            Some(MembershipState::Leave | MembershipState::Ban) => {
                // They count as having joined if their leaving event ended a join.
                let left = self.current_state_event(
                    room_id,
                    &StateEventType::RoomMember,
                    user_id.as_str(),
                )?;
                match left {
                    Some(event) if prev_membership(&event).as_deref() == Some("join") => {
                        self.pos_of(&event.event_id)?.unwrap_or(Pos::MIN)
                    }
                    _ => Pos::MIN,
                }
            }
            _ => Pos::MIN,
        };
        Ok(Visibility {
            rooms: self,
            user_id,
            member: membership.is_some(),
            joined_until,
            memo: HashMap::new(),
        })
    }
}

impl Rooms {
    /// The user's membership, except that a room they left and then forgot counts as one
    /// they were never in: "a user will no longer be able to retrieve history for this
    /// room" (client-server API, `POST /rooms/{roomId}/forget`).
    pub fn remembered_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipState>> {
        let membership = self.membership(room_id, user_id)?;
        let forgotten = matches!(
            membership,
            Some(MembershipState::Leave | MembershipState::Ban)
        ) && self.membership_entry(room_id, user_id)?.is_none();
        Ok(membership.filter(|_| !forgotten))
    }
}

impl Rooms {
    /// The state `user_id` may read in `room_id` (client-server API, `GET /rooms/{roomId}/state`
    /// and `/members`): the current state while joined or when the room is world-readable,
    /// the state as they left it for a former member (left, kicked or banned, and not
    /// forgotten; as Synapse), and none otherwise.
    pub fn readable_state(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<StateHash>> {
        let Some(info) = self.info(room_id)? else {
            return Ok(None);
        };
        match self.remembered_membership(room_id, user_id)? {
            Some(MembershipState::Join) => return Ok(Some(info.state_hash)),
            Some(MembershipState::Leave | MembershipState::Ban) => {
                let left = self.current_state_event(
                    room_id,
                    &StateEventType::RoomMember,
                    user_id.as_str(),
                )?;
                if let Some(event) = left
                    && let Some((_, after)) = self.state_hashes(&event.event_id)?
                {
                    return Ok(Some(after));
                }
            }
            _ => {}
        }
        let mut visibility = self.visibility(room_id, user_id)?;
        let world_readable = visibility.facts(info.state_hash)?.visibility == "world_readable";
        Ok(world_readable.then_some(info.state_hash))
    }
}

/// The membership the event replaced (`unsigned.prev_content`), if it names one.
pub(crate) fn prev_membership(event: &Pdu) -> Option<String> {
    let unsigned: serde_json::Value = serde_json::from_str(event.unsigned.as_ref()?.get()).ok()?;
    unsigned["prev_content"]["membership"]
        .as_str()
        .map(str::to_owned)
}

impl Visibility<'_> {
    /// Whether the user may read the room at all: they are or were in it (and have not
    /// forgotten it), or it is world-readable now.
    pub fn may_enter(&mut self, room_id: &RoomId) -> Result<bool> {
        if self.member {
            return Ok(true);
        }
        // A room that does not exist is refused like one the user may not read, so that
        // neither answer tells whether a room exists.
        let Some(info) = self.rooms.info(room_id)? else {
            return Ok(false);
        };
        Ok(self.facts(info.state_hash)?.visibility == "world_readable")
    }

    fn facts(&mut self, hash: StateHash) -> Result<Facts> {
        if let Some(facts) = self.memo.get(&hash) {
            return Ok(facts.clone());
        }
        let state = self.rooms.state.load(hash)?;
        let visibility = self
            .rooms
            .state_event(&state, &StateEventType::RoomHistoryVisibility, "")?
            .and_then(|event| event.content_str("history_visibility"))
            .filter(|value| {
                matches!(
                    value.as_str(),
                    "world_readable" | "shared" | "invited" | "joined"
                )
            })
            // Spec: unset or not understood means `shared`.
            .unwrap_or_else(|| "shared".to_owned());
        let membership = self
            .rooms
            .state_event(&state, &StateEventType::RoomMember, self.user_id.as_str())?
            .and_then(|event| event.content_str("membership"));
        let facts = Facts {
            visibility,
            membership,
        };
        self.memo.insert(hash, facts.clone());
        Ok(facts)
    }

    fn allows(&mut self, hash: StateHash, pos: Pos) -> Result<bool> {
        let facts = self.facts(hash)?;
        Ok(facts.visibility == "world_readable"
            || facts.membership.as_deref() == Some("join")
            || (facts.visibility == "shared" && pos < self.joined_until)
            || (facts.membership.as_deref() == Some("invite") && facts.visibility == "invited"))
    }

    /// Whether the user may see `pdu`, stored at `pos`.
    pub fn can_see(&mut self, pos: Pos, pdu: &Pdu) -> Result<bool> {
        let Some((before, after)) = self.rooms.state_hashes(&pdu.event_id)? else {
            return Ok(false);
        };
        let either = pdu.kind == TimelineEventType::RoomHistoryVisibility
            || (pdu.kind == TimelineEventType::RoomMember
                && pdu.state_key.as_deref() == Some(self.user_id.as_str()));
        let at_event = before.unwrap_or(after);
        if self.allows(at_event, pos)? {
            return Ok(true);
        }
        Ok(either && self.allows(after, pos)?)
    }
}
