//! Accepting an event another server made (server-server API, "Checks performed on receipt
//! of a PDU"). The caller has run steps 1–3 ([`super::verify`]: format, signatures, content
//! hash) and fetched what it could; here, under the room lock, the event's auth events must
//! be held, then:
//!
//! 4. the rules against its own auth events — failing: *rejected*;
//! 5. the rules against the state before it (from its prev events, resolved if several,
//!    with state maps another server gave for prev events we lack) — failing: *rejected*;
//! 6. for a live event, the rules against the room's current state — failing:
//!    *soft-failed*. A backfilled event is history: it is checked with steps 4 and 5 only.
//!
//! Every outcome is stored ([`super::prepare`], [`super::commit`]): an accepted live event
//! takes its place in the timeline; outliers (auth chains, state fetched from others),
//! soft-failed and rejected events are stored without one and never shown to clients. A
//! rejection never fails the transaction that brought the event (S2S "Rejection").
//!
//! **Backfill** ([`Place::Backfill`]): an event fetched by `/backfill` (older history) takes
//! the place `Pos::backfilled(position)` of its commit, before everything already there, so
//! `/messages` tokens stay valid and a later backfill sorts earlier still. It needs its
//! state like a live event: from its prev events held with state, or given in
//! `StateBefore::fetched` for those we lack; with neither the answer is
//! `Outcome::Missing { prev }` and nothing is stored — the caller asks `/state_ids` at
//! those prev events (adding each prev event itself when it is a state event) and tries
//! again, as for a live event. It changes nothing about the room's present: no
//! [`RoomInfo`] change (last count, bump, current state, depth), never a forward
//! extremity, no membership index, nobody woken. It closes its hole in
//! `roomid_backwardextremity` (then the forward extremities it covers, ancestors of the
//! event that cited it, stop being extremities), and its own prev events we lack become
//! holes ([`Rooms::backward_extremities`]: where the next backfill starts). An outlier that
//! arrives as backfill moves into the timeline. A place comes from the commit's stream
//! position, so each event accepted later sorts earlier; a whole `/backfill` answer goes
//! through [`Rooms::accept_backfill`], which accepts it oldest first (so each event's prev
//! events are held with state when it comes) and hands out positions reserved up front,
//! newest first, so the answer keeps its order.
//!
//! **Redactions** (rooms v3+, "Handling redactions"): a redaction is accepted by the auth
//! rules whatever it names; an accepted one with a timeline place rewrites its held target
//! when its sender's server is the target sender's or its sender has the `redact` level in
//! the state before it, or waits for an unknown target ([`super::redact`]).

use std::collections::BTreeMap;

use ruma::{
    OwnedEventId, OwnedServerName, RoomVersionId, ServerName, events::TimelineEventType,
    room_version_rules::RoomVersionRules, state_res::StateMap,
};
use serde::Deserialize;

use super::{
    RoomInfo, Rooms,
    append::supported_room_version,
    check::{BeforeSource, Verdict},
    pdu::Pdu,
    pos::Pos,
    prepare::Ready,
    redact::RedactionEffect,
    short::{ShortEventId, ShortStateKey},
    state::StateHash,
    verify::Verified,
};
use crate::{Error, Result, service::off_worker};

/// Where an accepted event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A new event: the end of the timeline (if it is accepted).
    Live,
    /// An event fetched by backfill (older history): a place before everything held, and
    /// no change to the room's present (see the module comment).
    Backfill,
    /// No place and no state: an event of an auth chain or a state answer.
    Outlier,
}

/// State maps another server gave (`/state_ids`) for the states after prev events we do not
/// hold with state. `StateBefore::default()`: every prev event must be held with state.
#[derive(Clone, Debug, Default)]
pub struct StateBefore {
    pub fetched: Vec<StateMap<OwnedEventId>>,
}

