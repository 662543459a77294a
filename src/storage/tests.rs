//! One suite, every backend: each test runs against the in-memory store and against sled and
//! redb in temporary directories, so they cannot drift apart.

use std::{path::Path, sync::Arc};

use super::{
    Batch, Db, Migration, SCHEMA_VERSION, StorageError, StorageResult, Store, dump,
    memory::{self, MemoryStore},
    sled::SledStore,
};

fn with_each_backend(test: impl Fn(Db)) {
    test(Db::memory());
    let dir = tempfile::tempdir().expect("temporary directory");
    test(Db::open_sled(dir.path(), 8 << 20, &[]).expect("open sled"));
    let dir = tempfile::tempdir().expect("temporary directory");
    test(Db::open_fjall(dir.path(), 8 << 20, &[]).expect("open fjall"));
    let dir = tempfile::tempdir().expect("temporary directory");
    test(open_redb(dir.path()));
}

/// Each real backend's opener, for the tests of what must survive a reopen.
const DURABLE: [(&str, Opener); 3] = [
    ("sled", Db::open_sled),
    ("fjall", Db::open_fjall),
    ("redb", Db::open_redb),
];
type Opener = fn(&std::path::Path, u64, &[Migration]) -> StorageResult<Db>;

fn collect(iter: super::KvIter<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    iter.collect::<Result<_, _>>().expect("iteration")
}

#[test]
fn get_insert_remove() {
    with_each_backend(|db| {
        let tree = db.tree("t").unwrap();
        assert_eq!(tree.get(b"a").unwrap(), None);
        tree.insert(b"a", b"1").unwrap();
        assert_eq!(tree.get(b"a").unwrap(), Some(b"1".to_vec()));
        tree.insert(b"a", b"2").unwrap();
        assert_eq!(tree.get(b"a").unwrap(), Some(b"2".to_vec()));
        tree.remove(b"a").unwrap();
        assert_eq!(tree.get(b"a").unwrap(), None);
        // Removing what is not there is not an error.
        tree.remove(b"a").unwrap();
    });
}

#[test]
fn trees_are_separate() {
    with_each_backend(|db| {
        db.tree("one").unwrap().insert(b"k", b"1").unwrap();
        assert_eq!(db.tree("two").unwrap().get(b"k").unwrap(), None);
    });
}

#[test]
fn prefix_scan_is_ordered_and_bounded() {
    with_each_backend(|db| {
        let tree = db.tree("t").unwrap();
        for key in [&b"ab\xff2"[..], b"ab\xff1", b"ac", b"a", b"ab\xff10", b"b"] {
            tree.insert(key, b"v").unwrap();
        }
        let keys: Vec<_> = collect(tree.scan_prefix(b"ab\xff"))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            vec![
                b"ab\xff1".to_vec(),
                b"ab\xff10".to_vec(),
                b"ab\xff2".to_vec()
            ]
        );
        assert!(collect(tree.scan_prefix(b"zz")).is_empty());
    });
}

#[test]
fn iter_from_both_directions() {
    with_each_backend(|db| {
        let tree = db.tree("t").unwrap();
        for n in 1u8..=5 {
            tree.insert(&[n], &[n]).unwrap();
        }
        let up: Vec<u8> = collect(tree.iter_from(&[3], false))
            .into_iter()
            .map(|(k, _)| k[0])
            .collect();
        assert_eq!(up, vec![3, 4, 5]);
        let down: Vec<u8> = collect(tree.iter_from(&[3], true))
            .into_iter()
            .map(|(k, _)| k[0])
            .collect();
        assert_eq!(down, vec![3, 2, 1]);
    });
}

