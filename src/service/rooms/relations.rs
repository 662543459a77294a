//! Relations (`m.relates_to`: replies in threads, edits, reactions, …) and thread roots.
//!
//! Trees (written in the same batch as the relating event):
//! - `relations`: `target's short event id (u64) ‖ child's pos key (8 or 16 bytes, see
//!   [`super::pos`])` → `rel_type 0xFF event_type 0xFF child event id`. Pages through an
//!   event's relations in timeline order.
//! - `roomid_threadroot`: `room 0xFF root event id` → pos key of the latest reply.

use ruma::{
    EventId, OwnedEventId, RoomId, UserId,
    events::{AnySyncTimelineEvent, AnyTimelineEvent},
    serde::Raw,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{Rooms, pair_key, pdu::Pdu, pos::Pos, prefix_key};
use crate::{Error, Result, storage::Batch};

/// Child events looked at when aggregating one event's relations (newest first).
const MAX_AGGREGATED: usize = 1_000;

fn raw<T>(value: JsonValue) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(&value).expect("JSON value serialises"))
}

/// One relation of an event.
pub struct Relation {
    /// The child's place in the timeline.
    pub pos: Pos,
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
    /// Adds the index entries for a new event at `pos` (called inside its commit).
    pub(super) fn index_relation(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        event_type: &str,
        event_id: &EventId,
        content: &JsonValue,
        pos: Pos,
    ) -> Result<()> {
        let Some((rel_type, target)) = relates_to(content) else {
            return Ok(());
        };
        // The target may arrive later (events from other servers come in any order): its
        // short id is made now, so the relation is found once it is stored.
        let short_target = self.short.short_event_id(&target)?;
        let mut key = short_target.to_be_bytes().to_vec();
        key.extend_from_slice(&pos.key());
        let mut value = rel_type.as_bytes().to_vec();
        value.push(0xFF);
        value.extend_from_slice(event_type.as_bytes());
        value.push(0xFF);
        value.extend_from_slice(event_id.as_bytes());
        batch.insert(&*self.relations, key, value);
        if rel_type == "m.thread" {
            let root_key = pair_key(room_id.as_str(), target.as_str());
            // A live reply is the newest; a backfilled one replaces only an older latest.
            let newer = pos.is_live()
                || match self.thread_roots.get(&root_key)? {
                    Some(latest) => {
                        Pos::from_key(&latest)
                            .ok_or_else(|| Error::internal("bad value in roomid_threadroot"))?
                            < pos
                    }
                    None => true,
                };
            if newer {
                batch.insert(&*self.thread_roots, root_key, pos.key().to_vec());
            }
        }
        Ok(())
    }

    /// Relations of `target`, newest first (or oldest first with `forward`), from the
    /// boundary `from` (a token: backwards, children before it; forwards, from it on), up to
    /// `limit`.
    pub fn relations(
        &self,
        target: &EventId,
        from: Option<Pos>,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<Relation>> {
        let Some(short_target) = self.short.get_short_event_id(target)? else {
            return Ok(Vec::new());
        };
        let prefix = short_target.to_be_bytes();
        let mut start = prefix.to_vec();
        start.extend_from_slice(&match (forward, from) {
            (_, Some(from)) => from.key(),
            (false, None) => Pos::MAX.key(),
            (true, None) => Pos::MIN.key(),
        });
        let mut out = Vec::new();
        for entry in self.relations.iter_from(&start, !forward) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            if !key.starts_with(&prefix) {
                break;
            }
            // Backwards, `from` itself is excluded (no `from - 1`: not a key across the
            // live/backfill boundary).
            if !forward && key == start {
                continue;
            }
            let pos =
                Pos::from_key(&key[8..]).ok_or_else(|| Error::internal("bad relation key"))?;
            let parts: Vec<&[u8]> = value.splitn(3, |&b| b == 0xFF).collect();
            let [rel_type, event_type, event_id] = parts.as_slice() else {
                return Err(Error::internal("bad relation value"));
            };
            let event_id = OwnedEventId::try_from(String::from_utf8_lossy(event_id).into_owned())
                .map_err(|_| Error::internal("bad relation event id"))?;
            out.push(Relation {
                pos,
                rel_type: String::from_utf8_lossy(rel_type).into_owned(),
                event_type: String::from_utf8_lossy(event_type).into_owned(),
                event_id,
            });
        }
        Ok(out)
    }

    /// The event as clients see it outside `/sync`, with its bundled aggregations.
    pub fn room_event(&self, pdu: &Pdu, viewer: &UserId) -> Result<Raw<AnyTimelineEvent>> {
        let relations = self.aggregations(pdu, viewer, true)?;
        Ok(raw(pdu.client_json_with(true, None, relations)))
    }

