//! A whole database as one JSON document, and loading one back: every tree's entries as
//! hex, plus an id above every id the database had handed out.
//!
//! ```json
//! {
//!   "next_id": 1234,
//!   "trees": {
//!     "global": [
//!       ["736368656d615f76657273696f6e", "0000000000000001"],
//!       …
//!     ],
//!     …
//!   }
//! }
//! ```
//!
//! Used for the schema fixtures (`tests/fixtures/`): a database written by an older build,
//! loaded into a fresh store without migrating, then opened (and upgraded) like any other.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::{Batch, Db, StorageError, StorageResult, Store, raise_id_base, sled::SledStore};
use crate::crypto::{hex_decode, hex_encode};

/// Entries per batch while loading.
const LOAD_BATCH: usize = 1_000;

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Dump {
    /// Larger than every id ([`Db::next_id`]) the database had handed out when dumped. A
    /// loaded database continues above it ([`Db::advance_ids`]).
    pub next_id: u64,
    /// Tree name → `[hex key, hex value]` pairs, ascending by key.
    pub trees: BTreeMap<String, Vec<[String; 2]>>,
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt {
        tree: "(dump)",
        detail,
    }
}

impl Dump {
    pub fn parse(bytes: &[u8]) -> StorageResult<Self> {
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
    }

    /// The JSON text: one entry per line, so a changed fixture reads well as a diff.
    pub fn to_json(&self) -> String {
        let quote = |text: &str| serde_json::Value::from(text).to_string();
        let trees: Vec<String> = self
            .trees
            .iter()
            .map(|(name, entries)| {
                let lines: Vec<String> = entries
                    .iter()
                    .map(|[key, value]| format!("      [{}, {}]", quote(key), quote(value)))
                    .collect();
                if lines.is_empty() {
                    format!("    {}: []", quote(name))
                } else {
                    format!("    {}: [\n{}\n    ]", quote(name), lines.join(",\n"))
                }
            })
            .collect();
        format!(
            "{{\n  \"next_id\": {},\n  \"trees\": {{\n{}\n  }}\n}}\n",
            self.next_id,
            trees.join(",\n")
        )
    }

    /// The entries of one tree, decoded.
    pub fn entries(&self, tree: &str) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let decode = |hex: &str| {
            hex_decode(hex).ok_or_else(|| corrupt(format!("tree {tree}: {hex:?} is not hex")))
        };
        self.trees
            .get(tree)
            .map(|entries| {
                entries
                    .iter()
                    .map(|[key, value]| Ok((decode(key)?, decode(value)?)))
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    }
}

impl Db {
    /// Every tree, entry by entry. Reads the whole database into memory: for fixtures and
    /// small databases, not for a running server's.
    pub fn dump(&self) -> StorageResult<Dump> {
        let mut trees = BTreeMap::new();
        for name in self.store.tree_names()? {
            let tree = self.store.open_tree(static_name(&name))?;
            let entries = tree
                .iter_from(b"", false)
                .map(|entry| entry.map(|(key, value)| [hex_encode(&key), hex_encode(&value)]))
                .collect::<StorageResult<Vec<_>>>()?;
            trees.insert(name, entries);
        }
        Ok(Dump {
            // Taken after the trees were read: above every id they mention.
            next_id: self.next_id()?,
            trees,
        })
    }
}

/// Writes `dump` into `store`, which must hold nothing yet, as it is (no migration), raises
/// the id base above the dump's ids, and flushes. Open the store as a [`Db`] afterwards.
pub fn load(store: &dyn Store, dump: &Dump) -> StorageResult<()> {
    for name in store.tree_names()? {
        let tree = store.open_tree(static_name(&name))?;
        if tree.iter_from(b"", false).next().transpose()?.is_some() {
            return Err(StorageError::NotEmpty(name));
        }
    }
    for name in dump.trees.keys() {
        let tree = store.open_tree(static_name(name))?;
        for chunk in dump.entries(name)?.chunks(LOAD_BATCH) {
            let mut batch = Batch::new();
            for (key, value) in chunk {
                batch.insert(&*tree, key.clone(), value.clone());
            }
            store.apply_batch(&batch)?;
        }
    }
    raise_id_base(store, dump.next_id)
}

/// Loads `dump` into a new sled database in `path` (see [`load`]) and closes it.
pub fn load_into_directory(
    path: &Path,
    cache_capacity_bytes: u64,
    dump: &Dump,
) -> StorageResult<()> {
    let store = SledStore::open(path, cache_capacity_bytes)?;
    load(&store, dump)
}

/// Tree names are `&'static str` everywhere (the services name their trees with constants);
/// a dump names them at run time. Leaks one small string per tree per dump or load, which
/// only tests and the command line do.
fn static_name(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}
