//! Building a local event (only events this server creates): pick `prev_events` and
//! `auth_events`, assemble the JSON, add the content hash, sign it and derive the event id.
//! Nothing here checks the event against the authorization rules ([`super::check`]) or
//! stores it ([`super::prepare`], [`super::commit`]).

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    RoomId, RoomVersionId, UserId,
    api::error::ErrorKind,
    room_version_rules::RoomVersionRules,
    signatures::{JsonError, hash_and_sign_event, reference_hash},
    state_res::auth_types_for_event,
};
use serde_json::{Value as JsonValue, json};

use super::{
    Rooms,
    append::{NewEvent, supported_room_version},
    check::BeforeSource,
    pdu::{Pdu, room_id_from_create_event_id},
    short::{ShortEventId, ShortStateKey},
};
use crate::{Error, Result};

/// The largest event, signed and as canonical JSON (client-server API, "Size limits").
pub const MAX_EVENT_BYTES: usize = 65_536;
/// The longest `type` and `state_key`, in bytes (the same section).
pub const MAX_KEY_BYTES: usize = 255;
/// The most `prev_events` an event may cite (rooms v3+, "Event format": at most 20).
pub const MAX_PREV_EVENTS: usize = 20;

/// An unsigned event as [`Rooms::template`] assembles it, and the state before it.
pub(super) struct Template {
    /// Without `hashes`, `signatures` and `event_id`.
    pub object: CanonicalJsonObject,
    pub state: BTreeMap<ShortStateKey, ShortEventId>,
    pub before: BeforeSource,
}

/// A built, signed local event, not yet checked or stored.
pub(super) struct Built {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// The stored form: the signed event plus `event_id` and `unsigned` (the state it
    /// replaces), as canonical JSON (what a redaction's `redacted_because` quotes) ...
    pub object: CanonicalJsonObject,
    /// ... and as bytes.
    pub stored: Vec<u8>,
    pub pdu: Pdu,
    /// The state before the event and where it came from.
    pub state: BTreeMap<ShortStateKey, ShortEventId>,
    pub before: BeforeSource,
}

fn too_large() -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!("The event is larger than {MAX_EVENT_BYTES} bytes."),
    )
}

/// `type` and `state_key` within their limits; 413 `M_TOO_LARGE` otherwise, as Synapse.
pub(super) fn check_key_sizes(event: &NewEvent) -> Result<()> {
    let kind = event.kind.to_string();
    let state_key = event.state_key.as_deref().unwrap_or_default();
    for (name, value) in [("type", kind.as_str()), ("state_key", state_key)] {
        if value.len() > MAX_KEY_BYTES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("The event's `{name}` is longer than {MAX_KEY_BYTES} bytes."),
            ));
        }
    }
    Ok(())
}

/// The complete signed event, as canonical JSON, within [`MAX_EVENT_BYTES`].
fn check_event_size(object: &CanonicalJsonObject) -> Result<()> {
    let size = serde_json::to_vec(object)
        .map_err(|e| Error::internal(format!("event serialisation: {e}")))?
        .len();
    if size > MAX_EVENT_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn canonical(value: JsonValue) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err(Error::bad_json("Event content must be an object.")),
        Err(error) => Err(Error::bad_json(format!(
            "Event is not canonical JSON: {error}"
        ))),
    }
}

impl Rooms {
    /// The forward extremities a new event cites: all of them, or the
    /// [`MAX_PREV_EVENTS`] deepest when there are more (ties broken by event id, so the
    /// choice is stable). The others stay extremities and are resolved in.
    pub(super) fn pick_prev_events(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        let extremities = self.extremities(room_id)?;
        if extremities.len() <= MAX_PREV_EVENTS {
            return Ok(extremities);
        }
        let mut with_depth = Vec::with_capacity(extremities.len());
        for id in extremities {
            let pdu = self
                .pdu(&id)?
                .ok_or_else(|| Error::internal(format!("extremity {id} is not stored")))?;
            with_depth.push((u64::from(pdu.depth), id));
        }
        with_depth.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        with_depth.truncate(MAX_PREV_EVENTS);
        Ok(with_depth.into_iter().map(|(_, id)| id).collect())
    }

