//! Relations (`m.relates_to`: replies in threads, edits, reactions, …) and thread roots.
//!
//! Trees (written in the same batch as the relating event):
//! - `relations`: `target's short event id (u64) child's count (u64)` → `rel_type 0xFF
//!   event_type 0xFF child event id`. Pages through an event's relations in stream order.
//! - `roomid_threadroot`: `room 0xFF root event id` → count of the latest reply (u64).

use ruma::{EventId, OwnedEventId, RoomId};
use serde_json::Value as JsonValue;

use super::{Rooms, pair_key, prefix_key, short::u64_from};
use crate::{Error, Result, storage::Batch};

/// One relation of an event.
pub struct Relation {
    pub count: u64,
    pub rel_type: String,
    pub event_type: String,
    pub event_id: OwnedEventId,
}

/// The `(rel_type, target)` of an event's content, if it relates to another event.
pub fn relates_to(content: &JsonValue) -> Option<(String, OwnedEventId)> {
    let relation = content.get("m.relates_to")?;
    let rel_type = relation.get("rel_type")?.as_str()?.to_owned();
    let target = OwnedEventId::try_from(relation.get("event_id")?.as_str()?).ok()?;
    Some((rel_type, target))
}

impl Rooms {
    /// Adds the index entries for a new event at `count` (called inside its commit).
    pub(super) fn index_relation(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        event_type: &str,
        event_id: &EventId,
        content: &JsonValue,
        count: u64,
    ) -> Result<()> {
        let Some((rel_type, target)) = relates_to(content) else {
            return Ok(());
        };
        let Some(short_target) = self.short.get_short_event_id(&target)? else {
            return Ok(());
        };
        let mut key = short_target.to_be_bytes().to_vec();
        key.extend_from_slice(&count.to_be_bytes());
        let mut value = rel_type.as_bytes().to_vec();
        value.push(0xFF);
        value.extend_from_slice(event_type.as_bytes());
        value.push(0xFF);
        value.extend_from_slice(event_id.as_bytes());
        batch.insert(&*self.relations, key, value);
        if rel_type == "m.thread" {
            batch.insert(
                &*self.thread_roots,
                pair_key(room_id.as_str(), target.as_str()),
                count.to_be_bytes().to_vec(),
            );
        }
        Ok(())
    }

    /// Relations of `target`, newest first (or oldest first with `forward`), starting before
    /// (after) the count `from`, up to `limit`.
    pub fn relations(
        &self,
        target: &EventId,
        from: Option<u64>,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<Relation>> {
        let Some(short_target) = self.short.get_short_event_id(target)? else {
            return Ok(Vec::new());
        };
        let prefix = short_target.to_be_bytes();
        let mut start = prefix.to_vec();
        start.extend_from_slice(
            &match (forward, from) {
                (false, Some(from)) => from.saturating_sub(1),
                (false, None) => u64::MAX,
                (true, Some(from)) => from,
                (true, None) => 0,
            }
            .to_be_bytes(),
        );
        let mut out = Vec::new();
        for entry in self.relations.iter_from(&start, !forward) {
            let (key, value) = entry?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let count = u64_from(&key[8..]).ok_or_else(|| Error::internal("bad relation key"))?;
            let parts: Vec<&[u8]> = value.splitn(3, |&b| b == 0xFF).collect();
            let [rel_type, event_type, event_id] = parts.as_slice() else {
                return Err(Error::internal("bad relation value"));
            };
            let event_id = OwnedEventId::try_from(String::from_utf8_lossy(event_id).into_owned())
                .map_err(|_| Error::internal("bad relation event id"))?;
            out.push(Relation {
                count,
                rel_type: String::from_utf8_lossy(rel_type).into_owned(),
                event_type: String::from_utf8_lossy(event_type).into_owned(),
                event_id,
            });
        }
        Ok(out)
    }

    /// Thread roots of a room with the count of their latest reply, most recent first.
    pub fn thread_roots(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, u64)>> {
        let prefix = prefix_key(room_id.as_str());
        let mut roots = Vec::new();
        for entry in self.thread_roots.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let root =
                OwnedEventId::try_from(String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
                    .map_err(|_| Error::internal("bad thread root key"))?;
            roots.push((root, u64_from(&value).unwrap_or(0)));
        }
        roots.sort_by_key(|(_, latest)| std::cmp::Reverse(*latest));
        Ok(roots)
    }
}
