//! `GET /_matrix/client/v3/voip/turnServer`: TURN credentials for calls (`service::turn`).

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use ruma::api::client::voip::get_turn_server_info;

use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, turn},
};

/// Without TURN configured the answer is an empty object, as Synapse gives: clients then
/// fall back to their own STUN/TURN settings.
pub async fn turn_server(
    State(services): State<Arc<Services>>,
    request: Ruma<get_turn_server_info::v3::Request>,
) -> Result<Response> {
    let (user_id, _) = request.sender()?;
    Ok(
        match turn::credentials(&services.config, user_id, SystemTime::now()) {
            Some(credentials) => RumaResponse(get_turn_server_info::v3::Response::new(
                credentials.username,
                credentials.password,
                credentials.uris,
                credentials.ttl,
            ))
            .into_response(),
            None => Json(serde_json::json!({})).into_response(),
        },
    )
}
