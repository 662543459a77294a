//! Event filters (client-server API, "Filtering"; `definitions/sync_filter.yaml`,
//! `event_filter.yaml`, `room_event_filter.yaml`): one compiled form used by `/sync`,
//! `/messages` and `/context`.
//!
//! A filter is parsed with ruma's types, then compiled once per request into
//! [`EventMatcher`]s (hash sets for ids, patterns for types). A matcher built from an
//! empty filter lets everything through and says so ([`EventMatcher::lets_all`]), so the
//! common no-filter request pays one branch per event.
//!
//! Rules, as in the spec and Synapse:
//! - `not_*` wins over the positive list; an absent list allows everything, an empty one
//!   nothing.
//! - A `*` in `types` or `not_types` matches any run of characters.
//! - Something without a sender (account data, typing, receipts) fails a `senders` list.
//! - `contains_url: true` keeps events whose content has a string `url`; `false` drops them.
//! - `room.rooms`/`room.not_rooms` pick the rooms before any per-section filter.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::{Hash, Hasher},
    sync::Mutex,
};

use ruma::{
    DeviceId, EventId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::{
        Direction,
        client::{
            filter::{EventFormat, Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter},
            sync::sync_events,
        },
    },
};
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue};

use super::{
    account_data::AccountData,
    rooms::{RoomInfo, Rooms, pdu::Pdu, pos::Pos},
};
use crate::{Error, Result};

/// Timeline events per room when the filter names no `limit`, and the most it may ask for.
pub const DEFAULT_TIMELINE_LIMIT: usize = 10;
pub const MAX_TIMELINE_LIMIT: usize = 100;

/// A compiled `EventFilter` or `RoomEventFilter`.
#[derive(Debug, Default)]
pub struct EventMatcher {
    types: Option<Vec<String>>,
    not_types: Vec<String>,
    senders: Option<HashSet<OwnedUserId>>,
    not_senders: HashSet<OwnedUserId>,
    rooms: Option<HashSet<OwnedRoomId>>,
    not_rooms: HashSet<OwnedRoomId>,
    contains_url: Option<bool>,
    /// The filter's `limit`, if it set one (0 is read as 1: the spec wants more than 0).
    pub limit: Option<usize>,
    lets_all: bool,
}

