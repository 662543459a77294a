//! `GET /_matrix/client/v3/sync`: parses the request and hands it to `service::sync`;
//! simplified sliding sync (MSC4186) goes to `service::sliding_sync`.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, response::IntoResponse};
use ruma::api::{OutgoingResponse, client::sync::sync_events};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, filter, rooms::pos::Pos, sync::SyncRequest},
};

/// The longest a long-poll is held, whatever the client asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /_matrix/client/v3/sync`
pub async fn sync_events(
    State(services): State<Arc<Services>>,
    request: Ruma<sync_events::v3::Request>,
) -> Result<axum::response::Response> {
    let (user_id, device_id) = request.sender()?;
    let body = &request.body;
    let since = body
        .since
        .as_deref()
        .map(|token| {
            // A stream position; one beyond timeline positions (or negative) is no token
            // this server gave.
            token
                .parse::<u64>()
                .ok()
                .filter(|since| Pos::live(*since).is_ok())
                .ok_or_else(|| Error::invalid_param("Invalid since token."))
        })
        .transpose()?;
    let filter = filter::sync_filter(&services.account_data, user_id, body.filter.as_ref())?;
    let request = SyncRequest {
        user_id,
        device_id,
        since,
        full_state: body.full_state,
        timeout: body.timeout.unwrap_or_default().min(MAX_TIMEOUT),
        filter,
    };
    // Syncing marks the user active with the presence the client asks for (default online).
    services.set_presence(user_id, body.set_presence.clone(), None)?;
    let response = crate::service::sync::sync(&services, request).await?;
    // ruma-client-api 0.24's `Rooms::is_empty` ignores `knock`, so a response whose only room
    // news is a knock would lose `rooms`; add it back to the serialised body.
    if !response.rooms.knock.is_empty() && response.rooms.is_empty() {
        let internal = |e: String| Error::internal(format!("sync response: {e}"));
        let knock =
            serde_json::to_value(&response.rooms.knock).map_err(|e| internal(e.to_string()))?;
        let http = response
            .try_into_http_response::<Vec<u8>>()
            .map_err(|e| internal(e.to_string()))?;
        let mut body: serde_json::Value =
            serde_json::from_slice(http.body()).map_err(|e| internal(e.to_string()))?;
        body["rooms"] = serde_json::json!({ "knock": knock });
        return Ok(axum::Json(body).into_response());
    }
    Ok(RumaResponse(response).into_response())
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186)
pub async fn sliding_sync(
    State(services): State<Arc<Services>>,
    request: Ruma<sync_events::v5::Request>,
) -> Result<RumaResponse<sync_events::v5::Response>> {
    let (user_id, device_id) = request.sender()?;
    services.set_presence(user_id, request.body.set_presence.clone(), None)?;
    let response = services
        .sliding_sync
        .sync(&services, user_id, device_id, &request.body)
        .await?;
    Ok(RumaResponse(response))
}
