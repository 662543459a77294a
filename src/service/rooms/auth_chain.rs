//! Auth chains, cached compactly (docs/room-core.md §8). The auth chain of an event is every
//! event reachable from it through `auth_events` (not the event itself). State resolution
//! needs the chain of every event of the states it resolves; walking the DAG through stored
//! JSON for each resolution does not scale, so each event's chain is recorded once, as a
//! diff against the chain of one of its auth events, like state sets.
//!
//! Tree `shorteventid_authchain`: short event id (u64) → record, all numbers big-endian:
//!
//! ```text
//! base      u64   an auth event of the event whose chain is reused (0 = a snapshot)
//! level     u32   diffs in a row since the last snapshot (< MAX_LEVEL)
//! n_direct  u32
//! n_added   u32
//! direct    n_direct × u64   the event's auth_events as short ids, in its order
//! added     n_added  × u64   sorted; chain = chain(base) ∪ {base} ∪ added   (base ≠ 0)
//!                                    chain = added                          (base = 0)
//! ```
//!
//! A chain only ever grows along `auth_events` (chain(E) ⊇ chain(a) ∪ {a} for each auth event
//! `a`), so a record has no removals. A plain message's record is usually its base and no
//! added ids.
//!
//! Records are derived data: written in the event's commit batch (`record_for`, by the caller
//! that prepares an event), or computed on first use for an event stored without one, bottom
//! up with an explicit stack, and written with plain inserts. Computing one twice writes the
//! same bytes, so racing writers are harmless. An event with a missing auth event gets no
//! record (asking for its chain is an error: a smaller chain would make resolution wrong).
//!
//! Loaded chains are kept in a bounded FIFO cache ([`CACHE_IDS`] ids in all, at most
//! [`CACHE_ENTRIES`] chains); the unions over whole state sets that resolution asks for
//! again and again are kept for the last [`STATE_MEMO_ENTRIES`] state hashes.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::Hash,
    sync::{Arc, Mutex},
};

use super::{
    Rooms,
    short::{ShortEventId, u64_from},
    state::StateHash,
};
use crate::{
    Error, Result,
    storage::{Batch, Db, Tree},
};

/// An auth chain: short event ids, sorted, without duplicates.
pub type Chain = Arc<[ShortEventId]>;

/// Diffs in a row before a record is written as a snapshot (as state sets' `MAX_CHAIN`).
pub const MAX_LEVEL: u32 = 24;
/// The largest chain (or union of chains) handled; a real room's chains are far smaller.
pub const MAX_AUTH_CHAIN: usize = 100_000;
/// Ids held by the chain cache in all (16 MB).
pub const CACHE_IDS: usize = 2_000_000;
/// Chains held by the chain cache.
pub const CACHE_ENTRIES: usize = 4_096;
/// State sets whose whole auth chain is kept (resolution of the current state meets the
/// same extremities' states again and again).
pub const STATE_MEMO_ENTRIES: usize = 16;
/// Ids one lazy computation keeps at once (its working set; 64 MB). Chains it drops are
/// read back from the records it already wrote.
const WALK_IDS: usize = 8_000_000;
/// Steps of one lazy computation before it gives up (corrupt or absurd data, never a real
/// room: each event costs a few steps).
const MAX_WALK_STEPS: usize = 16 * MAX_AUTH_CHAIN;

/// One event's record (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub base: ShortEventId,
    pub level: u32,
    pub direct: Vec<ShortEventId>,
    pub added: Vec<ShortEventId>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 8 * (self.direct.len() + self.added.len()));
        out.extend_from_slice(&self.base.to_be_bytes());
        out.extend_from_slice(&self.level.to_be_bytes());
        out.extend_from_slice(&(self.direct.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.added.len() as u32).to_be_bytes());
        for id in self.direct.iter().chain(&self.added) {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let base = u64_from(bytes.get(0..8)?)?;
        let level = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
        let n_direct = u32::from_be_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
        let n_added = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?) as usize;
        let ids = bytes.get(20..)?;
        if ids.len() % 8 != 0 || ids.len() / 8 != n_direct.checked_add(n_added)? {
            return None;
        }
        let mut all = ids.chunks_exact(8).filter_map(u64_from);
        let direct = all.by_ref().take(n_direct).collect();
        let added = all.collect();
        Some(Self {
            base,
            level,
            direct,
            added,
        })
    }
}

/// A FIFO cache of chains bounded by entries and by the ids they hold in all.
pub(super) struct Fifo<K> {
    chains: HashMap<K, (Chain, u32)>,
    order: VecDeque<K>,
    ids: usize,
    max_ids: usize,
    max_entries: usize,
}

