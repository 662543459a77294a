//! Third-party identifiers (client-server API, "Adding Account Administrative Contact
//! Information"). This server has no email or SMS sending and talks to no identity server,
//! so an account never has a 3PID: the list is empty, and adding, binding or validating one
//! is refused with a clear error (as Synapse with `enable_3pid_changes: false` and no email
//! configured). `/capabilities` says so too (`m.3pid_changes` is off).

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::api::{
    client::account::{
        ThirdPartyIdRemovalStatus, add_3pid, bind_3pid, delete_3pid, get_3pids,
        request_3pid_management_token_via_email, request_3pid_management_token_via_msisdn,
        request_password_change_token_via_email, request_password_change_token_via_msisdn,
        request_registration_token_via_email, request_registration_token_via_msisdn, unbind_3pid,
    },
    error::ErrorKind,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// Adding or removing a 3PID: Synapse's answer when 3PID changes are disabled.
fn changes_disabled() -> Error {
    Error::bad_request(
        ErrorKind::Forbidden,
        "Third-party identifier changes are disabled on this server.",
    )
}

/// A validation token (email or SMS) is never sent: the spec's errcode for a medium the
/// server does not support.
fn medium_not_supported(medium: &str) -> Error {
    Error::new(
        ErrorKind::ThreepidMediumNotSupported,
        format!("This server does not send {medium} validation tokens."),
    )
}

/// `GET /_matrix/client/v3/account/3pid`: always `{"threepids": []}`. ruma leaves an empty
/// list out (unless built with its `compat-get-3pids` feature, which would rebuild the ruma
/// stack for this one field); Synapse always sends it and older clients read it, so the
/// body is written here.
pub async fn get_3pids(
    State(_services): State<Arc<Services>>,
    request: Ruma<get_3pids::v3::Request>,
) -> Result<Json<serde_json::Value>> {
    request.sender()?;
    Ok(Json(serde_json::json!({ "threepids": [] })))
}

/// `POST /_matrix/client/v3/account/3pid/add`
pub async fn add_3pid(
    State(_services): State<Arc<Services>>,
    request: Ruma<add_3pid::v3::Request>,
) -> Result<RumaResponse<add_3pid::v3::Response>> {
    request.sender()?;
    Err(changes_disabled())
}

/// `POST /_matrix/client/v3/account/3pid/delete`
pub async fn delete_3pid(
    State(_services): State<Arc<Services>>,
    request: Ruma<delete_3pid::v3::Request>,
) -> Result<RumaResponse<delete_3pid::v3::Response>> {
    request.sender()?;
    Err(changes_disabled())
}

/// `POST /_matrix/client/v3/account/3pid/bind`: binding goes through an identity server,
/// which this server does not call.
pub async fn bind_3pid(
    State(_services): State<Arc<Services>>,
    request: Ruma<bind_3pid::v3::Request>,
) -> Result<RumaResponse<bind_3pid::v3::Response>> {
    request.sender()?;
    Err(Error::new(
        ErrorKind::ServerNotTrusted,
        "This server does not bind third-party identifiers through identity servers.",
    ))
}

/// `POST /_matrix/client/v3/account/3pid/unbind`: nothing was ever bound through this
/// server, so it knows no identity server to unbind from: `no-support`, as the spec asks.
pub async fn unbind_3pid(
    State(_services): State<Arc<Services>>,
    request: Ruma<unbind_3pid::v3::Request>,
) -> Result<RumaResponse<unbind_3pid::v3::Response>> {
    request.sender()?;
    Ok(RumaResponse(unbind_3pid::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    )))
}

/// `POST /_matrix/client/v3/account/3pid/email/requestToken`
pub async fn request_3pid_management_token_via_email(
    State(_services): State<Arc<Services>>,
    _request: Ruma<request_3pid_management_token_via_email::v3::Request>,
) -> Result<RumaResponse<request_3pid_management_token_via_email::v3::Response>> {
    Err(medium_not_supported("email"))
}

/// `POST /_matrix/client/v3/account/3pid/msisdn/requestToken`
pub async fn request_3pid_management_token_via_msisdn(
    State(_services): State<Arc<Services>>,
    _request: Ruma<request_3pid_management_token_via_msisdn::v3::Request>,
) -> Result<RumaResponse<request_3pid_management_token_via_msisdn::v3::Response>> {
    Err(medium_not_supported("SMS"))
}

/// `POST /_matrix/client/v3/account/password/email/requestToken`
pub async fn request_password_change_token_via_email(
    State(_services): State<Arc<Services>>,
    _request: Ruma<request_password_change_token_via_email::v3::Request>,
) -> Result<RumaResponse<request_password_change_token_via_email::v3::Response>> {
    Err(medium_not_supported("email"))
}

/// `POST /_matrix/client/v3/account/password/msisdn/requestToken`
pub async fn request_password_change_token_via_msisdn(
    State(_services): State<Arc<Services>>,
    _request: Ruma<request_password_change_token_via_msisdn::v3::Request>,
) -> Result<RumaResponse<request_password_change_token_via_msisdn::v3::Response>> {
    Err(medium_not_supported("SMS"))
}

/// `POST /_matrix/client/v3/register/email/requestToken`
pub async fn request_registration_token_via_email(
    State(_services): State<Arc<Services>>,
    _request: Ruma<request_registration_token_via_email::v3::Request>,
) -> Result<RumaResponse<request_registration_token_via_email::v3::Response>> {
    Err(medium_not_supported("email"))
}

/// `POST /_matrix/client/v3/register/msisdn/requestToken`
pub async fn request_registration_token_via_msisdn(
    State(_services): State<Arc<Services>>,
    _request: Ruma<request_registration_token_via_msisdn::v3::Request>,
) -> Result<RumaResponse<request_registration_token_via_msisdn::v3::Response>> {
    Err(medium_not_supported("SMS"))
}