impl EventMatcher {
    fn build(
        types: Option<&Vec<String>>,
        not_types: &[String],
        senders: Option<&Vec<OwnedUserId>>,
        not_senders: &[OwnedUserId],
        limit: Option<ruma::UInt>,
    ) -> Self {
        let mut matcher = Self {
            types: types.cloned(),
            not_types: not_types.to_vec(),
            senders: senders.map(|s| s.iter().cloned().collect()),
            not_senders: not_senders.iter().cloned().collect(),
            limit: limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX).max(1)),
            ..Self::default()
        };
        matcher.lets_all = matcher.computed_lets_all();
        matcher
    }

    fn computed_lets_all(&self) -> bool {
        self.types.is_none()
            && self.not_types.is_empty()
            && self.senders.is_none()
            && self.not_senders.is_empty()
            && self.rooms.is_none()
            && self.not_rooms.is_empty()
            && self.contains_url.is_none()
    }

    /// From a top-level `EventFilter` (`presence`, `account_data`).
    pub fn from_filter(filter: &Filter) -> Self {
        Self::build(
            filter.types.as_ref(),
            &filter.not_types,
            filter.senders.as_ref(),
            &filter.not_senders,
            filter.limit,
        )
    }

    /// From a `RoomEventFilter` (`timeline`, `state`, `ephemeral`, room `account_data`,
    /// and the `filter` of `/messages` and `/context`).
    pub fn from_room_event_filter(filter: &RoomEventFilter) -> Self {
        let mut matcher = Self::build(
            filter.types.as_ref(),
            &filter.not_types,
            filter.senders.as_ref(),
            &filter.not_senders,
            filter.limit,
        );
        matcher.rooms = filter.rooms.as_ref().map(|r| r.iter().cloned().collect());
        matcher.not_rooms = filter.not_rooms.iter().cloned().collect();
        matcher.contains_url = filter
            .url_filter
            .map(|url| matches!(url, ruma::api::client::filter::UrlFilter::EventsWithUrl));
        matcher.lets_all = matcher.computed_lets_all();
        matcher
    }

    /// Whether this matcher lets every event through (an empty filter).
    pub fn lets_all(&self) -> bool {
        self.lets_all
    }

    /// Whether nothing can pass (`types: []`, `not_types: ["*"]`, `senders: []` or
    /// `rooms: []`), so a section need not be computed at all.
    pub fn blocks_all(&self) -> bool {
        self.types.as_ref().is_some_and(Vec::is_empty)
            || self.not_types.iter().any(|t| t == "*")
            || self.senders.as_ref().is_some_and(HashSet::is_empty)
            || self.rooms.as_ref().is_some_and(HashSet::is_empty)
    }

    pub fn allows_room(&self, room_id: &RoomId) -> bool {
        !self.not_rooms.contains(room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.contains(room_id))
    }

    /// Type and sender rules (`sender` is `None` for account data and ephemeral events).
    pub fn allows(&self, kind: &str, sender: Option<&UserId>) -> bool {
        if self.lets_all {
            return true;
        }
        if self.not_types.iter().any(|pattern| glob(pattern, kind)) {
            return false;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|pattern| glob(pattern, kind))
        {
            return false;
        }
        if sender.is_some_and(|sender| self.not_senders.contains(sender)) {
            return false;
        }
        match (&self.senders, sender) {
            (None, _) => true,
            (Some(senders), Some(sender)) => senders.contains(sender),
            (Some(_), None) => false,
        }
    }

    /// Every rule, for a room event.
    pub fn allows_pdu(&self, pdu: &Pdu) -> bool {
        if self.lets_all {
            return true;
        }
        if (self.rooms.is_some() || !self.not_rooms.is_empty()) && !self.allows_room(&pdu.room_id())
        {
            return false;
        }
        if !self.allows(&pdu.kind.to_string(), Some(&pdu.sender)) {
            return false;
        }
        match self.contains_url {
            None => true,
            Some(wanted) => has_url(pdu) == wanted,
        }
    }

    /// Type and sender rules for an event given as JSON (ephemeral events, account data).
    pub fn allows_json(&self, event: &JsonValue) -> bool {
        if self.lets_all {
            return true;
        }
        let kind = event.get("type").and_then(JsonValue::as_str).unwrap_or("");
        let sender = event
            .get("sender")
            .and_then(JsonValue::as_str)
            .and_then(|s| <&UserId>::try_from(s).ok());
        if !self.allows(kind, sender) {
            return false;
        }
        match self.contains_url {
            None => true,
            Some(wanted) => {
                event
                    .get("content")
                    .and_then(|c| c.get("url"))
                    .is_some_and(JsonValue::is_string)
                    == wanted
            }
        }
    }

    /// Keeps the raw events this matcher allows, at most `limit` of them (the first ones).
    pub fn retain_raw<T>(&self, events: &mut Vec<ruma::serde::Raw<T>>) {
        if !self.lets_all {
            events.retain(|event| {
                serde_json::from_str::<JsonValue>(event.json().get())
                    .is_ok_and(|value| self.allows_json(&value))
            });
        }
        if let Some(limit) = self.limit {
            events.truncate(limit);
        }
    }
}

/// Whether the content has a string `url` (`contains_url`).
fn has_url(pdu: &Pdu) -> bool {
    #[derive(Deserialize)]
    struct Url {
        url: Option<JsonValue>,
    }
    serde_json::from_str::<Url>(pdu.content.get())
        .ok()
        .and_then(|content| content.url)
        .is_some_and(|url| url.is_string())
}

/// `*` matches any run of characters (spec: "A `*` can be used as a wildcard to match any
/// sequence of characters"); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Lazy-loading of members (client-server API, "Lazy-loading room members").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LazyMembers {
    #[default]
    Off,
    On {
        include_redundant_members: bool,
    },
}

impl From<&LazyLoadOptions> for LazyMembers {
    fn from(options: &LazyLoadOptions) -> Self {
        match options {
            LazyLoadOptions::Disabled => Self::Off,
            LazyLoadOptions::Enabled {
                include_redundant_members,
            } => Self::On {
                include_redundant_members: *include_redundant_members,
            },
        }
    }
}

