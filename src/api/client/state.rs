//! Room state: send a state event, read all of it or one event.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    OwnedRoomAliasId,
    api::{
        client::state::{get_state_event_for_key, get_state_events, send_state_event},
        error::ErrorKind,
    },
};
use serde_json::Value as JsonValue;

use super::room::readable_state;
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, rooms::append::NewEvent},
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn send_state_event(
    State(services): State<Arc<Services>>,
    request: Ruma<send_state_event::v3::Request>,
) -> Result<RumaResponse<send_state_event::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let content: JsonValue = serde_json::from_str(body.body.json().get())
        .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))?;
    if !content.is_object() {
        return Err(Error::bad_json("Event content must be an object."));
    }
    // Aliases named in m.room.canonical_alias must be valid (400 M_INVALID_PARAM) and point at
    // this room (400 M_BAD_ALIAS): client-server API, `PUT /rooms/{roomId}/state`.
    if body.event_type.to_string() == "m.room.canonical_alias" {
        for alias in canonical_aliases(&content)? {
            if services.rooms.aliases.resolve_local(&alias)?.as_deref() != Some(&*body.room_id) {
                return Err(Error::new(
                    ErrorKind::BadAlias,
                    format!("The alias {alias} does not point to this room."),
                ));
            }
        }
    }
    let event = NewEvent::state(
        body.event_type.to_string().as_str(),
        body.state_key.as_str(),
        content,
    );
    let pdu = services
        .send_event(&body.room_id, sender, event, None)
        .await?;
    Ok(RumaResponse(send_state_event::v3::Response::new(
        pdu.event_id,
    )))
}

/// The aliases an `m.room.canonical_alias` content names (`alias`, `alt_aliases`); 400
/// `M_INVALID_PARAM` for one that is not a string with alias syntax.
fn canonical_aliases(content: &JsonValue) -> Result<Vec<OwnedRoomAliasId>> {
    let invalid = |what: &JsonValue| Error::invalid_param(format!("Invalid alias: {what}"));
    let parse = |value: &JsonValue| {
        value
            .as_str()
            .and_then(|alias| OwnedRoomAliasId::try_from(alias).ok())
            .ok_or_else(|| invalid(value))
    };
    let mut aliases = Vec::new();
    match content.get("alias") {
        None | Some(JsonValue::Null) => {}
        Some(value) => aliases.push(parse(value)?),
    }
    match content.get("alt_aliases") {
        None => {}
        Some(JsonValue::Array(list)) => {
            for value in list {
                aliases.push(parse(value)?);
            }
        }
        Some(other) => return Err(invalid(other)),
    }
    Ok(aliases)
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_state_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_state_events::v3::Request>,
) -> Result<RumaResponse<get_state_events::v3::Response>> {
    let (sender, _) = request.sender()?;
    let room_id = &request.body.room_id;
    let state = services
        .rooms
        .state
        .load(readable_state(&services, room_id, sender)?)?;
    let events = services
        .rooms
        .state_events(&state)?
        .iter()
        .map(|pdu| pdu.to_state_event())
        .collect();
    Ok(RumaResponse(get_state_events::v3::Response::new(events)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn get_state_event_for_key(
    State(services): State<Arc<Services>>,
    request: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<RumaResponse<get_state_event_for_key::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let rooms = &services.rooms;
    let state = rooms
        .state
        .load(readable_state(&services, &body.room_id, sender)?)?;
    let pdu = rooms
        .state_event(&state, &body.event_type, &body.state_key)?
        .ok_or_else(|| Error::not_found("State event not found."))?;
    let raw = match body.format {
        get_state_event_for_key::v3::StateEventFormat::Event => pdu.to_state_event().into_json(),
        _ => pdu.content.clone(),
    };
    Ok(RumaResponse(get_state_event_for_key::v3::Response::new(
        raw,
    )))
}
