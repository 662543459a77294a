//! Interning: event ids, `(event type, state key)` pairs and room ids become small integers,
//! so state sets and indexes hold 8-byte numbers instead of long strings.
//!
//! Trees (all numbers are big-endian u64):
//! - `eventid_shorteventid` / `shorteventid_eventid`
//! - `statekey_shortstatekey` (`type 0xFF state_key`) / `shortstatekey_statekey`
//! - `roomid_shortroomid` / `shortroomid_roomid`

use std::sync::{Arc, Mutex};

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, events::StateEventType};

use crate::{
    Error, Result,
    storage::{Db, Tree},
};

pub type ShortEventId = u64;
pub type ShortStateKey = u64;
pub type ShortRoomId = u64;

struct Pair {
    forward: Arc<dyn Tree>,
    backward: Arc<dyn Tree>,
}

pub struct ShortIds {
    db: Db,
    events: Pair,
    state_keys: Pair,
    rooms: Pair,
    /// Get-or-create must be atomic, or two rooms interning the same state key at once
    /// would get two numbers for it.
    create_lock: Mutex<()>,
}

pub fn u64_from(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn state_key_bytes(event_type: &StateEventType, state_key: &str) -> Vec<u8> {
    let mut key = event_type.to_string().into_bytes();
    key.push(0xFF);
    key.extend_from_slice(state_key.as_bytes());
    key
}

impl ShortIds {
    pub fn new(db: &Db) -> Result<Self> {
        let pair = |forward, backward| -> Result<Pair> {
            Ok(Pair {
                forward: db.tree(forward)?,
                backward: db.tree(backward)?,
            })
        };
        Ok(Self {
            db: db.clone(),
            events: pair("eventid_shorteventid", "shorteventid_eventid")?,
            state_keys: pair("statekey_shortstatekey", "shortstatekey_statekey")?,
            rooms: pair("roomid_shortroomid", "shortroomid_roomid")?,
            create_lock: Mutex::new(()),
        })
    }

    fn get(pair: &Pair, key: &[u8]) -> Result<Option<u64>> {
        match pair.forward.get(key)? {
            Some(bytes) => Ok(Some(
                u64_from(&bytes).ok_or_else(|| Error::internal("bad short id"))?,
            )),
            None => Ok(None),
        }
    }

    fn get_or_create(&self, pair: &Pair, key: &[u8]) -> Result<u64> {
        if let Some(short) = Self::get(pair, key)? {
            return Ok(short);
        }
        let _guard = self.create_lock.lock().expect("short id lock");
        if let Some(short) = Self::get(pair, key)? {
            return Ok(short);
        }
        let short = self.db.next_id()?;
        // Backward first: a crash in between leaves an unused number, never a dangling one.
        pair.backward.insert(&short.to_be_bytes(), key)?;
        pair.forward.insert(key, &short.to_be_bytes())?;
        Ok(short)
    }

    pub fn short_event_id(&self, event_id: &EventId) -> Result<ShortEventId> {
        self.get_or_create(&self.events, event_id.as_bytes())
    }

    pub fn get_short_event_id(&self, event_id: &EventId) -> Result<Option<ShortEventId>> {
        Self::get(&self.events, event_id.as_bytes())
    }

    pub fn event_id(&self, short: ShortEventId) -> Result<OwnedEventId> {
        let bytes = self
            .events
            .backward
            .get(&short.to_be_bytes())?
            .ok_or_else(|| Error::internal(format!("unknown short event id {short}")))?;
        String::from_utf8(bytes)
            .ok()
            .and_then(|s| OwnedEventId::try_from(s).ok())
            .ok_or_else(|| Error::internal("bad event id in shorteventid_eventid"))
    }

    pub fn short_state_key(&self, kind: &StateEventType, state_key: &str) -> Result<ShortStateKey> {
        self.get_or_create(&self.state_keys, &state_key_bytes(kind, state_key))
    }

    pub fn get_short_state_key(
        &self,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<ShortStateKey>> {
        Self::get(&self.state_keys, &state_key_bytes(kind, state_key))
    }

    pub fn state_key(&self, short: ShortStateKey) -> Result<(StateEventType, String)> {
        let bytes = self
            .state_keys
            .backward
            .get(&short.to_be_bytes())?
            .ok_or_else(|| Error::internal(format!("unknown short state key {short}")))?;
        let split = bytes
            .iter()
            .position(|&b| b == 0xFF)
            .ok_or_else(|| Error::internal("bad state key"))?;
        let kind = String::from_utf8_lossy(&bytes[..split]).into_owned();
        let state_key = String::from_utf8_lossy(&bytes[split + 1..]).into_owned();
        Ok((kind.into(), state_key))
    }

    pub fn short_room_id(&self, room_id: &RoomId) -> Result<ShortRoomId> {
        self.get_or_create(&self.rooms, room_id.as_bytes())
    }

    pub fn get_short_room_id(&self, room_id: &RoomId) -> Result<Option<ShortRoomId>> {
        Self::get(&self.rooms, room_id.as_bytes())
    }

    pub fn room_id(&self, short: ShortRoomId) -> Result<OwnedRoomId> {
        let bytes = self
            .rooms
            .backward
            .get(&short.to_be_bytes())?
            .ok_or_else(|| Error::internal(format!("unknown short room id {short}")))?;
        String::from_utf8(bytes)
            .ok()
            .and_then(|s| OwnedRoomId::try_from(s).ok())
            .ok_or_else(|| Error::internal("bad room id in shortroomid_roomid"))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{event_id, room_id};

    use super::*;

    #[test]
    fn interning_is_stable_and_reversible() {
        let ids = ShortIds::new(&Db::memory()).unwrap();
        let a = ids.short_event_id(event_id!("$a")).unwrap();
        assert_eq!(ids.short_event_id(event_id!("$a")).unwrap(), a);
        assert_ne!(ids.short_event_id(event_id!("$b")).unwrap(), a);
        assert_eq!(ids.event_id(a).unwrap(), "$a");
        let member = ids
            .short_state_key(&StateEventType::RoomMember, "@u:x")
            .unwrap();
        assert_eq!(
            ids.state_key(member).unwrap(),
            (StateEventType::RoomMember, "@u:x".to_owned())
        );
        assert_eq!(
            ids.get_short_state_key(&StateEventType::RoomName, "")
                .unwrap(),
            None
        );
        let room = ids.short_room_id(room_id!("!r:x")).unwrap();
        assert_eq!(ids.room_id(room).unwrap(), "!r:x");
    }
}