#[test]
fn batch_spans_trees() {
    with_each_backend(|db| {
        let users = db.tree("users").unwrap();
        let tokens = db.tree("tokens").unwrap();
        users.insert(b"old", b"x").unwrap();
        let mut batch = Batch::new();
        batch.insert(&*users, b"alice".to_vec(), b"1".to_vec());
        batch.insert(&*tokens, b"tok".to_vec(), b"alice".to_vec());
        batch.remove(&*users, b"old".to_vec());
        db.apply(&batch).unwrap();
        assert_eq!(users.get(b"alice").unwrap(), Some(b"1".to_vec()));
        assert_eq!(tokens.get(b"tok").unwrap(), Some(b"alice".to_vec()));
        assert_eq!(users.get(b"old").unwrap(), None);
    });
}

#[test]
fn typed_table_round_trip_and_corruption() {
    with_each_backend(|db| {
        let table = db.table::<Vec<String>>("typed").unwrap();
        table.insert(b"k", &vec!["a".to_owned()]).unwrap();
        assert_eq!(table.get(b"k").unwrap(), Some(vec!["a".to_owned()]));
        table.tree().insert(b"bad", b"not json").unwrap();
        assert!(matches!(
            table.get(b"bad"),
            Err(StorageError::Corrupt { tree: "typed", .. })
        ));
    });
}

#[test]
fn next_id_increases_and_survives_reopen() {
    with_each_backend(|db| {
        let a = db.next_id().unwrap();
        let b = db.next_id().unwrap();
        assert!(a >= 1 && b > a);
    });
    for (name, open) in DURABLE {
        let dir = tempfile::tempdir().unwrap();
        // More ids than fjall reserves at a time, so the reopen crosses a block.
        let last = {
            let db = open(dir.path(), 8 << 20, &[]).unwrap();
            (0..2_500).fold(0, |_, _| db.next_id().unwrap())
        };
        let db = open(dir.path(), 8 << 20, &[]).unwrap();
        assert!(db.next_id().unwrap() > last, "{name}");
    }
}

#[test]
fn schema_version_is_written() {
    with_each_backend(|db| {
        let version = db
            .tree("global")
            .unwrap()
            .get(b"schema_version")
            .unwrap()
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_be_bytes().to_vec());
    });
}

#[test]
fn newer_schema_is_refused() {
    // A build refuses a database of a later version than its own.
    let newer = SCHEMA_VERSION + 1;
    let dir = tempfile::tempdir().unwrap();
    drop(open_at(dir.path(), &[], newer).unwrap());
    match Db::open_sled(dir.path(), 8 << 20, &[]) {
        Err(StorageError::TooNew { found, known }) => {
            assert_eq!((found, known), (newer, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {:?}", other.err()),
    }
}

#[test]
fn foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What Conduit leaves: a `global` tree with its own version key, no schema_version.
        super::sled::write_foreign(dir.path(), "global", b"version", &13u64.to_be_bytes());
    }
    assert!(matches!(
        Db::open_sled(dir.path(), 8 << 20, &[]),
        Err(StorageError::Foreign)
    ));
}

#[test]
fn second_open_is_refused_while_first_is_open() {
    for (name, open) in DURABLE {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), 8 << 20, &[]).unwrap();
        // Both lock a file (flock), per open file description, so a second open in the
        // same process is refused just as one from another process would be.
        match open(dir.path(), 8 << 20, &[]) {
            Err(StorageError::Locked(path)) => {
                assert!(path.contains(&*dir.path().to_string_lossy()), "{name}")
            }
            other => panic!("{name}: expected Locked, got {:?}", other.err()),
        }
    }
}

