//! Export and import: every tree of a database in one file, written and read record by record,
//! the same on every backend. It is the backup format, and how a database moves from one
//! backend to another.
//!
//! The file, all numbers big-endian:
//!
//! ```text
//! "conduit-export\n"                  magic (15 bytes)
//! u32 format version                  FORMAT_VERSION; other versions are refused
//! records, each one tag byte:
//!   'T' u32 len, name                 the entries up to the next 'T' belong to this tree
//!   'E' u32 len, key, u32 len, value  one entry, ascending by key within its tree
//!   'Z' u64 next_id, u64 trees, u64 entries
//!                                     the end: an id above every id in the data, and counts
//! 32 bytes                            SHA-256 of every byte before it
//! ```
//!
//! An export holds the write gate ([`gate`](super::gate)) exclusively while it reads, so it is
//! one point in time across all trees even while the server runs. An import writes into a
//! database that holds nothing yet, as it is (no migration: the next open upgrades an older
//! schema), carries `next_id` over ([`Db::advance_ids`]) and succeeds only once the trailer's
//! checksum matches. Until then `global` holds [`IMPORT_MARKER_KEY`], and a database with that
//! key is refused at open ([`StorageError::ImportIncomplete`]): an interrupted or failed import
//! can never be mistaken for a complete database.

use std::{
    collections::BTreeSet,
    io::{self, Read, Write},
    sync::{Arc, Mutex, PoisonError},
};

use ring::digest;

use super::{Batch, Db, GLOBAL, SCHEMA_VERSION_KEY, StorageError, StorageResult, Tree};

/// The first bytes of every export file.
pub const MAGIC: &[u8] = b"conduit-export\n";
/// The format this build writes, and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// `global` key present while an import is under way (see the module docs).
pub(super) const IMPORT_MARKER_KEY: &[u8] = b"import_incomplete";

const TREE: u8 = b'T';
const ENTRY: u8 = b'E';
const END: u8 = b'Z';
/// Longest tree name accepted (the services' names are far shorter).
const MAX_NAME: usize = 255;
/// Entries per batch while importing, and bytes per batch (whichever is reached first).
const IMPORT_BATCH_ENTRIES: usize = 1_000;
const IMPORT_BATCH_BYTES: usize = 8 << 20;

/// What an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub trees: u64,
    pub entries: u64,
    /// Above every id the exported database had handed out.
    pub next_id: u64,
}

fn error(detail: impl Into<String>) -> StorageError {
    StorageError::Export(detail.into())
}

fn write_error(e: io::Error) -> StorageError {
    error(format!("cannot write the export: {e}"))
}

fn read_error(e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        error("the file ends early: it is truncated or not complete")
    } else {
        error(format!("cannot read the export: {e}"))
    }
}

impl Db {
    /// Writes every tree to `out` (give it a buffered writer), as one point in time: writes
    /// through this `Db` wait while it runs. Flushes `out`; syncing the file is the caller's.
    pub fn export(&self, out: impl Write) -> StorageResult<Summary> {
        let mut out = Hashing::new(out);
        out.write_all(MAGIC).map_err(write_error)?;
        out.write_all(&FORMAT_VERSION.to_be_bytes())
            .map_err(write_error)?;
        let exclusive = self.gate.exclusive();
        let mut names = self.store.tree_names()?;
        names.sort();
        let mut entries = 0u64;
        for name in &names {
            let tree = self.store.open_tree(intern(name))?;
            out.write_all(&[TREE]).map_err(write_error)?;
            write_bytes(&mut out, name.as_bytes())?;
            for entry in tree.iter_from(b"", false) {
                let (key, value) = entry?;
                out.write_all(&[ENTRY]).map_err(write_error)?;
                write_bytes(&mut out, &key)?;
                write_bytes(&mut out, &value)?;
                entries += 1;
            }
        }
        // Taken after every tree was read: above every id they mention.
        let next_id = self.next_id()?;
        drop(exclusive);
        let summary = Summary {
            trees: names.len() as u64,
            entries,
            next_id,
        };
        out.write_all(&[END]).map_err(write_error)?;
        for number in [summary.next_id, summary.trees, summary.entries] {
            out.write_all(&number.to_be_bytes()).map_err(write_error)?;
        }
        let (mut inner, digest) = out.finish();
        inner.write_all(digest.as_ref()).map_err(write_error)?;
        inner.flush().map_err(write_error)?;
        Ok(summary)
    }