impl LazyMembers {
    pub fn is_on(self) -> bool {
        self != Self::Off
    }
}

/// `event_fields`: dot-separated paths (appendices, "Dot-separated property paths": `\.` is a
/// literal dot, `\\` a literal backslash) of the fields to keep.
#[derive(Debug, Default)]
pub struct EventFields(Vec<Vec<String>>);

impl EventFields {
    pub fn new(fields: &[String]) -> Self {
        Self(fields.iter().map(|field| split_path(field)).collect())
    }

    /// The event with only the named fields (those it has).
    pub fn project(&self, event: &JsonValue) -> JsonValue {
        let mut out = JsonValue::Object(Map::new());
        for path in &self.0 {
            let mut source = event;
            let mut found = true;
            for key in path {
                match source.get(key) {
                    Some(next) => source = next,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            if !found {
                continue;
            }
            let mut target = &mut out;
            for (i, key) in path.iter().enumerate() {
                let JsonValue::Object(map) = target else {
                    break;
                };
                if i + 1 == path.len() {
                    map.insert(key.clone(), source.clone());
                    break;
                }
                target = map
                    .entry(key.clone())
                    .or_insert_with(|| JsonValue::Object(Map::new()));
            }
        }
        out
    }

    /// [`EventFields::project`] on a raw event.
    pub fn project_raw<T>(&self, event: ruma::serde::Raw<T>) -> ruma::serde::Raw<T> {
        match serde_json::from_str::<JsonValue>(event.json().get()) {
            Ok(value) => super::sync::raw(self.project(&value)),
            Err(_) => event,
        }
    }
}

fn split_path(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('.') | Some('\\')) => {
                current.push(chars.next().expect("peeked"));
            }
            '.' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// A sync filter (`FilterDefinition`), compiled for one request.
#[derive(Debug)]
pub struct SyncFilter {
    /// `room.rooms` / `room.not_rooms`: which rooms appear at all.
    pub rooms: EventMatcher,
    pub timeline: EventMatcher,
    pub state: EventMatcher,
    pub ephemeral: EventMatcher,
    pub room_account_data: EventMatcher,
    pub presence: EventMatcher,
    pub account_data: EventMatcher,
    /// Timeline events per room (the timeline filter's `limit`, 1 to 100, default 10).
    pub timeline_limit: usize,
    /// From the `state` filter.
    pub lazy_members: LazyMembers,
    pub include_leave: bool,
    pub event_fields: Option<EventFields>,
    /// `event_format: federation`: events as stored PDUs.
    pub federation_format: bool,
}

impl Default for SyncFilter {
    fn default() -> Self {
        Self::compile(&FilterDefinition::default())
    }
}

impl SyncFilter {
    pub fn compile(definition: &FilterDefinition) -> Self {
        let room = &definition.room;
        let mut rooms = EventMatcher {
            rooms: room.rooms.as_ref().map(|r| r.iter().cloned().collect()),
            not_rooms: room.not_rooms.iter().cloned().collect(),
            ..EventMatcher::default()
        };
        rooms.lets_all = rooms.computed_lets_all();
        let timeline = EventMatcher::from_room_event_filter(&room.timeline);
        Self {
            rooms,
            timeline_limit: timeline
                .limit
                .unwrap_or(DEFAULT_TIMELINE_LIMIT)
                .clamp(1, MAX_TIMELINE_LIMIT),
            timeline,
            state: EventMatcher::from_room_event_filter(&room.state),
            ephemeral: EventMatcher::from_room_event_filter(&room.ephemeral),
            room_account_data: EventMatcher::from_room_event_filter(&room.account_data),
            presence: EventMatcher::from_filter(&definition.presence),
            account_data: EventMatcher::from_filter(&definition.account_data),
            lazy_members: LazyMembers::from(&room.state.lazy_load_options),
            include_leave: room.include_leave,
            event_fields: definition.event_fields.as_deref().map(EventFields::new),
            federation_format: definition.event_format == EventFormat::Federation,
        }
    }

    /// Whether a room appears in the sync at all.
    pub fn allows_room(&self, room_id: &RoomId) -> bool {
        self.rooms.lets_all() || self.rooms.allows_room(room_id)
    }
}

/// The filter of a `/sync` request: inline JSON or the id of a stored filter.
///
/// ruma reads `filter` as inline JSON when it parses as a `FilterDefinition` and as an id
/// otherwise, so a malformed inline filter arrives here as an "id" starting with `{`: that is
/// `400 M_BAD_JSON` (Synapse: `M_NOT_JSON` for text that is not JSON, `M_BAD_JSON` for a
/// filter of the wrong shape). An id the user never stored is `400 M_INVALID_PARAM`, as in
/// Synapse.
pub fn sync_filter(
    account_data: &AccountData,
    user_id: &UserId,
    filter: Option<&sync_events::v3::Filter>,
) -> Result<SyncFilter> {
    let definition = match filter {
        None => return Ok(SyncFilter::default()),
        Some(sync_events::v3::Filter::FilterDefinition(definition)) => {
            return Ok(SyncFilter::compile(definition));
        }
        Some(sync_events::v3::Filter::FilterId(id)) if id.trim().is_empty() => {
            return Ok(SyncFilter::default());
        }
        Some(sync_events::v3::Filter::FilterId(id)) if id.trim_start().starts_with('{') => {
            serde_json::from_str::<FilterDefinition>(id)
                .map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))?
        }
        Some(sync_events::v3::Filter::FilterId(id)) => {
            let stored = account_data
                .filter(user_id, id)?
                .ok_or_else(|| Error::invalid_param("No such filter."))?;
            serde_json::from_value::<FilterDefinition>(stored)
                .map_err(|e| Error::internal(format!("stored filter {id} is invalid: {e}")))?
        }
        Some(_) => return Ok(SyncFilter::default()),
    };
    Ok(SyncFilter::compile(&definition))
}

