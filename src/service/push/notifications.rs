//! The events a user was notified about, for `GET /notifications` (client-server API, "Push
//! notifications", "Listing Notifications").
//!
//! Tree `useridseq_notification`: `user 0xFF seq (u64, big-endian)` → [`Record`], in a
//! compact binary form ([`Record::encode`]): every send writes one per notified member, so
//! its size is what the disk pays (the JSON form tripled the database in the load benchmark
//! and cost a third of the send throughput). `seq` numbers a user's notifications 1, 2,
//! 3, … (the next one is the newest key + 1), so keeping only the newest [`KEPT_PER_USER`]
//! costs one removal per new record, never a scan. Records are written in the same commit as
//! the notification counts ([`super::Push`]). A record names the event by its place (short
//! room id and count); the event itself is read when listed, so a later redaction shows.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::push::get_notifications::v3::Notification, push::Action,
};

use crate::{
    Error, Result,
    service::{
        ephemeral::Ephemeral,
        rooms::{Rooms, short::ShortRoomId},
    },
    storage::{Batch, Db, Tree},
};

/// Notifications kept per user; older ones are dropped as new ones arrive.
pub const KEPT_PER_USER: u64 = 1_000;
/// `limit` when the client gives none, and the largest honoured (as Synapse).
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

#[derive(Clone, Debug)]
pub struct Record {
    /// Where the event is: its room (interned) and its count (timeline position, compared
    /// with the user's read receipt).
    pub short_room_id: ShortRoomId,
    pub count: u64,
    pub actions: Vec<Action>,
    pub highlight: bool,
    /// When the notification was made (ms since the epoch).
    pub ts: u64,
}

/// The actions of the default rules that notify, stored as one byte; any others as JSON.
/// (`.m.rule.message` and friends: notify, with or without the default sound; mentions
/// also highlight.)
fn common_actions() -> [Vec<Action>; 4] {
    use ruma::push::Tweak;
    let sound = || Action::SetTweak(Tweak::Sound("default".into()));
    [
        vec![Action::Notify],
        vec![Action::Notify, sound()],
        vec![
            Action::Notify,
            sound(),
            Action::SetTweak(Tweak::Highlight(true.into())),
        ],
        vec![
            Action::Notify,
            Action::SetTweak(Tweak::Highlight(true.into())),
        ],
    ]
}

/// [`common_actions`] as JSON, made once (a constant, not state).
static COMMON_JSON: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(|| {
    common_actions()
        .iter()
        .map(|actions| serde_json::to_vec(actions).unwrap_or_default())
        .collect()
});

/// Flag bit: the record is a highlight.
const HIGHLIGHT: u8 = 0x80;
/// Tag (low bits) for actions stored as JSON after the fixed part.
const JSON_ACTIONS: u8 = 0x7F;