    /// Reads an export from `input` (give it a buffered reader) into this database, which
    /// must hold nothing yet (a new database's schema version aside), then makes it durable.
    /// On an error the database holds part of the data and is refused at its next open:
    /// empty its directory before trying again.
    pub fn import(&self, input: impl Read) -> StorageResult<Summary> {
        self.check_fresh()?;
        let global = self.store.open_tree(GLOBAL)?;
        global.remove(SCHEMA_VERSION_KEY)?;
        global.insert(IMPORT_MARKER_KEY, b"")?;
        self.store.flush()?;

        let mut reader = Reader::new(input)?;
        let mut tree: Option<Arc<dyn Tree>> = None;
        let mut batch = Batch::new();
        let mut batch_bytes = 0;
        loop {
            match reader.next_record()? {
                Record::Tree(name) => {
                    if !batch.is_empty() {
                        self.store.apply_batch(&batch)?;
                        batch = Batch::new();
                        batch_bytes = 0;
                    }
                    tree = Some(self.store.open_tree(intern(&name))?);
                }
                Record::Entry(key, value) => {
                    let tree = tree
                        .as_deref()
                        .expect("the reader checks a tree came first");
                    if tree.name() == GLOBAL && key == IMPORT_MARKER_KEY {
                        return Err(error("the file marks an unfinished import"));
                    }
                    batch_bytes += key.len() + value.len();
                    batch.insert(tree, key, value);
                    if batch.ops().len() >= IMPORT_BATCH_ENTRIES
                        || batch_bytes >= IMPORT_BATCH_BYTES
                    {
                        self.store.apply_batch(&batch)?;
                        batch = Batch::new();
                        batch_bytes = 0;
                    }
                }
                Record::End => break,
            }
        }
        if !batch.is_empty() {
            // A sled transaction over no tree at all panics.
            self.store.apply_batch(&batch)?;
        }
        let summary = reader.finish()?;
        self.advance_ids(summary.next_id)?;
        global.remove(IMPORT_MARKER_KEY)?;
        self.store.flush()?;
        Ok(summary)
    }

    /// Refuses a database that holds anything but a new database's schema version.
    fn check_fresh(&self) -> StorageResult<()> {
        for name in self.store.tree_names()? {
            let tree = self.store.open_tree(intern(&name))?;
            for entry in tree.iter_from(b"", false) {
                let (key, _) = entry?;
                if !(name == GLOBAL && key == SCHEMA_VERSION_KEY) {
                    return Err(StorageError::NotEmpty(name));
                }
            }
        }
        Ok(())
    }
}

/// Reads a whole export from `input` and checks its format and checksum, writing nothing.
pub fn verify(input: impl Read) -> StorageResult<Summary> {
    let mut reader = Reader::new(input)?;
    while reader.next_record()? != Record::End {}
    reader.finish()
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> StorageResult<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| {
        error(format!(
            "a key or value of {} bytes is too long",
            bytes.len()
        ))
    })?;
    out.write_all(&len.to_be_bytes()).map_err(write_error)?;
    out.write_all(bytes).map_err(write_error)
}

