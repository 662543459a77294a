//! Rooms for other servers (server-server API, "Joining Rooms", "Retrieving events",
//! "Backfilling and retrieving missing events"): `make_join`, `send_join` (v2), `/event`,
//! `/state`, `/state_ids`, `/event_auth`, `/get_missing_events`, `/backfill`. The logic is
//! in `service::federation::resident`.

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::{
    MilliSecondsSinceUnixEpoch, ServerName,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        membership::{create_join_event, prepare_join_event},
    },
};
use serde_json::{Value as JsonValue, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, federation::resident::DEFAULT_MISSING_LIMIT},
};

fn origin<T>(request: &Ruma<T>) -> Result<&ServerName> {
    request
        .origin
        .as_deref()
        .ok_or_else(|| Error::internal("federation request without an origin"))
}

fn raw(object: &ruma::CanonicalJsonObject) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(object).map_err(|e| Error::internal(e.to_string()))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn make_join(
    State(services): State<Arc<Services>>,
    request: Ruma<prepare_join_event::v1::Request>,
) -> Result<RumaResponse<prepare_join_event::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let (version, template) =
        services.make_join(origin, &body.room_id, &body.user_id, &body.ver)?;
    let mut response = prepare_join_event::v1::Response::new(raw(&template)?);
    response.room_version = Some(version);
    Ok(RumaResponse(response))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`. Answered by hand: ruma's
/// `RoomState` has no `origin`, which Synapse sends too (it was required in v1). Every
/// member event is sent whatever `omit_members` asks (`members_omitted: false`).
pub async fn send_join(
    State(services): State<Arc<Services>>,
    request: Ruma<create_join_event::v2::Request>,
) -> Result<Json<JsonValue>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let answer = services
        .send_join(origin, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    Ok(Json(json!({
        "origin": services.config.server_name,
        "members_omitted": false,
        "state": answer.state,
        "auth_chain": answer.auth_chain,
        "event": answer.event,
        "servers_in_room": answer.servers_in_room,
    })))
}

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn get_event(
    State(services): State<Arc<Services>>,
    request: Ruma<get_event::v1::Request>,
) -> Result<RumaResponse<get_event::v1::Response>> {
    let origin = origin(&request)?;
    let pdu = services.federation_event(origin, &request.body.event_id)?;
    Ok(RumaResponse(get_event::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    )))
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=`
pub async fn get_room_state(
    State(services): State<Arc<Services>>,
    request: Ruma<get_room_state::v1::Request>,
) -> Result<RumaResponse<get_room_state::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let state = services.state_at(origin, &body.room_id, &body.event_id)?;
    Ok(RumaResponse(get_room_state::v1::Response::new(
        services.federation_pdus(&state.auth_chain)?,
        services.federation_pdus(&state.state)?,
    )))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`
pub async fn get_room_state_ids(
    State(services): State<Arc<Services>>,
    request: Ruma<get_room_state_ids::v1::Request>,
) -> Result<RumaResponse<get_room_state_ids::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let state = services.state_at(origin, &body.room_id, &body.event_id)?;
    Ok(RumaResponse(get_room_state_ids::v1::Response::new(
        state.auth_chain,
        state.state,
    )))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn get_event_authorization(
    State(services): State<Arc<Services>>,
    request: Ruma<get_event_authorization::v1::Request>,
) -> Result<RumaResponse<get_event_authorization::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let chain = services.event_auth(origin, &body.room_id, &body.event_id)?;
    Ok(RumaResponse(get_event_authorization::v1::Response::new(
        chain,
    )))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub async fn get_missing_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_missing_events::v1::Request>,
) -> Result<RumaResponse<get_missing_events::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(DEFAULT_MISSING_LIMIT);
    let events = services.missing_events(
        origin,
        &body.room_id,
        &body.earliest_events,
        &body.latest_events,
        limit,
        u64::from(body.min_depth),
    )?;
    Ok(RumaResponse(get_missing_events::v1::Response::new(events)))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=…`
pub async fn get_backfill(
    State(services): State<Arc<Services>>,
    request: Ruma<get_backfill::v1::Request>,
) -> Result<RumaResponse<get_backfill::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    let pdus = services.backfill(origin, &body.room_id, &body.v, limit)?;
    Ok(RumaResponse(get_backfill::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    )))
}
