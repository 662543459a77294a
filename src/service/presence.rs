//! Presence, kept in memory only (it is ephemeral): one entry per local user who has set it
//! since start. Disabled entirely with `allow_presence = false`.

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
}

#[derive(Default)]
pub struct Presence {
    entries: Mutex<HashMap<OwnedUserId, Entry>>,
}

impl Presence {
    pub fn set(&self, user_id: &UserId, state: PresenceState, status_msg: Option<String>) {
        let entry = Entry {
            state,
            status_msg,
            last_active: Instant::now(),
        };
        self.entries
            .lock()
            .expect("presence lock")
            .insert(user_id.to_owned(), entry);
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
            })
    }
}
