//! Room state, stored compactly.
//!
//! A *state set* maps each short state key to the short event id that holds it. Every
//! distinct state set is stored once, under a *state hash* (a number), as a diff against a
//! parent set: the pairs added and the pairs removed. After [`MAX_CHAIN`] diffs in a row a
//! full snapshot is written instead, so loading any state walks a short chain. Events that
//! change no state share their predecessor's set, so only state events cost space.
//!
//! Tree `statehash_statediff`: state hash (u64 BE) → `parent (u64, 0 = none)`,
//! `chain length (u32)`, `added count (u32)`, then the added and the removed pairs, each
//! `short state key (u64) short event id (u64)`, all big-endian.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use super::short::{ShortEventId, ShortStateKey, u64_from};
use crate::{
    Error, Result,
    storage::{Batch, Db, Tree},
};

/// A full room state: short state key → short event id, ordered.
pub type StateSet = Arc<BTreeMap<ShortStateKey, ShortEventId>>;
pub type StateHash = u64;

/// Diffs in a row before a full snapshot is written.
const MAX_CHAIN: u32 = 24;
/// Loaded state sets kept in memory (by state hash). Bounded: FIFO eviction.
const CACHE_ENTRIES: usize = 256;

struct Diff {
    parent: Option<StateHash>,
    chain: u32,
    added: Vec<(ShortStateKey, ShortEventId)>,
    removed: Vec<(ShortStateKey, ShortEventId)>,
}

impl Diff {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 16 * (self.added.len() + self.removed.len()));
        out.extend_from_slice(&self.parent.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.chain.to_be_bytes());
        out.extend_from_slice(&(self.added.len() as u32).to_be_bytes());
        for (key, event) in self.added.iter().chain(&self.removed) {
            out.extend_from_slice(&key.to_be_bytes());
            out.extend_from_slice(&event.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let parent = u64_from(bytes.get(0..8)?)?;
        let chain = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
        let added_len = u32::from_be_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
        let pairs = bytes.get(16..)?;
        if pairs.len() % 16 != 0 || pairs.len() / 16 < added_len {
            return None;
        }
        let mut all = pairs.chunks_exact(16).map(|pair| {
            (
                u64_from(&pair[..8]).unwrap_or(0),
                u64_from(&pair[8..]).unwrap_or(0),
            )
        });
        let added = all.by_ref().take(added_len).collect();
        let removed = all.collect();
        Some(Self {
            parent: (parent != 0).then_some(parent),
            chain,
            added,
            removed,
        })
    }
}

pub struct StateStore {
    db: Db,
    diffs: Arc<dyn Tree>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    sets: HashMap<StateHash, (StateSet, u32)>,
    order: VecDeque<StateHash>,
}

impl Cache {
    fn insert(&mut self, hash: StateHash, set: StateSet, chain: u32) {
        if self.sets.insert(hash, (set, chain)).is_none() {
            self.order.push_back(hash);
            while self.order.len() > CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.sets.remove(&old);
                }
            }
        }
    }
}

