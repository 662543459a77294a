//! The fjall backend: the only file in the project that imports `fjall`.
//!
//! fjall is a log-structured merge tree: a write is appended to one journal and kept in a
//! memtable; full memtables become sorted, LZ4-compressed table files, which background
//! compaction merges. For a store that lives on an SD card this is what matters: a
//! message is written once to the journal and once more, compressed, into a table file
//! or (values of [`BLOB_BYTES`] or more: the events) a blob file that compaction never
//! rewrites, where sled rewrote whole pages of its log.
//! Measured in `docs/benchmarks.md` ("Storage").
//!
//! The database lives in `database_path/fjall/`, so it can never be mistaken for (or
//! mixed with) sled's files in `database_path`. Every tree is a fjall keyspace.

use std::{
    collections::HashMap,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Batch, BatchOp, KvIter, StorageError, StorageResult, Store, Tree};

/// The subdirectory of `database_path` that holds a fjall database.
pub const DIRECTORY: &str = "fjall";
/// The keyspace of our id counter's high-water mark; not one of the trees.
const IDS: &str = "__conduit_ids";
const IDS_KEY: &[u8] = b"reserved";
/// Ids are reserved durably this many at a time (see [`FjallStore::next_id`]).
const ID_BLOCK: u64 = 1_000;
/// How long a reopen waits for operations still holding the broken database.
const REOPEN_WAIT: Duration = Duration::from_secs(1);
/// Largest memtable per tree before it is written out as a table file. fjall's default
/// (64 MiB per tree) is far too much for a Pi. Measured on the storage run: 4 MiB left
/// 80 MB resident, 2 MiB 66 MB, 1 MiB 50-53 MB, with the same bytes written.
const MEMTABLE_BYTES: u64 = 1 << 20;

/// Values this large or larger are kept apart from the keys (see [`keyspace_options`]).
const BLOB_BYTES: u32 = 512;

fn backend(error: fjall::Error) -> StorageError {
    StorageError::backend(&error)
}

/// fjall refuses (panics on) an empty key and keys over 64 KiB; our trees allow an empty
/// key. Every key is stored behind one constant byte, which keeps the order.
const KEY_TAG: u8 = 0;
/// Keys this long or longer cannot be stored (fjall's limit is 65,535 bytes, tag included).
const MAX_KEY: usize = u16::MAX as usize;

fn stored_key(tree: &str, key: &[u8]) -> StorageResult<Vec<u8>> {
    if key.len() >= MAX_KEY {
        return Err(StorageError::Backend(format!(
            "a key of {} bytes for tree {tree} is longer than the store allows",
            key.len()
        )));
    }
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(KEY_TAG);
    stored.extend_from_slice(key);
    Ok(stored)
}

/// What every tree and the store share: the open database, replaced when it broke.
///
/// fjall "poisons" a database after any failed journal write or background flush (a full
/// disk, most often): from then on every write fails with `Poisoned` until it is opened
/// again. So a write that meets a poisoned database (or fails for want of space) marks it
/// broken, and the next write opens it again in place ([`Shared::reopen`]): a new
/// [`Generation`]. Trees look their keyspace up in the current generation for every
/// operation, never keeping one of an old generation. Reads keep using a broken generation
/// until then (fjall still reads).
///
/// Nothing acknowledged is lost by a reopen: dropping the old database writes its journal
/// buffer out (the disk has room again: writes reach the store only above the reserve),
/// and fjall recovers every complete batch of the journal, in order; only the batch that
/// failed, never acknowledged, is cut off.
struct Shared {
    /// `database_path/fjall`.
    dir: PathBuf,
    cache_capacity_bytes: u64,
    /// The open database; `None` after a broken one was dropped and opening it again failed.
    current: RwLock<Option<Arc<Generation>>>,
    /// Set when a write met a poisoned database or a full disk: the next write reopens.
    broken: AtomicBool,
    /// The next id to hand out and the end of the durably reserved block.
    next: Mutex<(u64, u64)>,
}

/// One opening of the fjall database.
struct Generation {
    db: Database,
    /// Keyspaces by tree name: fjall's own lookup takes a write lock, ours a read lock.
    trees: RwLock<HashMap<&'static str, Keyspace>>,
    ids: Keyspace,
}

pub struct FjallStore {
    shared: Arc<Shared>,
}

