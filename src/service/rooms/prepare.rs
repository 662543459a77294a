//! Preparing an event for its commit: everything that reads the database or takes time
//! happens here, under the room lock but outside the server-wide commit lock. The state
//! before and after the event is saved, the forward extremities are updated, the room's new
//! current state is resolved when forks leave several of them, and the membership changes
//! are worked out. What remains for [`super::commit`] are writes at the commit's stream
//! position.
//!
//! Local and remote events meet here: a [`Ready`] event has passed the checks that apply
//! to it and carries their [`Verdict`].

use std::collections::{BTreeMap, BTreeSet};

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId, ServerName,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
    room_version_rules::RoomVersionRules,
};

use super::{
    RoomInfo, Rooms,
    build::Built,
    check::{BeforeSource, Verdict},
    pair_key,
    pdu::Pdu,
    redact::RedactionEffect,
    short::{ShortEventId, ShortRoomId, ShortStateKey},
    state::StateHash,
};
use crate::{Error, Result, storage::Batch};

/// How far the walk from a new event's prev events through rejected and soft-failed events
/// goes (each event met is covered by the new event and stops being an extremity).
const MAX_COVER_WALK: usize = 1_000;

/// A checked event on its way to the store.
pub(super) struct Ready {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// The stored JSON.
    pub stored: Vec<u8>,
    pub pdu: Pdu,
    /// The state before the event; `None` when it is not known (an outlier, or an event
    /// rejected against its auth events before its prev events were known).
    pub state: Option<(BTreeMap<ShortStateKey, ShortEventId>, BeforeSource)>,
    pub verdict: Verdict,
    /// Whether the event takes a place in the timeline (only accepted events with state).
    pub timeline: bool,
    /// Whether that place is a backfilled one (older history: before everything, changing
    /// nothing about the room's present).
    pub backfilled: bool,
    /// For a backfilled place: a stream position reserved for it ([`Rooms::accept_backfill`]
    /// orders a whole answer); `None`: its commit's.
    pub reserved: Option<u64>,
    /// Prev events we do not hold with state: holes in the DAG, where backfill starts.
    pub holes: Vec<OwnedEventId>,
    /// Whether this server made the event (then it goes to the other servers in the room).
    pub local: bool,
    /// For another server's member event accepted through `send_join`, `send_leave` or
    /// `send_knock`: that server. The event goes on to the room's other servers
    /// ([`Rooms::accept_relayed`]).
    pub relayed_from: Option<OwnedServerName>,
}

impl From<Built> for Ready {
    fn from(built: Built) -> Self {
        Ready {
            event_id: built.event_id,
            room_id: built.room_id,
            stored: built.stored,
            pdu: built.pdu,
            state: Some((built.state, built.before)),
            verdict: Verdict::Accepted,
            timeline: true,
            backfilled: false,
            reserved: None,
            holes: Vec::new(),
            local: true,
            relayed_from: None,
        }
    }
}

/// What an accepted timeline event changes about its room.
pub(super) struct LiveUpdate {
    /// The room's current state after the commit.
    pub current: StateHash,
    /// The room's forward extremities after the commit, when they change: those the event
    /// does not cover, and the event itself unless an event we hold already cites it (it
    /// fills a hole).
    pub extremities: Option<Vec<OwnedEventId>>,
    /// Membership index writes, at the commit's position: the event's own, or those a
    /// resolution changed.
    pub memberships: Vec<(OwnedUserId, MembershipState)>,
}

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
    pub stored: Vec<u8>,
    /// State hashes before (`None`: the create event) and after the event; `None` when the
    /// state before it is not known.
    pub state: Option<(Option<StateHash>, StateHash)>,
    /// `Some` for an accepted live timeline event.
    pub live: Option<LiveUpdate>,
    /// Whether the event takes a backfilled timeline place (`Pos::backfilled`), at the
    /// reserved position if there is one.
    pub backfilled: bool,
    pub reserved: Option<u64>,
    pub verdict: Verdict,
    /// Other servers this event goes to (our events, and member events relayed for
    /// another server).
    pub destinations: Vec<OwnedServerName>,
    /// State diffs, holes, redactions and other writes that need no position.
    pub batch: Batch,
}

