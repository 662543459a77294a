//! `conduit export`, `import`, `backup` and `restore`: the database as one file
//! ([`storage::export`](crate::storage::export)), and a backup directory that adds the media
//! files.
//!
//! A backup directory holds:
//! - `database.export`: every tree, one point in time, checksummed;
//! - `media/`: a copy of `database_path/media/` (without its `tmp/`), taken *after* the
//!   export: an upload's file is written before its metadata, so every file the export names
//!   is there (files uploaded in between come along too and are swept at the next start);
//! - `manifest.json`: the backup format, the server name and the time, written last, so a
//!   directory without it is not a finished backup.
//!
//! While the server runs it holds the database, so `conduit backup` asks it to write the
//! backup through its admin socket ([`admin_socket`](crate::admin_socket)); with the server
//! stopped it opens the database itself. Import and restore fill only an empty (or absent)
//! data directory, and empty it again when they fail.

use std::{
    fs::{self, File},
    io::{self, BufRead, BufReader, BufWriter, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    cli,
    config::Config,
    storage::{Db, export},
};

/// The export file in a backup directory.
pub const EXPORT_FILE: &str = "database.export";
/// The manifest in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Media files, in the data directory and in a backup directory.
pub const MEDIA_DIR: &str = "media";
/// The layout of a backup directory this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;
/// The running server's admin socket, in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// What `manifest.json` says.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    backup_format: u32,
    export_format: u32,
    server_name: String,
    /// Milliseconds since the Unix epoch, and the same for people.
    created_ms: u64,
    created: String,
    trees: u64,
    entries: u64,
    media_files: u64,
    media_bytes: u64,
}

fn describe(path: &Path, error: impl std::fmt::Display) -> String {
    format!("{}: {error}", path.display())
}

/// `conduit export FILE`, on a stopped server.
pub fn export_command(config: &Config, file: &Path) -> Result<String, String> {
    let db = cli::open_database(config)?;
    let summary = export_file(&db, file)?;
    Ok(format!(
        "exported {} entries in {} trees to {}",
        summary.entries,
        summary.trees,
        file.display()
    ))
}

/// `conduit import FILE`: fills the empty data directory of `config` from an export.
pub fn import_command(config: &Config, file: &Path) -> Result<String, String> {
    let summary = import_file(config, file)?;
    Ok(format!(
        "imported {} entries in {} trees into {}",
        summary.entries,
        summary.trees,
        config.database_path.display()
    ))
}

/// `conduit backup DIR`: asks the running server to write the backup, or writes it itself
/// when no server runs.
pub fn backup_command(config: &Config, dir: &Path) -> Result<String, String> {
    let dir = std::path::absolute(dir).map_err(|e| describe(dir, e))?;
    let socket = config.database_path.join(SOCKET_FILE);
    if let Ok(stream) = UnixStream::connect(&socket) {
        return ask_server(stream, &dir);
    }
    // Nobody listens: the server is stopped (or predates the socket, and the open says so).
    let db = cli::open_database(config)?;
    write_backup(&db, config, &dir)
}

/// `conduit restore DIR`: fills the empty data directory of `config` from a backup.
pub fn restore_command(config: &Config, dir: &Path) -> Result<String, String> {
    let manifest = read_manifest(dir)?;
    if manifest.backup_format != BACKUP_FORMAT {
        return Err(format!(
            "{} has backup format {}, and this build reads only format {BACKUP_FORMAT}",
            dir.display(),
            manifest.backup_format
        ));
    }
    if manifest.server_name != config.server_name.as_str() {
        return Err(format!(
            "the backup is of server {}, but server_name is {} in the configuration: a \
             server's name cannot change, so set server_name = \"{}\"",
            manifest.server_name, config.server_name, manifest.server_name
        ));
    }
    let export = dir.join(EXPORT_FILE);
    let summary = import_file(config, &export)?;
    let data = &config.database_path;
    let media = copy_tree(&dir.join(MEDIA_DIR), &data.join(MEDIA_DIR));
    let (files, _) = media.map_err(|e| {
        empty_directory(data);
        format!(
            "cannot copy the media files back ({e}); nothing was restored: {} is empty again",
            data.display()
        )
    })?;
    Ok(format!(
        "restored {} entries in {} trees and {files} media files from the backup of {} taken {}",
        summary.entries, summary.trees, manifest.server_name, manifest.created
    ))
}

