//! Storage: named trees of bytes behind a small trait, with sled as the real backend.
//!
//! Nothing outside this module imports `sled`. Services see [`Db`], which hands out
//! [`Tree`]s and typed [`Table`]s, applies atomic [`Batch`]es across trees, and makes
//! writes durable with [`Db::persist`], a group commit: concurrent callers share one
//! flush of the log, so a burst of writes costs one `fsync`, not one each.
//!
//! **Invariant:** storage knows only bytes and serde. It has no Matrix error codes and no
//! knowledge of HTTP or services.

pub mod memory;
pub mod sled;
#[cfg(test)]
mod tests;

use std::{marker::PhantomData, path::Path, sync::Arc};

use futures_util::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Mutex;

/// What can go wrong below the services. Every variant is a server-side failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process holds the database (sled's file lock).
    #[error(
        "the database at {0} is in use by another process (is a conduit server already running?)"
    )]
    Locked(String),
    /// The database was written by a newer version of this program.
    #[error("the database has schema version {found}, but this build only knows up to {known}")]
    TooNew { found: u64, known: u64 },
    /// The directory holds a database this program did not create (Conduit's own, say).
    #[error(
        "the database was not created by this server (no schema version, but data present); \
         Conduit and Synapse databases cannot be opened: point database_path at a new directory"
    )]
    Foreign,
    /// A stored value could not be decoded.
    #[error("corrupt value in tree {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    /// Any failure of the backend itself (I/O, corruption detected by sled, …).
    #[error("storage backend error: {0}")]
    Backend(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A key/value pair as owned bytes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A fallible iterator over key/value pairs, in key order.
pub type KvIter<'a> = Box<dyn Iterator<Item = StorageResult<KeyValue>> + Send + 'a>;

/// A storage backend: a set of named trees plus cross-tree atomicity and durability.
pub trait Store: Send + Sync + 'static {
    /// Opens (creating if needed) the tree called `name`.
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>>;
    /// Applies all operations of `batch` atomically: after a crash either all or none are seen.
    fn apply_batch(&self, batch: &Batch) -> StorageResult<()>;
    /// Blocks until everything written so far is on stable storage.
    fn flush(&self) -> StorageResult<()>;
    /// A number larger than any this store returned before, even across crashes (it may
    /// skip values). Orders timelines and makes sync tokens.
    fn next_id(&self) -> StorageResult<u64>;
}

/// One ordered map of byte keys to byte values.
pub trait Tree: Send + Sync {
    /// The name this tree was opened with.
    fn name(&self) -> &'static str;
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;
    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()>;
    fn remove(&self, key: &[u8]) -> StorageResult<()>;
    /// All entries whose key starts with `prefix`, ascending.
    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_>;
    /// Entries from `from` (inclusive) upwards, or from `from` (inclusive) downwards when
    /// `backwards` is set.
    fn iter_from(&self, from: &[u8], backwards: bool) -> KvIter<'_>;
    /// A future that completes the next time a key starting with `prefix` is written or
    /// removed. Long-polls (`/sync`) wait on this instead of polling.
    fn watch_prefix(&self, prefix: &[u8]) -> BoxFuture<'static, ()>;
}

/// One operation of a [`Batch`].
#[derive(Debug, Clone)]
pub enum BatchOp {
    Insert {
        tree: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Remove {
        tree: &'static str,
        key: Vec<u8>,
    },
}

/// Writes to one or more trees that must land together.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, tree: &dyn Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Insert {
            tree: tree.name(),
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn remove(&mut self, tree: &dyn Tree, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Remove {
            tree: tree.name(),
            key: key.into(),
        });
    }

    /// Serialises `value` as JSON into `table` under `key`.
    pub fn insert_json<V: Serialize + DeserializeOwned>(
        &mut self,
        table: &Table<V>,
        key: impl Into<Vec<u8>>,
        value: &V,
    ) {
        // Serialising our own plain structs into a Vec cannot fail.
        let bytes = serde_json::to_vec(value).expect("JSON serialisation of a stored value");
        self.insert(table.tree(), key, bytes);
    }

    /// Moves every operation of `other` to the end of this batch.
    pub fn append(&mut self, mut other: Batch) {
        self.ops.append(&mut other.ops);
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A tree whose values are JSON-encoded `V`s.
pub struct Table<V> {
    tree: Arc<dyn Tree>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        Self {
            tree: Arc::clone(&self.tree),
            _value: PhantomData,
        }
    }
}

impl<V: Serialize + DeserializeOwned> Table<V> {
    pub fn new(tree: Arc<dyn Tree>) -> Self {
        Self {
            tree,
            _value: PhantomData,
        }
    }

    pub fn tree(&self) -> &dyn Tree {
        &*self.tree
    }

