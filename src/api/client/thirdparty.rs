//! Third-party networks (client-server API, "Third-party Networks"), bridged through
//! application services. This server has no application services yet, so it knows no
//! protocols: the list is empty (Element asks for it at start-up) and any one protocol is
//! unknown.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::thirdparty::{get_protocol, get_protocols};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// `GET /_matrix/client/v3/thirdparty/protocols`: `{}`.
pub async fn get_protocols(
    State(_services): State<Arc<Services>>,
    request: Ruma<get_protocols::v3::Request>,
) -> Result<RumaResponse<get_protocols::v3::Response>> {
    request.sender()?;
    Ok(RumaResponse(get_protocols::v3::Response::new(
        Default::default(),
    )))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`: `404 M_NOT_FOUND`.
pub async fn get_protocol(
    State(_services): State<Arc<Services>>,
    request: Ruma<get_protocol::v3::Request>,
) -> Result<RumaResponse<get_protocol::v3::Response>> {
    request.sender()?;
    Err(Error::not_found(format!(
        "Unknown protocol {}.",
        request.body.protocol
    )))
}
