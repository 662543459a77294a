//! Room state: send a state event, read all of it or one event.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use serde_json::Value as JsonValue;

use super::room::require_joined;
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
    // Aliases named in m.room.canonical_alias must point at this room (spec: m.room.canonical_alias).
    if body.event_type.to_string() == "m.room.canonical_alias" {
        let mut named = Vec::new();
        if let Some(alias) = content.get("alias").and_then(JsonValue::as_str) {
            named.push(alias.to_owned());
        }
        if let Some(list) = content.get("alt_aliases").and_then(JsonValue::as_array) {
            named.extend(list.iter().filter_map(JsonValue::as_str).map(str::to_owned));
        }
        for alias in named {
            let alias = ruma::OwnedRoomAliasId::try_from(alias)
                .map_err(|_| Error::new(ruma::api::error::ErrorKind::BadAlias, "Invalid alias."))?;
            if services.rooms.aliases.resolve_local(&alias)?.as_deref() != Some(&*body.room_id) {
                return Err(Error::new(
                    ruma::api::error::ErrorKind::BadAlias,
                    format!("{alias} does not point at this room."),
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

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_state_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_state_events::v3::Request>,
) -> Result<RumaResponse<get_state_events::v3::Response>> {
    let (sender, _) = request.sender()?;
    let room_id = &request.body.room_id;
    require_joined(&services, room_id, sender)?;
    let info = services.rooms.existing(room_id)?;
    let state = services.rooms.current_state(&info)?;
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
    require_joined(&services, &body.room_id, sender)?;
    let pdu = services
        .rooms
        .current_state_event(&body.room_id, &body.event_type, &body.state_key)?
        .ok_or_else(|| Error::not_found("State event not found."))?;
    let raw = match body.format {
        get_state_event_for_key::v3::StateEventFormat::Event => pdu.to_state_event().into_json(),
        _ => pdu.content.clone(),
    };
    Ok(RumaResponse(get_state_event_for_key::v3::Response::new(
        raw,
    )))
}