impl Rooms {
    /// Saves the state before and after `ready`, updates the forward extremities, resolves
    /// the room's current state if several remain, and works out the membership changes.
    /// `redaction` is what the event (a redaction) does to its target; redactions that
    /// arrived before the event are applied to it here. The caller holds the room lock, so
    /// extremities and [`RoomInfo`] cannot change before the commit.
    pub(super) fn prepare(
        &self,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        info: Option<RoomInfo>,
        ready: Ready,
        redaction: Option<RedactionEffect>,
    ) -> Result<Prepared> {
        let Ready {
            event_id,
            room_id,
            mut stored,
            mut pdu,
            state,
            verdict,
            timeline,
            backfilled,
            reserved,
            holes,
            local,
            relayed_from,
        } = ready;
        let mut batch = Batch::new();
        let short_room_id = match &info {
            Some(info) => info.short_room_id,
            None => self.short.short_room_id(&room_id)?,
        };
        let short_event_id = self.short.short_event_id(&event_id)?;
        self.apply_pending_redactions(rules, short_event_id, &mut stored, &mut pdu, &mut batch)?;
        if let Some(effect) = redaction {
            self.write_redaction(&mut batch, short_event_id, effect);
        }
        let state_hashes = match state {
            None => None,
            Some((state, source)) => {
                Some(self.save_states(&mut batch, &pdu, short_event_id, state, source, &verdict)?)
            }
        };
        // The event's auth chain, recorded compactly for state resolution (rejected events
        // get none: nothing valid cites them as an auth event).
        if !matches!(verdict, Verdict::Rejected(_)) {
            let auth_events = pdu
                .auth_events
                .iter()
                .map(|id| self.short.short_event_id(id))
                .collect::<Result<Vec<_>>>()?;
            if let Some(record) = self.record_for(&auth_events)? {
                self.auth_chains
                    .write_record(&mut batch, short_event_id, record);
            }
        }
        for hole in &holes {
            batch.insert(
                &*self.backward_extremities,
                pair_key(room_id.as_str(), hole.as_str()),
                Vec::new(),
            );
        }
        let placed = timeline && state_hashes.is_some() && verdict == Verdict::Accepted;
        let live = match state_hashes {
            Some((before, after)) if placed => {
                // An event that fills a hole is cited by one we hold: it closes the hole and
                // is never a forward extremity.
                let hole_key = pair_key(room_id.as_str(), event_id.as_str());
                let fills_hole = self.backward_extremities.get(&hole_key)?.is_some();
                if fills_hole {
                    batch.remove(&*self.backward_extremities, hole_key);
                }
                if backfilled {
                    if fills_hole {
                        self.backfill_covers(&room_id, &pdu, &mut batch)?;
                    }
                    None
                } else {
                    Some(self.live_update(
                        rules,
                        info.as_ref(),
                        &room_id,
                        &pdu,
                        (before, after),
                        !fills_hole,
                        &mut batch,
                    )?)
                }
            }
            _ => None,
        };
        let destinations = match (&live, &self.outgoing, &relayed_from) {
            (Some(_), Some(_), _) if local => self.destinations(&room_id, &pdu)?,
            (Some(_), Some(_), Some(origin)) => self.relay_destinations(&room_id, origin)?,
            _ => Vec::new(),
        };
        Ok(Prepared {
            room_id,
            version: version.clone(),
            info,
            short_room_id,
            short_event_id,
            event_id,
            pdu,
            stored,
            state: state_hashes,
            live,
            backfilled: placed && backfilled,
            reserved,
            verdict,
            destinations,
            batch,
        })
    }