/// Where [`scan`] walks: from `from` in `dir` (backwards: positions below `from`; forwards:
/// positions from `from` on), up to `bound` (backwards: positions `>= bound` only; forwards:
/// `< bound`), keeping at most `limit` events and reading at most `max_read`.
#[derive(Clone, Copy, Debug)]
pub struct Walk {
    pub dir: Direction,
    pub from: Pos,
    pub bound: Option<Pos>,
    pub limit: usize,
    pub max_read: usize,
}

/// A run of timeline events read by [`scan`].
pub struct Scanned {
    /// The events kept, in the order read.
    pub events: Vec<(Pos, Pdu)>,
    /// The position of the last event read (kept or not).
    pub last_read: Option<Pos>,
    /// Whether the walk reached the end of the room or the bound (nothing more to read).
    pub exhausted: bool,
}

/// Walks a room's timeline as `walk` says, keeping the events `keep` accepts, until
/// `limit` are kept, the room's end or the bound is reached, or `max_read` events were read.
/// Events are read in batches, so a filter that lets everything through costs one read of
/// `limit` events, as without a filter.
pub fn scan(
    rooms: &Rooms,
    info: &RoomInfo,
    walk: Walk,
    mut keep: impl FnMut(Pos, &Pdu) -> Result<bool>,
) -> Result<Scanned> {
    let Walk {
        dir,
        from,
        bound,
        limit,
        max_read,
    } = walk;
    let mut out = Scanned {
        events: Vec::new(),
        last_read: None,
        exhausted: false,
    };
    if limit == 0 {
        return Ok(out);
    }
    let mut cursor = from;
    let mut read = 0;
    let mut batch_size = limit;
    loop {
        let batch = match dir {
            Direction::Backward => rooms.events_before(info, cursor, batch_size)?,
            Direction::Forward => rooms.events_from(info, cursor, batch_size)?,
        };
        let full = batch.len() == batch_size;
        for (pos, pdu) in batch {
            let beyond = match (dir, bound) {
                (Direction::Backward, Some(bound)) => pos < bound,
                (Direction::Forward, Some(bound)) => pos >= bound,
                _ => false,
            };
            if beyond {
                out.exhausted = true;
                return Ok(out);
            }
            read += 1;
            out.last_read = Some(pos);
            cursor = match dir {
                Direction::Backward => pos,
                Direction::Forward => pos.next(),
            };
            if keep(pos, &pdu)? {
                out.events.push((pos, pdu));
                if out.events.len() >= limit {
                    return Ok(out);
                }
            }
        }
        if !full {
            out.exhausted = true;
            return Ok(out);
        }
        if read >= max_read {
            return Ok(out);
        }
        // Later batches are larger: the filter is evidently dropping events.
        batch_size = (batch_size * 2).min(max_read - read).max(1);
    }
}

