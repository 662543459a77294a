//! The sled backend: the only file in the project that imports `sled`.

use std::{path::Path, sync::Arc};

use futures_util::future::BoxFuture;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Batch, BatchOp, KvIter, StorageError, StorageResult, Store, Tree};

impl From<sled::Error> for StorageError {
    fn from(error: sled::Error) -> Self {
        StorageError::Backend(error.to_string())
    }
}

pub struct SledStore {
    db: sled::Db,
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
            Ok(db) => Ok(Self { db }),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                Err(StorageError::Locked(path.display().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Store for SledStore {
    fn open_tree(&self, name: &'static str) -> StorageResult<Arc<dyn Tree>> {
        Ok(Arc::new(SledTree {
            name,
            tree: self.db.open_tree(name)?,
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
            .map(|name| self.db.open_tree(name))
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
        self.db.flush()?;
        Ok(())
    }

    fn next_id(&self) -> StorageResult<u64> {
        // sled persists a high-water mark ahead of use, so ids never repeat after a crash.
        Ok(self.db.generate_id()? + 1)
    }
}

use sled::Transactional;

struct SledTree {
    name: &'static str,
    tree: sled::Tree,
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

    fn watch_prefix(&self, prefix: &[u8]) -> BoxFuture<'static, ()> {
        let subscriber = self.tree.watch_prefix(prefix);
        Box::pin(async move {
            let _event = subscriber.await;
        })
    }
}