impl<K: Copy + Eq + Hash> Fifo<K> {
    pub fn new(max_ids: usize, max_entries: usize) -> Self {
        Self {
            chains: HashMap::new(),
            order: VecDeque::new(),
            ids: 0,
            max_ids,
            max_entries,
        }
    }

    pub fn get(&self, key: &K) -> Option<(Chain, u32)> {
        self.chains.get(key).cloned()
    }

    /// Keeps `chain` (with its record's level), dropping the oldest entries to stay within
    /// bounds. A chain larger than the whole budget is not kept.
    pub fn insert(&mut self, key: K, chain: Chain, level: u32) {
        if chain.len() > self.max_ids || self.max_entries == 0 || self.chains.contains_key(&key) {
            return;
        }
        self.ids += chain.len();
        self.chains.insert(key, (chain, level));
        self.order.push_back(key);
        while self.ids > self.max_ids || self.chains.len() > self.max_entries {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((old, _)) = self.chains.remove(&oldest) {
                self.ids -= old.len();
            }
        }
    }

    /// Entries and ids held.
    #[cfg(test)]
    pub fn size(&self) -> (usize, usize) {
        (self.chains.len(), self.ids)
    }
}

/// The records' tree and the caches in front of it.
pub struct AuthChains {
    records: Arc<dyn Tree>,
    cache: Mutex<Fifo<ShortEventId>>,
    state_memo: Mutex<Fifo<StateHash>>,
}

impl AuthChains {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            records: db.tree("shorteventid_authchain")?,
            cache: Mutex::new(Fifo::new(CACHE_IDS, CACHE_ENTRIES)),
            state_memo: Mutex::new(Fifo::new(CACHE_IDS, STATE_MEMO_ENTRIES)),
        })
    }

    fn record(&self, event: ShortEventId) -> Result<Option<Record>> {
        match self.records.get(&event.to_be_bytes())? {
            None => Ok(None),
            Some(bytes) => Record::decode(&bytes).map(Some).ok_or_else(|| {
                Error::internal(format!("corrupt auth chain record of short event {event}"))
            }),
        }
    }

    /// Adds `event`'s record (from [`Rooms::record_for`]) to its commit batch.
    // Called by `prepare` (docs/room-core.md §5.4), which is being written.
    pub(super) fn write_record(&self, batch: &mut Batch, event: ShortEventId, record: Vec<u8>) {
        batch.insert(&*self.records, event.to_be_bytes().to_vec(), record);
    }

    fn cached(&self, event: ShortEventId) -> Option<(Chain, u32)> {
        self.cache.lock().expect("auth chain cache").get(&event)
    }

    pub(super) fn cached_state(&self, hash: StateHash) -> Option<Chain> {
        self.state_memo
            .lock()
            .expect("auth chain cache")
            .get(&hash)
            .map(|(chain, _)| chain)
    }

    pub(super) fn remember_state(&self, hash: StateHash, chain: Chain) {
        self.state_memo
            .lock()
            .expect("auth chain cache")
            .insert(hash, chain, 0);
    }
}

/// What one node of a lazy computation needs before its chain is known.
enum Need {
    /// Its record: the chain of its base.
    Record(Record),
    /// No record yet: the chains of its auth events.
    Direct(Vec<ShortEventId>),
}