impl Record {
    /// `short room id (8) | count (8) | ts (8) | flags (1) [| actions JSON]`, numbers
    /// big-endian; the flags hold the highlight bit and the index of a common action list,
    /// or [`JSON_ACTIONS`].
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25);
        out.extend_from_slice(&self.short_room_id.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
        let highlight = if self.highlight { HIGHLIGHT } else { 0 };
        // `Action` has no `PartialEq`: compare the JSON forms. A list of actions always
        // serialises.
        let json = serde_json::to_vec(&self.actions).unwrap_or_default();
        let common = COMMON_JSON.iter().position(|common| *common == json);
        match common {
            Some(index) => out.push(highlight | index as u8),
            None => {
                out.push(highlight | JSON_ACTIONS);
                out.extend(json);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::internal("corrupt notification record");
        let number = |range: std::ops::Range<usize>| {
            bytes
                .get(range)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(corrupt)
        };
        let flags = *bytes.get(24).ok_or_else(corrupt)?;
        let tag = flags & !HIGHLIGHT;
        let actions = if tag == JSON_ACTIONS {
            serde_json::from_slice(&bytes[25..]).map_err(|_| corrupt())?
        } else {
            common_actions()
                .into_iter()
                .nth(usize::from(tag))
                .ok_or_else(corrupt)?
        };
        Ok(Self {
            short_room_id: number(0..8)?,
            count: number(8..16)?,
            ts: number(16..24)?,
            highlight: flags & HIGHLIGHT != 0,
            actions,
        })
    }
}

/// One page of `/notifications`.
pub struct Page {
    pub notifications: Vec<Notification>,
    /// The `from` for the next page; `None` when no older notification is left.
    pub next_token: Option<String>,
}

pub struct Notifications {
    records: Arc<dyn Tree>,
    /// Each user's newest `seq`, once looked up: a reverse seek per notified member per
    /// send cost more than the write. At most one entry per local user. Set while the
    /// batch is built (under `Stream::commit`'s lock, so writers never share a `seq`); if
    /// the batch then fails, the entry is ahead of the disk, which only leaves a gap.
    newest: Mutex<HashMap<OwnedUserId, u64>>,
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
            records: db.tree("useridseq_notification")?,
            newest: Mutex::default(),
        })
    }

    /// The sequence number of the user's newest record (0 if none).
    fn newest_seq(&self, user_id: &UserId) -> Result<u64> {
        let prefix = user_prefix(user_id);
        let start = record_key(user_id, u64::MAX);
        match self.records.iter_from(&start, true).next() {
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
        let mut newest = self.newest.lock().expect("notification seq lock");
        let seq = match newest.get(user_id) {
            Some(seq) => *seq,
            None => self.newest_seq(user_id)?,
        } + 1;
        newest.insert(user_id.to_owned(), seq);
        drop(newest);
        batch.insert(&*self.records, record_key(user_id, seq), record.encode());
        if seq > KEPT_PER_USER {
            batch.remove(&*self.records, record_key(user_id, seq - KEPT_PER_USER));
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
        // Per room of this page: its id and how far the user has read.
        let mut room_of: HashMap<ShortRoomId, (OwnedRoomId, u64)> = HashMap::new();
        for entry in self.records.iter_from(&start, true) {
            let (key, bytes) = entry?;
            let Some(seq) = key
                .strip_prefix(prefix.as_slice())
                .and_then(|seq| <[u8; 8]>::try_from(seq).ok())
                .map(u64::from_be_bytes)
            else {
                break;
            };
            let record = Record::decode(&bytes)?;
            if only_highlight && !record.highlight {
                continue;
            }
            if notifications.len() == limit {
                // There is at least one more: the next page starts below the last one returned.
                next_token = last_returned.map(|seq: u64| seq.to_string());
                break;
            }
            let Some(pdu) = rooms.pdu_at(record.short_room_id, record.count)? else {
                continue;
            };
            let (room_id, read_count) = match room_of.get(&record.short_room_id) {
                Some(known) => known.clone(),
                None => {
                    let room_id = rooms.short.room_id(record.short_room_id)?;
                    let read = read_position(rooms, ephemeral, &room_id, user_id)?;
                    room_of.insert(record.short_room_id, (room_id.clone(), read));
                    (room_id, read)
                }
            };
            let ts = MilliSecondsSinceUnixEpoch(UInt::new_saturating(record.ts));
            notifications.push(Notification::new(
                record.actions,
                rooms.sync_event(&pdu, user_id, None)?,
                read_count >= record.count,
                room_id,
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
    use ruma::user_id;

    use super::*;

    fn record(count: u64) -> Record {
        Record {
            short_room_id: 7,
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
            .map(|entry| Record::decode(&entry.unwrap().1).unwrap().count)
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

        // After a restart the next number comes from the disk, not from memory: the new
        // record follows the newest, and the oldest kept one goes.
        let restarted = Notifications::new(&db).unwrap();
        let mut batch = Batch::new();
        restarted
            .record_into(&mut batch, alice, &record(KEPT_PER_USER + 6))
            .unwrap();
        db.apply(&batch).unwrap();
        let kept: Vec<u64> = restarted
            .records
            .scan_prefix(&user_prefix(alice))
            .map(|entry| Record::decode(&entry.unwrap().1).unwrap().count)
            .collect();
        assert_eq!(kept.len() as u64, KEPT_PER_USER);
        assert_eq!(kept.first(), Some(&7));
        assert_eq!(kept.last(), Some(&(KEPT_PER_USER + 6)));
    }

    #[test]
    fn records_round_trip_in_their_compact_form() {
        use ruma::push::Tweak;
        let mut records = vec![];
        for (index, actions) in common_actions().into_iter().enumerate() {
            records.push(Record {
                short_room_id: 3,
                count: u64::MAX - index as u64,
                highlight: index >= 2,
                ts: 1_796_647_389_252,
                actions,
            });
        }
        records.push(Record {
            short_room_id: 0,
            count: 1,
            highlight: false,
            ts: 0,
            actions: vec![
                Action::Notify,
                Action::SetTweak(Tweak::Sound("ping".into())),
            ],
        });
        for record in records {
            let bytes = record.encode();
            let decoded = Record::decode(&bytes).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{record:?}"));
        }
        // The default rules' actions take one byte after the fixed part.
        assert_eq!(record(1).encode().len(), 25);
        assert!(
            Record::decode(&[0; 10]).is_err(),
            "a short record is an error"
        );
        assert!(
            Record::decode(&[0; 25].map(|_| 0x7E)).is_err(),
            "an unknown tag too"
        );
    }
}