    /// The event as `/sync` timelines carry it, with its bundled aggregations.
    pub fn sync_event(
        &self,
        pdu: &Pdu,
        viewer: &UserId,
        transaction_id: Option<&str>,
    ) -> Result<Raw<AnySyncTimelineEvent>> {
        let relations = self.aggregations(pdu, viewer, false)?;
        Ok(raw(pdu.client_json_with(false, transaction_id, relations)))
    }

    /// Bundled aggregations of an event (client-server API, "Aggregations of child
    /// events"): `m.thread` (latest event, count, whether `viewer` took part), `m.replace`
    /// (the most recent valid edit) and `m.reference` (the referencing event ids). `None`
    /// when nothing relates to it, which costs one index lookup.
    pub fn aggregations(
        &self,
        pdu: &Pdu,
        viewer: &UserId,
        with_room_id: bool,
    ) -> Result<Option<JsonValue>> {
        let children = self.relations(&pdu.event_id, None, false, MAX_AGGREGATED)?;
        if children.is_empty() {
            return Ok(None);
        }
        let mut aggregated = Map::new();

        // Threads (module "Threading"): newest reply first in `children`.
        let thread: Vec<&Relation> = children
            .iter()
            .filter(|r| r.rel_type == "m.thread")
            .collect();
        if let Some(latest) = thread.first()
            && let Some(latest_pdu) = self.pdu(&latest.event_id)?
        {
            let mut participated = pdu.sender == viewer;
            for reply in &thread {
                if participated {
                    break;
                }
                participated = self
                    .pdu(&reply.event_id)?
                    .is_some_and(|p| p.sender == viewer);
            }
            // The latest event carries its own aggregations (an edit of it); threads do not
            // nest, so this goes one level only.
            let latest_children =
                self.relations(&latest_pdu.event_id, None, false, MAX_AGGREGATED)?;
            let latest_relations =
                self.edit_aggregation(&latest_pdu, &latest_children, with_room_id)?;
            aggregated.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest_pdu.client_json_with(with_room_id, None, latest_relations),
                    "count": thread.len(),
                    "current_user_participated": participated,
                }),
            );
        }
        if let Some(JsonValue::Object(edit)) =
            self.edit_aggregation(pdu, &children, with_room_id)?
        {
            aggregated.extend(edit);
        }
        let references: Vec<JsonValue> = children
            .iter()
            .filter(|r| r.rel_type == "m.reference")
            .map(|r| json!({ "event_id": r.event_id }))
            .collect();
        if !references.is_empty() {
            aggregated.insert("m.reference".into(), json!({ "chunk": references }));
        }
        Ok((!aggregated.is_empty()).then_some(JsonValue::Object(aggregated)))
    }

    /// `{"m.replace": <the most recent valid edit>}` for `original`, if it was edited
    /// (module "Event replacements": same sender and type, neither a state event, the edit
    /// has `m.new_content`, and the original is not itself an edit; the most recent by
    /// `origin_server_ts`, then the larger event id).
    fn edit_aggregation(
        &self,
        original: &Pdu,
        children: &[Relation],
        with_room_id: bool,
    ) -> Result<Option<JsonValue>> {
        if original.state_key.is_some()
            || relates_to(&original.content_value()).is_some_and(|(rel, _)| rel == "m.replace")
        {
            return Ok(None);
        }
        let mut best: Option<Pdu> = None;
        for relation in children {
            if relation.rel_type != "m.replace" {
                continue;
            }
            let Some(edit) = self.pdu(&relation.event_id)? else {
                continue;
            };
            let valid = edit.sender == original.sender
                && edit.kind == original.kind
                && edit.state_key.is_none()
                && edit.content_value()["m.new_content"].is_object();
            let newer = best.as_ref().is_none_or(|best| {
                (edit.origin_server_ts, &edit.event_id) > (best.origin_server_ts, &best.event_id)
            });
            if valid && newer {
                best = Some(edit);
            }
        }
        Ok(
            best.map(
                |edit| json!({ "m.replace": edit.client_json_with(with_room_id, None, None) }),
            ),
        )
    }

    /// Thread roots of a room with the position of their latest reply, most recent first.
    pub fn thread_roots(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, Pos)>> {
        let prefix = prefix_key(room_id.as_str());
        let mut roots = Vec::new();
        for entry in self.thread_roots.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let root =
                OwnedEventId::try_from(String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
                    .map_err(|_| Error::internal("bad thread root key"))?;
            let latest = Pos::from_key(&value)
                .ok_or_else(|| Error::internal("bad value in roomid_threadroot"))?;
            roots.push((root, latest));
        }
        roots.sort_by_key(|(_, latest)| std::cmp::Reverse(*latest));
        Ok(roots)
    }
}
