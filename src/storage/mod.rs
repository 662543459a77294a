//! Storage: named trees of bytes behind a small trait, with two real backends: fjall (the
//! default for new databases) and sled (selectable, and kept for existing databases).
//!
//! Nothing outside this module imports `fjall` or `sled`. Services see [`Db`], which hands out
//! [`Tree`]s and typed [`Table`]s, applies atomic [`Batch`]es across trees, and makes
//! writes durable with [`Db::persist`], a group commit: concurrent callers share one
//! flush of the log, so a burst of writes costs one `fsync`, not one each.
//!
//! **Invariant:** storage knows only bytes and serde. It has no Matrix error codes and no
//! knowledge of HTTP or services.

pub mod dump;
pub mod export;
pub mod fjall;
mod gate;
pub mod memory;
pub mod redb;
pub mod sled;
pub mod space;
#[cfg(test)]
mod tests;

use std::{
    marker::PhantomData,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Mutex;

/// What can go wrong below the services. Every variant is a server-side failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process holds the database (the backend's file lock).
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
    /// The database has an older schema and this build was given no step to upgrade it.
    #[error("the database has schema version {found}, and this build has no step to version {to}")]
    NoMigration { found: u64, to: u64 },
    /// The directory holds a database of another backend than the configured one.
    #[error(
        "the database directory holds a {found} database, but database_backend is \"{configured}\": \
         remove database_backend to keep using it, or move the data with `conduit export` and \
         `conduit import`"
    )]
    OtherBackend {
        found: &'static str,
        configured: &'static str,
    },
    /// A dump can only be loaded into a database that holds nothing yet.
    #[error("cannot load a dump into a database that already holds data (tree {0})")]
    NotEmpty(String),
    /// An export file that cannot be read back (see [`export`]), or one that cannot be written.
    #[error("export: {0}")]
    Export(String),
    /// The disk holding the database is full, or fuller than the reserve allows
    /// (`min_free_disk_mb`, see [`space`]): the write was refused before it reached the
    /// store, or the store failed to write for want of space.
    #[error("no space left for the database")]
    NoSpace,
    /// An import into this database started and did not finish (see [`export`]).
    #[error(
        "an import into this database did not finish, so it holds only part of the data: \
         empty the directory and import again"
    )]
    ImportIncomplete,
}

impl StorageError {
    /// A backend's error: [`StorageError::NoSpace`] if it failed for want of space (an
    /// `ENOSPC` anywhere below it), else [`StorageError::Backend`].
    pub fn backend(error: &(dyn std::error::Error + 'static)) -> Self {
        let text = error.to_string();
        // Some backends keep the I/O error only in their message.
        let enospc = format!("(os error {})", libc::ENOSPC);
        if space::is_no_space(error) || text.contains(&enospc) {
            Self::NoSpace
        } else {
            Self::Backend(text)
        }
    }
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
    /// skip values). Orders timelines and makes sync tokens. Read it through [`Db::next_id`],
    /// which adds the database's id base (see [`Db::advance_ids`]).
    fn next_id(&self) -> StorageResult<u64>;
    /// The names of every tree that exists, in no particular order (for dumps).
    fn tree_names(&self) -> StorageResult<Vec<String>>;
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

/// The schema version this build writes. Bump it together with a [`Migration`] to it.
///
/// - 1: the first layout.
/// - 2: the room core stores events it did not make (outliers, verdicts, backfill
///   positions): new trees and longer keys for new kinds of entries only, nothing
///   rewritten; its step checks the timeline index (`service::migrations`).
/// - 3: forward extremities as one value per room (`roomid_extremities`), moved from
///   `roomid_extremity` by its step.
pub const SCHEMA_VERSION: u64 = 3;
const GLOBAL: &str = "global";
const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
/// `global` key of the id base: 8 bytes big-endian, added to every [`Store::next_id`].
/// Absent (0) unless a dump was loaded.
const ID_BASE_KEY: &[u8] = b"id_base";

/// One step of [`Db::migrate`]: upgrades a database of schema version `to - 1` to `to`.
/// Steps are defined by the services (storage knows no Matrix; `service::migrations::STEPS`)
/// and passed to [`Db::open_sled`]. A step must be idempotent: if the process stops during
/// it, the version is not written and the step runs again at the next start.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The version this step produces.
    pub to: u64,
    /// What it is for, for the log.
    pub name: &'static str,
    pub run: fn(&Db) -> StorageResult<()>,
}

/// The embedded stores a database can live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// fjall, in `database_path/fjall/`: the default for new databases (issue 13 chose it
    /// by measurement, `docs/benchmarks.md`).
    Fjall,
    /// sled, in `database_path` itself: what every database before fjall was.
    Sled,
    /// redb, in `database_path/redb/data.redb`: the other candidate measured for issue 13.
    Redb,
}

