//! Room aliases: `PUT/GET/DELETE /directory/room/{roomAlias}`, `GET /rooms/{roomId}/aliases`.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::{
    alias::{create_alias, delete_alias, get_alias},
    room::aliases,
};

use super::room::require_joined;
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias(
    State(services): State<Arc<Services>>,
    request: Ruma<create_alias::v3::Request>,
) -> Result<RumaResponse<create_alias::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    if body.room_alias.server_name() != services.config.server_name {
        return Err(Error::invalid_param("Aliases must be on this server."));
    }
    services.rooms.existing(&body.room_id)?;
    require_joined(&services, &body.room_id, sender)?;
    if !services
        .rooms
        .aliases
        .create(&body.room_alias, &body.room_id, sender)
        .await?
    {
        // Spec: 409 when the alias exists.
        return Err(Error::with_status(
            http::StatusCode::CONFLICT,
            ruma::api::error::ErrorKind::Unknown,
            "The alias already exists.",
        ));
    }
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias(
    State(services): State<Arc<Services>>,
    request: Ruma<get_alias::v3::Request>,
) -> Result<RumaResponse<get_alias::v3::Response>> {
    let alias = &request.body.room_alias;
    if alias.server_name() != services.config.server_name {
        let (room_id, servers) = services.federation.alias(alias).await?;
        return Ok(RumaResponse(get_alias::v3::Response::new(room_id, servers)));
    }
    let room_id = services
        .rooms
        .aliases
        .resolve_local(alias)?
        .ok_or_else(|| Error::not_found("Room alias not found."))?;
    Ok(RumaResponse(get_alias::v3::Response::new(
        room_id,
        vec![services.config.server_name.clone()],
    )))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`: by the alias's creator or a
/// server admin.
pub async fn delete_alias(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_alias::v3::Request>,
) -> Result<RumaResponse<delete_alias::v3::Response>> {
    let (sender, _) = request.sender()?;
    let alias = &request.body.room_alias;
    let (room_id, creator) = services
        .rooms
        .aliases
        .creator(alias)?
        .ok_or_else(|| Error::not_found("Room alias not found."))?;
    let admin = services
        .users
        .account(sender)?
        .is_some_and(|account| account.admin);
    if creator != *sender && !admin {
        return Err(Error::forbidden(
            "Only the alias's creator or a server admin may delete it.",
        ));
    }
    services.rooms.aliases.remove(alias, &room_id).await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`: for members and world-readable rooms;
/// `403 M_FORBIDDEN` otherwise (see `Rooms::local_aliases_for`).
pub async fn get_room_aliases(
    State(services): State<Arc<Services>>,
    request: Ruma<aliases::v3::Request>,
) -> Result<RumaResponse<aliases::v3::Response>> {
    let (sender, _) = request.sender()?;
    let aliases = services
        .rooms
        .local_aliases_for(&request.body.room_id, sender)?;
    Ok(RumaResponse(aliases::v3::Response::new(aliases)))
}