/// Member events already sent to each device by lazy-loading syncs, so that, without
/// `include_redundant_members`, a member event is sent once per device (client-server API,
/// "Lazy-loading room members": the server MAY skip members the client already has).
/// Memory only and bounded: forgetting an entry just sends that member event again, which
/// the spec allows. An initial sync starts the device afresh.
#[derive(Default)]
pub struct SentMembers {
    inner: Mutex<SentInner>,
}

#[derive(Default)]
struct SentInner {
    devices: HashMap<(OwnedUserId, OwnedDeviceId), HashSet<u64>>,
    order: VecDeque<(OwnedUserId, OwnedDeviceId)>,
}

/// Devices remembered, and member events per device.
const SENT_MEMBERS_DEVICES: usize = 1024;
const SENT_MEMBERS_PER_DEVICE: usize = 4096;

fn event_key(event_id: &EventId) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event_id.hash(&mut hasher);
    hasher.finish()
}

impl SentMembers {
    /// Forgets what the device was sent (an initial or `full_state` sync).
    pub fn reset(&self, user_id: &UserId, device_id: &DeviceId) {
        let mut inner = self.inner.lock().expect("sent members lock");
        inner
            .devices
            .remove(&(user_id.to_owned(), device_id.to_owned()));
    }

    /// Whether `event_id` was sent to the device.
    pub fn was_sent(&self, user_id: &UserId, device_id: &DeviceId, event_id: &EventId) -> bool {
        let inner = self.inner.lock().expect("sent members lock");
        inner
            .devices
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .is_some_and(|sent| sent.contains(&event_key(event_id)))
    }

