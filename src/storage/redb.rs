//! The redb backend: the only file in the project that imports `redb`.
//!
//! One file, `DIR/redb/data.redb`, holds every tree as a redb table of byte keys and byte
//! values (the table is named after the tree). Writes commit with [`Durability::None`]:
//! atomic and visible at once, but only made durable by the next [`Store::flush`] (an empty
//! write transaction committed with [`Durability::Immediate`], which makes every earlier
//! commit durable with it). [`Db::persist`](super::Db::persist) calls that flush as a group
//! commit before a request is answered.
//!
//! Iterators read a bounded chunk of entries per read transaction and continue after the
//! last key they saw, so a scan never holds a whole table in memory, nor a read transaction
//! (which would keep redb from reusing the pages it pins) for as long as the caller iterates.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, TableHandle, WriteTransaction,
};

use super::{Batch, BatchOp, KeyValue, KvIter, StorageError, StorageResult, Store, Tree};

/// The directory inside the data directory that holds the database file, so it never
/// collides with sled's files.
pub const DIRECTORY: &str = "redb";
/// The database file inside [`DIRECTORY`].
pub const FILE: &str = "data.redb";

/// Our own table for [`Store::next_id`]'s reserved high-water mark. Not a tree: it is left
/// out of [`Store::tree_names`]. The name cannot clash with a tree's (`keyname_valuename`).
const IDS: TableDefinition<&str, u64> = TableDefinition::new("__conduit_ids");
const IDS_HIGH_WATER: &str = "high_water";
/// How many ids one durable reservation covers. A restart skips what was left of the block.
const ID_BLOCK: u64 = 10_000;

/// Entries one read transaction copies out for an iterator, at most…
const CHUNK_ENTRIES: usize = 256;
/// …and bytes (keys plus values; at least one entry is read whatever its size).
const CHUNK_BYTES: usize = 256 << 10;

/// Every redb error becomes a backend error, except the lock conflict handled in `open`
/// and a want of space ([`no_space_or`]).
macro_rules! backend_error {
    ($($error:ty),*) => {$(
        impl From<$error> for StorageError {
            fn from(error: $error) -> Self {
                no_space_or(StorageError::backend(&error))
            }
        }
    )*};
}

/// Set once a redb operation failed for want of space (one database per process).
static OUT_OF_SPACE: AtomicBool = AtomicBool::new(false);
/// How redb's `PreviousIo` reads, in its own error and in every error wrapping it.
const PREVIOUS_IO: &str = "Previous I/O error occurred";

/// After an `ENOSPC`, redb fails every write with `PreviousIo` until it is opened again:
/// that is still the full disk ([`StorageError::NoSpace`], so 507 and no log line per
/// request; `storage::space` says once to restart), not a new failure.
fn no_space_or(error: StorageError) -> StorageError {
    match error {
        StorageError::NoSpace => {
            OUT_OF_SPACE.store(true, Ordering::SeqCst);
            StorageError::NoSpace
        }
        StorageError::Backend(text)
            if text.contains(PREVIOUS_IO) && OUT_OF_SPACE.load(Ordering::SeqCst) =>
        {
            StorageError::NoSpace
        }
        other => other,
    }
}
backend_error!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn bytes_table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

pub struct RedbStore {
    shared: Arc<Shared>,
}

/// The open database. The store and every tree share it, so it closes (making any commit not
/// yet durable durable) when the last of them is dropped.
struct Shared {
    db: Database,
    /// Names of the tables known to exist, so opening a tree again needs no transaction.
    tables: Mutex<HashSet<String>>,
    /// Set after a non-durable commit, cleared by the flush that makes it durable.
    dirty: AtomicBool,
    /// Held across a flush, so a flush that finds nothing to do returns only once the
    /// flush that took its writes is complete.
    flushing: Mutex<()>,
    ids: Mutex<IdBlock>,
}

/// The ids reserved durably and not yet handed out: `next..=reserved`.
struct IdBlock {
    next: u64,
    reserved: u64,
}