    /// The servers one of our events goes to: those with a member joined in the room (as
    /// the indexes say before the event), and the server of a member event's target (a
    /// kick or ban must reach the user's server), never this one.
    fn destinations(&self, room_id: &RoomId, pdu: &Pdu) -> Result<Vec<OwnedServerName>> {
        let mut servers = self.joined_servers(room_id)?;
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu
                .state_key
                .as_deref()
                .and_then(|key| ruma::UserId::parse(key).ok())
        {
            servers.insert(target.server_name().to_owned());
        }
        servers.remove(&self.server_name);
        Ok(servers.into_iter().collect())
    }

    /// The servers another server's member event we accepted goes on to (see
    /// [`Rooms::accept_relayed`]): those with a member joined in the room (as the indexes
    /// say before the event), but `origin` and this one.
    fn relay_destinations(
        &self,
        room_id: &RoomId,
        origin: &ServerName,
    ) -> Result<Vec<OwnedServerName>> {
        let mut servers = self.joined_servers(room_id)?;
        servers.remove(origin);
        servers.remove(&self.server_name);
        Ok(servers.into_iter().collect())
    }

    /// A backfilled event that fills a hole lies below an event we hold: the forward
    /// extremities it covers (its prev events, through rejected and soft-failed ones) are
    /// ancestors of that event and stop being extremities — unless none would remain. The
    /// room's current state is left as it is (the remaining extremities descend from the
    /// covered ones), and the event itself never becomes one (it is history).
    fn backfill_covers(&self, room_id: &RoomId, pdu: &Pdu, batch: &mut Batch) -> Result<()> {
        let old: BTreeSet<OwnedEventId> = self.extremities(room_id)?.into_iter().collect();
        let covered = self.covered_by(pdu, &old)?;
        if covered.len() < old.len() {
            let left = old.iter().filter(|id| !covered.contains(*id));
            self.write_extremities(batch, room_id, left.map(|id| &**id));
        }
        Ok(())
    }

    /// Saves the state before the event (when it was resolved or given) and after it (a
    /// state event's own change, unless it was rejected: server-server API, "Rejection").
    fn save_states(
        &self,
        batch: &mut Batch,
        pdu: &Pdu,
        short_event_id: ShortEventId,
        state: BTreeMap<ShortStateKey, ShortEventId>,
        source: BeforeSource,
        verdict: &Verdict,
    ) -> Result<(Option<StateHash>, StateHash)> {
        let before = match source {
            BeforeSource::Empty => None,
            BeforeSource::Stored(hash) => Some(hash),
            BeforeSource::Resolved { parent } => {
                Some(self.state.save(batch, parent, state.clone())?)
            }
        };
        let rejected = matches!(verdict, Verdict::Rejected(_));
        let after = match &pdu.state_key {
            Some(state_key) if !rejected => {
                let key = self
                    .short
                    .short_state_key(&pdu.kind.to_string().into(), state_key)?;
                let mut new_state = state;
                new_state.insert(key, short_event_id);
                self.state.save(batch, before, new_state)?
            }
            _ => match before {
                Some(hash) => hash,
                None => self.state.save(batch, None, BTreeMap::new())?,
            },
        };
        Ok((before, after))
    }

