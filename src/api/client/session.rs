//! Logging in and out: `/login` (GET flows, POST password), `/logout`, `/logout/all`.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::{
    client::{
        session::{
            get_login_types::{
                self,
                v3::{LoginType, PasswordLoginType},
            },
            login::{self, v3::LoginInfo},
            logout, logout_all,
        },
        uiaa::UserIdentifier,
    },
    error::ErrorKind,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, users::PasswordCheck},
};

/// `GET /_matrix/client/v3/login`: only password login is offered.
pub async fn get_login_types(
    State(_services): State<Arc<Services>>,
    _request: Ruma<get_login_types::v3::Request>,
) -> Result<RumaResponse<get_login_types::v3::Response>> {
    Ok(RumaResponse(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
    ])))
}

/// `POST /_matrix/client/v3/login`
///
/// Accepts the `m.id.user` identifier and the deprecated top-level `user` field. A wrong
/// password and an unknown user get the same 403 `M_FORBIDDEN`; repeated failures for one
/// user are refused with 429 `M_LIMIT_EXCEEDED` for a while.
pub async fn login(
    State(services): State<Arc<Services>>,
    request: Ruma<login::v3::Request>,
) -> Result<RumaResponse<login::v3::Response>> {
    let request = request.body;
    let LoginInfo::Password(password) = &request.login_info else {
        // Spec: an unsupported login type is 400 M_UNKNOWN.
        return Err(Error::with_status(
            http::StatusCode::BAD_REQUEST,
            ErrorKind::Unknown,
            "Only m.login.password is supported.",
        ));
    };
    // The top-level `user` field is deprecated but still sent by some clients and bots.
    #[allow(deprecated)]
    let legacy_user = &password.user;
    let name = match (&password.identifier, legacy_user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.as_str(),
        (None, Some(user)) => user.as_str(),
        (Some(_), _) => {
            return Err(Error::forbidden(
                "Only the m.id.user identifier is supported.",
            ));
        }
        (None, None) => {
            return Err(Error::new(
                ErrorKind::MissingParam,
                "No user identifier given.",
            ));
        }
    };
    let invalid = || Error::forbidden("Invalid username or password.");
    let user_id = services
        .registration
        .user_id_from_login(name, &services.config)
        .ok_or_else(invalid)?;

    if let Err(wait) = services.password_failures.check(user_id.as_str()) {
        return Err(Error::limit_exceeded(wait));
    }
    match services
        .users
        .check_password(&user_id, &password.password)
        .await?
    {
        PasswordCheck::Valid => services.password_failures.reset(user_id.as_str()),
        PasswordCheck::Deactivated => {
            return Err(Error::new(
                ErrorKind::UserDeactivated,
                "This account is deactivated.",
            ));
        }
        PasswordCheck::Invalid | PasswordCheck::NoSuchUser => {
            services.password_failures.record_failure(user_id.as_str());
            return Err(invalid());
        }
    }

    let (device_id, access_token) = services
        .devices
        .login(
            &user_id,
            request.device_id,
            request.initial_device_display_name,
        )
        .await?;
    services.device_list_changed(&user_id).await?;
    tracing::info!(%user_id, %device_id, "logged in");
    let mut response = login::v3::Response::new(user_id, access_token, device_id);
    // Deprecated, but harmless and still read by old clients.
    #[allow(deprecated)]
    {
        response.home_server = Some(services.config.server_name.clone());
    }
    Ok(RumaResponse(response))
}

/// `POST /_matrix/client/v3/logout`: revokes the token and deletes its device.
pub async fn logout(
    State(services): State<Arc<Services>>,
    request: Ruma<logout::v3::Request>,
) -> Result<RumaResponse<logout::v3::Response>> {
    let (user_id, device_id) = request.sender()?;
    services
        .devices
        .remove(user_id, std::slice::from_ref(device_id))
        .await?;
    services.device_list_changed(user_id).await?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

/// `POST /_matrix/client/v3/logout/all`: revokes every token of the user.
pub async fn logout_all(
    State(services): State<Arc<Services>>,
    request: Ruma<logout_all::v3::Request>,
) -> Result<RumaResponse<logout_all::v3::Response>> {
    let (user_id, _) = request.sender()?;
    services.devices.remove_all(user_id, None).await?;
    services.device_list_changed(user_id).await?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}
