//! Profiles: the whole profile, and single fields (`displayname`, `avatar_url`, `m.tz`,
//! custom keys; spec v1.16 "Profiles").
//!
//! Propagating name and avatar changes into room member events comes with rooms.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::profile::{
    delete_profile_field, get_profile, get_profile_field, set_profile_field,
};
use ruma::profile::ProfileFieldValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get_profile(
    State(services): State<Arc<Services>>,
    request: Ruma<get_profile::v3::Request>,
) -> Result<RumaResponse<get_profile::v3::Response>> {
    let user_id = &request.body.user_id;
    if !services.users.is_local(user_id) {
        let profile = services.federation.profile(user_id, None).await?;
        return Ok(RumaResponse(profile.into_iter().collect()));
    }
    let profile = services
        .users
        .profile(user_id)?
        .ok_or_else(|| Error::not_found("Profile not found."))?;
    Ok(RumaResponse(profile.into_iter().collect()))
}

/// `GET /_matrix/client/v3/profile/{userId}/{keyName}`
pub async fn get_profile_field(
    State(services): State<Arc<Services>>,
    request: Ruma<get_profile_field::v3::Request>,
) -> Result<RumaResponse<get_profile_field::v3::Response>> {
    let body = request.body;
    let not_found = || Error::not_found("Profile field not found.");
    let field = body.field.as_str();
    let mut profile = if services.users.is_local(&body.user_id) {
        services
            .users
            .profile(&body.user_id)?
            .ok_or_else(not_found)?
    } else {
        services
            .federation
            .profile(&body.user_id, Some(field))
            .await?
    };
    let value = profile.remove(field).ok_or_else(not_found)?;
    let value = ProfileFieldValue::new(field, value)
        .map_err(|_| Error::internal(format!("stored profile field {field} has a bad value")))?;
    let mut response = get_profile_field::v3::Response::default();
    response.value = Some(value);
    Ok(RumaResponse(response))
}

/// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`: only for one's own profile.
pub async fn set_profile_field(
    State(services): State<Arc<Services>>,
    request: Ruma<set_profile_field::v3::Request>,
) -> Result<RumaResponse<set_profile_field::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    if *sender != body.user_id {
        return Err(Error::forbidden("You may only change your own profile."));
    }
    let field = body.value.field_name();
    let value = body.value.value().into_owned();
    services
        .users
        .set_profile_field(sender, field.as_str(), Some(value))
        .await?;
    propagate(&services, sender, field.as_str()).await?;
    Ok(RumaResponse(set_profile_field::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{keyName}`: only for one's own profile.
pub async fn delete_profile_field(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_profile_field::v3::Request>,
) -> Result<RumaResponse<delete_profile_field::v3::Response>> {
    let (sender, _) = request.sender()?;
    if *sender != request.body.user_id {
        return Err(Error::forbidden("You may only change your own profile."));
    }
    services
        .users
        .set_profile_field(sender, request.body.field.as_str(), None)
        .await?;
    propagate(&services, sender, request.body.field.as_str()).await?;
    Ok(RumaResponse(delete_profile_field::v3::Response::new()))
}

/// Name and avatar changes reach the user's member events in every joined room.
pub(crate) async fn propagate(
    services: &Services,
    user_id: &ruma::UserId,
    field: &str,
) -> Result<()> {
    if field == "displayname" || field == "avatar_url" {
        let profile = super::room::member_profile(services, user_id)?;
        services
            .rooms
            .update_member_profile(user_id, &profile)
            .await?;
    }
    Ok(())
}
