//! Queries (server-server API, "Querying for information"): a local user's profile and a
//! local alias.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// `GET /_matrix/federation/v1/query/profile`: one field or the whole profile of a user
/// of this server.
pub async fn get_profile_information(
    State(services): State<Arc<Services>>,
    request: Ruma<get_profile_information::v1::Request>,
) -> Result<RumaResponse<get_profile_information::v1::Response>> {
    let body = &request.body;
    if !services.users.is_local(&body.user_id) {
        return Err(Error::invalid_param(
            "The user is not on this server; ask their server.",
        ));
    }
    let not_found = || Error::not_found("Profile not found.");
    let profile = services
        .users
        .profile(&body.user_id)?
        .ok_or_else(not_found)?;
    let response = match &body.field {
        Some(field) => {
            let value = profile.get(field.as_str()).ok_or_else(not_found)?;
            std::iter::once((field.as_str().to_owned(), value.clone())).collect()
        }
        None => profile.into_iter().collect(),
    };
    Ok(RumaResponse(response))
}

/// `GET /_matrix/federation/v1/query/directory`: the room a local alias points at, with
/// this server as the one to join through.
pub async fn get_room_information(
    State(services): State<Arc<Services>>,
    request: Ruma<get_room_information::v1::Request>,
) -> Result<RumaResponse<get_room_information::v1::Response>> {
    let alias = &request.body.room_alias;
    if alias.server_name() != services.config.server_name {
        return Err(Error::invalid_param(
            "The alias is not on this server; ask its server.",
        ));
    }
    let room_id = services
        .rooms
        .aliases
        .resolve_local(alias)?
        .ok_or_else(|| Error::not_found("Room alias not found."))?;
    Ok(RumaResponse(get_room_information::v1::Response::new(
        room_id,
        vec![services.config.server_name.clone()],
    )))
}
