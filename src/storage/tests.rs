//! One suite, every backend: each test runs against the in-memory store and against sled in
//! a temporary directory, so the two cannot drift apart.

use std::time::Duration;

use super::{Batch, Db, SCHEMA_VERSION, StorageError};

fn with_each_backend(test: impl Fn(Db)) {
    test(Db::memory());
    let dir = tempfile::tempdir().expect("temporary directory");
    test(Db::open_sled(dir.path(), 8 << 20).expect("open sled"));
}

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
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
        (0..100).fold(0, |_, _| db.next_id().unwrap())
    };
    let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
    assert!(db.next_id().unwrap() > last);
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
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
        db.tree("global")
            .unwrap()
            .insert(b"schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush_blocking().unwrap();
    }
    match Db::open_sled(dir.path(), 8 << 20) {
        Err(StorageError::TooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
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
        Db::open_sled(dir.path(), 8 << 20),
        Err(StorageError::Foreign)
    ));
}

#[test]
fn second_open_of_sled_is_refused_while_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Db::open_sled(dir.path(), 8 << 20).unwrap();
    // sled's lock is per process file descriptor (flock), so a second open in the same
    // process is refused just as one from another process would be.
    match Db::open_sled(dir.path(), 8 << 20) {
        Err(StorageError::Locked(path)) => assert!(path.contains(&*dir.path().to_string_lossy())),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
        db.tree("t").unwrap().insert(b"k", b"v").unwrap();
        db.flush_blocking().unwrap();
    }
    let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
    assert_eq!(
        db.tree("t").unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
}

#[tokio::test]
async fn watch_prefix_wakes_on_matching_write_only() {
    let dir = tempfile::tempdir().unwrap();
    for db in [Db::memory(), Db::open_sled(dir.path(), 8 << 20).unwrap()] {
        let tree = db.tree("t").unwrap();
        let watch = tree.watch_prefix(b"alice");
        tree.insert(b"bob", b"1").unwrap();
        let mut watch = Box::pin(watch);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut watch)
                .await
                .is_err(),
            "a write under another prefix must not wake the watcher"
        );
        tree.insert(b"alice\xff1", b"1").unwrap();
        tokio::time::timeout(Duration::from_secs(2), watch)
            .await
            .expect("watcher woken");
    }
}

#[tokio::test]
async fn concurrent_persist_calls_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
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
    // Closing is complete when the last handle is dropped: reopening in the same process
    // never finds sled's lock still held (it used to, now and then, after a write).
    let dir = tempfile::tempdir().unwrap();
    for n in 0u32..30 {
        let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
        let tree = db.tree("t").unwrap();
        assert_eq!(
            tree.get(b"n").unwrap(),
            n.checked_sub(1).map(|p| p.to_be_bytes().to_vec())
        );
        tree.insert(b"n", &n.to_be_bytes()).unwrap();
        db.flush_blocking().unwrap();
    }
}

#[test]
fn a_tree_keeps_the_database_open_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
    let tree = db.tree("t").unwrap();
    drop(db);
    tree.insert(b"k", b"v").unwrap();
    assert!(matches!(
        Db::open_sled(dir.path(), 8 << 20),
        Err(StorageError::Locked(_))
    ));
    drop(tree);
    let db = Db::open_sled(dir.path(), 8 << 20).unwrap();
    assert_eq!(
        db.tree("t").unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
}