/// Writes a backup of `db` (whose data directory and server are `config`'s) into `dir`, which
/// must be empty or absent. On failure `dir` is left empty. The server calls this too.
pub fn write_backup(db: &Db, config: &Config, dir: &Path) -> Result<String, String> {
    let data = std::path::absolute(&config.database_path)
        .map_err(|e| describe(&config.database_path, e))?;
    if dir.starts_with(&data) {
        // It would copy media into itself, and die with the data it protects.
        return Err(format!(
            "{} is inside the data directory {}: put backups elsewhere",
            dir.display(),
            data.display()
        ));
    }
    prepare_empty_dir(dir, "a backup goes into a new or empty directory")?;
    let result = (|| {
        let summary = export_file(db, &dir.join(EXPORT_FILE))?;
        let (media_files, media_bytes) =
            copy_tree(&config.database_path.join(MEDIA_DIR), &dir.join(MEDIA_DIR))
                .map_err(|e| format!("cannot copy the media files: {e}"))?;
        let now = SystemTime::now();
        let manifest = Manifest {
            backup_format: BACKUP_FORMAT,
            export_format: export::FORMAT_VERSION,
            server_name: config.server_name.to_string(),
            created_ms: now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            created: httpdate::fmt_http_date(now),
            trees: summary.trees,
            entries: summary.entries,
            media_files,
            media_bytes,
        };
        let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        write_durably(&dir.join(MANIFEST_FILE), &text).map_err(|e| describe(dir, e))?;
        Ok(format!(
            "backup written to {}: {} entries in {} trees, {media_files} media files \
             ({media_bytes} bytes)",
            dir.display(),
            summary.entries,
            summary.trees
        ))
    })();
    if result.is_err() {
        empty_directory(dir);
    }
    result
}

/// Exports `db` into a new file `path`, through `path.partial`, synced before it is renamed.
pub fn export_file(db: &Db, path: &Path) -> Result<export::Summary, String> {
    if path.symlink_metadata().is_ok() {
        return Err(format!(
            "{} exists already: choose a new file name",
            path.display()
        ));
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let file = File::create(&partial).map_err(|e| describe(&partial, e))?;
        let mut out = BufWriter::with_capacity(64 << 10, file);
        let summary = db.export(&mut out).map_err(|e| e.to_string())?;
        let file = out
            .into_inner()
            .map_err(|e| describe(&partial, e.into_error()))?;
        file.sync_all().map_err(|e| describe(&partial, e))?;
        fs::rename(&partial, path).map_err(|e| describe(path, e))?;
        sync_parent(path).map_err(|e| describe(path, e))?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Checks `file` whole, then imports it into the empty data directory of `config`. On
/// failure the directory is left empty.
fn import_file(config: &Config, file: &Path) -> Result<export::Summary, String> {
    let open = || {
        File::open(file)
            .map(|file| BufReader::with_capacity(64 << 10, file))
            .map_err(|e| describe(file, e))
    };
    export::verify(open()?).map_err(|e| format!("{}: {e}", file.display()))?;
    let data = &config.database_path;
    prepare_empty_dir(
        data,
        "import and restore fill only a new or empty data directory (database_path)",
    )?;
    // A failure to open is not cleaned up after: the lock may be another import's.
    let db = cli::open_database(config)?;
    let result = (|| -> Result<export::Summary, String> {
        let summary = db
            .import(open()?)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        drop(db);
        // Opening it again checks it, and upgrades an export from an older version.
        drop(cli::open_database(config)?);
        Ok(summary)
    })();
    result.map_err(|e| {
        empty_directory(data);
        format!(
            "{e}; nothing was imported: {} is empty again",
            data.display()
        )
    })
}

/// Creates `dir`, or checks that it is an empty directory.
fn prepare_empty_dir(dir: &Path, why: &str) -> Result<(), String> {
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(format!("{} is not empty: {why}", dir.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| describe(dir, e))
        }
        Err(e) => Err(describe(dir, e)),
    }
}

/// Removes everything in `dir` (which was empty before we filled it); best effort.
fn empty_directory(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), "cannot clean up: {e}");
        }
    }
}

