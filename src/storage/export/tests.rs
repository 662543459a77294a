use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{FORMAT_VERSION, MAGIC, Summary, verify};
use crate::storage::{Batch, Db, ID_BASE_KEY, StorageError, dump::Dump};

fn open_sled(path: &Path) -> Db {
    Db::open_sled(path, 1 << 20, &[]).expect("open sled")
}

/// A memory database and one of each real backend in a directory that lives as long as the
/// closure runs.
fn with_each_backend(test: impl Fn(&dyn Fn() -> Db)) {
    test(&Db::memory);
    type Opener = fn(&Path, u64, &[crate::storage::Migration]) -> crate::storage::StorageResult<Db>;
    let openers: [Opener; 3] = [Db::open_sled, Db::open_fjall, Db::open_redb];
    for open in openers {
        let dirs = std::sync::Mutex::new(Vec::new());
        test(&|| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let db = open(dir.path(), 1 << 20, &[]).expect("open the database");
            dirs.lock().unwrap().push(dir);
            db
        });
    }
}

/// Some entries in three trees (one of them empty) and a few ids handed out; the largest id.
fn fill(db: &Db) -> u64 {
    let events = db.tree("events").unwrap();
    let users = db.tree("users").unwrap();
    // Last in name order: the import ends on an empty batch.
    db.tree("zz_empty").unwrap();
    let mut batch = Batch::new();
    for n in 0..50u32 {
        batch.insert(&*events, n.to_be_bytes(), vec![n as u8; n as usize]);
    }
    batch.insert(&*users, b"alice".to_vec(), Vec::new());
    batch.insert(&*users, Vec::new(), b"an empty key".to_vec());
    db.apply(&batch).unwrap();
    (0..5).map(|_| db.next_id().unwrap()).max().unwrap()
}

fn export(db: &Db) -> Vec<u8> {
    let mut out = Vec::new();
    db.export(&mut out).expect("export");
    out
}

/// The dump without the id base, which an import adds.
fn content(db: &Db) -> Dump {
    let mut dump = db.dump().unwrap();
    if let Some(global) = dump.trees.get_mut("global") {
        let id_base = crate::crypto::hex_encode(ID_BASE_KEY);
        global.retain(|[key, _]| *key != id_base);
    }
    dump.next_id = 0;
    dump
}

fn export_error(result: Result<Summary, StorageError>) -> String {
    match result {
        Err(StorageError::Export(detail)) => detail,
        other => panic!("expected an export error, got {other:?}"),
    }
}

#[test]
fn a_round_trip_keeps_every_tree_and_entry_and_ids_continue_above() {
    with_each_backend(|new_db| {
        let source = new_db();
        let last_id = fill(&source);
        let bytes = export(&source);
        assert!(bytes.starts_with(MAGIC));

        let target = new_db();
        let summary = target.import(&bytes[..]).expect("import");
        assert_eq!(
            summary.entries,
            52 + 1,
            "50 events, 2 users, the schema version"
        );
        assert!(summary.next_id > last_id);
        assert_eq!(content(&target), content(&source));
        assert!(target.next_id().unwrap() > last_id);
        assert_eq!(verify(&bytes[..]).unwrap(), summary);
    });
}

#[test]
fn an_imported_sled_database_reopens_with_its_data_and_ids() {
    let source = Db::memory();
    let last_id = fill(&source);
    let bytes = export(&source);
    let dir = tempfile::tempdir().unwrap();
    open_sled(dir.path()).import(&bytes[..]).expect("import");
    let reopened = open_sled(dir.path());
    assert_eq!(content(&reopened), content(&source));
    assert!(reopened.next_id().unwrap() > last_id);
}

#[test]
fn a_sled_database_moves_to_fjall_and_back_unchanged() {
    // How an existing sled database moves to the default backend (README, "Backup and
    // restore"): export from sled, import into a new fjall database.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let sled = open_sled(dirs[0].path());
    let last_id = fill(&sled);
    let fjall = Db::open_fjall(dirs[1].path(), 1 << 20, &[]).unwrap();
    fjall.import(&export(&sled)[..]).expect("import into fjall");
    assert_eq!(content(&fjall), content(&sled));
    assert!(fjall.next_id().unwrap() > last_id);
    let back = open_sled(dirs[2].path());
    back.import(&export(&fjall)[..])
        .expect("import back into sled");
    assert_eq!(content(&back), content(&sled));
}

