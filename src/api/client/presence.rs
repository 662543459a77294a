//! Presence: `GET/PUT /presence/{userId}/status` (other servers' users as their servers
//! pushed it, `m.presence`). Off (403) with `allow_presence = false`.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::presence::{get_presence, set_presence};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

fn enabled(services: &Services) -> Result<()> {
    if services.config.allow_presence {
        Ok(())
    } else {
        Err(Error::forbidden("Presence is disabled on this server."))
    }
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub async fn set_presence(
    State(services): State<Arc<Services>>,
    request: Ruma<set_presence::v3::Request>,
) -> Result<RumaResponse<set_presence::v3::Response>> {
    enabled(&services)?;
    let (sender, _) = request.sender()?;
    let body = &request.body;
    if *sender != body.user_id {
        return Err(Error::forbidden("You can only set your own presence."));
    }
    services.set_presence(sender, body.presence.clone(), Some(body.status_msg.clone()))?;
    Ok(RumaResponse(set_presence::v3::Response::new()))
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
pub async fn get_presence(
    State(services): State<Arc<Services>>,
    request: Ruma<get_presence::v3::Request>,
) -> Result<RumaResponse<get_presence::v3::Response>> {
    enabled(&services)?;
    request.sender()?;
    let user_id = &request.body.user_id;
    // Another server's user: what their server last pushed to us (offline when nothing).
    if services.users.is_local(user_id) && !services.users.exists(user_id)? {
        return Err(Error::not_found("Unknown user."));
    }
    let entry = services.presence.get(user_id);
    let mut response = get_presence::v3::Response::new(entry.state.clone());
    response.currently_active = Some(entry.currently_active());
    response.status_msg = entry.status_msg;
    response.last_active_ago = Some(entry.last_active.elapsed());
    Ok(RumaResponse(response))
}