    /// The unsigned event `sender` would send on top of `prev_events`: `auth_events`,
    /// `depth`, `origin_server_ts` and the rest of the JSON, without hashes, signatures or
    /// event id, together with the state before it. Shared by [`Rooms::build`] (which hashes
    /// and signs it) and the join templates other servers ask for ([`Rooms::member_template`],
    /// server-server API `make_join`). `room_id` is `None` only for a version-12 create
    /// event, whose id names the room.
    pub(super) fn template(
        &self,
        room_id: Option<&RoomId>,
        rules: &RoomVersionRules,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Vec<OwnedEventId>,
    ) -> Result<Template> {
        check_key_sizes(event)?;
        // The state before the event: after its one prev_event, or resolved over several.
        let (state, before) = self.state_before(rules, &prev_events)?;
        // Server-server API, "PDUs": `depth` is one more than the largest `depth` among the
        // prev events, capped at the largest integer canonical JSON allows (2^53 - 1).
        let mut depth: u64 = 0;
        for prev in &prev_events {
            let prev = self
                .pdu(prev)?
                .ok_or_else(|| Error::internal(format!("prev event {prev} is not stored")))?;
            depth = depth.max(u64::from(prev.depth));
        }
        let depth = (depth + 1).min(u64::from(ruma::UInt::MAX));

        // Auth events: the room version's selection from the state before the event
        // (server-server API, "Auth events selection").
        let content_raw = serde_json::value::to_raw_value(&event.content)
            .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))?;
        let auth_types = auth_types_for_event(
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        let mut auth_events = Vec::new();
        for (kind, state_key) in &auth_types {
            if let Some(short_key) = self.short.get_short_state_key(kind, state_key)?
                && let Some(short_event) = state.get(&short_key)
            {
                auth_events.push(self.short.event_id(*short_event)?);
            }
        }

        let mut object = json!({
            "auth_events": auth_events,
            "content": event.content,
            "depth": depth,
            "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
            "prev_events": prev_events,
            "sender": sender,
            "type": event.kind,
        });
        if let Some(room_id) = room_id {
            object["room_id"] = room_id.as_str().into();
        }
        if let Some(state_key) = &event.state_key {
            object["state_key"] = state_key.as_str().into();
        }
        if let Some(redacts) = &event.redacts {
            // Since rooms v11 `redacts` lives in the content; before, at the top level.
            if rules.redaction.keep_room_redaction_redacts {
                object["content"]["redacts"] = redacts.as_str().into();
            } else {
                object["redacts"] = redacts.as_str().into();
            }
        }
        Ok(Template {
            object: canonical(object)?,
            state,
            before,
        })
    }

    /// The member event template for `user_id`, another server's user, in a room here
    /// (server-server API, `GET /make_join`, `/make_knock`, `/make_leave`): the unsigned
    /// `m.room.member` event with `content` (a join, a knock or a leave), on top of the
    /// room's forward extremities, with `origin` = this server (the other server replaces
    /// `origin` and `origin_server_ts`, signs it and sends it back through `send_join`,
    /// `send_knock` or `send_leave`). 404 for an unknown room; 403 with the reason when the
    /// authorization rules refuse the event against the state it would follow (join rules,
    /// bans, a room version without knocking): its event would be rejected anyway.
    pub fn member_template(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        content: JsonValue,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let info = self.existing(room_id)?;
        let rules = info
            .version
            .rules()
            .filter(|_| supported_room_version(&info.version))
            .ok_or_else(|| Error::internal(format!("room {room_id} has an unsupported version")))?;
        let event = NewEvent::state("m.room.member", user_id.as_str(), content);
        let prev_events = self.pick_prev_events(room_id)?;
        let Template {
            mut object, state, ..
        } = self.template(Some(room_id), &rules, user_id, &event, prev_events)?;
        // The rules need an event id; the template has none (the joining server's signed
        // event will), and no rule looks at it.
        let mut probe = object.clone();
        probe.insert(
            "event_id".into(),
            CanonicalJsonValue::String("$member_template".into()),
        );
        let pdu: Pdu = serde_json::to_value(&probe)
            .and_then(serde_json::from_value)
            .map_err(|e| Error::internal(format!("member template does not parse: {e}")))?;
        self.auth_against_state(&rules.authorization, &pdu, &state)?
            .map_err(|reason| {
                Error::forbidden(format!("The room's rules do not allow this: {reason}"))
            })?;
        object.insert(
            "origin".into(),
            CanonicalJsonValue::String(self.server_name.to_string()),
        );
        Ok((info.version, object))
    }

    /// Builds and signs `event` on top of `prev_events` (the caller holds the room lock).
    /// `room_id` is `None` only for a version-12 create event, whose id names the room.
    pub(super) fn build(
        &self,
        room_id: Option<&RoomId>,
        rules: &RoomVersionRules,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Vec<OwnedEventId>,
    ) -> Result<Built> {
        let Template {
            mut object,
            state,
            before,
        } = self.template(room_id, rules, sender, event, prev_events)?;
        hash_and_sign_event(
            self.server_name.as_str(),
            self.keys.keypair(),
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| match e {
            JsonError::PduTooLarge => too_large(),
            e => Error::bad_json(format!("Event cannot be signed: {e}")),
        })?;
        check_event_size(&object)?;
        let hash = reference_hash(&object, rules).map_err(|e| match e {
            JsonError::PduTooLarge => too_large(),
            e => Error::bad_json(format!("Event cannot be hashed: {e}")),
        })?;
        let event_id = OwnedEventId::try_from(format!("${hash}"))
            .map_err(|_| Error::internal("reference hash is not an event id"))?;
        let room_id = match room_id {
            Some(room_id) => room_id.to_owned(),
            None => room_id_from_create_event_id(&event_id),
        };

        // The previous holder of this state key goes into `unsigned` (not signed, not hashed)
        // so clients can render changes.
        let replaced = match &event.state_key {
            Some(state_key) => match self
                .short
                .get_short_state_key(&event.kind.to_string().into(), state_key)?
                .and_then(|key| state.get(&key))
            {
                Some(short) => self.pdu(&self.short.event_id(*short)?)?,
                None => None,
            },
            None => None,
        };
        let mut stored = object.clone();
        stored.insert(
            "event_id".into(),
            CanonicalJsonValue::String(event_id.to_string()),
        );
        if let Some(replaced) = &replaced {
            let unsigned = json!({
                "prev_content": replaced.content_value(),
                "replaces_state": replaced.event_id,
                "prev_sender": replaced.sender,
            });
            stored.insert(
                "unsigned".into(),
                CanonicalJsonValue::try_from(unsigned).unwrap_or_default(),
            );
        }
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| Error::internal(format!("PDU serialisation: {e}")))?;
        let pdu: Pdu = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        Ok(Built {
            event_id,
            room_id,
            object: stored,
            stored: bytes,
            pdu,
            state,
            before,
        })
    }
}
