//! Presence, kept in memory only (it is ephemeral): one entry per local user who has set it
//! since start, and one per other server's user whose presence that server pushed to us
//! (`m.presence`, [`crate::service::federation::presence`]), each with the stream position
//! of its last change, so `/sync` sends the changes of people sharing a room with the
//! syncing user. Only a change of state or status message is published; staying online
//! does not wake anyone. Disabled entirely with `allow_presence = false`.
//!
//! Bounded: local entries by the number of local users; other servers' users at most
//! [`MAX_REMOTE`], the one published longest ago dropped first. Published entries are
//! indexed by position, so an incremental `/sync` reads only the changes since its token.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedUserId, UserId, presence::PresenceState};

/// Other servers' users whose presence is kept at most.
pub const MAX_REMOTE: usize = 10_000;

#[derive(Clone)]
pub struct Entry {
    pub state: PresenceState,
    pub status_msg: Option<String>,
    pub last_active: Instant,
    /// What the user's server said about `currently_active` (other servers' users only;
    /// ours are currently active when last active within five minutes).
    pub currently_active: Option<bool>,
    /// Stream position of the last published change.
    pub position: u64,
}

impl Entry {
    fn offline() -> Self {
        Self {
            state: PresenceState::Offline,
            status_msg: None,
            last_active: Instant::now()
                .checked_sub(Duration::from_secs(365 * 24 * 3600))
                .unwrap_or_else(Instant::now),
            currently_active: None,
            position: 0,
        }
    }

    /// Whether the user is likely at their client now.
    pub fn currently_active(&self) -> bool {
        self.currently_active
            .unwrap_or_else(|| self.last_active.elapsed() < Duration::from_secs(300))
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<OwnedUserId, Entry>,
    /// Every published entry by its position (one per user).
    by_position: BTreeMap<u64, OwnedUserId>,
    /// The published entries of other servers' users by position: the first goes when
    /// [`MAX_REMOTE`] is reached.
    remote_by_position: BTreeMap<u64, OwnedUserId>,
    remote_count: usize,
}

#[derive(Default)]
pub struct Presence {
    inner: Mutex<Inner>,
}

impl Presence {
    /// Records activity and the given state of a local user. Returns true if others should
    /// hear of it (the state or the status message changed); then [`Presence::published`]
    /// must follow.
    pub fn set(
        &self,
        user_id: &UserId,
        state: PresenceState,
        status_msg: Option<Option<String>>,
    ) -> bool {
        let mut inner = self.inner.lock().expect("presence lock");
        let entry = inner
            .entries
            .entry(user_id.to_owned())
            .or_insert_with(Entry::offline);
        entry.last_active = Instant::now();
        let mut changed = entry.state != state;
        entry.state = state;
        if let Some(status_msg) = status_msg
            && entry.status_msg != status_msg
        {
            entry.status_msg = status_msg;
            changed = true;
        }
        changed
    }

    /// Records what another server said of its user's presence. Returns true if it changed
    /// the state, the status message or `currently_active` (then [`Presence::published`]
    /// must follow); the last activity is updated in any case. A new user beyond
    /// [`MAX_REMOTE`] replaces the one published longest ago.
    pub fn set_remote(
        &self,
        user_id: &UserId,
        state: PresenceState,
        status_msg: Option<String>,
        last_active: Instant,
        currently_active: bool,
    ) -> bool {
        let mut inner = self.inner.lock().expect("presence lock");
        if !inner.entries.contains_key(user_id) {
            if inner.remote_count >= MAX_REMOTE
                && let Some((position, oldest)) = inner.remote_by_position.pop_first()
            {
                inner.by_position.remove(&position);
                inner.entries.remove(&oldest);
                inner.remote_count -= 1;
            }
            inner.remote_count += 1;
            inner.entries.insert(user_id.to_owned(), Entry::offline());
        }
        let entry = inner.entries.get_mut(user_id).expect("inserted above");
        let changed = entry.state != state
            || entry.status_msg != status_msg
            || entry.currently_active != Some(currently_active)
            || entry.position == 0;
        entry.state = state;
        entry.status_msg = status_msg;
        entry.last_active = last_active;
        entry.currently_active = Some(currently_active);
        changed
    }