#[test]
fn the_backend_found_is_opened_and_another_configured_one_refused() {
    use super::Backend;
    for backend in [Backend::Sled, Backend::Fjall, Backend::Redb] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), Some(backend), 8 << 20, &[]).unwrap();
            db.tree("t")
                .unwrap()
                .insert(b"k", backend.name().as_bytes())
                .unwrap();
            db.flush_blocking().unwrap();
        }
        assert_eq!(Backend::found_in(dir.path()), Some(backend));
        // Unconfigured, whatever is there is opened.
        let db = Db::open(dir.path(), None, 8 << 20, &[]).unwrap();
        assert_eq!(
            db.tree("t").unwrap().get(b"k").unwrap(),
            Some(backend.name().as_bytes().to_vec())
        );
        drop(db);
        let other = match backend {
            Backend::Sled => Backend::Fjall,
            Backend::Fjall | Backend::Redb => Backend::Sled,
        };
        assert!(matches!(
            Db::open(dir.path(), Some(other), 8 << 20, &[]),
            Err(StorageError::OtherBackend { .. })
        ));
    }
    // An empty directory gets the default; one with another server's database nothing.
    let dir = tempfile::tempdir().unwrap();
    drop(Db::open(dir.path(), None, 8 << 20, &[]).unwrap());
    assert_eq!(Backend::found_in(dir.path()), Some(Backend::DEFAULT));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("conduit.db"), b"SQLite format 3\0").unwrap();
    assert!(matches!(
        Db::open(dir.path(), None, 8 << 20, &[]),
        Err(StorageError::Foreign)
    ));
}

#[test]
fn data_survives_reopen() {
    for (_name, open) in DURABLE {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(dir.path(), 8 << 20, &[]).unwrap();
            db.tree("t").unwrap().insert(b"k", b"v").unwrap();
            db.flush_blocking().unwrap();
        }
        let db = open(dir.path(), 8 << 20, &[]).unwrap();
        assert_eq!(
            db.tree("t").unwrap().get(b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }
}

#[tokio::test]
async fn concurrent_persist_calls_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_fjall(dir.path(), 8 << 20, &[]).unwrap();
    let tree = db.tree("t").unwrap();
    let mut tasks = Vec::new();
    for n in 0u32..32 {
        let db = db.clone();
        tree.insert(&n.to_be_bytes(), b"v").unwrap();
        tasks.push(tokio::spawn(async move { db.persist().await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // Group commit: far fewer flushes than callers, and at least one.
    let flushes = db.flush.started.load(std::sync::atomic::Ordering::Acquire);
    assert!((1..=32).contains(&flushes), "flushes: {flushes}");
}

#[test]
fn a_closed_database_reopens_at_once() {
    for (_name, open) in DURABLE {
        // Closing is complete when the last handle is dropped: reopening in the same process
        // never finds sled's lock still held (it used to, now and then, after a write).
        let dir = tempfile::tempdir().unwrap();
        for n in 0u32..30 {
            let db = open(dir.path(), 8 << 20, &[]).unwrap();
            let tree = db.tree("t").unwrap();
            assert_eq!(
                tree.get(b"n").unwrap(),
                n.checked_sub(1).map(|p| p.to_be_bytes().to_vec())
            );
            tree.insert(b"n", &n.to_be_bytes()).unwrap();
            db.flush_blocking().unwrap();
        }
    }
}

#[test]
fn a_tree_keeps_the_database_open_until_it_is_dropped() {
    for (_name, open) in DURABLE {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), 8 << 20, &[]).unwrap();
        let tree = db.tree("t").unwrap();
        drop(db);
        tree.insert(b"k", b"v").unwrap();
        assert!(matches!(
            open(dir.path(), 8 << 20, &[]),
            Err(StorageError::Locked(_))
        ));
        drop(tree);
        let db = open(dir.path(), 8 << 20, &[]).unwrap();
        assert_eq!(
            db.tree("t").unwrap().get(b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }
}

/// Opens the sled database in `path` as a build whose latest version is `latest`.
fn open_at(path: &std::path::Path, steps: &[Migration], latest: u64) -> StorageResult<Db> {
    Db::with_store(
        Arc::new(SledStore::open(path, 8 << 20)?),
        super::space::Space::new(path),
        steps,
        latest,
    )
}

/// Appends `digit` to `order` in tree `log`: the steps below record that (and when) they ran.
fn record(db: &Db, digit: u8) -> StorageResult<()> {
    let log = db.tree("log")?;
    let mut order = log.get(b"order")?.unwrap_or_default();
    order.push(digit);
    log.insert(b"order", &order)
}

fn order(db: &Db) -> Vec<u8> {
    db.tree("log")
        .unwrap()
        .get(b"order")
        .unwrap()
        .unwrap_or_default()
}

static RECORDING: &[Migration] = &[
    // Listed out of order on purpose: they run by version.
    Migration {
        to: 3,
        name: "three",
        run: |db| record(db, b'3'),
    },
    Migration {
        to: 2,
        name: "two",
        run: |db| record(db, b'2'),
    },
];

#[test]
fn steps_run_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_at(dir.path(), &[], 1).unwrap());
    {
        let db = open_at(dir.path(), RECORDING, 3).unwrap();
        assert_eq!(order(&db), b"23");
        assert_eq!(db.schema_version().unwrap(), 3);
    }
    // A second open finds nothing to do.
    let db = open_at(dir.path(), RECORDING, 3).unwrap();
    assert_eq!(order(&db), b"23");
    assert_eq!(db.schema_version().unwrap(), 3);
}

#[test]
fn steps_after_the_found_version_only() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_at(dir.path(), &[], 2).unwrap());
    let db = open_at(dir.path(), RECORDING, 3).unwrap();
    assert_eq!(order(&db), b"3");
}