impl Backend {
    /// What a new database is created with when the configuration names no backend.
    pub const DEFAULT: Backend = Backend::Fjall;

    /// The backend called `name` in the configuration (`database_backend`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "fjall" => Some(Self::Fjall),
            "sled" => Some(Self::Sled),
            "redb" => Some(Self::Redb),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fjall => "fjall",
            Self::Sled => "sled",
            Self::Redb => "redb",
        }
    }

    /// The backend whose database is in `path`, if any.
    pub fn found_in(path: &Path) -> Option<Self> {
        if path.join(fjall::DIRECTORY).is_dir() {
            Some(Self::Fjall)
        } else if path.join(redb::DIRECTORY).is_dir() {
            Some(Self::Redb)
        } else if path.join("conf").is_file() && path.join("db").is_file() {
            Some(Self::Sled)
        } else {
            None
        }
    }
}

/// Files that mark another server's database (Conduit on SQLite or RocksDB): a new database
/// is never created beside them.
const FOREIGN_MARKERS: &[&str] = &["conduit.db", "CURRENT"];

/// The database handle the services use. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    flush: Arc<GroupFlush>,
    /// Added to every id of the store (see [`Db::advance_ids`]); only ever grows.
    id_base: Arc<AtomicU64>,
    /// Writes hold it shared, an export exclusively, and pass the disk reserve: see [`gate`].
    gate: gate::Gate,
}

impl Db {
    /// Opens the database in `path` and upgrades it with `steps`: whichever backend's
    /// database is there, or a new one of `configured` (default [`Backend::DEFAULT`]). A
    /// database of another backend than a configured one is refused, not ignored.
    pub fn open(
        path: &Path,
        configured: Option<Backend>,
        cache_capacity_bytes: u64,
        steps: &[Migration],
    ) -> StorageResult<Self> {
        let backend = match (Backend::found_in(path), configured) {
            (Some(found), Some(configured)) if found != configured => {
                return Err(StorageError::OtherBackend {
                    found: found.name(),
                    configured: configured.name(),
                });
            }
            (Some(found), _) => found,
            (None, configured) => {
                if FOREIGN_MARKERS.iter().any(|file| path.join(file).exists()) {
                    return Err(StorageError::Foreign);
                }
                configured.unwrap_or(Backend::DEFAULT)
            }
        };
        match backend {
            Backend::Fjall => Self::open_fjall(path, cache_capacity_bytes, steps),
            Backend::Sled => Self::open_sled(path, cache_capacity_bytes, steps),
            Backend::Redb => Self::open_redb(path, cache_capacity_bytes, steps),
        }
    }

    /// Opens (or creates) the fjall database in `path/fjall` and upgrades it with `steps`.
    pub fn open_fjall(
        path: &Path,
        cache_capacity_bytes: u64,
        steps: &[Migration],
    ) -> StorageResult<Self> {
        Self::with_store(
            Arc::new(fjall::FjallStore::open(path, cache_capacity_bytes)?),
            space::Space::new(path),
            steps,
            SCHEMA_VERSION,
        )
    }

    /// Opens (or creates) the sled database in `path` and upgrades it with `steps`.
    pub fn open_sled(
        path: &Path,
        cache_capacity_bytes: u64,
        steps: &[Migration],
    ) -> StorageResult<Self> {
        Self::with_store(
            Arc::new(sled::SledStore::open(path, cache_capacity_bytes)?),
            space::Space::new(path),
            steps,
            SCHEMA_VERSION,
        )
    }

    /// Opens (or creates) the redb database in `path/redb/` and upgrades it with `steps`.
    pub fn open_redb(
        path: &Path,
        cache_capacity_bytes: u64,
        steps: &[Migration],
    ) -> StorageResult<Self> {
        Self::with_store(
            Arc::new(redb::RedbStore::open(path, cache_capacity_bytes)?),
            space::Space::new(path),
            steps,
            SCHEMA_VERSION,
        )
    }

