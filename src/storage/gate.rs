//! The write gate: what makes an export a point-in-time copy of every tree while the server
//! keeps writing, on any backend.
//!
//! Every write through a [`Db`](super::Db) holds the gate shared: [`Db::apply`](super::Db::apply)
//! for a whole batch, and the [`Tree`]s that [`Db::tree`](super::Db::tree) hands out for each
//! single `insert` or `remove`. An export holds it exclusively while it reads every tree, so
//! no write lands while it runs and no batch is seen half-applied. Writers never wait on each
//! other (a shared hold is an atomic increment); they wait only while an export runs.
//!
//! Every write also passes the disk reserve ([`Space::check`]) before it reaches the store,
//! and a write that fails for want of space enters the full condition ([`Space::watch`]).
//!
//! The gate guards `()`: a panic while holding it cannot leave anything inconsistent, so a
//! poisoned gate is simply taken.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{KvIter, StorageResult, Tree, space::Space};

#[derive(Clone)]
pub(super) struct Gate {
    lock: Arc<RwLock<()>>,
    space: Arc<Space>,
}

impl Gate {
    pub(super) fn new(space: Arc<Space>) -> Self {
        Self {
            lock: Arc::default(),
            space,
        }
    }

    /// The free space watcher every write passes.
    pub(super) fn space(&self) -> &Space {
        &self.space
    }

    /// Held by a write. Never take it twice on one thread (an export waiting in between
    /// would deadlock both).
    pub(super) fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Held by an export: waits for the writes in progress, and keeps new ones out.
    pub(super) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `tree`, with its writes behind this gate.
    pub(super) fn wrap(&self, tree: Arc<dyn Tree>) -> Arc<dyn Tree> {
        Arc::new(GatedTree {
            tree,
            gate: self.clone(),
        })
    }
}

struct GatedTree {
    tree: Arc<dyn Tree>,
    gate: Gate,
}

impl Tree for GatedTree {
    fn name(&self) -> &'static str {
        self.tree.name()
    }

    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.tree.get(key)
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        let _shared = self.gate.shared();
        self.gate.space.check()?;
        self.gate.space.watch(self.tree.insert(key, value))
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        let _shared = self.gate.shared();
        self.gate.space.check()?;
        self.gate.space.watch(self.tree.remove(key))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        self.tree.scan_prefix(prefix)
    }

    fn iter_from(&self, from: &[u8], backwards: bool) -> KvIter<'_> {
        self.tree.iter_from(from, backwards)
    }
}
