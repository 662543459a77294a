//! An in-memory backend for unit tests: one `BTreeMap` per tree under one lock, which makes
//! batches trivially atomic. Not durable, and not used by the binary.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{Arc, RwLock},
};

use super::{Batch, BatchOp, KeyValue, KvIter, StorageResult, Store, Tree};

type Trees = HashMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Default)]
struct Shared {
    next_id: std::sync::atomic::AtomicU64,
    trees: RwLock<Trees>,
}

#[derive(Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl Store for MemoryStore {
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        self.shared
            .trees
            .write()
            .expect("trees lock")
            .entry(name)
            .or_default();
        Ok(Arc::new(MemoryTree {
            name,
            shared: Arc::clone(&self.shared),
        }))
    }

    fn apply_batch(&self, batch: &Batch) -> StorageResult<()> {
        {
            let mut trees = self.shared.trees.write().expect("trees lock");
            for op in batch.ops() {
                match op {
                    BatchOp::Insert { tree, key, value } => {
                        trees
                            .entry(tree)
                            .or_default()
                            .insert(key.clone(), value.clone());
                    }
                    BatchOp::Remove { tree, key } => {
                        trees.entry(tree).or_default().remove(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> StorageResult<()> {
        Ok(())
    }

    fn next_id(&self) -> StorageResult<u64> {
        Ok(self
            .shared
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1)
    }

    fn tree_names(&self) -> StorageResult<Vec<String>> {
        let trees = self.shared.trees.read().expect("trees lock");
        Ok(trees.keys().map(|name| (*name).to_owned()).collect())
    }
}

struct MemoryTree {
    name: &'static str,
    shared: Arc<Shared>,
}

impl MemoryTree {
    /// Copies the selected entries out, so no lock is held while the caller iterates.
    fn collect(
        &self,
        select: impl FnOnce(&BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<KeyValue>,
    ) -> KvIter<'_> {
        let trees = self.shared.trees.read().expect("trees lock");
        let entries = trees.get(self.name).map(select).unwrap_or_default();
        Box::new(entries.into_iter().map(Ok))
    }
}

impl Tree for MemoryTree {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        let trees = self.shared.trees.read().expect("trees lock");
        Ok(trees.get(self.name).and_then(|tree| tree.get(key).cloned()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.shared
            .trees
            .write()
            .expect("trees lock")
            .entry(self.name)
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.shared
            .trees
            .write()
            .expect("trees lock")
            .entry(self.name)
            .or_default()
            .remove(key);
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        let prefix = prefix.to_vec();
        self.collect(move |tree| {
            tree.range::<Vec<u8>, _>((Bound::Included(&prefix), Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(&prefix))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
    }

    fn iter_from(&self, from: &[u8], backwards: bool) -> KvIter<'_> {
        let from = from.to_vec();
        self.collect(move |tree| {
            let copy = |(key, value): (&Vec<u8>, &Vec<u8>)| (key.clone(), value.clone());
            if backwards {
                tree.range::<Vec<u8>, _>(..=&from).rev().map(copy).collect()
            } else {
                tree.range::<Vec<u8>, _>(&from..).map(copy).collect()
            }
        })
    }
}

/// Which `get`s a [`FailingStore`] fails (§9 of `docs/room-core.md`: a storage error must
/// never be read as "missing").
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    /// The `after`-th counted `get` from arming on fails (1: the next one).
    pub after: u64,
    /// Count only `get`s on this tree (`None`: on any tree).
    pub tree: Option<&'static str>,
    /// Every counted `get` after that one fails too, until [`FailSwitch::disarm`].
    pub persistent: bool,
}

/// Arms and observes a [`FailingStore`]'s failures. Cheap to clone.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct FailSwitch(Arc<std::sync::Mutex<SwitchState>>);

#[cfg(test)]
#[derive(Default)]
struct SwitchState {
    armed: Option<Failure>,
    /// Counted `get`s since arming.
    seen: u64,
    /// `get`s failed since the switch was made.
    failed: u64,
}

#[cfg(test)]
impl FailSwitch {
    pub fn arm(&self, failure: Failure) {
        let mut state = self.0.lock().expect("fail switch");
        state.armed = Some(failure);
        state.seen = 0;
    }

    pub fn disarm(&self) {
        self.0.lock().expect("fail switch").armed = None;
    }

    /// How many `get`s have failed.
    pub fn failed(&self) -> u64 {
        self.0.lock().expect("fail switch").failed
    }

    fn check(&self, tree: &'static str) -> StorageResult<()> {
        let mut state = self.0.lock().expect("fail switch");
        let Some(failure) = state.armed else {
            return Ok(());
        };
        if failure.tree.is_some_and(|only| only != tree) {
            return Ok(());
        }
        state.seen += 1;
        let seen = state.seen;
        if seen == failure.after || (failure.persistent && seen > failure.after) {
            state.failed += 1;
            return Err(super::StorageError::Backend(format!(
                "injected failure of get #{seen} (tree {tree})"
            )));
        }
        Ok(())
    }
}

/// The in-memory store with `get`s that fail on demand ([`FailSwitch`]), for tests that a
/// storage error surfaces as an error. Get one with [`super::Db::failing`].
#[cfg(test)]
pub struct FailingStore {
    inner: MemoryStore,
    switch: FailSwitch,
}

#[cfg(test)]
impl FailingStore {
    pub fn new(switch: FailSwitch) -> Self {
        Self {
            inner: MemoryStore::default(),
            switch,
        }
    }
}

#[cfg(test)]
impl Store for FailingStore {
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        Ok(Arc::new(FailingTree {
            inner: self.inner.open_tree(name)?,
            switch: self.switch.clone(),
        }))
    }

    fn apply_batch(&self, batch: &Batch) -> StorageResult<()> {
        self.inner.apply_batch(batch)
    }

    fn flush(&self) -> StorageResult<()> {
        self.inner.flush()
    }

    fn next_id(&self) -> StorageResult<u64> {
        self.inner.next_id()
    }

    fn tree_names(&self) -> StorageResult<Vec<String>> {
        self.inner.tree_names()
    }
}

#[cfg(test)]
struct FailingTree {
    inner: Arc<dyn Tree>,
    switch: FailSwitch,
}

#[cfg(test)]
impl Tree for FailingTree {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.switch.check(self.inner.name())?;
        self.inner.get(key)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.inner.insert(key, value)
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.inner.remove(key)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        self.inner.scan_prefix(prefix)
    }

    fn iter_from(&self, from: &[u8], backwards: bool) -> KvIter<'_> {
        self.inner.iter_from(from, backwards)
    }
}