/// Copies the files under `from` into `to` (created), skipping `from/tmp/` (uploads in
/// progress), symbolic links, and files deleted while it runs; each file and directory is
/// synced. A missing `from` copies nothing. Returns the files and bytes copied.
fn copy_tree(from: &Path, to: &Path) -> io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    if !from.try_exists()? {
        return Ok((0, 0));
    }
    let mut pending = vec![(from.to_owned(), to.to_owned())];
    while let Some((source, target)) = pending.pop() {
        fs::create_dir_all(&target)?;
        let entries = match fs::read_dir(&source) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            let (source_path, target_path) = (entry.path(), target.join(entry.file_name()));
            if kind.is_dir() {
                if !(source == from && entry.file_name() == "tmp") {
                    pending.push((source_path, target_path));
                }
            } else if kind.is_file() {
                match fs::copy(&source_path, &target_path) {
                    Ok(copied) => {
                        File::open(&target_path)?.sync_all()?;
                        files += 1;
                        bytes += copied;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        File::open(&target)?.sync_all()?;
    }
    Ok((files, bytes))
}

/// Writes `bytes` to `path` through a temporary file, synced and renamed.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let mut text = Vec::new();
    File::open(&path)
        .and_then(|file| file.take(64 << 10).read_to_end(&mut text))
        .map_err(|e| {
            format!(
                "{}: {e} (a finished backup directory holds {MANIFEST_FILE})",
                path.display()
            )
        })?;
    serde_json::from_slice(&text).map_err(|e| describe(&path, e))
}

/// Sends `backup DIR` to the running server and waits for its one-line answer.
fn ask_server(mut stream: UnixStream, dir: &Path) -> Result<String, String> {
    let dir = dir
        .to_str()
        .filter(|dir| !dir.contains('\n'))
        .ok_or_else(|| format!("{}: use a path of UTF-8 without line breaks", dir.display()))?;
    let talk = |stream: &mut UnixStream| -> io::Result<String> {
        stream.write_all(format!("backup {dir}\n").as_bytes())?;
        let mut answer = String::new();
        BufReader::new(stream.take(64 << 10)).read_line(&mut answer)?;
        Ok(answer)
    };
    let answer = talk(&mut stream).map_err(|e| format!("the running server: {e}"))?;
    match answer.trim_end().split_once(' ') {
        Some(("ok", message)) => Ok(message.to_owned()),
        Some(("error", message)) => Err(format!("the running server: {message}")),
        _ => Err(format!(
            "the running server gave no answer (its log may say why): {answer:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_copies_skip_uploads_in_progress() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let to = to.path().join("media");
        fs::create_dir_all(from.path().join("blobs/ab")).unwrap();
        fs::create_dir_all(from.path().join("tmp")).unwrap();
        fs::write(from.path().join("blobs/ab/abcd"), b"content").unwrap();
        fs::write(from.path().join("tmp/partial"), b"half").unwrap();
        assert_eq!(copy_tree(from.path(), &to).unwrap(), (1, 7));
        assert_eq!(fs::read(to.join("blobs/ab/abcd")).unwrap(), b"content");
        assert!(!to.join("tmp").exists());
        // Nothing to copy is not an error.
        let nothing = from.path().join("missing");
        assert_eq!(copy_tree(&nothing, &to.join("more")).unwrap(), (0, 0));
    }

    #[test]
    fn only_new_or_empty_directories_are_filled() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        prepare_empty_dir(&new, "why").unwrap();
        assert!(new.is_dir());
        prepare_empty_dir(&new, "why").unwrap();
        fs::write(new.join("file"), b"").unwrap();
        let refused = prepare_empty_dir(&new, "the reason").unwrap_err();
        assert!(refused.contains("not empty: the reason"), "{refused}");
        empty_directory(&new);
        prepare_empty_dir(&new, "why").unwrap();
    }
}
