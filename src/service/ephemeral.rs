//! Typing notifications (in memory, with timeouts) and read receipts (stored).
//!
//! Trees:
//! - `roomuserreceipt`: `room 0xFF user 0xFF receipt type 0xFF thread` → [`Receipt`] (JSON).
//! - `roomid_receiptposition`: room → stream position of its newest receipt (u64), so a sync
//!   skips rooms whose receipts did not change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    rooms::{pair_key, prefix_key, short::u64_from},
    stream::Stream,
};
use crate::{
    Error, Result,
    storage::{Db, Table, Tree},
};

/// The longest a typing notification lasts, whatever the client asks.
const MAX_TYPING: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Receipt {
    pub event_id: OwnedEventId,
    pub ts: u64,
    pub position: u64,
}

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    position: u64,
}

pub struct Ephemeral {
    db: Db,
    stream: Arc<Stream>,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    receipts: Table<Receipt>,
    receipt_positions: Arc<dyn Tree>,
}

impl Ephemeral {
    pub fn new(db: &Db, stream: Arc<Stream>) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            stream,
            typing: Mutex::default(),
            receipts: db.table("roomuserreceipt")?,
            receipt_positions: db.tree("roomid_receiptposition")?,
        })
    }

    /// Starts (`Some(timeout)`) or stops typing; `members` are woken. Returns the expiry to
    /// schedule [`Ephemeral::expire`] at, if any.
    pub fn set_typing<'a>(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        timeout: Option<Duration>,
        members: impl IntoIterator<Item = &'a UserId>,
    ) -> Result<Option<Instant>> {
        let expires = timeout.map(|timeout| Instant::now() + timeout.min(MAX_TYPING));
        // The map changes inside the commit, before the position is published: a sync that
        // sees the position also sees the change (else it could be skipped for good).
        let (position, ()) = self.stream.commit(|position, _| {
            let mut typing = self.typing.lock().expect("typing lock");
            let room = typing.entry(room_id.to_owned()).or_default();
            match expires {
                Some(expires) => {
                    room.users.insert(user_id.to_owned(), expires);
                }
                None => {
                    room.users.remove(user_id);
                }
            }
            room.position = position;
            Ok(())
        })?;
        self.stream.touch(members, position);
        Ok(expires)
    }

    /// Drops expired typing entries of a room; true if anything changed.
    pub fn expire(&self, room_id: &RoomId) -> Result<Option<u64>> {
        let now = Instant::now();
        let typing = self.typing.lock().expect("typing lock");
        let expired = typing
            .get(room_id)
            .is_some_and(|room| room.users.values().any(|expires| *expires <= now));
        drop(typing);
        if !expired {
            return Ok(None);
        }
        // As in `set_typing`: the position is set inside the commit.
        let (position, ()) = self.stream.commit(|position, _| {
            let mut typing = self.typing.lock().expect("typing lock");
            if let Some(room) = typing.get_mut(room_id) {
                room.users.retain(|_, expires| *expires > now);
                room.position = position;
            }
            Ok(())
        })?;
        Ok(Some(position))
    }

    /// The `m.typing` event if typing in the room changed from `since` on.
    pub fn typing_event(&self, room_id: &RoomId, since: Option<u64>) -> Option<JsonValue> {
        let now = Instant::now();
        let typing = self.typing.lock().expect("typing lock");
        let room = typing.get(room_id)?;
        if since.is_some_and(|since| room.position < since) {
            return None;
        }
        let users: Vec<&OwnedUserId> = room
            .users
            .iter()
            .filter(|(_, expires)| **expires > now)
            .map(|(user, _)| user)
            .collect();
        if since.is_none() && users.is_empty() {
            return None;
        }
        Some(json!({ "type": "m.typing", "content": { "user_ids": users } }))
    }

    /// Position of the room's newest typing change (0 if none since start).
    pub fn typing_position(&self, room_id: &RoomId) -> u64 {
        self.typing
            .lock()
            .expect("typing lock")
            .get(room_id)
            .map_or(0, |room| room.position)
    }

    /// Stores a receipt durably and wakes the room's members.
    pub async fn set_receipt<'a>(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        receipt_type: &str,
        thread: Option<&str>,
        event_id: OwnedEventId,
        members: impl IntoIterator<Item = &'a UserId>,
    ) -> Result<()> {
        let mut key = pair_key(room_id.as_str(), user_id.as_str());
        key.push(0xFF);
        key.extend_from_slice(receipt_type.as_bytes());
        key.push(0xFF);
        key.extend_from_slice(thread.unwrap_or("").as_bytes());
        let ts = u64::from(MilliSecondsSinceUnixEpoch::now().get());
        let (position, ()) = self.stream.commit(|position, batch| {
            batch.insert_json(
                &self.receipts,
                key,
                &Receipt {
                    event_id,
                    ts,
                    position,
                },
            );
            batch.insert(
                &*self.receipt_positions,
                room_id.as_bytes().to_vec(),
                position.to_be_bytes().to_vec(),
            );
            Ok(())
        })?;
        self.stream.touch(members, position);
        self.db.persist().await?;
        Ok(())
    }

    pub fn receipt_position(&self, room_id: &RoomId) -> Result<u64> {
        Ok(self
            .receipt_positions
            .get(room_id.as_bytes())?
            .and_then(|b| u64_from(&b))
            .unwrap_or(0))
    }

    /// The events `user_id`'s `m.read` and `m.read.private` receipts in the room point at,
    /// in any thread.
    pub fn read_receipt_events(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Vec<OwnedEventId>> {
        let prefix = {
            let mut prefix = pair_key(room_id.as_str(), user_id.as_str());
            prefix.push(0xFF);
            prefix
        };
        let mut events = Vec::new();
        for entry in self.receipts.scan_prefix(&prefix) {
            let (key, receipt) = entry?;
            let kind = key[prefix.len()..].split(|&b| b == 0xFF).next();
            if matches!(kind, Some(b"m.read" | b"m.read.private")) {
                events.push(receipt.event_id);
            }
        }
        Ok(events)
    }

    /// The `m.receipt` event with the receipts changed from `since` on that `viewer` may see
    /// (private receipts only to their owner).
    pub fn receipt_event(
        &self,
        room_id: &RoomId,
        viewer: &UserId,
        since: Option<u64>,
    ) -> Result<Option<JsonValue>> {
        if since.is_some_and(|since| self.receipt_position(room_id).unwrap_or(0) < since) {
            return Ok(None);
        }
        let prefix = prefix_key(room_id.as_str());
        let mut content: Map<String, JsonValue> = Map::new();
        for entry in self.receipts.scan_prefix(&prefix) {
            let (key, receipt) = entry?;
            if since.is_some_and(|since| receipt.position < since) {
                continue;
            }
            let parts: Vec<&[u8]> = key[prefix.len()..].splitn(3, |&b| b == 0xFF).collect();
            let [user, kind, thread] = parts.as_slice() else {
                return Err(Error::internal("bad receipt key"));
            };
            let user = String::from_utf8_lossy(user).into_owned();
            let kind = String::from_utf8_lossy(kind).into_owned();
            if kind == "m.read.private" && user != viewer.as_str() {
                continue;
            }
            let mut data = json!({ "ts": receipt.ts });
            if !thread.is_empty() {
                data["thread_id"] = String::from_utf8_lossy(thread).into_owned().into();
            }
            let by_event = content
                .entry(receipt.event_id.to_string())
                .or_insert_with(|| json!({}));
            by_event[&kind][&user] = data;
        }
        if content.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({ "type": "m.receipt", "content": content })))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, room_id, user_id};

    use super::*;

    fn ephemeral() -> Ephemeral {
        let db = Db::memory();
        let stream = Arc::new(Stream::new(&db).unwrap());
        Ephemeral::new(&db, stream).unwrap()
    }

    #[test]
    fn typing_appears_and_stops() {
        let ephemeral = ephemeral();
        let room = room_id!("!r:x");
        let alice = user_id!("@alice:x");
        ephemeral
            .set_typing(room, alice, Some(Duration::from_secs(30)), [alice])
            .unwrap();
        let event = ephemeral.typing_event(room, None).unwrap();
        assert_eq!(event["content"]["user_ids"], json!(["@alice:x"]));
        let since = ephemeral.typing_position(room) + 1;
        assert!(
            ephemeral.typing_event(room, Some(since)).is_none(),
            "no change since"
        );
        ephemeral.set_typing(room, alice, None, [alice]).unwrap();
        let event = ephemeral.typing_event(room, Some(since)).unwrap();
        assert_eq!(event["content"]["user_ids"], json!([]));
    }

    #[test]
    fn typing_expires() {
        let ephemeral = ephemeral();
        let room = room_id!("!r:x");
        let alice = user_id!("@alice:x");
        ephemeral
            .set_typing(room, alice, Some(Duration::from_millis(10)), [alice])
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(ephemeral.expire(room).unwrap().is_some());
        assert_eq!(
            ephemeral.typing_event(room, Some(0)).unwrap()["content"]["user_ids"],
            json!([])
        );
    }

    #[tokio::test]
    async fn private_receipts_only_for_their_owner() {
        let ephemeral = ephemeral();
        let room = room_id!("!r:x");
        let (alice, bob) = (user_id!("@alice:x"), user_id!("@bob:x"));
        ephemeral
            .set_receipt(
                room,
                alice,
                "m.read",
                None,
                event_id!("$a").to_owned(),
                [alice],
            )
            .await
            .unwrap();
        ephemeral
            .set_receipt(
                room,
                bob,
                "m.read.private",
                None,
                event_id!("$b").to_owned(),
                [bob],
            )
            .await
            .unwrap();
        let for_alice = ephemeral.receipt_event(room, alice, None).unwrap().unwrap();
        assert!(for_alice["content"]["$a"]["m.read"]["@alice:x"]["ts"].is_u64());
        assert!(for_alice["content"].get("$b").is_none());
        let for_bob = ephemeral.receipt_event(room, bob, None).unwrap().unwrap();
        assert!(for_bob["content"]["$b"]["m.read.private"]["@bob:x"].is_object());
    }
}
