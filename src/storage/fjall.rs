//! The fjall backend: the only file in the project that imports `fjall`.
//!
//! fjall is a log-structured merge tree: a write is appended to one journal and kept in a
//! memtable; full memtables become sorted, LZ4-compressed table files, which background
//! compaction merges. For a store that lives on an SD card this is what matters: a
//! message is written once to the journal and once more, compressed, into a table file
//! (then rarely rewritten by compaction), where sled rewrote whole pages of its log.
//! Measured in `docs/benchmarks.md` ("Storage").
//!
//! The database lives in `database_path/fjall/`, so it can never be mistaken for (or
//! mixed with) sled's files in `database_path`. Every tree is a fjall keyspace.

use std::{
    collections::HashMap,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
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
/// Largest memtable per tree before it is written out as a table file. fjall's default
/// (64 MiB per tree) is far too much for a Pi; a few MiB keeps memory flat and table files
/// large enough that compaction rarely rewrites them.
const MEMTABLE_BYTES: u64 = 4 << 20;

fn backend(error: fjall::Error) -> StorageError {
    StorageError::Backend(error.to_string())
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

pub struct FjallStore {
    db: Database,
    path: PathBuf,
    /// Keyspaces by tree name: fjall's own lookup takes a write lock, ours a read lock.
    trees: RwLock<HashMap<&'static str, Keyspace>>,
    ids: Keyspace,
    /// The next id to hand out and the end of the durably reserved block.
    next: Mutex<(u64, u64)>,
}

impl FjallStore {
    /// Opens (creating if needed) the fjall database in `path/fjall`. fjall locks it, so a
    /// second process fails here with [`StorageError::Locked`].
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> StorageResult<Self> {
        let dir = path.join(DIRECTORY);
        let db = Database::builder(&dir)
            .cache_size(cache_capacity_bytes)
            // We persist explicitly (group commit) before acknowledging a write; a batch
            // alone only reaches fjall's journal buffer.
            .manual_journal_persist(true)
            .max_journaling_size(64 << 20)
            .open()
            .map_err(|error| match error {
                fjall::Error::Locked => StorageError::Locked(path.display().to_string()),
                other => backend(other),
            })?;
        let ids = db.keyspace(IDS, keyspace_options).map_err(backend)?;
        let reserved = match ids.get(IDS_KEY).map_err(backend)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                StorageError::Corrupt {
                    tree: IDS,
                    detail: "the reserved id is not 8 bytes".into(),
                }
            })?),
            None => 0,
        };
        Ok(Self {
            db,
            path: dir,
            trees: RwLock::new(HashMap::new()),
            ids,
            // Ids of a block that was reserved but not used up before a stop are skipped.
            next: Mutex::new((reserved, reserved)),
        })
    }

    fn keyspace(&self, name: &'static str) -> StorageResult<Keyspace> {
        if let Some(keyspace) = self.trees.read().expect("trees lock").get(name) {
            return Ok(keyspace.clone());
        }
        let keyspace = self.db.keyspace(name, keyspace_options).map_err(backend)?;
        self.trees
            .write()
            .expect("trees lock")
            .insert(name, keyspace.clone());
        Ok(keyspace)
    }
}

fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .manual_journal_persist(true)
}

impl Store for FjallStore {
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        Ok(Arc::new(FjallTree {
            name,
            keyspace: self.keyspace(name)?,
        }))
    }

    fn apply_batch(&self, batch: &Batch) -> StorageResult<()> {
        // A fjall write batch is atomic across keyspaces: one journal entry.
        let mut write = self.db.batch();
        for op in batch.ops() {
            match op {
                BatchOp::Insert { tree, key, value } => {
                    write.insert(
                        &self.keyspace(tree)?,
                        stored_key(tree, key)?,
                        value.as_slice(),
                    );
                }
                BatchOp::Remove { tree, key } => {
                    write.remove(&self.keyspace(tree)?, stored_key(tree, key)?);
                }
            }
        }
        write.commit().map_err(backend)
    }

    fn flush(&self) -> StorageResult<()> {
        // `fdatasync` of the journal: enough to read back everything appended, size included.
        self.db.persist(PersistMode::SyncData).map_err(backend)
    }

    fn next_id(&self) -> StorageResult<u64> {
        let mut next = self.next.lock().expect("id lock");
        let (id, reserved) = *next;
        if id >= reserved {
            // Reserve the next block durably before handing out any id of it, so no id is
            // handed out twice even if the process dies right after.
            let end = id + ID_BLOCK;
            self.ids
                .insert(IDS_KEY, end.to_be_bytes())
                .map_err(backend)?;
            self.db.persist(PersistMode::SyncAll).map_err(backend)?;
            next.1 = end;
        }
        next.0 = id + 1;
        // Ids start at 1, as sled's do.
        Ok(id + 1)
    }

    fn tree_names(&self) -> StorageResult<Vec<String>> {
        Ok(self
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
        if let Err(error) = self.db.persist(PersistMode::SyncAll) {
            tracing::warn!(path = %self.path.display(), %error, "closing the database");
        }
    }
}

struct FjallTree {
    name: &'static str,
    keyspace: Keyspace,
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
            .keyspace
            .get(stored_key(self.name, key)?)
            .map_err(backend)?
            .map(|value| value.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.keyspace
            .insert(stored_key(self.name, key)?, value)
            .map_err(backend)
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.keyspace
            .remove(stored_key(self.name, key)?)
            .map_err(backend)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        if prefix.len() >= MAX_KEY {
            // No stored key is that long, so none starts with it.
            return Box::new(std::iter::empty());
        }
        match stored_key(self.name, prefix) {
            Ok(prefix) => Box::new(self.keyspace.prefix(prefix).map(owned)),
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
        match (backwards, overlong) {
            (true, _) => Box::new(self.keyspace.range(..=start).rev().map(owned)),
            (false, false) => Box::new(self.keyspace.range(start..).map(owned)),
            (false, true) => Box::new(
                self.keyspace
                    .range((Bound::Excluded(start), Bound::Unbounded))
                    .map(owned),
            ),
        }
    }
}
