//! Joins and knocks for other servers' users (server-server API, "Joining Rooms",
//! "Knocking upon a room"): `make_join`, `send_join` (v2), `make_knock`, `send_knock`. The
//! logic is in `service::federation::resident`.

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::api::federation::membership::{
    RawStrippedState, create_join_event, create_knock_event, prepare_join_event,
    prepare_knock_event,
};
use serde_json::{Value as JsonValue, json};

use super::origin;
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

fn raw(object: &ruma::CanonicalJsonObject) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(object).map_err(|e| Error::internal(e.to_string()))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn prepare_join_event(
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
pub async fn create_join_event(
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

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn prepare_knock_event(
    State(services): State<Arc<Services>>,
    request: Ruma<prepare_knock_event::v1::Request>,
) -> Result<RumaResponse<prepare_knock_event::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let (version, template) =
        services.make_knock(origin, &body.room_id, &body.user_id, &body.ver)?;
    Ok(RumaResponse(prepare_knock_event::v1::Response::new(
        version,
        raw(&template)?,
    )))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
pub async fn create_knock_event(
    State(services): State<Arc<Services>>,
    request: Ruma<create_knock_event::v1::Request>,
) -> Result<RumaResponse<create_knock_event::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let state = services
        .send_knock(origin, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    Ok(RumaResponse(create_knock_event::v1::Response::new(
        state.into_iter().map(RawStrippedState::Pdu).collect(),
    )))
}
