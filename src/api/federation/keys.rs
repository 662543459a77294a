//! Server signing keys (server-server API, "Retrieving server keys"): ours, and other
//! servers' as a notary.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_keys,
    },
};

use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// `GET /_matrix/key/v2/server`: our current and old keys, signed by the current one.
pub async fn get_server_keys(
    State(services): State<Arc<Services>>,
    _request: Ruma<get_server_keys::v2::Request>,
) -> Result<RumaResponse<get_server_keys::v2::Response>> {
    let keys = services.server_keys.published(
        &services.config.server_name,
        MilliSecondsSinceUnixEpoch::now(),
    )?;
    Ok(RumaResponse(get_server_keys::v2::Response::new(keys)))
}

/// `GET /_matrix/key/v2/query/{serverName}`: one server's keys, with our signature added.
pub async fn get_remote_server_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<RumaResponse<get_remote_server_keys::v2::Response>> {
    let request = request.body;
    let server_keys = services
        .keyring
        .notary_query_server(&request.server_name, Some(request.minimum_valid_until_ts))
        .await?;
    Ok(RumaResponse(get_remote_server_keys::v2::Response::new(
        server_keys,
    )))
}

/// `POST /_matrix/key/v2/query`: several servers' keys, each with our signature added.
pub async fn get_remote_server_keys_batch(
    State(services): State<Arc<Services>>,
    request: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<RumaResponse<get_remote_server_keys_batch::v2::Response>> {
    let server_keys = services
        .keyring
        .notary_query(&request.body.server_keys)
        .await?;
    Ok(RumaResponse(
        get_remote_server_keys_batch::v2::Response::new(server_keys),
    ))
}