    pub fn get(&self, key: &[u8]) -> StorageResult<Option<V>> {
        self.tree
            .get(key)?
            .map(|bytes| self.decode(&bytes))
            .transpose()
    }

    pub fn insert(&self, key: &[u8], value: &V) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).expect("JSON serialisation of a stored value");
        self.tree.insert(key, &bytes)
    }

    pub fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.tree.remove(key)
    }

    /// All decoded entries under `prefix`, ascending by key.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> impl Iterator<Item = StorageResult<(Vec<u8>, V)>> + 'a {
        self.tree
            .scan_prefix(prefix)
            .map(move |entry| entry.and_then(|(key, bytes)| Ok((key, self.decode(&bytes)?))))
    }

    fn decode(&self, bytes: &[u8]) -> StorageResult<V> {
        serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
            tree: self.tree.name(),
            detail: e.to_string(),
        })
    }
}

/// The schema version this build writes. Bump it together with a step in [`Db::migrate`].
pub const SCHEMA_VERSION: u64 = 1;
const GLOBAL: &str = "global";
const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// The database handle the services use. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    flush: Arc<GroupFlush>,
}

impl Db {
    /// Opens (or creates) the sled database in `path` and runs migrations.
    pub fn open_sled(path: &Path, cache_capacity_bytes: u64) -> StorageResult<Self> {
        Self::with_store(Arc::new(sled::SledStore::open(path, cache_capacity_bytes)?))
    }

    /// A fresh in-memory database, for unit tests.
    pub fn memory() -> Self {
        Self::with_store(Arc::new(memory::MemoryStore::default()))
            .expect("migrating an empty in-memory store cannot fail")
    }

    fn with_store(store: Arc<dyn Store>) -> StorageResult<Self> {
        let db = Self {
            store,
            flush: Arc::new(GroupFlush::default()),
        };
        db.migrate()?;
        Ok(db)
    }

    pub fn tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        self.store.open_tree(name)
    }

    pub fn table<V: Serialize + DeserializeOwned>(
        &self,
        name: &'static str,
    ) -> StorageResult<Table<V>> {
        Ok(Table::new(self.tree(name)?))
    }

    /// Applies `batch` atomically (not yet durably: see [`Db::persist`]).
    pub fn apply(&self, batch: &Batch) -> StorageResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.store.apply_batch(batch)
    }

    /// Makes every write that happened before this call durable. Call it before answering
    /// a request that wrote: a 200 must survive `kill -9`.
    ///
    /// Group commit: whoever holds the lock flushes everything written so far; callers that
    /// queued behind it find their writes already covered and return without flushing again.
    pub async fn persist(&self) -> StorageResult<()> {
        let seen = self.flush.started.load(std::sync::atomic::Ordering::SeqCst);
        let _guard = self.flush.lock.lock().await;
        // A flush that *started* after we read `seen` began after our writes, so covers them.
        if self
            .flush
            .completed
            .load(std::sync::atomic::Ordering::SeqCst)
            > seen
        {
            return Ok(());
        }
        let epoch = self
            .flush
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StorageError::Backend(format!("flush task failed: {e}")))??;
        self.flush
            .completed
            .store(epoch, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// A new, strictly increasing number (see [`Store::next_id`]).
    pub fn next_id(&self) -> StorageResult<u64> {
        self.store.next_id()
    }

    /// Flushes synchronously; for shutdown and the command line.
    pub fn flush_blocking(&self) -> StorageResult<()> {
        self.store.flush()
    }

    /// Checks the schema version and upgrades older layouts step by step.
    fn migrate(&self) -> StorageResult<()> {
        let global = self.tree(GLOBAL)?;
        let found = match global.get(SCHEMA_VERSION_KEY)? {
            None => 0,
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                StorageError::Corrupt {
                    tree: GLOBAL,
                    detail: "schema_version is not 8 bytes".into(),
                }
            })?),
        };
        if found == 0 && global.iter_from(b"", false).next().transpose()?.is_some() {
            return Err(StorageError::Foreign);
        }
        if found > SCHEMA_VERSION {
            return Err(StorageError::TooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        // Version 0 is a new, empty database; version 1 is the first layout. Later versions
        // add their conversion steps here, each ending by writing its version number.
        if found < SCHEMA_VERSION {
            global.insert(SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes())?;
            self.store.flush()?;
        }
        Ok(())
    }
}

/// Bookkeeping for [`Db::persist`]'s group commit.
#[derive(Default)]
struct GroupFlush {
    lock: Mutex<()>,
    /// Number of flushes started.
    started: std::sync::atomic::AtomicU64,
    /// The number of the last flush that finished.
    completed: std::sync::atomic::AtomicU64,
}
