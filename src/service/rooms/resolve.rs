//! State resolution (rooms v2+, "State resolution"; v2.1 for room version 12) over the
//! state after each of several events, with ruma's `state_res::resolve`. Used when an event
//! has several `prev_events`, and for a room's current state when it has several forward
//! extremities (forks that federation brings).

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::{
    EventId, OwnedEventId,
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{StateMap, utils::event_id_set::EventIdSet},
};

use super::{
    Rooms,
    pdu::Pdu,
    short::{ShortEventId, ShortStateKey},
    state::StateHash,
};
use crate::{Error, Result};

/// An auth chain walk stops here; a real room's chains are far smaller.
const MAX_AUTH_CHAIN: usize = 100_000;

impl Rooms {
    /// A stored event, or `pending` if it is the one being committed right now.
    fn lookup(&self, id: &EventId, pending: Option<&Pdu>) -> Result<Option<Pdu>> {
        match pending {
            Some(pdu) if pdu.event_id == id => Ok(Some(pdu.clone())),
            _ => self.pdu_for_auth(id),
        }
    }

    /// The state after `hash` as ruma's `StateMap`.
    fn state_map(&self, hash: StateHash) -> Result<StateMap<OwnedEventId>> {
        let set = self.state.load(hash)?;
        let mut map = StateMap::with_capacity(set.len());
        for (short_key, short_event) in set.iter() {
            map.insert(
                self.short.state_key(*short_key)?,
                self.short.event_id(*short_event)?,
            );
        }
        Ok(map)
    }

    /// Every event reachable from `start` through `auth_events` (not including `start`).
    fn auth_chain<'a>(
        &self,
        start: impl IntoIterator<Item = &'a OwnedEventId>,
        pending: Option<&Pdu>,
    ) -> Result<HashSet<OwnedEventId>> {
        let mut seen = HashSet::new();
        let mut todo: Vec<OwnedEventId> = Vec::new();
        // Every event here passed the auth rules, so its auth events are stored: one that
        // is missing is corrupt data, never a reason for a smaller chain (which would make
        // the auth difference, and so the resolved state, wrong).
        let load = |id: &OwnedEventId| {
            self.lookup(id, pending)?
                .ok_or_else(|| Error::internal(format!("auth event {id} is not stored")))
        };
        for id in start {
            todo.extend(load(id)?.auth_events);
        }
        while let Some(id) = todo.pop() {
            if seen.len() >= MAX_AUTH_CHAIN {
                return Err(Error::internal("auth chain too long"));
            }
            if seen.insert(id.clone()) {
                todo.extend(
                    load(&id)?
                        .auth_events
                        .into_iter()
                        .filter(|next| !seen.contains(next)),
                );
            }
        }
        Ok(seen)
    }

    /// The conflicted state subgraph (rooms v12): events that are reachable from a conflicted
    /// event through `auth_events` and can themselves reach a conflicted event that way, plus
    /// the conflicted events.
    fn conflicted_subgraph(
        &self,
        conflicted: &StateMap<Vec<OwnedEventId>>,
        pending: Option<&Pdu>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        let conflicted: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        let ancestors = self.auth_chain(conflicted.iter(), pending)?;
        // Which ancestors reach a conflicted event: memoised depth-first search.
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        fn visit(
            rooms: &Rooms,
            id: &EventId,
            conflicted: &HashSet<OwnedEventId>,
            reaches: &mut HashMap<OwnedEventId, bool>,
            pending: Option<&Pdu>,
        ) -> Result<bool> {
            if let Some(known) = reaches.get(id) {
                return Ok(*known);
            }
            reaches.insert(id.to_owned(), false); // breaks cycles in bad data
            let mut found = false;
            // The walk stays within an auth chain: every event is stored (see `auth_chain`).
            let pdu = rooms
                .lookup(id, pending)?
                .ok_or_else(|| Error::internal(format!("auth event {id} is not stored")))?;
            for parent in &pdu.auth_events {
                if conflicted.contains(parent)
                    || visit(rooms, parent, conflicted, reaches, pending)?
                {
                    found = true;
                    break;
                }
            }
            reaches.insert(id.to_owned(), found);
            Ok(found)
        }
        let mut subgraph: EventIdSet<OwnedEventId> = conflicted.iter().cloned().collect();
        for id in &ancestors {
            if visit(self, id, &conflicted, &mut reaches, pending)? {
                subgraph.insert(id.clone());
            }
        }
        Ok(subgraph)
    }

    /// Resolves the states after several events into one state set (short ids).
    pub(super) fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        hashes: &[StateHash],
        pending: Option<&Pdu>,
    ) -> Result<BTreeMap<ShortStateKey, ShortEventId>> {
        self.resolve_with(rules, hashes, Vec::new(), pending)
    }

    /// Resolves stored state sets (`hashes`) together with state maps another server gave
    /// (`given`: the states after prev events we do not hold with state; every event they
    /// name is stored).
    pub(super) fn resolve_with(
        &self,
        rules: &RoomVersionRules,
        hashes: &[StateHash],
        given: Vec<StateMap<OwnedEventId>>,
        pending: Option<&Pdu>,
    ) -> Result<BTreeMap<ShortStateKey, ShortEventId>> {
        let StateResolutionVersion::V2(v2) = &rules.state_res else {
            return Err(Error::internal("state resolution v1 is not supported"));
        };
        let mut all = hashes
            .iter()
            .map(|hash| self.state_map(*hash))
            .collect::<Result<Vec<_>>>()?;
        all.extend(given);
        let mut maps = Vec::with_capacity(all.len());
        let mut chains = Vec::with_capacity(all.len());
        for map in all {
            let mut chain: EventIdSet<OwnedEventId> = self
                .auth_chain(map.values(), pending)?
                .into_iter()
                .collect();
            chain.extend(map.values().cloned());
            chains.push(chain);
            maps.push(map);
        }
        // ruma's callbacks can only say "missing": a storage error is kept aside and returned
        // instead of the outcome, so a failing disk never reads as a missing event.
        let failure: std::cell::RefCell<Option<Error>> = std::cell::RefCell::new(None);
        let fetch_event = |id: &EventId| match self.lookup(id, pending) {
            Ok(pdu) => pdu,
            Err(error) => {
                failure.borrow_mut().get_or_insert(error);
                None
            }
        };
        let fetch_subgraph = |conflicted: &StateMap<Vec<OwnedEventId>>| match self
            .conflicted_subgraph(conflicted, pending)
        {
            Ok(subgraph) => Some(subgraph),
            Err(error) => {
                failure.borrow_mut().get_or_insert(error);
                None
            }
        };
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            v2,
            maps.iter(),
            chains,
            fetch_event,
            fetch_subgraph,
        );
        if let Some(error) = failure.borrow_mut().take() {
            return Err(error);
        }
        let resolved =
            resolved.map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        resolved
            .into_iter()
            .map(|((kind, state_key), event_id)| {
                Ok((
                    self.short.short_state_key(&kind, &state_key)?,
                    self.short.short_event_id(&event_id)?,
                ))
            })
            .collect()
    }
}