impl FjallStore {
    /// Opens (creating if needed) the fjall database in `path/fjall`. fjall locks it, so a
    /// second process fails here with [`StorageError::Locked`].
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> StorageResult<Self> {
        let dir = path.join(DIRECTORY);
        let generation =
            Generation::open(&dir, cache_capacity_bytes).map_err(|error| match error {
                fjall::Error::Locked => StorageError::Locked(path.display().to_string()),
                other => backend(other),
            })?;
        let reserved = generation.reserved_ids()?;
        Ok(Self {
            shared: Arc::new(Shared {
                dir,
                cache_capacity_bytes,
                current: RwLock::new(Some(Arc::new(generation))),
                broken: AtomicBool::new(false),
                // Ids of a block that was reserved but not used up before a stop are skipped.
                next: Mutex::new((reserved, reserved)),
            }),
        })
    }

    /// Marks the database broken, as a failed write would (for tests of the reopen).
    #[cfg(test)]
    fn break_for_test(&self) {
        self.shared.broken.store(true, Ordering::SeqCst);
    }
}

impl Generation {
    fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, fjall::Error> {
        let db = Database::builder(dir)
            .cache_size(cache_capacity_bytes)
            // We persist explicitly (group commit) before acknowledging a write; a batch
            // alone only reaches fjall's journal buffer.
            .manual_journal_persist(true)
            .max_journaling_size(64 << 20)
            .open()?;
        let ids = db.keyspace(IDS, keyspace_options)?;
        Ok(Self {
            db,
            trees: RwLock::new(HashMap::new()),
            ids,
        })
    }

    /// The end of the last durably reserved block of ids.
    fn reserved_ids(&self) -> StorageResult<u64> {
        match self.ids.get(IDS_KEY).map_err(backend)? {
            Some(bytes) => Ok(u64::from_be_bytes(bytes.as_ref().try_into().map_err(
                |_| StorageError::Corrupt {
                    tree: IDS,
                    detail: "the reserved id is not 8 bytes".into(),
                },
            )?)),
            None => Ok(0),
        }
    }

    fn keyspace(&self, name: &'static str) -> Result<Keyspace, fjall::Error> {
        if let Some(keyspace) = self.trees.read().expect("trees lock").get(name) {
            return Ok(keyspace.clone());
        }
        let keyspace = self.db.keyspace(name, keyspace_options)?;
        self.trees
            .write()
            .expect("trees lock")
            .insert(name, keyspace.clone());
        Ok(keyspace)
    }
}

impl Shared {
    /// The current generation, for reads (a broken one still reads).
    fn current(&self) -> StorageResult<Arc<Generation>> {
        match self.open_generation() {
            Some(generation) => Ok(generation),
            None => self.reopen(),
        }
    }

    /// The current generation, if one is open (none is after a failed reopen).
    fn open_generation(&self) -> Option<Arc<Generation>> {
        self.current.read().expect("generation lock").clone()
    }

    /// The generation to write to: the current one, or a new one if it broke.
    fn writable(&self) -> StorageResult<Arc<Generation>> {
        if self.broken.load(Ordering::SeqCst) {
            return self.reopen();
        }
        self.current()
    }

    /// Drops the broken generation and opens the database again. If an operation still
    /// holds the old one (fjall's lock file is not free yet) after [`REOPEN_WAIT`], this
    /// fails and the next write tries again.
    fn reopen(&self) -> StorageResult<Arc<Generation>> {
        let mut current = self.current.write().expect("generation lock");
        if let Some(generation) = &*current
            && !self.broken.load(Ordering::SeqCst)
        {
            // Another writer reopened it meanwhile.
            return Ok(Arc::clone(generation));
        }
        // Dropping the last handle closes the database and frees its lock. Operations in
        // progress may still hold it for a moment (none can start: `current` is locked).
        drop(current.take());
        let deadline = Instant::now() + REOPEN_WAIT;
        let generation = loop {
            match Generation::open(&self.dir, self.cache_capacity_bytes) {
                Err(fjall::Error::Locked) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        let generation = generation.map_err(|error| match error {
            fjall::Error::Locked => StorageError::Backend(
                "the database is being reopened after a failed write; try again".into(),
            ),
            other => backend(other),
        })?;
        let generation = Arc::new(generation);
        *current = Some(Arc::clone(&generation));
        self.broken.store(false, Ordering::SeqCst);
        tracing::warn!(
            dir = %self.dir.display(),
            "the database was reopened after a failed write"
        );
        Ok(generation)
    }

    /// Maps a failed write's `error`, marking the database broken when fjall will refuse
    /// every write from now on. `Poisoned` is answered as [`StorageError::NoSpace`] when
    /// the disk has almost no room left (a background flush that failed for want of
    /// space poisons the database without any write seeing its `ENOSPC`).
    fn write_failed(&self, error: fjall::Error) -> StorageError {
        let poisoned = matches!(error, fjall::Error::Poisoned);
        let mapped = backend(error);
        if poisoned || matches!(mapped, StorageError::NoSpace) {
            self.broken.store(true, Ordering::SeqCst);
        }
        if poisoned
            && super::space::statvfs_free(&self.dir)
                .is_ok_and(|free| free < super::space::RESUME_MARGIN)
        {
            return StorageError::NoSpace;
        }
        mapped
    }

    /// Runs the write `op` on the writable generation; if that one turns out poisoned
    /// (a background flush failed since), opens the database again and retries once.
    fn write<T>(&self, op: impl Fn(&Generation) -> Result<T, fjall::Error>) -> StorageResult<T> {
        let generation = self.writable()?;
        match op(&generation) {
            Ok(value) => Ok(value),
            Err(fjall::Error::Poisoned) => {
                self.broken.store(true, Ordering::SeqCst);
                drop(generation);
                let generation = self.reopen()?;
                op(&generation).map_err(|error| self.write_failed(error))
            }
            Err(error) => Err(self.write_failed(error)),
        }
    }
}

fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .manual_journal_persist(true)
        // Values of 512 bytes or more (events, mostly) go to blob files, written once and
        // never moved by compaction, which then merges only keys and small values.
        .with_kv_separation(Some(
            fjall::KvSeparationOptions::default().separation_threshold(BLOB_BYTES),
        ))
}

impl Store for FjallStore {
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        // Create the keyspace now, so a tree that was opened is listed in `tree_names`.
        self.shared
            .current()?
            .keyspace(name)
            .map_err(|error| self.shared.write_failed(error))?;
        Ok(Arc::new(FjallTree {
            name,
            shared: Arc::clone(&self.shared),
        }))
    }

