//! The reads another server in a room uses (server-server API, "Retrieving events",
//! "Backfilling and retrieving missing events"): `/event`, `/state`, `/state_ids`,
//! `/event_auth`, `/get_missing_events`, `/backfill`, `/timestamp_to_event`. The logic is in
//! `service::federation::resident`.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{
            get_event, get_event_by_timestamp, get_missing_events, get_room_state,
            get_room_state_ids,
        },
    },
};

use super::origin;
use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, federation::resident::DEFAULT_MISSING_LIMIT},
};

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

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=`
pub async fn get_event_by_timestamp(
    State(services): State<Arc<Services>>,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let (event_id, origin_server_ts) = services.federation_timestamp_to_event(
        origin,
        &body.room_id,
        u64::from(body.ts.get()),
        body.dir,
    )?;
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(
        event_id,
        origin_server_ts,
    )))
}