#[test]
fn a_new_database_runs_no_step() {
    let db = Db::with_store(
        Arc::new(MemoryStore::default()),
        super::space::Space::unlimited(),
        RECORDING,
        3,
    )
    .unwrap();
    assert_eq!(order(&db), b"");
    assert_eq!(db.schema_version().unwrap(), 3);
    let dir = tempfile::tempdir().unwrap();
    let db = open_at(dir.path(), RECORDING, 3).unwrap();
    assert_eq!(order(&db), b"");
    assert_eq!(db.schema_version().unwrap(), 3);
    assert_eq!(Db::memory().schema_version().unwrap(), SCHEMA_VERSION);
}

/// Fails while `log` has a `fail` key, after doing part of its work.
static FAILING: &[Migration] = &[Migration {
    to: 2,
    name: "fails while told to",
    run: |db| {
        record(db, b'2')?;
        if db.tree("log")?.get(b"fail")?.is_some() {
            return Err(StorageError::Backend("the step failed".into()));
        }
        Ok(())
    },
}];

#[test]
fn a_failed_step_keeps_the_version_and_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_at(dir.path(), &[], 1).unwrap();
        db.tree("log").unwrap().insert(b"fail", b"").unwrap();
        db.flush_blocking().unwrap();
    }
    assert!(matches!(
        open_at(dir.path(), FAILING, 2),
        Err(StorageError::Backend(_))
    ));
    {
        let db = open_at(dir.path(), &[], 1).unwrap();
        assert_eq!(db.schema_version().unwrap(), 1, "not upgraded");
        db.tree("log").unwrap().remove(b"fail").unwrap();
        db.flush_blocking().unwrap();
    }
    let db = open_at(dir.path(), FAILING, 2).unwrap();
    assert_eq!(order(&db), b"22", "the step ran again");
    assert_eq!(db.schema_version().unwrap(), 2);
}

#[test]
fn an_old_database_without_its_step_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_at(dir.path(), &[], 1).unwrap());
    match open_at(dir.path(), &[], 2) {
        Err(StorageError::NoMigration { found: 1, to: 2 }) => {}
        other => panic!("expected NoMigration, got {:?}", other.err()),
    }
    assert_eq!(
        open_at(dir.path(), &[], 1)
            .unwrap()
            .schema_version()
            .unwrap(),
        1
    );
}

#[test]
fn advanced_ids_stay_above_and_survive_reopen() {
    with_each_backend(|db| {
        let a = db.next_id().unwrap();
        db.advance_ids(a + 1_000).unwrap();
        let b = db.next_id().unwrap();
        assert!(b > a + 1_000);
        // Advancing to less changes nothing.
        db.advance_ids(5).unwrap();
        assert!(db.next_id().unwrap() > b);
    });
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let db = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
        db.advance_ids(1 << 40).unwrap();
        db.next_id().unwrap()
    };
    assert!(last > 1 << 40);
    let db = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
    assert!(db.next_id().unwrap() > last);
}