#[test]
fn a_truncated_file_is_refused() {
    let source = Db::memory();
    fill(&source);
    let bytes = export(&source);
    for len in 0..bytes.len() {
        let detail = export_error(verify(&bytes[..len]));
        assert!(
            detail.contains("truncated") || detail.contains("not a conduit export"),
            "cut at {len}: {detail}"
        );
        export_error(Db::memory().import(&bytes[..len]));
    }
}

#[test]
fn any_changed_byte_is_refused() {
    let source = Db::memory();
    fill(&source);
    let bytes = export(&source);
    for at in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[at] ^= 0x20;
        export_error(verify(&changed[..]));
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(export_error(verify(&longer[..])).contains("follow the checksum"));
    let mut wrong_sum = bytes;
    *wrong_sum.last_mut().unwrap() ^= 1;
    assert!(export_error(Db::memory().import(&wrong_sum[..])).contains("checksum"));
}

#[test]
fn an_unknown_version_is_refused() {
    let source = Db::memory();
    fill(&source);
    let mut bytes = export(&source);
    let at = MAGIC.len();
    bytes[at..at + 4].copy_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
    let detail = export_error(Db::memory().import(&bytes[..]));
    assert!(
        detail.contains(&format!("format version {}", FORMAT_VERSION + 1)),
        "{detail}"
    );
    assert!(export_error(verify(&b"PK\x03\x04 a zip file"[..])).contains("not a conduit export"));
}

#[test]
fn an_import_into_a_database_with_data_is_refused() {
    with_each_backend(|new_db| {
        let source = new_db();
        fill(&source);
        let bytes = export(&source);
        let target = new_db();
        target.tree("users").unwrap().insert(b"bob", b"").unwrap();
        match target.import(&bytes[..]) {
            Err(StorageError::NotEmpty(tree)) => assert_eq!(tree, "users"),
            other => panic!("expected NotEmpty, got {other:?}"),
        }
        assert_eq!(
            target
                .tree("events")
                .unwrap()
                .get(&0u32.to_be_bytes())
                .unwrap(),
            None
        );
    });
}

#[test]
fn a_failed_import_is_refused_at_the_next_open() {
    let source = Db::memory();
    fill(&source);
    let bytes = export(&source);
    let dir = tempfile::tempdir().unwrap();
    export_error(open_sled(dir.path()).import(&bytes[..bytes.len() - 1]));
    match Db::open_sled(dir.path(), 1 << 20, &[]) {
        Err(StorageError::ImportIncomplete) => {}
        Err(other) => panic!("expected ImportIncomplete, got {other}"),
        Ok(_) => panic!("a half-imported database opened"),
    }
}

/// A writer puts the same key into two trees in one batch, then the same key into a third
/// and a fourth tree one insert at a time; an export taken meanwhile never sees a batch
/// half-applied, nor the later single write without the earlier one.
#[test]
fn an_export_is_one_point_in_time_while_writes_go_on() {
    const WRITES: u64 = 3_000;
    with_each_backend(|new_db| {
        let db = new_db();
        let (left, right) = (db.tree("left").unwrap(), db.tree("right").unwrap());
        let (first, second) = (db.tree("first").unwrap(), db.tree("second").unwrap());
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, written) = (db.clone(), Arc::clone(&written));
            std::thread::spawn(move || {
                for n in 1..=WRITES {
                    let mut batch = Batch::new();
                    batch.insert(&*left, n.to_be_bytes(), Vec::new());
                    batch.insert(&*right, n.to_be_bytes(), Vec::new());
                    db.apply(&batch).unwrap();
                    first.insert(&n.to_be_bytes(), b"").unwrap();
                    second.insert(&n.to_be_bytes(), b"").unwrap();
                    written.store(n, Ordering::SeqCst);
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = written.load(Ordering::SeqCst) == WRITES;
            let copy = Db::memory();
            copy.import(&export(&db)[..]).unwrap();
            let dump = copy.dump().unwrap();
            let empty = Vec::new();
            let tree = |name: &str| dump.trees.get(name).unwrap_or(&empty).len();
            assert_eq!(tree("left"), tree("right"));
            assert!(tree("first") >= tree("second"));
            assert!(tree("first") <= tree("second") + 1);
            assert!(tree("left") >= tree("first"));
            assert!(tree("left") <= tree("second") + 1);
            if done {
                assert_eq!(tree("second") as u64, WRITES);
                break;
            }
            assert!(Instant::now() < deadline, "the writer did not finish");
        }
        writer.join().unwrap();
    });
}
