//! Wake-ups for long-polling `/sync`: whoever appends something relevant to a user touches
//! that user here, which wakes their waiting syncs at once (no polling loops).
//!
//! It also remembers, per user, the stream position of the last change that concerned them,
//! so an incremental sync with nothing new answers without walking the user's rooms. The map
//! holds one small entry per local user who has had activity since start; after a restart it
//! is empty and the first sync of each user walks their rooms once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, Slot>>,
}

struct Slot {
    last_change: u64,
    notify: Arc<Notify>,
}

impl Notifier {
    /// Records that `count` concerns each of `users` and wakes their syncs.
    pub fn touch<'a>(&self, users: impl IntoIterator<Item = &'a UserId>, count: u64) {
        let mut map = self.users.lock().expect("notifier lock");
        for user in users {
            let slot = map.entry(user.to_owned()).or_insert_with(|| Slot {
                last_change: 0,
                notify: Arc::new(Notify::new()),
            });
            slot.last_change = slot.last_change.max(count);
            slot.notify.notify_waiters();
        }
    }

    /// The position of the last change for `user` since start, if any was recorded.
    pub fn last_change(&self, user: &UserId) -> Option<u64> {
        self.users
            .lock()
            .expect("notifier lock")
            .get(user)
            .map(|slot| slot.last_change)
    }

    /// The handle a sync waits on. Create the `notified()` future before checking for news,
    /// so a change between the check and the wait is not missed.
    pub fn handle(&self, user: &UserId) -> Arc<Notify> {
        let mut map = self.users.lock().expect("notifier lock");
        let slot = map.entry(user.to_owned()).or_insert_with(|| Slot {
            last_change: 0,
            notify: Arc::new(Notify::new()),
        });
        Arc::clone(&slot.notify)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ruma::user_id;

    use super::*;

    #[tokio::test]
    async fn touch_wakes_a_waiter_and_records_the_position() {
        let notifier = Arc::new(Notifier::default());
        let alice = user_id!("@alice:x");
        let handle = notifier.handle(alice);
        let notified = handle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let toucher = Arc::clone(&notifier);
        tokio::spawn(async move { toucher.touch([user_id!("@alice:x")], 42) });
        tokio::time::timeout(Duration::from_secs(2), notified)
            .await
            .expect("woken");
        assert_eq!(notifier.last_change(alice), Some(42));
        assert_eq!(notifier.last_change(user_id!("@bob:x")), None);
    }
}
