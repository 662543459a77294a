//! The persistent data unit: a room event as stored and signed, and its client forms.

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    events::{
        AnyStrippedStateEvent, AnySyncStateEvent, AnySyncTimelineEvent, StateEventType,
        TimelineEventType,
    },
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as JsonValue, value::RawValue as RawJsonValue};

/// A stored event. The stored JSON is the signed PDU plus `event_id` and `unsigned` (neither
/// is signed); federation strips them again. A version-12 create event has no `room_id`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// Absent only on a room-version-12 create event: there the room id is the event id
    /// with `!` for `$` (rooms v12, "Event format"). Use [`Pdu::room_id`].
    #[serde(default, rename = "room_id", skip_serializing_if = "Option::is_none")]
    pub room_id_field: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub depth: UInt,
    pub auth_events: Vec<OwnedEventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacts: Option<OwnedEventId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned: Option<Box<RawJsonValue>>,
    /// Whether the event was rejected by the authorization rules. Never stored in the JSON
    /// (a verdict is ours, not part of the event); set by `Rooms::pdu_for_auth` so that
    /// ruma's auth checks and state resolution treat it as rejected.
    #[serde(skip)]
    pub rejected: bool,
}

impl Pdu {
    /// The room this event belongs to.
    pub fn room_id(&self) -> OwnedRoomId {
        match &self.room_id_field {
            Some(room_id) => room_id.clone(),
            None => room_id_from_create_event_id(&self.event_id),
        }
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    pub fn state_event_type(&self) -> StateEventType {
        self.kind.to_string().into()
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> JsonValue {
        serde_json::from_str(self.content.get()).unwrap_or(JsonValue::Object(Map::new()))
    }

    /// A field of the content, if it is a string.
    pub fn content_str(&self, field: &str) -> Option<String> {
        match self.content_value().get(field) {
            Some(JsonValue::String(value)) => Some(value.clone()),
            _ => None,
        }
    }

    /// The event as clients see it, without `room_id` (sync) or with it (everything else).
    fn client_json(&self, with_room_id: bool, transaction_id: Option<&str>) -> JsonValue {
        self.client_json_with(with_room_id, transaction_id, None)
    }

    /// The client form with `relations` (bundled aggregations) as `unsigned.m.relations`.
    pub fn client_json_with(
        &self,
        with_room_id: bool,
        transaction_id: Option<&str>,
        relations: Option<JsonValue>,
    ) -> JsonValue {
        let mut event = Map::new();
        event.insert(
            "content".into(),
            serde_json::from_str(self.content.get()).unwrap_or_default(),
        );
        event.insert("event_id".into(), self.event_id.as_str().into());
        event.insert(
            "origin_server_ts".into(),
            u64::from(self.origin_server_ts.get()).into(),
        );
        event.insert("sender".into(), self.sender.as_str().into());
        event.insert("type".into(), self.kind.to_string().into());
        if let Some(state_key) = &self.state_key {
            event.insert("state_key".into(), state_key.as_str().into());
        }
        if let Some(redacts) = &self.redacts {
            event.insert("redacts".into(), redacts.as_str().into());
        }
        if with_room_id {
            event.insert("room_id".into(), self.room_id().as_str().into());
        }
        let mut unsigned = match &self.unsigned {
            Some(raw) => match serde_json::from_str(raw.get()) {
                Ok(JsonValue::Object(map)) => map,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        let age = u64::from(MilliSecondsSinceUnixEpoch::now().get())
            .saturating_sub(u64::from(self.origin_server_ts.get()));
        unsigned.insert("age".into(), age.into());
        if let Some(transaction_id) = transaction_id {
            unsigned.insert("transaction_id".into(), transaction_id.into());
        }
        if let Some(relations) = relations {
            unsigned.insert("m.relations".into(), relations);
        }
        event.insert("unsigned".into(), JsonValue::Object(unsigned));
        JsonValue::Object(event)
    }

    pub fn to_sync_event(&self, transaction_id: Option<&str>) -> Raw<AnySyncTimelineEvent> {
        raw(self.client_json(false, transaction_id))
    }

    pub fn to_sync_state_event(&self) -> Raw<AnySyncStateEvent> {
        raw(self.client_json(false, None))
    }

    pub fn to_state_event(&self) -> Raw<ruma::events::AnyStateEvent> {
        raw(self.client_json(true, None))
    }

    /// The stripped form invitees see (`type`, `state_key`, `content`, `sender`).
    pub fn to_stripped_state_event(&self) -> Raw<AnyStrippedStateEvent> {
        let mut event = Map::new();
        event.insert(
            "content".into(),
            serde_json::from_str(self.content.get()).unwrap_or_default(),
        );
        event.insert("type".into(), self.kind.to_string().into());
        event.insert(
            "state_key".into(),
            self.state_key.clone().unwrap_or_default().into(),
        );
        event.insert("sender".into(), self.sender.as_str().into());
        raw(JsonValue::Object(event))
    }
}

/// Rooms v12: the room id is the create event's id with the sigil `!` instead of `$`.
pub fn room_id_from_create_event_id(event_id: &ruma::EventId) -> OwnedRoomId {
    let id = format!("!{}", &event_id.as_str()[1..]);
    OwnedRoomId::try_from(id).expect("an event id with another sigil is a valid room id")
}

fn raw<T>(value: JsonValue) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(&value).expect("JSON value serialises"))
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_field.as_deref()
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}