impl RedbStore {
    /// Opens (or creates) the database in `path/redb/data.redb`. redb locks the file, so a
    /// second open, from this process or another, fails here with [`StorageError::Locked`].
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> StorageResult<Self> {
        let directory = path.join(DIRECTORY);
        std::fs::create_dir_all(&directory).map_err(|e| {
            StorageError::Backend(format!("cannot create {}: {e}", directory.display()))
        })?;
        let db = Database::builder()
            .set_cache_size(usize::try_from(cache_capacity_bytes).unwrap_or(usize::MAX))
            .create(directory.join(FILE))
            .map_err(|error| match error {
                DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                    StorageError::Locked(path.display().to_string())
                }
                other => StorageError::Backend(other.to_string()),
            })?;
        let (tables, high_water) = {
            let read = db.begin_read()?;
            let tables: HashSet<String> = read
                .list_tables()?
                .map(|table| table.name().to_owned())
                .collect();
            let high_water = match read.open_table(IDS) {
                Ok(ids) => ids.get(IDS_HIGH_WATER)?.map(|value| value.value()),
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            (tables, high_water.unwrap_or(0))
        };
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                tables: Mutex::new(tables),
                dirty: AtomicBool::new(false),
                flushing: Mutex::new(()),
                // Nothing reserved in this run yet: the first id reserves a block above the mark.
                ids: Mutex::new(IdBlock {
                    next: high_water + 1,
                    reserved: high_water,
                }),
            }),
        })
    }

    /// The path of the database file in the data directory `path`.
    pub fn file(path: &Path) -> PathBuf {
        path.join(DIRECTORY).join(FILE)
    }
}

impl Shared {
    /// Runs `write` in one write transaction and commits it atomically but not durably.
    fn write<T>(
        &self,
        write: impl FnOnce(&WriteTransaction) -> StorageResult<T>,
    ) -> StorageResult<T> {
        let mut transaction = self.db.begin_write()?;
        transaction.set_durability(Durability::None)?;
        // Dropping an uncommitted transaction (on error) aborts it: nothing half-written stays.
        let result = write(&transaction)?;
        transaction.commit()?;
        // After the commit, so a flush that clears the flag has the commit to cover (see flush).
        self.dirty.store(true, Ordering::SeqCst);
        Ok(result)
    }

    /// Commits an empty transaction durably: redb then makes every earlier commit durable.
    fn commit_durably(
        &self,
        write: impl FnOnce(&WriteTransaction) -> StorageResult<()>,
    ) -> StorageResult<()> {
        let mut transaction = self.db.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        write(&transaction)?;
        transaction.commit()?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        let known = self
            .shared
            .tables
            .lock()
            .expect("tables lock")
            .contains(name);
        if !known {
            // A table exists once a write transaction has opened it.
            self.shared.write(|transaction| {
                transaction.open_table(bytes_table(name))?;
                Ok(())
            })?;
            self.shared
                .tables
                .lock()
                .expect("tables lock")
                .insert(name.to_owned());
        }
        Ok(Arc::new(RedbTree {
            name,
            shared: Arc::clone(&self.shared),
        }))
    }

