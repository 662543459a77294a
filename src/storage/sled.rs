//! The sled backend: the only file in the project that imports `sled`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Batch, BatchOp, KvIter, StorageError, StorageResult, Store, Tree};

impl From<sled::Error> for StorageError {
    fn from(error: sled::Error) -> Self {
        match &error {
            // sled keeps the I/O error out of `source` and prints it with `Debug`.
            sled::Error::Io(io) if super::space::is_no_space(io) => StorageError::NoSpace,
            _ => StorageError::backend(&error),
        }
    }
}

pub struct SledStore {
    handle: Arc<Handle>,
}

/// The open database. The store and every tree share it, so it closes when the last of them
/// is dropped, whichever that is.
struct Handle {
    // Field order is drop order: sled first, then the wait for its lock to be released.
    db: sled::Db,
    _closed: ClosedOnDrop,
}

impl SledStore {
    /// Opens the database directory. sled locks it, so a second process fails here.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> StorageResult<Self> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            // We flush explicitly before acknowledging writes; this is only a backstop.
            .flush_every_ms(Some(1000));
        match config.open() {
            Ok(db) => Ok(Self {
                handle: Arc::new(Handle {
                    db,
                    _closed: ClosedOnDrop {
                        lock_file: path.join(LOCK_FILE),
                    },
                }),
            }),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                Err(StorageError::Locked(path.display().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn db(&self) -> &sled::Db {
        &self.handle.db
    }
}

/// The file in the database directory that sled locks (`flock`) while the database is open.
const LOCK_FILE: &str = "db";
/// How long closing waits for sled to let go of its lock.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Makes closing complete: dropping the last handle returns only once the directory can be
/// opened again.
///
/// Dropping a `sled::Db` flushes, stops its flusher thread and closes its own file handle,
/// but sled's I/O thread pool may still be finishing a write that holds another handle to the
/// same open file, and with it the lock, for a moment longer. Opening the directory again in
/// that moment fails with "could not acquire lock" (tests that reopen a database, and any
/// future in-process restart, hit this). This waits, bounded, until the lock is free.
struct ClosedOnDrop {
    lock_file: PathBuf,
}

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        if !wait_until_unlocked(&self.lock_file, CLOSE_WAIT) {
            tracing::warn!(
                path = %self.lock_file.display(),
                "the database lock was not released within {CLOSE_WAIT:?} of closing"
            );
        }
    }
}

/// Waits until nobody holds the `flock` on `file` (taking and at once releasing it), or until
/// `limit` has passed. True when the lock is free (or the file is gone).
#[cfg(unix)]
fn wait_until_unlocked(file: &Path, limit: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(file) else {
        return true;
    };
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        // SAFETY: `file` is an open descriptor for the duration of both calls.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            // SAFETY: as above; closing the file would release it too.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(not(unix))]
fn wait_until_unlocked(_file: &Path, _limit: Duration) -> bool {
    true
}

/// Writes `key` = `value` into `tree` of a database at `path` with sled directly, bypassing
/// our schema bookkeeping, and closes it completely: tests use it to make a database this
/// server did not create.
#[cfg(test)]
pub(super) fn write_foreign(path: &Path, tree: &str, key: &[u8], value: &[u8]) {
    let db = sled::open(path).expect("open sled");
    db.open_tree(tree)
        .and_then(|tree| tree.insert(key, value))
        .expect("write");
    db.flush().expect("flush");
    drop(db);
    assert!(wait_until_unlocked(&path.join(LOCK_FILE), CLOSE_WAIT));
}

impl Store for SledStore {
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        Ok(Arc::new(SledTree {
            name,
            tree: self.db().open_tree(name)?,
            _handle: Arc::clone(&self.handle),
        }))
    }

    fn apply_batch(&self, batch: &Batch) -> StorageResult<()> {
        // One sled transaction over every tree the batch touches.
        let mut names: Vec<&'static str> = batch
            .ops()
            .iter()
            .map(|op| match op {
                BatchOp::Insert { tree, .. } | BatchOp::Remove { tree, .. } => *tree,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        let trees = names
            .iter()
            .map(|name| self.db().open_tree(name))
            .collect::<Result<Vec<sled::Tree>, _>>()?;
        let index = |name: &str| names.binary_search(&name).expect("tree collected above");

        let result: Result<(), TransactionError<()>> = trees.as_slice().transaction(|views| {
            for op in batch.ops() {
                match op {
                    BatchOp::Insert { tree, key, value } => {
                        views[index(tree)].insert(key.as_slice(), value.as_slice())?;
                    }
                    BatchOp::Remove { tree, key } => {
                        views[index(tree)].remove(key.as_slice())?;
                    }
                }
            }
            Ok::<_, ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => {
                Err(StorageError::Backend("transaction aborted".into()))
            }
        }
    }

    fn flush(&self) -> StorageResult<()> {
        self.db().flush()?;
        Ok(())
    }

    fn next_id(&self) -> StorageResult<u64> {
        // sled persists a high-water mark ahead of use, so ids never repeat after a crash.
        Ok(self.db().generate_id()? + 1)
    }

    fn tree_names(&self) -> StorageResult<Vec<String>> {
        self.db()
            .tree_names()
            .into_iter()
            // sled's own default tree, which we never use.
            .filter(|name| name.as_ref() != b"__sled__default")
            .map(|name| {
                String::from_utf8(name.to_vec()).map_err(|_| StorageError::Corrupt {
                    tree: "(tree names)",
                    detail: "a tree name is not UTF-8".into(),
                })
            })
            .collect()
    }
}

use sled::Transactional;

struct SledTree {
    name: &'static str,
    // Dropped before the handle, so the last tree to go closes the database completely.
    tree: sled::Tree,
    _handle: Arc<Handle>,
}

fn owned(entry: sled::Result<(sled::IVec, sled::IVec)>) -> StorageResult<(Vec<u8>, Vec<u8>)> {
    let (key, value) = entry?;
    Ok((key.to_vec(), value.to_vec()))
}

impl Tree for SledTree {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.tree.get(key)?.map(|value| value.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StorageResult<()> {
        self.tree.insert(key, value)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> StorageResult<()> {
        self.tree.remove(key)?;
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvIter<'_> {
        Box::new(self.tree.scan_prefix(prefix).map(owned))
    }

    fn iter_from(&self, from: &[u8], backwards: bool) -> KvIter<'_> {
        if backwards {
            Box::new(self.tree.range(..=from).rev().map(owned))
        } else {
            Box::new(self.tree.range(from..).map(owned))
        }
    }
}
