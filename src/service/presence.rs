//! Presence, kept in memory only (it is ephemeral): one entry per local user who has set it
//! since start, each with the stream position of its last change, so `/sync` sends the
//! changes of people sharing a room with the syncing user. Only a change of state or status
//! message is published; staying online does not wake anyone. Disabled entirely with
//! `allow_presence = false`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedUserId, UserId, presence::PresenceState};

#[derive(Clone)]
pub struct Entry {
    pub state: PresenceState,
    pub status_msg: Option<String>,
    pub last_active: Instant,
    /// Stream position of the last published change.
    pub position: u64,
}

#[derive(Default)]
pub struct Presence {
    entries: Mutex<HashMap<OwnedUserId, Entry>>,
}

impl Presence {
    /// Records activity and the given state. Returns true if others should hear of it
    /// (the state or the status message changed); then [`Presence::published`] must follow.
    pub fn set(
        &self,
        user_id: &UserId,
        state: PresenceState,
        status_msg: Option<Option<String>>,
    ) -> bool {
        let mut entries = self.entries.lock().expect("presence lock");
        let entry = entries.entry(user_id.to_owned()).or_insert(Entry {
            state: PresenceState::Offline,
            status_msg: None,
            last_active: Instant::now(),
            position: 0,
        });
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

    /// Marks the user's current presence as published at `position`.
    pub fn published(&self, user_id: &UserId, position: u64) {
        if let Some(entry) = self.entries.lock().expect("presence lock").get_mut(user_id) {
            entry.position = position;
        }
    }

    /// The user's presence; offline if never set.
    pub fn get(&self, user_id: &UserId) -> Entry {
        self.entries
            .lock()
            .expect("presence lock")
            .get(user_id)
            .cloned()
            .unwrap_or(Entry {
                state: PresenceState::Offline,
                status_msg: None,
                last_active: Instant::now() - Duration::from_secs(365 * 24 * 3600),
                position: 0,
            })
    }

    /// Users whose presence was published from `since` on (all that ever were, without it).
    pub fn changed_since(&self, since: Option<u64>) -> Vec<(OwnedUserId, Entry)> {
        self.entries
            .lock()
            .expect("presence lock")
            .iter()
            .filter(|(_, entry)| {
                entry.position > 0 && since.is_none_or(|since| entry.position >= since)
            })
            .map(|(user, entry)| (user.clone(), entry.clone()))
            .collect()
    }
}
