//! The sync stream: one position that orders everything a sync can return (room events,
//! account data, receipts, typing, …), and the wake-ups for long-polls.
//!
//! [`Stream::commit`] allocates a position and applies its batch inside one short critical
//! section, then publishes the position. So every position up to [`Stream::position`] is
//! applied, and a sync token never skips a write that was still in flight.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use ruma::UserId;

use super::notify::Notifier;
use crate::{
    Result,
    storage::{Batch, Db},
};

pub struct Stream {
    db: Db,
    commit: Mutex<()>,
    position: AtomicU64,
    /// The position at start: every change after it is recorded by the notifier.
    start_position: u64,
    pub notifier: Arc<Notifier>,
}

impl Stream {
    pub fn new(db: &Db) -> Result<Self> {
        // Every position handed out before this start is applied or was never acknowledged.
        let start_position = db.next_id()?;
        Ok(Self {
            db: db.clone(),
            commit: Mutex::new(()),
            position: AtomicU64::new(start_position),
            start_position,
            notifier: Arc::new(Notifier::default()),
        })
    }

    /// Allocates the next position, lets `build` fill a batch for it, and applies the batch
    /// before publishing the position. `build` must not wait on anything (no I/O waits, no
    /// locks that a committer could hold). Returns the position and what `build` returned.
    pub fn commit<T>(&self, build: impl FnOnce(u64, &mut Batch) -> Result<T>) -> Result<(u64, T)> {
        let _guard = self.commit.lock().expect("commit lock");
        let position = self.db.next_id()?;
        let mut batch = Batch::new();
        let value = build(position, &mut batch)?;
        self.db.apply(&batch)?;
        self.position.fetch_max(position, Ordering::SeqCst);
        Ok((position, value))
    }

    /// Every write with a position up to this one is applied.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::SeqCst)
    }

    /// Records that `position` concerns `users` and wakes their syncs.
    pub fn touch<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, position: u64) {
        self.notifier.touch(users, position);
    }

    /// Whether anything concerning `user_id` happened from position `since` on.
    pub fn changed_for(&self, user_id: &UserId, since: u64) -> bool {
        match self.notifier.last_change(user_id) {
            Some(last) => last >= since,
            None => since <= self.start_position,
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    #[test]
    fn positions_grow_and_changes_are_tracked() {
        let db = Db::memory();
        let tree = db.tree("t").unwrap();
        let stream = Stream::new(&db).unwrap();
        let start = stream.position();
        let (first, ()) = stream
            .commit(|pos, batch| {
                batch.insert(&*tree, pos.to_be_bytes().to_vec(), b"x".to_vec());
                Ok(())
            })
            .unwrap();
        assert!(first > start && stream.position() == first);
        assert_eq!(
            tree.get(&first.to_be_bytes()).unwrap().as_deref(),
            Some(&b"x"[..])
        );
        let alice = user_id!("@alice:x");
        assert!(
            !stream.changed_for(alice, first),
            "nothing recorded for alice since start"
        );
        stream.touch([alice], first);
        assert!(stream.changed_for(alice, first));
        assert!(!stream.changed_for(alice, first + 1));
    }

    #[test]
    fn a_failed_build_applies_nothing() {
        let db = Db::memory();
        let tree = db.tree("t").unwrap();
        let stream = Stream::new(&db).unwrap();
        let before = stream.position();
        let result: Result<(u64, ())> = stream.commit(|_, batch| {
            batch.insert(&*tree, b"k".to_vec(), b"v".to_vec());
            Err(crate::Error::forbidden("no"))
        });
        assert!(result.is_err());
        assert_eq!(tree.get(b"k").unwrap(), None);
        assert_eq!(stream.position(), before);
    }
}