    /// The forward extremities and current state after an accepted timeline event.
    #[allow(clippy::too_many_arguments)]
    fn live_update(
        &self,
        rules: &RoomVersionRules,
        info: Option<&RoomInfo>,
        room_id: &RoomId,
        pdu: &Pdu,
        (before, after): (Option<StateHash>, StateHash),
        extremity: bool,
        batch: &mut Batch,
    ) -> Result<LiveUpdate> {
        let old: BTreeSet<OwnedEventId> = match info {
            Some(_) => self.extremities(room_id)?.into_iter().collect(),
            None => BTreeSet::new(),
        };
        let covered = self.covered_by(pdu, &old)?;
        let mut remaining: Vec<OwnedEventId> = old
            .iter()
            .filter(|id| !covered.contains(*id))
            .cloned()
            .collect();
        // A room always keeps a forward extremity.
        let extremity = extremity || remaining.is_empty();
        let mut memberships = Vec::new();
        // Whether the membership indexes were brought in line with the new current state.
        let mut diffed = false;
        let current = match (extremity, remaining.is_empty(), info) {
            // The usual case: the event is the room's only forward extremity.
            (true, true, _) => after,
            // It fills a hole and nothing else changes: the current state stays.
            (false, _, Some(info)) if covered.is_empty() => info.state_hash,
            _ => {
                let mut hashes = Vec::with_capacity(remaining.len() + 1);
                for id in &remaining {
                    hashes.push(
                        self.state_hashes(id)?
                            .map(|(_, after)| after)
                            .ok_or_else(|| Error::internal("extremity without state"))?,
                    );
                }
                if extremity {
                    hashes.push(after);
                    remaining.push(pdu.event_id.clone());
                }
                if let [only] = hashes[..] {
                    only
                } else {
                    let resolved = self.resolve_states(rules, &hashes, Some(pdu))?;
                    self.resolved_memberships(room_id, &resolved, pdu, &mut memberships)?;
                    diffed = true;
                    self.state.save(batch, Some(after), resolved)?
                }
            }
        };
        // When the state before the event is not the room's current state (a room new to
        // this server, whose state came from another server; a gap filled with given
        // state; a fork), the new current state may differ in more than this event: the
        // indexes follow all of it.
        let continues = info.is_some_and(|info| before == Some(info.state_hash));
        if !diffed && !continues && info.is_none_or(|info| current != info.state_hash) {
            let set = self.state.load(current)?;
            self.resolved_memberships(room_id, &set, pdu, &mut memberships)?;
            diffed = true;
        }
        // Otherwise only this event's own membership changes (after a resolution it may
        // have lost: then the resolved state decided above).
        if current == after
            && !diffed
            && pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu
                .state_key
                .as_deref()
                .and_then(|key| ruma::UserId::parse(key).ok())
        {
            memberships.push((target, membership_of(pdu)));
        }
        let extremities = (!covered.is_empty() || extremity).then(|| {
            let mut after: Vec<OwnedEventId> = old.difference(&covered).cloned().collect();
            if extremity {
                after.push(pdu.event_id.clone());
            }
            after
        });
        Ok(LiveUpdate {
            current,
            extremities,
            memberships,
        })
    }

    /// The forward extremities `pdu` covers: its prev events, and, through prev events that
    /// were rejected or soft-failed (never extremities themselves), theirs — as Synapse
    /// does, so that an event citing a rejected one still takes in the branch below it.
    fn covered_by(
        &self,
        pdu: &Pdu,
        extremities: &BTreeSet<OwnedEventId>,
    ) -> Result<BTreeSet<OwnedEventId>> {
        let mut covered = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<OwnedEventId> = pdu.prev_events.clone();
        while let Some(id) = todo.pop() {
            if seen.len() >= MAX_COVER_WALK || !seen.insert(id.clone()) {
                continue;
            }
            if extremities.contains(&id) {
                covered.insert(id.clone());
            }
            // Only events without a timeline place can be rejected or soft-failed.
            if let Some(bytes) = self.outliers.get(id.as_bytes())?
                && self.verdict(&id)? != Verdict::Accepted
            {
                let prev: Pdu = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::internal(format!("corrupt stored PDU: {e}")))?;
                todo.extend(prev.prev_events);
            }
        }
        Ok(covered)
    }

    /// After a resolution, the members whose indexed membership differs from the resolved
    /// state (a ban may have beaten a racing join), with their resolved membership.
    fn resolved_memberships(
        &self,
        room_id: &RoomId,
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
