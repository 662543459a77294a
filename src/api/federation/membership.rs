//! Memberships for other servers' users (server-server API, "Joining Rooms", "Knocking
//! upon a room", "Leaving Rooms (Rejecting Invites)", "Inviting to a room"): `make_join`
//! and `send_join` (v2), `make_knock` and `send_knock`, `make_leave` and `send_leave` (v2),
//! `invite` (v2). The logic is in `service::federation::resident` and
//! `service::federation::invite`.

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::api::federation::membership::{
    RawStrippedState, create_invite, create_join_event, create_knock_event, create_leave_event,
    prepare_join_event, prepare_knock_event, prepare_leave_event,
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

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn prepare_leave_event(
    State(services): State<Arc<Services>>,
    request: Ruma<prepare_leave_event::v1::Request>,
) -> Result<RumaResponse<prepare_leave_event::v1::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let (version, template) = services.make_leave(origin, &body.room_id, &body.user_id)?;
    Ok(RumaResponse(prepare_leave_event::v1::Response::new(
        Some(version),
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

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn create_leave_event(
    State(services): State<Arc<Services>>,
    request: Ruma<create_leave_event::v2::Request>,
) -> Result<RumaResponse<create_leave_event::v2::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    services
        .send_leave(origin, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    Ok(RumaResponse(create_leave_event::v2::Response::new()))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
pub async fn create_invite(
    State(services): State<Arc<Services>>,
    request: Ruma<create_invite::v2::Request>,
) -> Result<RumaResponse<create_invite::v2::Response>> {
    let origin = origin(&request)?;
    let body = &request.body;
    let event = services
        .receive_invite(
            origin,
            &body.room_id,
            &body.event_id,
            &body.room_version,
            &body.event,
            &body.invite_room_state,
        )
        .await?;
    Ok(RumaResponse(create_invite::v2::Response::new(event)))
}