impl StateStore {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            diffs: db.tree("statehash_statediff")?,
            cache: Mutex::default(),
        })
    }

    /// The full state set stored under `hash`.
    pub fn load(&self, hash: StateHash) -> Result<StateSet> {
        Ok(self.load_with_chain(hash)?.0)
    }

    fn load_with_chain(&self, hash: StateHash) -> Result<(StateSet, u32)> {
        if let Some(found) = self.cache.lock().expect("state cache").sets.get(&hash) {
            return Ok(found.clone());
        }
        // Walk up to the nearest snapshot (or cached set), then apply the diffs downwards.
        let mut diffs = Vec::new();
        let mut cursor = Some(hash);
        let mut base: BTreeMap<ShortStateKey, ShortEventId> = BTreeMap::new();
        while let Some(current) = cursor {
            if let Some((set, _)) = self.cache.lock().expect("state cache").sets.get(&current) {
                base = (**set).clone();
                break;
            }
            let bytes = self
                .diffs
                .get(&current.to_be_bytes())?
                .ok_or_else(|| Error::internal(format!("missing state hash {current}")))?;
            let diff = Diff::decode(&bytes)
                .ok_or_else(|| Error::internal(format!("corrupt state diff {current}")))?;
            cursor = diff.parent;
            diffs.push(diff);
        }
        let chain = diffs.first().map_or(0, |diff| diff.chain);
        for diff in diffs.iter().rev() {
            for (key, _) in &diff.removed {
                base.remove(key);
            }
            base.extend(diff.added.iter().copied());
        }
        let set = Arc::new(base);
        self.cache
            .lock()
            .expect("state cache")
            .insert(hash, Arc::clone(&set), chain);
        Ok((set, chain))
    }

    /// Stores `state` as a new state hash (a diff against `parent` where that is cheap),
    /// adding the write to `batch`.
    pub fn save(
        &self,
        batch: &mut Batch,
        parent: Option<StateHash>,
        state: BTreeMap<ShortStateKey, ShortEventId>,
    ) -> Result<StateHash> {
        let hash = self.db.next_id()?;
        let diff = match parent {
            Some(parent_hash) => {
                let (parent_set, chain) = self.load_with_chain(parent_hash)?;
                let added: Vec<_> = state
                    .iter()
                    .filter(|(key, event)| parent_set.get(key) != Some(event))
                    .map(|(k, e)| (*k, *e))
                    .collect();
                let removed: Vec<_> = parent_set
                    .iter()
                    .filter(|(key, event)| state.get(key) != Some(event))
                    .map(|(k, e)| (*k, *e))
                    .collect();
                if chain + 1 >= MAX_CHAIN || added.len() + removed.len() > state.len() / 2 + 8 {
                    None
                } else {
                    Some(Diff {
                        parent: Some(parent_hash),
                        chain: chain + 1,
                        added,
                        removed,
                    })
                }
            }
            None => None,
        };
        let diff = diff.unwrap_or_else(|| Diff {
            parent: None,
            chain: 0,
            added: state.iter().map(|(k, e)| (*k, *e)).collect(),
            removed: Vec::new(),
        });
        batch.insert(&*self.diffs, hash.to_be_bytes().to_vec(), diff.encode());
        self.cache
            .lock()
            .expect("state cache")
            .insert(hash, Arc::new(state), diff.chain);
        Ok(hash)
    }

    /// The pairs of `to` that differ from `from` (added or changed), for sync deltas.
    pub fn changed(
        &self,
        from: Option<StateHash>,
        to: StateHash,
    ) -> Result<Vec<(ShortStateKey, ShortEventId)>> {
        let to_set = self.load(to)?;
        let Some(from) = from else {
            return Ok(to_set.iter().map(|(k, e)| (*k, *e)).collect());
        };
        if from == to {
            return Ok(Vec::new());
        }
        let from_set = self.load(from)?;
        Ok(to_set
            .iter()
            .filter(|(k, e)| from_set.get(k) != Some(e))
            .map(|(k, e)| (*k, *e))
            .collect())
    }

    #[cfg(test)]
    fn forget_cache(&self) {
        *self.cache.lock().unwrap() = Cache::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn diffs_round_trip_through_storage() {
        let db = Db::memory();
        let store = StateStore::new(&db).unwrap();
        let mut batch = Batch::new();
        let first = store
            .save(&mut batch, None, set(&[(1, 10), (2, 20)]))
            .unwrap();
        let second = store
            .save(&mut batch, Some(first), set(&[(1, 10), (2, 21), (3, 30)]))
            .unwrap();
        let third = store
            .save(&mut batch, Some(second), set(&[(2, 21), (3, 30)]))
            .unwrap();
        db.apply(&batch).unwrap();
        store.forget_cache();
        assert_eq!(*store.load(first).unwrap(), set(&[(1, 10), (2, 20)]));
        assert_eq!(
            *store.load(second).unwrap(),
            set(&[(1, 10), (2, 21), (3, 30)])
        );
        assert_eq!(*store.load(third).unwrap(), set(&[(2, 21), (3, 30)]));
        assert_eq!(
            store.changed(Some(first), second).unwrap(),
            vec![(2, 21), (3, 30)]
        );
        assert!(store.changed(Some(third), third).unwrap().is_empty());
    }

    #[test]
    fn long_chains_get_snapshots_and_stay_small() {
        let db = Db::memory();
        let store = StateStore::new(&db).unwrap();
        let mut batch = Batch::new();
        let mut state = BTreeMap::new();
        let mut hash = None;
        for n in 0..200u64 {
            state.insert(n, n + 1000);
            hash = Some(store.save(&mut batch, hash, state.clone()).unwrap());
        }
        db.apply(&batch).unwrap();
        store.forget_cache();
        assert_eq!(*store.load(hash.unwrap()).unwrap(), state);
        // Most writes are one-pair diffs: far less than 200 full copies of up to 200 pairs.
        let stored: usize = batch.ops().len();
        assert_eq!(stored, 200);
        let bytes: usize = batch
            .ops()
            .iter()
            .map(|op| match op {
                crate::storage::BatchOp::Insert { value, .. } => value.len(),
                crate::storage::BatchOp::Remove { .. } => 0,
            })
            .sum();
        assert!(
            bytes < 200 * 200 * 16 / 5,
            "state storage is not compact: {bytes} bytes"
        );
    }

    #[test]
    fn corrupt_diff_is_an_error_not_a_panic() {
        assert!(Diff::decode(&[1, 2, 3]).is_none());
        let mut bad = Diff {
            parent: None,
            chain: 0,
            added: vec![(1, 2)],
            removed: vec![],
        }
        .encode();
        bad.truncate(20);
        assert!(Diff::decode(&bad).is_none());
    }
}