/// A stored event and what was decided about it.
#[derive(Clone, Debug)]
pub struct Committed {
    pub pdu: Pdu,
    /// Its timeline place, when it has one.
    pub position: Option<Pos>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Committed(Committed),
    /// Held before: nothing changed.
    AlreadyKnown(Committed),
    /// Nothing stored: fetch these — auth events (and events named in given state) as
    /// outliers, prev events with `get_missing_events` or their state with `/state_ids` —
    /// and try again.
    Missing {
        auth: Vec<OwnedEventId>,
        prev: Vec<OwnedEventId>,
    },
}

/// The state before an event with the prev events known so far.
enum Before {
    Known {
        state: BTreeMap<ShortStateKey, ShortEventId>,
        source: BeforeSource,
        /// Its hash when it is a stored set (for the soft-fail shortcut).
        hash: Option<StateHash>,
        holes: Vec<OwnedEventId>,
    },
    /// Prev events we do not hold with state, and no state was given for them.
    MissingPrevs(Vec<OwnedEventId>),
    /// Events named in the given state that we do not hold.
    MissingState(Vec<OwnedEventId>),
}

impl Rooms {
    /// Accepts one event another server made (see the module comment). Durable when it
    /// returns `Committed`.
    pub async fn accept(
        &self,
        event: Verified,
        place: Place,
        state: StateBefore,
    ) -> Result<Outcome> {
        let outcome = {
            let _guard = self.lock(&event.room_id).await;
            off_worker(|| self.accept_locked(event, place, state, None, None))?
        };
        if let Outcome::Committed(_) = outcome {
            self.db.persist().await?;
        }
        Ok(outcome)
    }

    /// [`Rooms::accept`] for a live member event a user of `origin` sent us through
    /// `send_join`, `send_leave` or `send_knock`: once accepted, it is queued (in its
    /// commit's batch) to the other servers with a member joined in the room, neither
    /// `origin` nor this one. The resident server "then sends the event to the other
    /// servers in the room" (server-server API, "Joining Rooms"): they would otherwise
    /// learn of the new member only from a later event citing it.
    pub async fn accept_relayed(&self, event: Verified, origin: &ServerName) -> Result<Outcome> {
        let outcome = {
            let _guard = self.lock(&event.room_id).await;
            off_worker(|| {
                self.accept_locked(
                    event,
                    Place::Live,
                    StateBefore::default(),
                    None,
                    Some(origin.to_owned()),
                )
            })?
        };
        if let Outcome::Committed(_) = outcome {
            self.db.persist().await?;
        }
        Ok(outcome)
    }

    /// [`Rooms::accept`] without the flush: the caller must `Db::persist` before it
    /// acknowledges anything (a transaction of 50 PDUs is flushed once, not 50 times).
    pub async fn accept_deferred(
        &self,
        event: Verified,
        place: Place,
        state: StateBefore,
    ) -> Result<Outcome> {
        let _guard = self.lock(&event.room_id).await;
        off_worker(|| self.accept_locked(event, place, state, None, None))
    }