fn fill(db: &Db) {
    let one = db.tree("one").unwrap();
    for n in 0u8..10 {
        one.insert(&[n, 0xFF], &[n; 3]).unwrap();
    }
    db.tree("two").unwrap().insert(b"", b"empty key").unwrap();
    db.tree("three").unwrap();
    for _ in 0..50 {
        db.next_id().unwrap();
    }
}

#[test]
fn tree_names_list_every_tree() {
    with_each_backend(|db| {
        fill(&db);
        let mut names = db.store.tree_names().unwrap();
        names.sort();
        assert_eq!(names, ["global", "one", "three", "two"]);
    });
}

#[test]
fn a_dump_loads_into_a_fresh_store_unchanged() {
    with_each_backend(|db| {
        fill(&db);
        let dump = db.dump().unwrap();
        assert_eq!(dump.entries("one").unwrap().len(), 10);
        assert_eq!(dump::Dump::parse(dump.to_json().as_bytes()).unwrap(), dump);

        // Into memory.
        let store = Arc::new(MemoryStore::default());
        dump::load(&*store, &dump).unwrap();
        let loaded =
            Db::with_store(store, super::space::Space::unlimited(), &[], SCHEMA_VERSION).unwrap();
        assert!(loaded.next_id().unwrap() > dump.next_id);
        let again = loaded.dump().unwrap();
        assert_eq!(again.trees.get("one"), dump.trees.get("one"));
        assert_eq!(again.trees.get("two"), dump.trees.get("two"));
        assert_eq!(again.trees.get("three"), Some(&Vec::new()));

        // Into a sled directory.
        let dir = tempfile::tempdir().unwrap();
        dump::load_into_directory(dir.path(), 8 << 20, &dump).unwrap();
        let loaded = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
        assert!(loaded.next_id().unwrap() > dump.next_id);
        assert_eq!(
            loaded.dump().unwrap().trees.get("one"),
            dump.trees.get("one")
        );
    });
}