    fn apply_batch(&self, batch: &Batch) -> StorageResult<()> {
        // Keys are checked before anything is written.
        let mut ops = Vec::with_capacity(batch.ops().len());
        for op in batch.ops() {
            match op {
                BatchOp::Insert { tree, key, value } => {
                    ops.push((*tree, stored_key(tree, key)?, Some(value.as_slice())));
                }
                BatchOp::Remove { tree, key } => ops.push((*tree, stored_key(tree, key)?, None)),
            }
        }
        self.shared.write(|generation| {
            // A fjall write batch is atomic across keyspaces: one journal entry.
            let mut write = generation.db.batch();
            for (tree, key, value) in &ops {
                let keyspace = generation.keyspace(tree)?;
                match value {
                    Some(value) => write.insert(&keyspace, key.as_slice(), *value),
                    None => write.remove(&keyspace, key.as_slice()),
                }
            }
            write.commit()
        })
    }

    fn flush(&self) -> StorageResult<()> {
        // Never reopens: a flush must not report writes of a broken generation durable.
        let generation = self.shared.open_generation().ok_or_else(|| {
            StorageError::Backend("the database is being reopened after a failed write".into())
        })?;
        // `fdatasync` of the journal: enough to read back everything appended, size included.
        generation
            .db
            .persist(PersistMode::SyncData)
            .map_err(|error| self.shared.write_failed(error))
    }

    fn next_id(&self) -> StorageResult<u64> {
        let mut next = self.shared.next.lock().expect("id lock");
        let (id, reserved) = *next;
        if id >= reserved {
            // Reserve the next block durably before handing out any id of it, so no id is
            // handed out twice even if the process dies right after.
            let end = id + ID_BLOCK;
            self.shared.write(|generation| {
                generation.ids.insert(IDS_KEY, end.to_be_bytes())?;
                generation.db.persist(PersistMode::SyncAll)
            })?;
            next.1 = end;
        }
        next.0 = id + 1;
        // Ids start at 1, as sled's do.
        Ok(id + 1)
    }

    fn tree_names(&self) -> StorageResult<Vec<String>> {
        Ok(self
            .shared
            .current()?
            .db
            .list_keyspace_names()
            .into_iter()
            .map(|name| name.as_ref().to_owned())
            .filter(|name| name != IDS)
            .collect())
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        // Closing persists fully; a failure here can only be logged.
        if let Some(generation) = self.shared.open_generation()
            && let Err(error) = generation.db.persist(PersistMode::SyncAll)
        {
            tracing::warn!(path = %self.shared.dir.display(), %error, "closing the database");
        }
    }
}

struct FjallTree {
    name: &'static str,
    shared: Arc<Shared>,
}

impl FjallTree {
    /// This tree's keyspace in the current generation, for reads.
    fn keyspace(&self) -> StorageResult<Keyspace> {
        self.shared.current()?.keyspace(self.name).map_err(backend)
    }
}