    /// Marks the user's current presence as published at `position`.
    pub fn published(&self, user_id: &UserId, position: u64) {
        let mut inner = self.inner.lock().expect("presence lock");
        let Some(entry) = inner.entries.get_mut(user_id) else {
            return;
        };
        let old = std::mem::replace(&mut entry.position, position);
        let remote = entry.currently_active.is_some();
        inner.by_position.remove(&old);
        inner.by_position.insert(position, user_id.to_owned());
        if remote {
            inner.remote_by_position.remove(&old);
            inner
                .remote_by_position
                .insert(position, user_id.to_owned());
        }
    }

    /// The user's presence; offline if never set (or not heard of).
    pub fn get(&self, user_id: &UserId) -> Entry {
        self.inner
            .lock()
            .expect("presence lock")
            .entries
            .get(user_id)
            .cloned()
            .unwrap_or_else(Entry::offline)
    }

    /// Users whose presence was published from `since` on (all that ever were, without it).
    pub fn changed_since(&self, since: Option<u64>) -> Vec<(OwnedUserId, Entry)> {
        let inner = self.inner.lock().expect("presence lock");
        inner
            .by_position
            .range(since.unwrap_or(1).max(1)..)
            .filter_map(|(_, user)| {
                inner
                    .entries
                    .get(user)
                    .map(|entry| (user.clone(), entry.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    #[test]
    fn changes_are_read_by_position() {
        let presence = Presence::default();
        let (alice, bob) = (user_id!("@alice:here"), user_id!("@bob:here"));
        assert!(presence.set(alice, PresenceState::Online, None));
        presence.published(alice, 5);
        assert!(presence.set(bob, PresenceState::Online, None));
        presence.published(bob, 7);
        // Staying online is no change.
        assert!(!presence.set(alice, PresenceState::Online, None));
        assert!(presence.set(alice, PresenceState::Unavailable, None));
        presence.published(alice, 9);
        let users = |since| -> Vec<String> {
            presence
                .changed_since(since)
                .into_iter()
                .map(|(user, _)| user.to_string())
                .collect()
        };
        assert_eq!(users(None), ["@bob:here", "@alice:here"]);
        assert_eq!(users(Some(8)), ["@alice:here"]);
        assert_eq!(users(Some(10)), Vec::<String>::new());
    }

    #[test]
    fn other_servers_users_are_bounded_oldest_first() {
        let presence = Presence::default();
        let user = |n: usize| OwnedUserId::try_from(format!("@u{n}:there")).unwrap();
        for n in 0..=MAX_REMOTE {
            assert!(presence.set_remote(
                &user(n),
                PresenceState::Online,
                None,
                Instant::now(),
                true
            ));
            presence.published(&user(n), n as u64 + 1);
        }
        // The first one published went; the rest are there.
        assert_eq!(presence.changed_since(None).len(), MAX_REMOTE);
        assert_eq!(presence.get(&user(0)).position, 0);
        assert_eq!(presence.get(&user(1)).state, PresenceState::Online);
        // A repeat of the same presence is no change; a status message is.
        assert!(!presence.set_remote(&user(1), PresenceState::Online, None, Instant::now(), true));
        assert!(presence.set_remote(
            &user(1),
            PresenceState::Online,
            Some("lunch".into()),
            Instant::now(),
            true
        ));
        presence.published(&user(1), 50_000);
        // Republished, user 1 is now the newest: user 2 goes next.
        presence.set_remote(
            &user(99_999),
            PresenceState::Online,
            None,
            Instant::now(),
            true,
        );
        presence.published(&user(99_999), 50_001);
        assert_eq!(presence.get(&user(2)).position, 0);
        assert_eq!(presence.get(&user(1)).status_msg.as_deref(), Some("lunch"));
        assert_eq!(presence.changed_since(None).len(), MAX_REMOTE);
    }
}
