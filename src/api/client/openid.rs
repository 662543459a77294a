//! `POST /_matrix/client/v3/user/{userId}/openid/request_token` (client-server API, "OpenID").

use std::sync::Arc;

use axum::extract::State;
use ruma::{api::client::account::request_openid_token, authentication::TokenType};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, openid},
};

/// A token for the caller only: asking for anyone else's is `403 M_FORBIDDEN` (as Synapse).
pub async fn request_openid_token(
    State(services): State<Arc<Services>>,
    request: Ruma<request_openid_token::v3::Request>,
) -> Result<RumaResponse<request_openid_token::v3::Response>> {
    let (sender, _) = request.sender()?;
    if request.body.user_id != *sender {
        return Err(Error::forbidden(
            "Cannot request OpenID tokens for other users.",
        ));
    }
    let token = services.openid.issue(sender).await?;
    Ok(RumaResponse(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        services.config.server_name.clone(),
        openid::LIFETIME,
    )))
}