    /// Stores several events as outliers (an auth chain or a state answer) in an order where
    /// each event's auth events come first. The outcomes are in the order given; an event
    /// whose auth events are neither stored nor among `events` is `Missing`.
    pub async fn accept_outliers(&self, events: Vec<Verified>) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        // By depth first, which is almost always an order that works; further passes for
        // the rest (depth is the sender's claim).
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (u64::from(events[i].pdu.depth), i));
        let mut pending = order;
        loop {
            let mut next = Vec::new();
            for i in pending.iter().copied() {
                let event = events[i].clone();
                let _guard = self.lock(&event.room_id).await;
                match off_worker(|| {
                    self.accept_locked(event, Place::Outlier, StateBefore::default(), None, None)
                })? {
                    missing @ Outcome::Missing { .. } => {
                        outcomes[i] = Some(missing);
                        next.push(i);
                    }
                    done => outcomes[i] = Some(done),
                }
            }
            if next.is_empty() || next.len() == pending.len() {
                break;
            }
            pending = next;
        }
        self.db.persist().await?;
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every event was tried"))
            .collect())
    }

    /// `reserved`: for a backfilled event, the stream position its place is made of.
    fn accept_locked(
        &self,
        event: Verified,
        place: Place,
        given: StateBefore,
        reserved: Option<u64>,
        relayed_from: Option<OwnedServerName>,
    ) -> Result<Outcome> {
        let Verified {
            event_id,
            room_id,
            mut object,
            mut pdu,
            ..
        } = event;
        let mut held_stored = None;
        if let Some((held, placed)) = self.pdu_placed(&event_id)? {
            let verdict = if placed {
                Verdict::Accepted
            } else {
                self.verdict(&event_id)?
            };
            // Only an outlier that now arrives as a live event has something left to do;
            // its verdict against its auth events stands (they never change).
            let done = placed
                || place == Place::Outlier
                || matches!(verdict, Verdict::Rejected(_))
                || self.state_hashes(&event_id)?.is_some();
            if done {
                return Ok(Outcome::AlreadyKnown(Committed {
                    pdu: held,
                    position: self.pos_of(&event_id)?,
                    verdict,
                }));
            }
            // The held copy is stored again: a redaction may have rewritten it since (the
            // redaction algorithm keeps what the checks read).
            held_stored = self.outliers.get(event_id.as_bytes())?;
            if let Some(bytes) = &held_stored {
                pdu = Self::decode_pdu(bytes)?;
            }
        }
        let info = self.info(&room_id)?;
        let version = match self.room_version_of(info.as_ref(), &pdu)? {
            Ok(version) => version,
            Err(create) => {
                return Ok(Outcome::Missing {
                    auth: vec![create],
                    prev: Vec::new(),
                });
            }
        };
        let rules = version
            .rules()
            .filter(|_| supported_room_version(&version))
            .ok_or_else(|| Error::bad_json(format!("Unsupported room version {version}.")))?;
        let mut missing_auth = Vec::new();
        for id in &pdu.auth_events {
            if self.pdu(id)?.is_none() {
                missing_auth.push(id.clone());
            }
        }
        if !missing_auth.is_empty() {
            return Ok(Outcome::Missing {
                auth: missing_auth,
                prev: Vec::new(),
            });
        }
        object.insert(
            "event_id".into(),
            ruma::CanonicalJsonValue::String(event_id.to_string()),
        );
        let stored = match held_stored {
            Some(bytes) => bytes,
            None => serde_json::to_vec(&object)
                .map_err(|e| Error::internal(format!("PDU serialisation: {e}")))?,
        };

        // Step 4: the event's own auth events.
        let mut verdict = match self.auth_against_auth_events(&rules.authorization, &pdu)? {
            Ok(()) => Verdict::Accepted,
            Err(reason) => Verdict::Rejected(reason),
        };
        let mut ready = Ready {
            event_id,
            room_id,
            stored,
            pdu,
            state: None,
            verdict: Verdict::Accepted,
            timeline: false,
            backfilled: place == Place::Backfill,
            reserved,
            holes: Vec::new(),
            local: false,
            relayed_from,
        };
        let mut redaction = None;
        if place != Place::Outlier {
            let (state, source, hash, holes) =
                match self.remote_state_before(&rules, &ready.pdu, given)? {
                    Before::Known {
                        state,
                        source,
                        hash,
                        holes,
                    } => (state, source, hash, holes),
                    // An event that fails against its own auth events is rejected whatever
                    // came before it: stored without state, never asked for again.
                    _ if verdict != Verdict::Accepted => {
                        ready.verdict = verdict;
                        return self.store_remote(&rules, &version, info, ready, None);
                    }
                    Before::MissingPrevs(prev) => {
                        return Ok(Outcome::Missing {
                            auth: Vec::new(),
                            prev,
                        });
                    }
                    Before::MissingState(auth) => {
                        return Ok(Outcome::Missing {
                            auth,
                            prev: Vec::new(),
                        });
                    }
                };
            // Step 5: the state before the event.
            if verdict == Verdict::Accepted
                && let Err(reason) =
                    self.auth_against_state(&rules.authorization, &ready.pdu, &state)?
            {
                verdict = Verdict::Rejected(reason);
            }
            // Step 6: the room's current state, unless that is the state before it. Not for
            // backfilled events: they are history, the current state came after them.
            if verdict == Verdict::Accepted
                && place == Place::Live
                && let Some(info) = &info
                && hash != Some(info.state_hash)
            {
                let current = self.current_state(info)?;
                if self
                    .auth_against_state(&rules.authorization, &ready.pdu, &current)?
                    .is_err()
                {
                    verdict = Verdict::SoftFailed;
                }
            }
            ready.timeline = verdict == Verdict::Accepted;
            if ready.timeline && ready.pdu.kind == TimelineEventType::RoomRedaction {
                redaction = self.remote_redaction(
                    &rules,
                    &ready.pdu,
                    &object,
                    &std::sync::Arc::new(state.clone()),
                )?;
            }
            ready.state = Some((state, source));
            ready.holes = holes;
        }
        ready.verdict = verdict;
        self.store_remote(&rules, &version, info, ready, redaction)
    }

    /// Accepts one `/backfill` answer (events of one room) as [`Place::Backfill`]: oldest
    /// first (by `depth`, then event id), so that each event's prev events within the
    /// answer are held with state before it comes and only the oldest need a state given
    /// (`given`, keyed by event id: the state after their prev events we lack, from
    /// `/state_ids`). Their places come from stream positions reserved up front and handed
    /// out newest first, so within the answer older events sort first, and the whole answer
    /// before everything already held. The outcomes are in the order given; `Missing`
    /// ones (and events whose prev events are among them) stored nothing: accept them again
    /// once their state is known (they then sort before this answer).
    pub async fn accept_backfill(
        &self,
        events: Vec<Verified>,
        mut given: BTreeMap<OwnedEventId, StateBefore>,
    ) -> Result<Vec<Outcome>> {
        let Some(room_id) = events.first().map(|event| event.room_id.clone()) else {
            return Ok(Vec::new());
        };
        if events.iter().any(|event| event.room_id != room_id) {
            return Err(Error::bad_json("A backfill answer spans several rooms."));
        }
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by(|&a, &b| {
            (u64::from(events[a].pdu.depth), &events[a].event_id)
                .cmp(&(u64::from(events[b].pdu.depth), &events[b].event_id))
        });
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        {
            let _guard = self.lock(&room_id).await;
            // Ascending ids; the oldest event takes the largest, so the most negative place.
            let mut reserved = (0..events.len())
                .map(|_| self.db.next_id())
                .collect::<crate::storage::StorageResult<Vec<u64>>>()?;
            for i in order {
                let state = given.remove(&events[i].event_id).unwrap_or_default();
                let position = reserved.pop();
                outcomes[i] = Some(off_worker(|| {
                    self.accept_locked(events[i].clone(), Place::Backfill, state, position, None)
                })?);
            }
        }
        self.db.persist().await?;
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.expect("every event was tried"))
            .collect())
    }

    fn store_remote(
        &self,
        rules: &RoomVersionRules,
        version: &RoomVersionId,
        info: Option<RoomInfo>,
        ready: Ready,
        redaction: Option<RedactionEffect>,
    ) -> Result<Outcome> {
        let verdict = ready.verdict.clone();
        let prepared = self.prepare(rules, version, info, ready, redaction)?;
        let (pdu, position) = self.commit(prepared, None)?;
        Ok(Outcome::Committed(Committed {
            pdu,
            position,
            verdict,
        }))
    }

    /// The room version: the room's, or for an event of a room we do not hold yet the one
    /// its create event names (the event itself, one of its auth events, or — rooms v12,
    /// where the create event is not an auth event — the event the room id names). `Err`
    /// names the create event to fetch.
    fn room_version_of(
        &self,
        info: Option<&RoomInfo>,
        pdu: &Pdu,
    ) -> Result<std::result::Result<RoomVersionId, OwnedEventId>> {
        #[derive(Deserialize)]
        struct CreateContent {
            // Rooms v1 "m.room.create": absent means version 1.
            room_version: Option<RoomVersionId>,
        }
        if let Some(info) = info {
            return Ok(Ok(info.version.clone()));
        }
        let version_in = |create: &Pdu| {
            serde_json::from_str::<CreateContent>(create.content.get())
                .ok()
                .and_then(|content| content.room_version)
                .unwrap_or(RoomVersionId::V1)
        };
        if pdu.kind == TimelineEventType::RoomCreate {
            return Ok(Ok(version_in(pdu)));
        }
        for id in &pdu.auth_events {
            if let Some(auth) = self.pdu(id)?
                && auth.kind == TimelineEventType::RoomCreate
            {
                return Ok(Ok(version_in(&auth)));
            }
        }
        let room_id = pdu.room_id();
        let create_id = OwnedEventId::try_from(format!("${}", &room_id.as_str()[1..]))
            .map_err(|_| Error::bad_json("Invalid room id."))?;
        match self.pdu(&create_id)? {
            Some(create) if create.kind == TimelineEventType::RoomCreate => {
                Ok(Ok(version_in(&create)))
            }
            _ => Ok(Err(create_id)),
        }
    }

    /// The state before a remote event: after its prev events we hold with state, together
    /// with the states `given` for the others, resolved when there are several. Events in
    /// the given state that were rejected are left out of it.
    fn remote_state_before(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        given: StateBefore,
    ) -> Result<Before> {
        if pdu.prev_events.is_empty() {
            return Ok(Before::Known {
                state: BTreeMap::new(),
                source: BeforeSource::Empty,
                hash: None,
                holes: Vec::new(),
            });
        }
        let mut hashes = Vec::new();
        let mut holes = Vec::new();
        for prev in &pdu.prev_events {
            match self.state_hashes(prev)? {
                Some((_, after)) => hashes.push(after),
                None => holes.push(prev.clone()),
            }
        }
        if !holes.is_empty() && given.fetched.is_empty() {
            return Ok(Before::MissingPrevs(holes));
        }
        let mut maps = Vec::with_capacity(given.fetched.len());
        let mut unknown = Vec::new();
        for map in given.fetched {
            let mut kept = StateMap::with_capacity(map.len());
            for (key, id) in map {
                match self.pdu_placed(&id)? {
                    None => unknown.push(id),
                    Some((_, true)) => {
                        kept.insert(key, id);
                    }
                    Some((_, false)) => {
                        if !matches!(self.verdict(&id)?, Verdict::Rejected(_)) {
                            kept.insert(key, id);
                        }
                    }
                }
            }
            maps.push(kept);
        }
        if !unknown.is_empty() {
            return Ok(Before::MissingState(unknown));
        }
        let (state, source, hash) = match (&hashes[..], maps.len()) {
            ([single], 0) => (
                (*self.state.load(*single)?).clone(),
                BeforeSource::Stored(*single),
                Some(*single),
            ),
            ([], 1) => {
                let map = maps.pop().expect("one map");
                let mut state = BTreeMap::new();
                for ((kind, state_key), id) in map {
                    state.insert(
                        self.short.short_state_key(&kind, &state_key)?,
                        self.short.short_event_id(&id)?,
                    );
                }
                (state, BeforeSource::Resolved { parent: None }, None)
            }
            _ => (
                self.resolve_with(rules, &hashes, maps, None)?,
                BeforeSource::Resolved {
                    parent: hashes.first().copied(),
                },
                None,
            ),
        };
        Ok(Before::Known {
            state,
            source,
            hash,
            holes,
        })
    }
}