fn owned(guard: fjall::Guard) -> StorageResult<(Vec<u8>, Vec<u8>)> {
    let (key, value) = guard.into_inner().map_err(backend)?;
    let key = key.get(1..).ok_or_else(|| StorageError::Corrupt {
        tree: "(fjall)",
        detail: "a stored key without its tag".into(),
    })?;
    Ok((key.to_vec(), value.to_vec()))
}

/// An iterator that yields `error` once.
fn failed(error: StorageError) -> KvIter<'static> {
    Box::new(std::iter::once(Err(error)))
}

impl Tree for FjallTree {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        if key.len() >= MAX_KEY {
            // No key that long can have been stored.
            return Ok(None);
        }
        Ok(self
            .keyspace()?
            .get(stored_key(self.name, key)?)
            .map_err(backend)?
            .map(|value| value.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        let key = stored_key(self.name, key)?;
        self.shared.write(|generation| {
            generation
                .keyspace(self.name)?
                .insert(key.as_slice(), value)
        })
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        let key = stored_key(self.name, key)?;
        self.shared
            .write(|generation| generation.keyspace(self.name)?.remove(key.as_slice()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        if prefix.len() >= MAX_KEY {
            // No stored key is that long, so none starts with it.
            return Box::new(std::iter::empty());
        }
        let keyspace = match self.keyspace() {
            Ok(keyspace) => keyspace,
            Err(error) => return failed(error),
        };
        match stored_key(self.name, prefix) {
            Ok(prefix) => Box::new(keyspace.prefix(prefix).map(owned)),
            Err(error) => failed(error),
        }
    }

    fn iter_from(&self, from: &[u8], backwards: bool) -> KvIter<'_> {
        // Every stored key is shorter than `MAX_KEY - 1` bytes, so against a longer `from`
        // only its first `MAX_KEY - 2` bytes (`cut`) decide: a key is above `from` exactly
        // when it is above `cut`, and at most `from` exactly when it is at most `cut`.
        let cut = &from[..from.len().min(MAX_KEY - 2)];
        let start = match stored_key(self.name, cut) {
            Ok(start) => start,
            Err(error) => return failed(error),
        };
        let overlong = cut.len() < from.len();
        let keyspace = match self.keyspace() {
            Ok(keyspace) => keyspace,
            Err(error) => return failed(error),
        };
        match (backwards, overlong) {
            (true, _) => Box::new(keyspace.range(..=start).rev().map(owned)),
            (false, false) => Box::new(keyspace.range(start..).map(owned)),
            (false, true) => Box::new(
                keyspace
                    .range((Bound::Excluded(start), Bound::Unbounded))
                    .map(owned),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_inside_fjall_errors_is_no_space() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(
            backend(fjall::Error::Io(enospc())),
            StorageError::NoSpace
        ));
        assert!(matches!(
            backend(fjall::Error::Storage(lsm_tree_error(enospc()))),
            StorageError::NoSpace
        ));
        assert!(matches!(
            backend(fjall::Error::Poisoned),
            StorageError::Backend(_)
        ));
    }

    /// An error of fjall's tree layer wrapping `io`.
    fn lsm_tree_error(io: std::io::Error) -> fjall::LsmError {
        io.into()
    }

    /// A broken database (as after a failed journal write) is opened again in place by the
    /// next write: trees handed out before keep working, and nothing written is lost.
    #[test]
    fn a_broken_database_is_reopened_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::open(dir.path(), 1 << 20).unwrap();
        let tree = store.open_tree("t").unwrap();
        tree.insert(b"a", b"1").unwrap();
        let id = store.next_id().unwrap();

        store.break_for_test();
        // Reads still use the broken generation.
        assert_eq!(tree.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        // An iterator in progress reads on from the old generation; the reopen does not
        // wait for it (or waits at most `REOPEN_WAIT`, then fails and the next write tries
        // again: an error, nothing lost).
        let mut iterator = tree.iter_from(b"", false);
        let _ = tree.insert(b"b", b"2");
        assert!(iterator.next().is_some());
        drop(iterator);
        tree.insert(b"b", b"2").unwrap();
        assert!(!store.shared.broken.load(Ordering::SeqCst));
        let mut batch = Batch::new();
        batch.insert(&*tree, b"c".to_vec(), b"3".to_vec());
        store.apply_batch(&batch).unwrap();
        store.flush().unwrap();
        assert!(store.next_id().unwrap() > id);
        let keys: Vec<_> = tree
            .iter_from(b"", false)
            .map(|entry| entry.unwrap().0)
            .collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(store.tree_names().unwrap(), ["t"]);

        // Everything is there after closing and opening again.
        drop(tree);
        drop(store);
        let store = FjallStore::open(dir.path(), 1 << 20).unwrap();
        let tree = store.open_tree("t").unwrap();
        assert_eq!(tree.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
    }
}