/// Tree names are `&'static str` everywhere (the services name their trees with constants);
/// an export names them at run time. Each distinct name is leaked once per process, so
/// repeated backups of a running server do not grow its memory.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A writer or reader that hashes every byte that passes through it.
struct Hashing<T> {
    inner: T,
    digest: digest::Context,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            digest: digest::Context::new(&digest::SHA256),
        }
    }

    fn finish(self) -> (T, digest::Digest) {
        (self.inner, self.digest.finish())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.digest.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.digest.update(&buf[..read]);
        Ok(read)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Record {
    Tree(String),
    Entry(Vec<u8>, Vec<u8>),
    End,
}

/// Reads records and checks everything the format promises: the header, that entries
/// follow a tree, the counts, and at [`Reader::finish`] the checksum and the end of the file.
struct Reader<R> {
    input: Hashing<R>,
    in_tree: bool,
    trees: u64,
    entries: u64,
    end: Option<Summary>,
}

impl<R: Read> Reader<R> {
    fn new(input: R) -> StorageResult<Self> {
        let mut reader = Self {
            input: Hashing::new(input),
            in_tree: false,
            trees: 0,
            entries: 0,
            end: None,
        };
        let mut magic = [0; MAGIC.len()];
        reader
            .input
            .read_exact(&mut magic)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => error("this is not a conduit export file"),
                _ => read_error(e),
            })?;
        if magic != MAGIC {
            return Err(error("this is not a conduit export file"));
        }
        let version = reader.u32()?;
        if version != FORMAT_VERSION {
            return Err(error(format!(
                "the file has format version {version}, and this build reads only version \
                 {FORMAT_VERSION}; use the conduit version that wrote it, or a newer one"
            )));
        }
        Ok(reader)
    }

    fn u32(&mut self) -> StorageResult<u32> {
        let mut bytes = [0; 4];
        self.input.read_exact(&mut bytes).map_err(read_error)?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> StorageResult<u64> {
        let mut bytes = [0; 8];
        self.input.read_exact(&mut bytes).map_err(read_error)?;
        Ok(u64::from_be_bytes(bytes))
    }

    /// A length-prefixed byte string. Memory grows only as bytes actually arrive, so a
    /// corrupted length cannot make it allocate more than the file holds.
    fn bytes(&mut self) -> StorageResult<Vec<u8>> {
        let len = self.u32()? as usize;
        let mut bytes = Vec::with_capacity(len.min(64 << 10));
        (&mut self.input)
            .take(len as u64)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() < len {
            return Err(read_error(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(bytes)
    }

    fn next_record(&mut self) -> StorageResult<Record> {
        if self.end.is_some() {
            return Ok(Record::End);
        }
        let mut tag = [0];
        self.input.read_exact(&mut tag).map_err(read_error)?;
        match tag[0] {
            TREE => {
                let name = self.bytes()?;
                if name.is_empty() || name.len() > MAX_NAME {
                    return Err(error(format!("a tree name of {} bytes", name.len())));
                }
                let name =
                    String::from_utf8(name).map_err(|_| error("a tree name is not UTF-8"))?;
                self.in_tree = true;
                self.trees += 1;
                Ok(Record::Tree(name))
            }
            ENTRY if self.in_tree => {
                let key = self.bytes()?;
                let value = self.bytes()?;
                self.entries += 1;
                Ok(Record::Entry(key, value))
            }
            ENTRY => Err(error("an entry before any tree")),
            END => {
                let summary = Summary {
                    next_id: self.u64()?,
                    trees: self.u64()?,
                    entries: self.u64()?,
                };
                if (summary.trees, summary.entries) != (self.trees, self.entries) {
                    return Err(error(format!(
                        "the file says it holds {} trees and {} entries, but {} and {} were read",
                        summary.trees, summary.entries, self.trees, self.entries
                    )));
                }
                self.end = Some(summary);
                Ok(Record::End)
            }
            other => Err(error(format!(
                "unknown record type {other:#04x}: the file is corrupted"
            ))),
        }
    }

    /// After [`Record::End`]: checks the checksum and that nothing follows it.
    fn finish(self) -> StorageResult<Summary> {
        let summary = self.end.expect("finish is called after the end record");
        let (mut input, digest) = self.input.finish();
        let mut trailer = [0; 32];
        input.read_exact(&mut trailer).map_err(read_error)?;
        if trailer != digest.as_ref() {
            return Err(error("the checksum does not match: the file is corrupted"));
        }
        let mut extra = [0];
        match input.read(&mut extra).map_err(read_error)? {
            0 => Ok(summary),
            _ => Err(error("bytes follow the checksum: the file is corrupted")),
        }
    }
}

#[cfg(test)]
mod tests;
