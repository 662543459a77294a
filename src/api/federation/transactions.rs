//! `PUT /_matrix/federation/v1/send/{txnId}` (server-server API, "Transactions").

use std::sync::Arc;

use axum::extract::State;
use ruma::api::federation::transactions::send_transaction_message;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// The body's `origin` must be the server that signed the request.
pub async fn send_transaction(
    State(services): State<Arc<Services>>,
    request: Ruma<send_transaction_message::v1::Request>,
) -> Result<RumaResponse<send_transaction_message::v1::Response>> {
    let origin = request
        .origin
        .as_ref()
        .ok_or_else(|| Error::internal("federation request without an origin"))?;
    let body = &request.body;
    if body.origin != *origin {
        return Err(Error::forbidden(
            "The transaction's origin is not the server that sent it.",
        ));
    }
    let pdus = services
        .receive_transaction(origin, body.transaction_id.as_str(), &body.pdus, &body.edus)
        .await?;
    Ok(RumaResponse(send_transaction_message::v1::Response::new(
        pdus,
    )))
}
