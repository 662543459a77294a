//! The events a user was notified about, for `GET /notifications` (client-server API, "Push
//! notifications", "Listing Notifications").
//!
//! Tree `useridseq_notification`: `user 0xFF seq (u64, big-endian)` → [`Record`] (JSON).
//! `seq` numbers a user's notifications 1, 2, 3, … (the next one is the newest key + 1), so
//! keeping only the newest [`KEPT_PER_USER`] costs one removal per new record, never a scan.
//! Records are written in the same commit as the notification counts ([`super::Push`]).
//! A record names the event; the event itself is read when listed, so a later redaction
//! shows.

use std::collections::HashMap;

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId, UInt, UserId,
    api::client::push::get_notifications::v3::Notification, push::Action,
};
use serde::{Deserialize, Serialize};

use crate::{
    Result,
    service::{ephemeral::Ephemeral, rooms::Rooms},
    storage::{Batch, Db, Table},
};

/// Notifications kept per user; older ones are dropped as new ones arrive.
pub const KEPT_PER_USER: u64 = 1_000;
/// `limit` when the client gives none, and the largest honoured (as Synapse).
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Record {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    /// The event's count (timeline position): compared with the user's read receipt.
    pub count: u64,
    pub actions: Vec<Action>,
    pub highlight: bool,
    /// When the notification was made (ms since the epoch).
    pub ts: u64,
}

/// One page of `/notifications`.
pub struct Page {
    pub notifications: Vec<Notification>,
    /// The `from` for the next page; `None` when no older notification is left.
    pub next_token: Option<String>,
}

pub struct Notifications {
    records: Table<Record>,
}

fn user_prefix(user_id: &UserId) -> Vec<u8> {
    let mut key = user_id.as_bytes().to_vec();
    key.push(0xFF);
    key
}

fn record_key(user_id: &UserId, seq: u64) -> Vec<u8> {
    let mut key = user_prefix(user_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl Notifications {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            records: db.table("useridseq_notification")?,
        })
    }

    /// The sequence number of the user's newest record (0 if none).
    fn newest_seq(&self, user_id: &UserId) -> Result<u64> {
        let prefix = user_prefix(user_id);
        let start = record_key(user_id, u64::MAX);
        match self.records.tree().iter_from(&start, true).next() {
            Some(entry) => {
                let (key, _) = entry?;
                Ok(key
                    .strip_prefix(prefix.as_slice())
                    .and_then(|seq| seq.try_into().ok())
                    .map_or(0, u64::from_be_bytes))
            }
            None => Ok(0),
        }
    }

    /// Adds `record` for `user_id` to `batch`, dropping the user's oldest record beyond
    /// [`KEPT_PER_USER`]. Call it inside `Stream::commit`, which serialises the writers.
    pub fn record_into(&self, batch: &mut Batch, user_id: &UserId, record: &Record) -> Result<()> {
        let seq = self.newest_seq(user_id)? + 1;
        batch.insert_json(&self.records, record_key(user_id, seq), record);
        if seq > KEPT_PER_USER {
            batch.remove(
                self.records.tree(),
                record_key(user_id, seq - KEPT_PER_USER),
            );
        }
        Ok(())
    }

    /// The user's notifications older than `from` (a `next_token`), newest first: at most
    /// `limit`, only highlights if asked. `read` is whether the user's latest `m.read` or
    /// `m.read.private` receipt in the room is at or after the event (as Synapse decides it).
    pub fn page(
        &self,
        rooms: &Rooms,
        ephemeral: &Ephemeral,
        user_id: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<Page> {
        let prefix = user_prefix(user_id);
        let start = record_key(
            user_id,
            from.map_or(u64::MAX, |from| from.saturating_sub(1)),
        );
        let mut notifications = Vec::new();
        let mut next_token = None;
        let mut last_returned = None;
        let mut read_up_to: HashMap<OwnedRoomId, u64> = HashMap::new();
        for entry in self.records.tree().iter_from(&start, true) {
            let (key, bytes) = entry?;
            let Some(seq) = key
                .strip_prefix(prefix.as_slice())
                .and_then(|seq| <[u8; 8]>::try_from(seq).ok())
                .map(u64::from_be_bytes)
            else {
                break;
            };
            let record: Record = serde_json::from_slice(&bytes)
                .map_err(|e| crate::Error::internal(format!("corrupt notification: {e}")))?;
            if only_highlight && !record.highlight {
                continue;
            }
            if notifications.len() == limit {
                // There is at least one more: the next page starts below the last one returned.
                next_token = last_returned.map(|seq: u64| seq.to_string());
                break;
            }
            let Some(pdu) = rooms.pdu(&record.event_id)? else {
                continue;
            };
            let read_count = match read_up_to.get(&record.room_id) {
                Some(count) => *count,
                None => {
                    let count = read_position(rooms, ephemeral, &record.room_id, user_id)?;
                    read_up_to.insert(record.room_id.clone(), count);
                    count
                }
            };
            let ts = MilliSecondsSinceUnixEpoch(UInt::new_saturating(record.ts));
            notifications.push(Notification::new(
                record.actions,
                rooms.sync_event(&pdu, user_id, None)?,
                read_count >= record.count,
                record.room_id,
                ts,
            ));
            last_returned = Some(seq);
        }
        Ok(Page {
            notifications,
            next_token,
        })
    }
}

/// The count of the newest event the user's read receipts in the room point at (0: none).
fn read_position(
    rooms: &Rooms,
    ephemeral: &Ephemeral,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<u64> {
    let mut newest = 0;
    for event_id in ephemeral.read_receipt_events(room_id, user_id)? {
        if let Some(count) = rooms.count_of(&event_id)? {
            newest = newest.max(count);
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, owned_room_id, user_id};

    use super::*;

    fn record(count: u64) -> Record {
        Record {
            room_id: owned_room_id!("!r:x"),
            event_id: event_id!("$e:x").to_owned(),
            count,
            actions: vec![Action::Notify],
            highlight: false,
            ts: count,
        }
    }

    #[test]
    fn only_the_newest_records_are_kept_per_user() {
        let db = Db::memory();
        let notifications = Notifications::new(&db).unwrap();
        let (alice, bob) = (user_id!("@alice:x"), user_id!("@bob:x"));
        let mut batch = Batch::new();
        notifications
            .record_into(&mut batch, bob, &record(1))
            .unwrap();
        db.apply(&batch).unwrap();
        for count in 1..=KEPT_PER_USER + 5 {
            let mut batch = Batch::new();
            notifications
                .record_into(&mut batch, alice, &record(count))
                .unwrap();
            db.apply(&batch).unwrap();
        }
        let kept: Vec<u64> = notifications
            .records
            .scan_prefix(&user_prefix(alice))
            .map(|entry| entry.unwrap().1.count)
            .collect();
        assert_eq!(kept.len() as u64, KEPT_PER_USER);
        assert_eq!(kept.first(), Some(&6), "the five oldest were dropped");
        assert_eq!(kept.last(), Some(&(KEPT_PER_USER + 5)));
        assert_eq!(
            notifications.newest_seq(bob).unwrap(),
            1,
            "bob's is untouched"
        );
        assert_eq!(notifications.newest_seq(user_id!("@carol:x")).unwrap(), 0);
    }
}