    /// A fresh in-memory database, for unit tests.
    pub fn memory() -> Self {
        Self::with_store(
            Arc::new(memory::MemoryStore::default()),
            space::Space::unlimited(),
            &[],
            SCHEMA_VERSION,
        )
        .expect("migrating an empty in-memory store cannot fail")
    }

    /// A fresh in-memory database whose `get`s fail when the returned switch says so (see
    /// [`memory::FailSwitch`]), for tests that a storage error is an error, never "missing".
    #[cfg(test)]
    pub fn failing() -> (Self, memory::FailSwitch) {
        let switch = memory::FailSwitch::default();
        let db = Self::with_store(
            Arc::new(memory::FailingStore::new(switch.clone())),
            space::Space::unlimited(),
            &[],
            SCHEMA_VERSION,
        )
        .expect("migrating an empty in-memory store cannot fail");
        (db, switch)
    }

    fn with_store(
        store: Arc<dyn Store>,
        space: space::Space,
        steps: &[Migration],
        latest: u64,
    ) -> StorageResult<Self> {
        let db = Self {
            store,
            flush: Arc::new(GroupFlush::default()),
            id_base: Arc::new(AtomicU64::new(0)),
            gate: gate::Gate::new(Arc::new(space)),
        };
        let global = db.tree(GLOBAL)?;
        db.id_base.store(
            read_u64(&*global, ID_BASE_KEY)?.unwrap_or(0),
            Ordering::SeqCst,
        );
        db.migrate(steps, latest)?;
        Ok(db)
    }

    pub fn tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        Ok(self.gate.wrap(self.store.open_tree(name)?))
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
        let _shared = self.gate.shared();
        self.gate.space().check()?;
        self.gate.space().watch(self.store.apply_batch(batch))
    }

    /// Refuses writes while less than `bytes` are free on the disk holding the database
    /// (`min_free_disk_mb`; 0, the default of a new handle, refuses only after a write
    /// failed for want of space). See [`space`].
    pub fn set_min_free_disk(&self, bytes: u64) {
        self.gate.space().set_reserve(bytes);
    }

    /// `Err(NoSpace)` while the disk is under the reserve: for files written beside the
    /// database (media), before they are written. See [`space`].
    pub fn check_free_space(&self) -> StorageResult<()> {
        self.gate.space().check()
    }

    /// A file beside the database could not be written for want of space: the same full
    /// condition as a failed write of the store (logged once; writes refused until room
    /// returns).
    pub fn out_of_space(&self) {
        self.gate.space().out_of_space();
    }

    /// Whether writes are refused because the disk is full (see [`space`]).
    pub fn disk_full(&self) -> bool {
        self.gate.space().is_full()
    }

    /// Makes every write that happened before this call durable. Call it before answering
    /// a request that wrote: a 200 must survive `kill -9`.
    ///
    /// Group commit: whoever holds the lock flushes everything written so far; callers that
    /// queued behind it find their writes already covered and return without flushing again.
    ///
    /// Under load the leader first lingers a moment ([`LINGER`]) so that writes arriving
    /// meanwhile share its flush: every flush costs at least one 4 KiB page of the log
    /// written again, which on an SD card is most of what a small write costs. "Under
    /// load" means another caller came while the last flush ran; a lone writer (one
    /// person chatting) never waits.
    pub async fn persist(&self) -> StorageResult<()> {
        let seen = self.flush.started.load(Ordering::SeqCst);
        if seen > self.flush.completed.load(Ordering::SeqCst) {
            self.flush.contended.store(true, Ordering::SeqCst);
        }
        let _guard = self.flush.lock.lock().await;
        // A flush that *started* after we read `seen` began after our writes, so covers them.
        if self.flush.completed.load(Ordering::SeqCst) > seen {
            return Ok(());
        }
        if self.flush.contended.swap(false, Ordering::SeqCst) {
            tokio::time::sleep(LINGER).await;
        }
        let epoch = self.flush.started.fetch_add(1, Ordering::SeqCst) + 1;
        let store = Arc::clone(&self.store);
        let flushed = tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StorageError::Backend(format!("flush task failed: {e}")))?;
        self.gate.space().watch(flushed)?;
        self.gate.space().flushed();
        self.flush.completed.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    /// A new, strictly increasing number: the store's [`Store::next_id`] plus the id base.
    pub fn next_id(&self) -> StorageResult<u64> {
        let id = self.gate.space().watch(self.store.next_id())?;
        id.checked_add(self.id_base.load(Ordering::SeqCst))
            .ok_or_else(|| StorageError::Corrupt {
                tree: GLOBAL,
                detail: "id_base is so large that ids overflow".into(),
            })
    }

    /// Makes every later [`Db::next_id`] larger than `to`, durably.
    ///
    /// A store's own counter lives outside its trees (sled keeps it in its metadata), so a
    /// database copied tree by tree (a loaded [dump]) would count again from 1 and new
    /// events would sort before the copied ones. The id base, kept in `global`, carries the
    /// count over: ids are the store's plus the base, and the base is raised to `to`.
    pub fn advance_ids(&self, to: u64) -> StorageResult<()> {
        raise_id_base(&*self.store, to)?;
        self.id_base.fetch_max(to, Ordering::SeqCst);
        Ok(())
    }

    /// Flushes synchronously; for shutdown and the command line.
    pub fn flush_blocking(&self) -> StorageResult<()> {
        self.store.flush()
    }

    /// The schema version written in the database (0 for a new one).
    pub fn schema_version(&self) -> StorageResult<u64> {
        Ok(read_u64(&*self.tree(GLOBAL)?, SCHEMA_VERSION_KEY)?.unwrap_or(0))
    }

    /// Checks the schema version and upgrades older layouts step by step to `latest`: every
    /// step with `to` above the version found runs in order, and its version is written
    /// and flushed after it. A new, empty database runs no step and gets `latest` at once.
    fn migrate(&self, steps: &[Migration], latest: u64) -> StorageResult<()> {
        let global = self.tree(GLOBAL)?;
        if global.get(export::IMPORT_MARKER_KEY)?.is_some() {
            return Err(StorageError::ImportIncomplete);
        }
        let found = self.schema_version()?;
        if found == 0 && global.iter_from(b"", false).next().transpose()?.is_some() {
            return Err(StorageError::Foreign);
        }
        if found > latest {
            return Err(StorageError::TooNew {
                found,
                known: latest,
            });
        }
        if found == 0 {
            global.insert(SCHEMA_VERSION_KEY, &latest.to_be_bytes())?;
            self.store.flush()?;
            return Ok(());
        }
        for to in found + 1..=latest {
            // Every version needs its step (a build that forgot to pass them must not mark
            // a database upgraded that was not).
            let step = steps
                .iter()
                .find(|step| step.to == to)
                .ok_or(StorageError::NoMigration { found, to })?;
            tracing::info!(
                from = to - 1,
                to,
                step = step.name,
                "upgrading the database"
            );
            (step.run)(self)?;
            global.insert(SCHEMA_VERSION_KEY, &to.to_be_bytes())?;
            self.store.flush()?;
            tracing::info!(version = to, "database upgraded");
        }
        Ok(())
    }
}