/// The sorted union of `parts`, without duplicates.
fn union<'a>(parts: impl IntoIterator<Item = &'a [ShortEventId]>) -> Vec<ShortEventId> {
    let mut all: Vec<ShortEventId> = parts.into_iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn too_long() -> Error {
    Error::internal(format!("auth chain longer than {MAX_AUTH_CHAIN} events"))
}

/// The record of an event whose auth events are `direct`, with their chains and records'
/// levels, and its chain.
fn build_record(direct: &[ShortEventId], chains: &[(Chain, u32)]) -> Result<(Record, Chain)> {
    let full = union(
        chains
            .iter()
            .map(|(chain, _)| &chain[..])
            .chain(std::iter::once(direct)),
    );
    if full.len() > MAX_AUTH_CHAIN {
        return Err(too_long());
    }
    // The base: the auth event with the largest chain (usually the sender's membership or
    // the power levels), so that the diff is small.
    let best = chains
        .iter()
        .enumerate()
        .max_by_key(|(i, (chain, _))| (chain.len(), std::cmp::Reverse(*i)));
    let record = match best {
        Some((i, (base_chain, base_level))) if base_level + 1 < MAX_LEVEL => {
            let base = direct[i];
            let added: Vec<_> = full
                .iter()
                .copied()
                .filter(|id| *id != base && base_chain.binary_search(id).is_err())
                .collect();
            // A diff larger than half the chain is not worth it.
            (added.len() * 2 <= full.len()).then(|| Record {
                base,
                level: base_level + 1,
                direct: direct.to_vec(),
                added,
            })
        }
        _ => None,
    };
    let record = record.unwrap_or_else(|| Record {
        base: 0,
        level: 0,
        direct: direct.to_vec(),
        added: full.clone(),
    });
    Ok((record, full.into()))
}

/// The working set of one lazy computation: chains computed or loaded so far, bounded like
/// the cache (the oldest go first; they can be read back from their records).
struct Walk {
    known: Fifo<ShortEventId>,
    needs: HashMap<ShortEventId, Need>,
    /// Nodes whose inputs are being computed: meeting one again is a cycle.
    open: HashSet<ShortEventId>,
}

impl Rooms {
    /// The auth chain of a stored event (see the module doc), from the cache, its record, or
    /// computed now (and recorded). An auth event that is not stored is an error.
    pub(super) fn auth_chain_of(&self, event: ShortEventId) -> Result<Chain> {
        Ok(self.chain_and_level(event)?.0)
    }

    /// The auth events of a stored event, as short ids, from its record (computed now if it
    /// has none).
    pub(super) fn auth_events_short(&self, event: ShortEventId) -> Result<Vec<ShortEventId>> {
        if let Some(record) = self.auth_chains.record(event)? {
            return Ok(record.direct);
        }
        self.chain_and_level(event)?;
        self.auth_chains
            .record(event)?
            .map(|record| record.direct)
            .ok_or_else(|| Error::internal(format!("no auth chain record of short event {event}")))
    }

    /// The record of a new event whose auth events are `auth_events` (stored events), for
    /// its commit batch ([`AuthChains::write_record`]); `None` when one of them is not
    /// stored. The auth events' own records are computed now if they have none.
    // Called by `prepare` (docs/room-core.md §5.4), which is being written.
    pub(super) fn record_for(&self, auth_events: &[ShortEventId]) -> Result<Option<Vec<u8>>> {
        let mut chains = Vec::with_capacity(auth_events.len());
        for event in auth_events {
            if self.auth_chains.cached(*event).is_none()
                && self.auth_chains.record(*event)?.is_none()
                && self.pdu(&self.short.event_id(*event)?)?.is_none()
            {
                return Ok(None);
            }
            chains.push(self.chain_and_level(*event)?);
        }
        let (record, _) = build_record(auth_events, &chains)?;
        Ok(Some(record.encode()))
    }

    /// The union of the auth chains of a state set's events and the events themselves (what
    /// state resolution calls the set's full auth chain), memoised per state hash. `pending`
    /// is an event of the set that is not stored yet (its short id and auth events).
    pub(super) fn state_auth_chain(
        &self,
        hash: StateHash,
        pending: Option<(ShortEventId, &[ShortEventId])>,
    ) -> Result<Chain> {
        if let Some(chain) = self.auth_chains.cached_state(hash) {
            return Ok(chain);
        }
        let set = self.state.load(hash)?;
        let chain: Chain = self
            .auth_chain_union(set.values().copied(), pending, true)?
            .into();
        self.auth_chains.remember_state(hash, Arc::clone(&chain));
        Ok(chain)
    }

    /// The union of the auth chains of `events` (and the events themselves, with
    /// `include_events`), sorted; at most [`MAX_AUTH_CHAIN`] ids. `pending` is one of them
    /// that is not stored yet.
    pub(super) fn auth_chain_union(
        &self,
        events: impl IntoIterator<Item = ShortEventId>,
        pending: Option<(ShortEventId, &[ShortEventId])>,
        include_events: bool,
    ) -> Result<Vec<ShortEventId>> {
        let mut all: HashSet<ShortEventId> = HashSet::new();
        for event in events {
            if include_events {
                all.insert(event);
            }
            match pending {
                Some((short, direct)) if short == event => {
                    for auth in direct {
                        all.insert(*auth);
                        all.extend(self.auth_chain_of(*auth)?.iter().copied());
                    }
                }
                _ => all.extend(self.auth_chain_of(event)?.iter().copied()),
            }
            if all.len() > MAX_AUTH_CHAIN {
                return Err(too_long());
            }
        }
        let mut chain: Vec<_> = all.into_iter().collect();
        chain.sort_unstable();
        Ok(chain)
    }

    /// The union of the auth chains of `events` (stored events), as event ids, sorted by
    /// short id; an event of `events` is in it only when it is in another's chain. For the
    /// federation answers that carry auth chains (`send_join`, `/state`, `/state_ids`,
    /// `/event_auth`). An event that is not stored is an error.
    pub fn auth_chain_ids<'a>(
        &self,
        events: impl IntoIterator<Item = &'a ruma::EventId>,
    ) -> Result<Vec<ruma::OwnedEventId>> {
        let mut shorts = Vec::new();
        for id in events {
            shorts.push(
                self.short
                    .get_short_event_id(id)?
                    .ok_or_else(|| Error::internal(format!("event {id} is not stored")))?,
            );
        }
        self.auth_chain_union(shorts, None, false)?
            .into_iter()
            .map(|short| self.short.event_id(short))
            .collect()
    }

    /// The chain of `root` and its record's level: bottom up with an explicit stack (no
    /// recursion: chains can be thousands of events deep), writing a record for every event
    /// met without one.
    fn chain_and_level(&self, root: ShortEventId) -> Result<(Chain, u32)> {
        if let Some(found) = self.auth_chains.cached(root) {
            return Ok(found);
        }
        let mut walk = Walk {
            known: Fifo::new(WALK_IDS, usize::MAX),
            needs: HashMap::new(),
            open: HashSet::new(),
        };
        let mut stack = vec![root];
        let mut steps = 0;
        while let Some(&node) = stack.last() {
            steps += 1;
            if steps > MAX_WALK_STEPS {
                return Err(Error::internal("auth chain computation too long"));
            }
            if self.available(&mut walk, node).is_some() {
                stack.pop();
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = walk.needs.entry(node) {
                entry.insert(match self.auth_chains.record(node)? {
                    Some(record) => Need::Record(record),
                    None => Need::Direct(self.stored_auth_events(node)?),
                });
            }
            let inputs: Vec<ShortEventId> = match &walk.needs[&node] {
                Need::Record(record) if record.base == 0 => Vec::new(),
                Need::Record(record) => vec![record.base],
                Need::Direct(direct) => direct.clone(),
            };
            let mut chains = Vec::with_capacity(inputs.len());
            let mut missing = Vec::new();
            for input in &inputs {
                match self.available(&mut walk, *input) {
                    Some(found) => chains.push(found),
                    None => missing.push(*input),
                }
            }
            if !missing.is_empty() {
                for input in missing {
                    if walk.open.contains(&input) {
                        return Err(Error::internal(format!(
                            "auth events form a cycle at short event {input}"
                        )));
                    }
                    stack.push(input);
                }
                walk.open.insert(node);
                continue;
            }
            let (chain, level) = match walk.needs.remove(&node) {
                Some(Need::Record(record)) => {
                    let chain: Chain = match chains.first() {
                        Some((base_chain, _)) => {
                            union([&base_chain[..], &[record.base][..], &record.added[..]]).into()
                        }
                        None => record.added.into(),
                    };
                    if chain.len() > MAX_AUTH_CHAIN {
                        return Err(too_long());
                    }
                    (chain, record.level)
                }
                Some(Need::Direct(direct)) => {
                    let (record, chain) = build_record(&direct, &chains)?;
                    // A derived cache: a plain insert, idempotent.
                    self.auth_chains
                        .records
                        .insert(&node.to_be_bytes(), &record.encode())?;
                    (chain, record.level)
                }
                None => unreachable!("inserted above"),
            };
            walk.open.remove(&node);
            walk.known.insert(node, Arc::clone(&chain), level);
            self.auth_chains
                .cache
                .lock()
                .expect("auth chain cache")
                .insert(node, Arc::clone(&chain), level);
            stack.pop();
            if node == root {
                return Ok((chain, level));
            }
        }
        self.available(&mut walk, root)
            .ok_or_else(|| Error::internal("auth chain computation lost its result"))
    }

    /// A chain known to this walk or to the cache (then pinned in the walk).
    fn available(&self, walk: &mut Walk, event: ShortEventId) -> Option<(Chain, u32)> {
        if let Some(found) = walk.known.get(&event) {
            return Some(found);
        }
        let found = self.auth_chains.cached(event)?;
        walk.known.insert(event, Arc::clone(&found.0), found.1);
        Some(found)
    }

    /// The auth events of a stored event, read from its PDU. One that is not stored is an
    /// error: the event passed the auth rules, so its auth events were held.
    fn stored_auth_events(&self, event: ShortEventId) -> Result<Vec<ShortEventId>> {
        let event_id = self.short.event_id(event)?;
        let pdu = self
            .pdu(&event_id)?
            .ok_or_else(|| Error::internal(format!("auth event {event_id} is not stored")))?;
        pdu.auth_events
            .iter()
            .map(|id| {
                self.short
                    .get_short_event_id(id)?
                    .ok_or_else(|| Error::internal(format!("auth event {id} is not stored")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
