//! Preparing an event for its commit: everything that reads the database or takes time
//! happens here, under the room lock but outside the server-wide commit lock. The state
//! before and after the event is saved, the room's new current state is resolved when forks
//! leave several forward extremities, and the membership changes are worked out. What
//! remains for [`super::commit`] are writes at the commit's stream position.

use std::collections::BTreeMap;

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
    room_version_rules::RoomVersionRules,
};

use super::{
    RoomInfo, Rooms,
    build::Built,
    check::{BeforeSource, Verdict},
    pdu::Pdu,
    short::{ShortEventId, ShortRoomId},
    state::StateHash,
};
use crate::{Error, Result, storage::Batch};

/// An event ready to commit; everything in it was computed before the commit lock.
pub(super) struct Prepared {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    /// The room before the event; `None` for a create event.
    pub info: Option<RoomInfo>,
    pub short_room_id: ShortRoomId,
    pub short_event_id: ShortEventId,
    pub event_id: OwnedEventId,
    pub pdu: Pdu,
    /// The stored JSON.
    pub stored: Vec<u8>,
    /// State hashes before (`None`: the create event) and after the event.
    pub before: Option<StateHash>,
    pub after: StateHash,
    /// The room's current state after the commit.
    pub current: StateHash,
    /// Membership index writes, at the commit's position: the event's own, or those a
    /// resolution changed.
    pub memberships: Vec<(OwnedUserId, MembershipState)>,
    /// A redacted target's stored form (pdu id, JSON), rewritten in the same batch.
    pub redacted_target: Option<([u8; 16], Vec<u8>)>,
    /// What the checks decided; only accepted events get a timeline place.
    pub verdict: Verdict,
    /// State diffs and other writes that need no position.
    pub batch: Batch,
}

impl Rooms {
    /// Saves the state before and after `built`, resolves the room's current state if other
    /// forward extremities remain, and works out the membership changes. The caller holds
    /// the room lock, so extremities and [`RoomInfo`] cannot change before the commit.
    pub(super) fn prepare(
        &self,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        info: Option<RoomInfo>,
        built: Built,
        redacted_target: Option<([u8; 16], Vec<u8>)>,
    ) -> Result<Prepared> {
        let Built {
            event_id,
            room_id,
            stored,
            pdu,
            state,
            before: before_source,
            ..
        } = built;
        let mut batch = Batch::new();
        let short_room_id = match &info {
            Some(info) => info.short_room_id,
            None => self.short.short_room_id(&room_id)?,
        };
        let short_event_id = self.short.short_event_id(&event_id)?;
        let state_short_key = match &pdu.state_key {
            Some(state_key) => Some(
                self.short
                    .short_state_key(&pdu.kind.to_string().into(), state_key)?,
            ),
            None => None,
        };
        let before = match before_source {
            BeforeSource::Empty => None,
            BeforeSource::Stored(hash) => Some(hash),
            BeforeSource::Resolved { parent } => {
                Some(self.state.save(&mut batch, Some(parent), state.clone())?)
            }
        };
        let after = match state_short_key {
            Some(key) => {
                let mut new_state = state;
                new_state.insert(key, short_event_id);
                self.state.save(&mut batch, before, new_state)?
            }
            None => match before {
                Some(hash) => hash,
                None => self.state.save(&mut batch, None, BTreeMap::new())?,
            },
        };

        // The room's current state: after this event, unless forks leave several forward
        // extremities, whose states are then resolved.
        let others: Vec<StateHash> = match &info {
            Some(_) => self
                .extremities(&room_id)?
                .iter()
                .filter(|id| !pdu.prev_events.contains(id))
                .map(|id| {
                    self.state_hashes(id)?
                        .map(|(_, after)| after)
                        .ok_or_else(|| Error::internal("extremity without state"))
                })
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        let mut memberships = Vec::new();
        let current = if others.is_empty() {
            after
        } else {
            let mut hashes = others;
            hashes.push(after);
            let resolved = self.resolve_states(rules, &hashes, Some(&pdu))?;
            self.resolved_memberships(&room_id, &resolved, &pdu, &mut memberships)?;
            self.state.save(&mut batch, Some(after), resolved)?
        };
        // After a resolution the membership changes come from the resolved state; this
        // event's own membership may have lost.
        let resolved = !memberships.is_empty() || current != after;
        if !resolved
            && pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu
                .state_key
                .as_deref()
                .and_then(|key| ruma::UserId::parse(key).ok())
        {
            memberships.push((target, membership_of(&pdu)));
        }
        Ok(Prepared {
            room_id,
            version: version.clone(),
            info,
            short_room_id,
            short_event_id,
            event_id,
            pdu,
            stored,
            before,
            after,
            current,
            memberships,
            redacted_target,
            verdict: Verdict::Accepted,
            batch,
        })
    }

    /// After a resolution, the members whose indexed membership differs from the resolved
    /// state (a ban may have beaten a racing join), with their resolved membership.
    fn resolved_memberships(
        &self,
        room_id: &ruma::RoomId,
        resolved: &BTreeMap<u64, u64>,
        pending: &Pdu,
        changed: &mut Vec<(OwnedUserId, MembershipState)>,
    ) -> Result<()> {
        for (short_key, short_event) in resolved {
            let (kind, state_key) = self.short.state_key(*short_key)?;
            if kind != StateEventType::RoomMember {
                continue;
            }
            let Ok(user) = OwnedUserId::try_from(state_key) else {
                continue;
            };
            let event_id = self.short.event_id(*short_event)?;
            let event = if event_id == pending.event_id {
                Some(pending.clone())
            } else {
                self.pdu(&event_id)?
            };
            // A resolved state names only stored events: a missing one is corrupt data.
            let event = event
                .ok_or_else(|| Error::internal(format!("state event {event_id} is not stored")))?;
            let membership = membership_of(&event);
            if self.membership(room_id, &user)?.as_ref() != Some(&membership) {
                changed.push((user, membership));
            }
        }
        Ok(())
    }
}

/// The membership a member event sets (`leave` if it says nothing understandable).
pub(super) fn membership_of(event: &Pdu) -> MembershipState {
    event
        .content_str("membership")
        .map(|m| MembershipState::from(m.as_str()))
        .unwrap_or(MembershipState::Leave)
}
