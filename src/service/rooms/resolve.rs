//! State resolution (rooms v2+, "State resolution"; v2.1 for room version 12) over the
//! state after each of several events, with ruma's `state_res::resolve`. Used when an event
//! has several `prev_events`, and for a room's current state when it has several forward
//! extremities (forks that federation brings). The auth chains it needs come from the
//! records of `auth_chain.rs`, over short ids; event ids only at the end, for ruma.

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

    /// The event being committed, as the auth-chain walks need it: its short id and its
    /// auth events' (all stored: it passed the auth rules against them).
    fn pending_short(
        &self,
        pending: Option<&Pdu>,
    ) -> Result<Option<(ShortEventId, Vec<ShortEventId>)>> {
        let Some(pdu) = pending else {
            return Ok(None);
        };
        let direct = pdu
            .auth_events
            .iter()
            .map(|id| {
                self.short
                    .get_short_event_id(id)?
                    .ok_or_else(|| Error::internal(format!("auth event {id} is not stored")))
            })
            .collect::<Result<_>>()?;
        Ok(Some((self.short.short_event_id(&pdu.event_id)?, direct)))
    }

    /// Event ids for short ids (once, at the end: ruma works with event ids).
    fn event_ids(
        &self,
        shorts: impl IntoIterator<Item = ShortEventId>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        shorts
            .into_iter()
            .map(|short| self.short.event_id(short))
            .collect()
    }

    /// The conflicted state subgraph (rooms v12): events that are reachable from a conflicted
    /// event through `auth_events` and can themselves reach a conflicted event that way, plus
    /// the conflicted events. Walks the auth-chain records' `direct` lists (no JSON decoded),
    /// with an explicit stack.
    pub(super) fn conflicted_subgraph(
        &self,
        conflicted: &StateMap<Vec<OwnedEventId>>,
        pending: Option<(ShortEventId, &[ShortEventId])>,
    ) -> Result<EventIdSet<OwnedEventId>> {
        let mut conflicted_short = HashSet::new();
        for id in conflicted.values().flatten() {
            // A state set names only interned events.
            let short = self
                .short
                .get_short_event_id(id)?
                .ok_or_else(|| Error::internal(format!("state event {id} is not stored")))?;
            conflicted_short.insert(short);
        }
        let ancestors = self.auth_chain_union(conflicted_short.iter().copied(), pending, false)?;
        let direct_of = |event: ShortEventId| -> Result<Vec<ShortEventId>> {
            match pending {
                Some((short, direct)) if short == event => Ok(direct.to_vec()),
                _ => self.auth_events_short(event),
            }
        };
        // Which ancestors reach a conflicted event: a memoised depth-first search.
        let mut reaches: HashMap<ShortEventId, bool> = HashMap::new();
        let mut parents: HashMap<ShortEventId, Vec<ShortEventId>> = HashMap::new();
        // Events whose parents are being looked at; meeting one again is a cycle in bad
        // data, read as "does not reach" (as before).
        let mut open: HashSet<ShortEventId> = HashSet::new();
        for start in &ancestors {
            let mut stack = vec![*start];
            while let Some(&event) = stack.last() {
                if reaches.contains_key(&event) {
                    stack.pop();
                    continue;
                }
                if let std::collections::hash_map::Entry::Vacant(entry) = parents.entry(event) {
                    entry.insert(direct_of(event)?);
                }
                let direct = &parents[&event];
                if direct
                    .iter()
                    .any(|parent| conflicted_short.contains(parent))
                {
                    reaches.insert(event, true);
                    open.remove(&event);
                    stack.pop();
                    continue;
                }
                if open.insert(event) {
                    stack.extend(
                        direct.iter().filter(|parent| {
                            !reaches.contains_key(parent) && !open.contains(parent)
                        }),
                    );
                    continue;
                }
                let found = direct
                    .iter()
                    .any(|parent| reaches.get(parent).copied().unwrap_or(false));
                reaches.insert(event, found);
                open.remove(&event);
                stack.pop();
            }
        }
        self.event_ids(
            conflicted_short.iter().copied().chain(
                ancestors
                    .iter()
                    .copied()
                    .filter(|event| reaches.get(event).copied().unwrap_or(false)),
            ),
        )
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
        let pending_short = self.pending_short(pending)?;
        let pending_short = pending_short
            .as_ref()
            .map(|(short, direct)| (*short, direct.as_slice()));
        let mut maps = Vec::with_capacity(hashes.len() + given.len());
        let mut chains = Vec::with_capacity(hashes.len() + given.len());
        for hash in hashes {
            // Each state set with its full auth chain, over short ids (cached records).
            let chain = self.state_auth_chain(*hash, pending_short)?;
            chains.push(self.event_ids(chain.iter().copied())?);
            maps.push(self.state_map(*hash)?);
        }
        for map in given {
            let shorts = map
                .values()
                .map(|id| {
                    self.short
                        .get_short_event_id(id)?
                        .ok_or_else(|| Error::internal(format!("state event {id} is not stored")))
                })
                .collect::<Result<Vec<_>>>()?;
            let chain = self.auth_chain_union(shorts, pending_short, true)?;
            chains.push(self.event_ids(chain)?);
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
            .conflicted_subgraph(conflicted, pending_short)
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