#[test]
fn a_dump_is_not_loaded_over_data() {
    let db = Db::memory();
    fill(&db);
    let dump = db.dump().unwrap();
    let store = MemoryStore::default();
    store.open_tree("x").unwrap().insert(b"k", b"v").unwrap();
    assert!(matches!(
        dump::load(&store, &dump),
        Err(StorageError::NotEmpty(name)) if name == "x"
    ));
    assert!(matches!(
        dump::Dump::parse(br#"{"next_id": 1, "trees": {"t": [["zz", "00"]]}}"#)
            .and_then(|dump| dump.entries("t")),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn a_failing_store_fails_the_chosen_gets() {
    let (db, switch) = Db::failing();
    let tree = db.tree("t").unwrap();
    let other = db.tree("other").unwrap();
    tree.insert(b"k", b"v").unwrap();
    let get = |tree: &dyn super::Tree| tree.get(b"k");
    assert_eq!(get(&*tree).unwrap(), Some(b"v".to_vec()));

    // Once: the second get fails, the others do not.
    switch.arm(memory::Failure {
        after: 2,
        tree: None,
        persistent: false,
    });
    assert!(get(&*tree).is_ok());
    assert!(matches!(get(&*other), Err(StorageError::Backend(_))));
    assert_eq!(get(&*tree).unwrap(), Some(b"v".to_vec()));
    assert_eq!(switch.failed(), 1);

    // Persistent, on one tree only: others are not counted and do not fail.
    switch.arm(memory::Failure {
        after: 1,
        tree: Some("t"),
        persistent: true,
    });
    assert!(get(&*other).is_ok());
    for _ in 0..3 {
        assert!(matches!(get(&*tree), Err(StorageError::Backend(_))));
    }
    // Writes and scans still work; disarmed, gets do too.
    tree.insert(b"k2", b"v2").unwrap();
    assert_eq!(collect(tree.scan_prefix(b"k")).len(), 2);
    switch.disarm();
    assert_eq!(get(&*tree).unwrap(), Some(b"v".to_vec()));
    assert_eq!(switch.failed(), 4);
}

#[test]
fn an_overlong_key_is_an_error_on_fjall_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_fjall(dir.path(), 8 << 20, &[]).unwrap();
    let tree = db.tree("t").unwrap();
    let key = vec![b'k'; 70_000];
    assert!(matches!(
        tree.insert(&key, b"v"),
        Err(StorageError::Backend(_))
    ));
    let mut batch = Batch::new();
    batch.insert(&*tree, key.clone(), b"v".to_vec());
    assert!(db.apply(&batch).is_err());
    // Reads of a key that cannot exist find nothing.
    assert_eq!(tree.get(&key).unwrap(), None);
    assert!(tree.scan_prefix(&key).next().is_none());
    tree.insert(b"j", b"1").unwrap();
    tree.insert(b"l", b"2").unwrap();
    let keys =
        |iter: super::KvIter<'_>| -> Vec<Vec<u8>> { iter.map(|entry| entry.unwrap().0).collect() };
    assert_eq!(keys(tree.iter_from(&key, false)), [b"l".to_vec()]);
    assert_eq!(keys(tree.iter_from(&key, true)), [b"j".to_vec()]);
    // The store is unharmed.
    tree.insert(b"k", b"v").unwrap();
    assert_eq!(tree.get(b"k").unwrap(), Some(b"v".to_vec()));
}

// redb: the reopen- and crash-shaped tests that the sled ones above have.

fn open_redb(path: &Path) -> Db {
    Db::open_redb(path, 8 << 20, &[]).expect("open redb")
}

#[test]
fn redb_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_redb(dir.path());
        let tree = db.tree("t").unwrap();
        tree.insert(b"single", b"1").unwrap();
        let mut batch = Batch::new();
        batch.insert(&*tree, b"batched".to_vec(), b"2".to_vec());
        batch.insert(&*db.tree("u").unwrap(), b"other".to_vec(), b"3".to_vec());
        batch.remove(&*tree, b"single".to_vec());
        db.apply(&batch).unwrap();
        db.flush_blocking().unwrap();
    }
    let db = open_redb(dir.path());
    let tree = db.tree("t").unwrap();
    assert_eq!(tree.get(b"single").unwrap(), None);
    assert_eq!(tree.get(b"batched").unwrap(), Some(b"2".to_vec()));
    assert_eq!(
        db.tree("u").unwrap().get(b"other").unwrap(),
        Some(b"3".to_vec())
    );
    // One file in its own directory, beside whatever else the data directory holds.
    assert!(dir.path().join("redb").join("data.redb").is_file());
}

#[test]
fn redb_next_id_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let db = open_redb(dir.path());
        // Past the first reserved block.
        (0..25_000).fold(0, |previous, _| {
            let id = db.next_id().unwrap();
            assert!(id > previous);
            id
        })
    };
    let after_reopen = {
        let db = open_redb(dir.path());
        let id = db.next_id().unwrap();
        assert!(id > last);
        db.advance_ids(1 << 40).unwrap();
        db.next_id().unwrap()
    };
    assert!(after_reopen > 1 << 40);
    assert!(open_redb(dir.path()).next_id().unwrap() > after_reopen);
}

