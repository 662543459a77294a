//! `GET /_matrix/federation/v1/version` (server-server API, "Server implementation").

use std::sync::Arc;

use axum::extract::State;
use ruma::api::federation::discovery::get_server_version::v1::{Request, Response, Server};

use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// `GET /_matrix/federation/v1/version`: our name and the crate's version.
pub async fn get_server_version(
    State(_services): State<Arc<Services>>,
    _request: Ruma<Request>,
) -> Result<RumaResponse<Response>> {
    let mut server = Server::new();
    server.name = Some("conduit".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = Response::new();
    response.server = Some(server);
    Ok(RumaResponse(response))
}