/// An 8-byte big-endian number under `key` in `tree`, if present.
fn read_u64(tree: &dyn Tree, key: &[u8]) -> StorageResult<Option<u64>> {
    tree.get(key)?
        .map(|bytes| {
            bytes
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StorageError::Corrupt {
                    tree: GLOBAL,
                    detail: format!("{} is not 8 bytes", String::from_utf8_lossy(key)),
                })
        })
        .transpose()
}

/// Raises the id base stored in `store`'s `global` tree to at least `to`, and flushes.
fn raise_id_base(store: &dyn Store, to: u64) -> StorageResult<()> {
    let global = store.open_tree(GLOBAL)?;
    if read_u64(&*global, ID_BASE_KEY)?.unwrap_or(0) < to {
        global.insert(ID_BASE_KEY, &to.to_be_bytes())?;
    }
    store.flush()
}

/// How long a flush waits for more writes to share it when writers are queueing.
/// Measured on the storage run (`docs/benchmarks.md`): see [`Db::persist`].
const LINGER: std::time::Duration = std::time::Duration::from_millis(3);

/// Bookkeeping for [`Db::persist`]'s group commit.
#[derive(Default)]
struct GroupFlush {
    lock: Mutex<()>,
    /// Set when a caller arrived while a flush was running: the next flush lingers.
    contended: std::sync::atomic::AtomicBool,
    /// Number of flushes started.
    started: std::sync::atomic::AtomicU64,
    /// The number of the last flush that finished.
    completed: std::sync::atomic::AtomicU64,
}