#[test]
fn second_open_of_redb_is_refused_while_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open_redb(dir.path());
    // redb's lock is per open file description, so a second open in this process is refused
    // just as one from another process would be.
    match Db::open_redb(dir.path(), 8 << 20, &[]) {
        Err(StorageError::Locked(path)) => assert!(path.contains(&*dir.path().to_string_lossy())),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    // sled's files in the same directory are another database, and do not collide.
    let sled = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
    assert_eq!(sled.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_closed_redb_database_reopens_at_once_and_a_tree_keeps_it_open() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0u32..10 {
        let db = open_redb(dir.path());
        let tree = db.tree("t").unwrap();
        assert_eq!(
            tree.get(b"n").unwrap(),
            n.checked_sub(1).map(|p| p.to_be_bytes().to_vec())
        );
        tree.insert(b"n", &n.to_be_bytes()).unwrap();
        // No flush: a clean close makes the last commits durable too.
    }
    let db = open_redb(dir.path());
    let tree = db.tree("t").unwrap();
    drop(db);
    tree.insert(b"k", b"v").unwrap();
    assert!(matches!(
        Db::open_redb(dir.path(), 8 << 20, &[]),
        Err(StorageError::Locked(_))
    ));
    drop(tree);
    let db = open_redb(dir.path());
    assert_eq!(
        db.tree("t").unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

#[test]
fn redb_iterators_continue_across_chunks() {
    // redb's iterators read a bounded chunk per read transaction; these ranges span several
    // chunks, by count (1,000 small entries) and by size (values of 200 KiB).
    let dir = tempfile::tempdir().unwrap();
    let db = open_redb(dir.path());
    let tree = db.tree("t").unwrap();
    let mut batch = Batch::new();
    for n in 0u16..1_000 {
        let mut key = b"p".to_vec();
        key.extend_from_slice(&n.to_be_bytes());
        batch.insert(&*tree, key, n.to_be_bytes().to_vec());
    }
    batch.insert(&*tree, b"a".to_vec(), b"before".to_vec());
    batch.insert(&*tree, b"q".to_vec(), b"after".to_vec());
    for n in 0u8..4 {
        batch.insert(&*tree, vec![b'z', n], vec![n; 200 << 10]);
    }
    db.apply(&batch).unwrap();

    let numbers = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<u16> {
        entries
            .into_iter()
            .map(|(_, value)| u16::from_be_bytes(value.try_into().expect("two bytes")))
            .collect()
    };
    assert_eq!(
        numbers(collect(tree.scan_prefix(b"p"))),
        (0..1_000).collect::<Vec<_>>()
    );
    let from = [b'p', 1, 0]; // 256
    assert_eq!(
        numbers(
            collect(tree.iter_from(&from, true))
                .into_iter()
                .filter(|(key, _)| key[0] == b'p')
                .collect()
        ),
        (0..=256).rev().collect::<Vec<_>>()
    );
    let forwards = collect(tree.iter_from(&from, false));
    assert_eq!(forwards.len(), 1_000 - 256 + 1 + 4);
    assert_eq!(forwards[743].0, [b'p', 3, 0xE7]); // 999
    assert_eq!(forwards[744].0, b"q");
    let large: Vec<u8> = collect(tree.scan_prefix(b"z"))
        .into_iter()
        .map(|(key, value)| {
            assert_eq!(value.len(), 200 << 10);
            key[1]
        })
        .collect();
    assert_eq!(large, [0, 1, 2, 3]);
    let backwards_large: Vec<Vec<u8>> = collect(tree.iter_from(b"zz", true))
        .into_iter()
        .take(5)
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        backwards_large,
        [&b"z\x03"[..], b"z\x02", b"z\x01", b"z\x00", b"q"]
    );
}

/// The environment variable that makes [`redb_sigkill_child`] run, naming its directory.
const REDB_CHILD_DIR: &str = "CONDUIT_TEST_REDB_CHILD_DIR";
/// What the child prints, followed by the last id it took, once its writes are flushed.
const REDB_CHILD_FLUSHED: &str = "redb-child-flushed=";

/// The child half of [`redb_flushed_writes_survive_sigkill`], run in its own process.
#[test]
#[ignore = "run by redb_flushed_writes_survive_sigkill in a child process"]
fn redb_sigkill_child() {
    let dir = std::env::var_os(REDB_CHILD_DIR).expect("run by the parent test");
    let db = open_redb(Path::new(&dir));
    let tree = db.tree("t").unwrap();
    let mut last_id = 0;
    for n in 0u32..100 {
        let mut batch = Batch::new();
        batch.insert(&*tree, n.to_be_bytes().to_vec(), b"batched".to_vec());
        db.apply(&batch).unwrap();
        tree.insert(format!("single {n}").as_bytes(), b"v").unwrap();
        last_id = db.next_id().unwrap();
    }
    tree.remove(&0u32.to_be_bytes()).unwrap();
    db.flush_blocking().unwrap();
    // Written but not flushed: these may or may not survive, but must not harm what did.
    for n in 0u32..100 {
        tree.insert(format!("unflushed {n}").as_bytes(), &[0; 1000])
            .unwrap();
    }
    println!("{REDB_CHILD_FLUSHED}{last_id}");
    // Wait, database open, for the kill; stdin ends only if the parent goes away first.
    let _ = std::io::stdin().read_line(&mut String::new());
}

#[test]
fn redb_flushed_writes_survive_sigkill() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "storage::tests::redb_sigkill_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(REDB_CHILD_DIR, dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // libtest may print the test's name on the same line first.
    let last_id = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let at = line.find(REDB_CHILD_FLUSHED)?;
            line[at + REDB_CHILD_FLUSHED.len()..]
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("the child flushed its writes (its output above says why not)");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let db = open_redb(dir.path());
    let tree = db.tree("t").unwrap();
    assert_eq!(tree.get(&0u32.to_be_bytes()).unwrap(), None);
    for n in 1u32..100 {
        assert_eq!(
            tree.get(&n.to_be_bytes()).unwrap(),
            Some(b"batched".to_vec())
        );
    }
    assert_eq!(collect(tree.scan_prefix(b"single ")).len(), 100);
    assert!(db.next_id().unwrap() > last_id);
    assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
}

/// Free bytes the fake filesystem of [`reserve_refuses_writes_before_the_store`] reports.
static FAKE_FREE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn fake_free(_: &Path) -> std::io::Result<u64> {
    Ok(FAKE_FREE.load(std::sync::atomic::Ordering::SeqCst))
}

/// Under the reserve, batches and single writes are refused with `NoSpace` before the
/// store sees them (nothing of them lands); reads go on; writes resume when room returns.
#[test]
fn reserve_refuses_writes_before_the_store() {
    use std::sync::atomic::Ordering;
    let db = Db::with_store(
        Arc::new(MemoryStore::default()),
        super::space::Space::with_probe(Some("/data".into()), fake_free),
        &[],
        SCHEMA_VERSION,
    )
    .unwrap();
    let tree = db.tree("t").unwrap();
    FAKE_FREE.store(100 << 20, Ordering::SeqCst);
    db.set_min_free_disk(10 << 20);
    tree.insert(b"a", b"1").unwrap();

    FAKE_FREE.store(5 << 20, Ordering::SeqCst);
    db.set_min_free_disk(10 << 20); // forget the answer cached a moment ago
    let mut batch = Batch::new();
    batch.insert(&*tree, b"b".to_vec(), b"2".to_vec());
    assert!(matches!(db.apply(&batch), Err(StorageError::NoSpace)));
    assert!(matches!(
        tree.insert(b"c", b"3"),
        Err(StorageError::NoSpace)
    ));
    assert!(matches!(tree.remove(b"a"), Err(StorageError::NoSpace)));
    assert!(matches!(db.check_free_space(), Err(StorageError::NoSpace)));
    assert!(db.disk_full());
    assert_eq!(
        collect(tree.iter_from(b"", false)),
        [(b"a".to_vec(), b"1".to_vec())]
    );

    FAKE_FREE.store(100 << 20, Ordering::SeqCst);
    db.apply(&batch).unwrap();
    assert!(!db.disk_full());
    assert_eq!(tree.get(b"b").unwrap(), Some(b"2".to_vec()));
}