    fn apply_batch(&self, batch: &Batch) -> StorageResult<()> {
        self.shared.write(|transaction| {
            // Each table is opened once and kept open until the end of the batch; the
            // operations run in their order, so a later one on the same key wins.
            let mut tables = HashMap::new();
            for op in batch.ops() {
                let (BatchOp::Insert { tree, .. } | BatchOp::Remove { tree, .. }) = op;
                if !tables.contains_key(tree) {
                    tables.insert(*tree, transaction.open_table(bytes_table(tree))?);
                }
                let table = tables.get_mut(tree).expect("opened above");
                match op {
                    BatchOp::Insert { key, value, .. } => {
                        table.insert(key.as_slice(), value.as_slice())?;
                    }
                    BatchOp::Remove { key, .. } => {
                        table.remove(key.as_slice())?;
                    }
                }
            }
            Ok(())
        })?;
        {
            let mut names = self.shared.tables.lock().expect("tables lock");
            for op in batch.ops() {
                let (BatchOp::Insert { tree, .. } | BatchOp::Remove { tree, .. }) = op;
                if !names.contains(*tree) {
                    names.insert((*tree).to_owned());
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> StorageResult<()> {
        // A write sets `dirty` after its commit. If we see it set, our durable commit begins
        // after that commit and covers it; a write that sets it after we cleared it is left for
        // the next flush, and its writer's own persist starts that flush after its write
        // returned (see `Db::persist`).
        let _flushing = self.shared.flushing.lock().expect("flush lock");
        if !self.shared.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let result = self.shared.commit_durably(|_| Ok(()));
        if result.is_err() {
            self.shared.dirty.store(true, Ordering::SeqCst);
        }
        result
    }

    fn next_id(&self) -> StorageResult<u64> {
        let mut ids = self.shared.ids.lock().expect("ids lock");
        if ids.next > ids.reserved {
            // Reserve the next block durably before handing out any id of it, so ids never
            // repeat after a crash (the rest of a block is skipped instead).
            let reserved =
                ids.reserved
                    .checked_add(ID_BLOCK)
                    .ok_or_else(|| StorageError::Corrupt {
                        tree: "__conduit_ids",
                        detail: "the id high-water mark overflows".into(),
                    })?;
            self.shared.commit_durably(|transaction| {
                transaction
                    .open_table(IDS)?
                    .insert(IDS_HIGH_WATER, reserved)?;
                Ok(())
            })?;
            ids.reserved = reserved;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    fn tree_names(&self) -> StorageResult<Vec<String>> {
        let read = self.shared.db.begin_read()?;
        Ok(read
            .list_tables()?
            .map(|table| table.name().to_owned())
            .filter(|name| name != IDS.name())
            .collect())
    }
}

struct RedbTree {
    name: &'static str,
    shared: Arc<Shared>,
}

impl Tree for RedbTree {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        let read = self.shared.db.begin_read()?;
        let table = match read.open_table(bytes_table(self.name)) {
            Ok(table) => table,
            // Not created yet by this process or an earlier one: empty, not an error.
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(key)?.map(|value| value.value().to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.shared.write(|transaction| {
            transaction
                .open_table(bytes_table(self.name))?
                .insert(key, value)?;
            Ok(())
        })?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.shared.write(|transaction| {
            transaction
                .open_table(bytes_table(self.name))?
                .remove(key)?;
            Ok(())
        })?;
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        Box::new(Chunks::new(
            Arc::clone(&self.shared),
            self.name,
            Bound::Included(prefix.to_vec()),
            false,
            Some(prefix.to_vec()),
        ))
    }

    fn iter_from(&self, from: &[u8], backwards: bool) -> KvIter<'_> {
        Box::new(Chunks::new(
            Arc::clone(&self.shared),
            self.name,
            Bound::Included(from.to_vec()),
            backwards,
            None,
        ))
    }
}

/// An iterator that reads one bounded chunk per read transaction and continues after the
/// last key it saw. It is not a snapshot: a write between two chunks may or may not be seen,
/// as with sled's iterators.
struct Chunks {
    shared: Arc<Shared>,
    table: &'static str,
    /// Where the next chunk starts: the lower bound going forwards, the upper going backwards.
    start: Bound<Vec<u8>>,
    backwards: bool,
    /// Stop at the first key without this prefix (forwards only).
    prefix: Option<Vec<u8>>,
    buffer: VecDeque<KeyValue>,
    /// No entries are left to read, or an error was returned (iteration ends after it).
    done: bool,
}

impl Chunks {
    fn new(
        shared: Arc<Shared>,
        table: &'static str,
        start: Bound<Vec<u8>>,
        backwards: bool,
        prefix: Option<Vec<u8>>,
    ) -> Self {
        Self {
            shared,
            table,
            start,
            backwards,
            prefix,
            buffer: VecDeque::new(),
            done: false,
        }
    }

    /// Reads the next chunk into the buffer; sets `done` when the range is exhausted.
    fn refill(&mut self) -> StorageResult<()> {
        let read = self.shared.db.begin_read()?;
        let table = match read.open_table(bytes_table(self.table)) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => {
                self.done = true;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let start = match &self.start {
            Bound::Included(key) => Bound::Included(key.as_slice()),
            Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range = if self.backwards {
            table.range((Bound::Unbounded, start))?
        } else {
            table.range((start, Bound::Unbounded))?
        };
        let mut entries: Box<dyn Iterator<Item = _>> = if self.backwards {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut bytes = 0;
        loop {
            if self.buffer.len() >= CHUNK_ENTRIES || bytes >= CHUNK_BYTES {
                // More may follow: the next chunk starts after the last key read.
                let (last, _) = self.buffer.back().expect("a full chunk has entries");
                self.start = Bound::Excluded(last.clone());
                return Ok(());
            }
            let Some(entry) = entries.next() else {
                self.done = true;
                return Ok(());
            };
            let (key, value) = entry?;
            let key = key.value();
            if let Some(prefix) = &self.prefix
                && !key.starts_with(prefix)
            {
                self.done = true;
                return Ok(());
            }
            let value = value.value();
            bytes += key.len() + value.len();
            self.buffer.push_back((key.to_vec(), value.to_vec()));
        }
    }
}

impl Iterator for Chunks {
    type Item = StorageResult<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty()
            && !self.done
            && let Err(e) = self.refill()
        {
            self.done = true;
            return Some(Err(e));
        }
        self.buffer.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redb's `PreviousIo` is the full disk only after a want of space (the only test
    /// that sets the flag).
    #[test]
    fn previous_io_after_a_full_disk_is_no_space() {
        assert!(
            redb::StorageError::PreviousIo
                .to_string()
                .contains(PREVIOUS_IO)
        );
        assert!(matches!(
            StorageError::from(redb::StorageError::PreviousIo),
            StorageError::Backend(_)
        ));
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(
            StorageError::from(redb::StorageError::Io(enospc)),
            StorageError::NoSpace
        ));
        assert!(matches!(
            StorageError::from(redb::StorageError::PreviousIo),
            StorageError::NoSpace
        ));
        assert!(matches!(
            StorageError::from(redb::CommitError::Storage(redb::StorageError::PreviousIo)),
            StorageError::NoSpace
        ));
    }
}