    /// Records member events as sent to the device.
    pub fn record<'a>(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        event_ids: impl IntoIterator<Item = &'a EventId>,
    ) {
        let mut inner = self.inner.lock().expect("sent members lock");
        let key = (user_id.to_owned(), device_id.to_owned());
        if !inner.devices.contains_key(&key) {
            while inner.devices.len() >= SENT_MEMBERS_DEVICES {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                inner.devices.remove(&oldest);
            }
            inner.order.retain(|k| k != &key);
            inner.order.push_back(key.clone());
        }
        let sent = inner.devices.entry(key).or_default();
        for event_id in event_ids {
            if sent.len() >= SENT_MEMBERS_PER_DEVICE {
                sent.clear();
            }
            sent.insert(event_key(event_id));
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, event_id, room_id, user_id};
    use serde_json::json;

    use super::*;

    #[test]
    fn globs_match_any_run_of_characters() {
        assert!(glob("m.room.*", "m.room.message"));
        assert!(glob("*", "anything"));
        assert!(glob("m.*.message", "m.room.message"));
        assert!(glob("*.message", "m.room.message"));
        assert!(!glob("m.room.*", "m.call.invite"));
        assert!(glob("m.room.message", "m.room.message"));
        assert!(!glob("m.room.message", "m.room.messages"));
        assert!(glob("m.room.m*e", "m.room.message"));
        assert!(!glob("m.room.m*x", "m.room.message"));
    }

    #[test]
    fn not_lists_win_and_empty_lists_block() {
        let filter: RoomEventFilter = serde_json::from_value(json!({
            "types": ["m.room.*"], "not_types": ["m.room.member"],
            "senders": ["@a:x", "@b:x"], "not_senders": ["@b:x"],
        }))
        .unwrap();
        let matcher = EventMatcher::from_room_event_filter(&filter);
        assert!(!matcher.lets_all());
        assert!(matcher.allows("m.room.message", Some(user_id!("@a:x"))));
        assert!(!matcher.allows("m.room.member", Some(user_id!("@a:x"))));
        assert!(!matcher.allows("m.room.message", Some(user_id!("@b:x"))));
        assert!(!matcher.allows("m.room.message", Some(user_id!("@c:x"))));
        assert!(!matcher.allows("m.typing", None));
        assert!(
            !matcher.allows("m.room.message", None),
            "no sender fails `senders`"
        );

        let none: Filter = serde_json::from_value(json!({ "types": [] })).unwrap();
        assert!(EventMatcher::from_filter(&none).blocks_all());
        let star: Filter = serde_json::from_value(json!({ "not_types": ["*"] })).unwrap();
        assert!(EventMatcher::from_filter(&star).blocks_all());
        assert!(!EventMatcher::from_filter(&star).allows("m.presence", None));
        let empty = EventMatcher::from_filter(&Filter::default());
        assert!(empty.lets_all() && !empty.blocks_all());
    }

    #[test]
    fn rooms_and_urls() {
        let filter: RoomEventFilter = serde_json::from_value(json!({
            "rooms": ["!a:x", "!b:x"], "not_rooms": ["!b:x"], "contains_url": true,
        }))
        .unwrap();
        let matcher = EventMatcher::from_room_event_filter(&filter);
        assert!(matcher.allows_room(room_id!("!a:x")));
        assert!(!matcher.allows_room(room_id!("!b:x")));
        assert!(!matcher.allows_room(room_id!("!c:x")));
        assert!(matcher.allows_json(&json!({ "type": "t", "content": { "url": "mxc://x/y" } })));
        assert!(!matcher.allows_json(&json!({ "type": "t", "content": { "url": 1 } })));
        assert!(!matcher.allows_json(&json!({ "type": "t", "content": {} })));
    }

    #[test]
    fn event_fields_keep_only_the_named_paths() {
        let fields = EventFields::new(&[
            "type".to_owned(),
            "content.body".to_owned(),
            r"content.m\.relates_to".to_owned(),
            "content.missing".to_owned(),
        ]);
        let event = json!({
            "type": "m.room.message", "sender": "@a:x",
            "content": { "body": "hi", "msgtype": "m.text", "m.relates_to": { "x": 1 } },
        });
        assert_eq!(
            fields.project(&event),
            json!({ "type": "m.room.message",
                    "content": { "body": "hi", "m.relates_to": { "x": 1 } } })
        );
        assert_eq!(split_path(r"a\\b.c"), ["a\\b", "c"]);
        assert_eq!(split_path(r"a\xb"), [r"a\xb"]);
    }

    #[test]
    fn sync_filter_defaults_and_limits() {
        let filter = SyncFilter::default();
        assert_eq!(filter.timeline_limit, DEFAULT_TIMELINE_LIMIT);
        assert!(filter.timeline.lets_all() && filter.presence.lets_all());
        assert!(!filter.include_leave && filter.lazy_members == LazyMembers::Off);
        let definition: FilterDefinition = serde_json::from_value(json!({
            "room": { "timeline": { "limit": 1000 }, "rooms": ["!a:x"], "include_leave": true,
                      "state": { "lazy_load_members": true, "include_redundant_members": true } },
            "event_format": "federation",
        }))
        .unwrap();
        let filter = SyncFilter::compile(&definition);
        assert_eq!(filter.timeline_limit, MAX_TIMELINE_LIMIT);
        assert!(filter.allows_room(room_id!("!a:x")) && !filter.allows_room(room_id!("!b:x")));
        assert!(filter.include_leave && filter.federation_format);
        assert_eq!(
            filter.lazy_members,
            LazyMembers::On {
                include_redundant_members: true
            }
        );
    }

    #[test]
    fn sent_members_are_remembered_per_device_and_reset() {
        let sent = SentMembers::default();
        let (alice, phone, laptop) = (user_id!("@a:x"), device_id!("PHONE"), device_id!("LAP"));
        let member = event_id!("$member");
        assert!(!sent.was_sent(alice, phone, member));
        sent.record(alice, phone, [member]);
        assert!(sent.was_sent(alice, phone, member));
        assert!(!sent.was_sent(alice, laptop, member));
        sent.reset(alice, phone);
        assert!(!sent.was_sent(alice, phone, member));
    }
}
