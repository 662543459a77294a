//! Accounts: `/register`, `/register/available`, registration-token validity, `/whoami`,
//! `/account/password`, `/account/deactivate`.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::{
    client::account::{
        ThirdPartyIdRemovalStatus, change_password, check_registration_token_validity, deactivate,
        get_username_availability,
        register::{self, RegistrationKind},
        whoami,
    },
    error::ErrorKind,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, uiaa::Stage},
};

/// Longer passwords are refused (as Synapse does), so hashing cost stays bounded.
pub const MAX_PASSWORD_BYTES: usize = 512;

/// `POST /_matrix/client/v3/register`
///
/// Closed (403) unless `allow_registration` is on. With a `registration_token` configured
/// the flow is `m.login.registration_token`, otherwise `m.login.dummy`. Guests are refused.
pub async fn register(
    State(services): State<Arc<Services>>,
    request: Ruma<register::v3::Request>,
) -> Result<RumaResponse<register::v3::Response>> {
    let request = request.body;
    if request.kind == RegistrationKind::Guest {
        return Err(Error::new(
            ErrorKind::GuestAccessForbidden,
            "Guest access is disabled.",
        ));
    }
    if !services.config.allow_registration {
        return Err(Error::forbidden("Registration is disabled on this server."));
    }
    // The name is checked before authentication, so a client learns early that it is taken.
    let user_id = services
        .registration
        .new_user_id(request.username.as_deref(), &services.config)?;
    if services.users.exists(&user_id)? {
        return Err(Error::new(
            ErrorKind::UserInUse,
            "The desired user ID is already taken.",
        ));
    }
    let stage = match &services.config.registration_token {
        Some(token) => Stage::RegistrationToken(token),
        None => Stage::Dummy,
    };
    services
        .uiaa
        .authorize(&services, request.auth.as_ref(), stage)
        .await?;
    let password = request
        .password
        .filter(|password| !password.is_empty())
        .ok_or_else(|| Error::new(ErrorKind::MissingParam, "A password is required."))?;
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid_param("The password is too long."));
    }

    let admin = services
        .users
        .create(&user_id, Some(password), false, None)
        .await?;
    tracing::info!(%user_id, admin, "registered a new account");
    if request.inhibit_login {
        return Ok(RumaResponse(register::v3::Response::new(user_id)));
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
    let mut response = register::v3::Response::new(user_id);
    response.access_token = Some(access_token);
    response.device_id = Some(device_id);
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v3/register/available`
pub async fn get_username_availability(
    State(services): State<Arc<Services>>,
    request: Ruma<get_username_availability::v3::Request>,
) -> Result<RumaResponse<get_username_availability::v3::Response>> {
    if !services.config.allow_registration {
        return Err(Error::forbidden("Registration is disabled on this server."));
    }
    let user_id = services
        .registration
        .new_user_id(Some(&request.body.username), &services.config)?;
    if services.users.exists(&user_id)? {
        return Err(Error::new(
            ErrorKind::UserInUse,
            "The desired user ID is already taken.",
        ));
    }
    Ok(RumaResponse(get_username_availability::v3::Response::new(
        true,
    )))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn check_registration_token_validity(
    State(services): State<Arc<Services>>,
    request: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<RumaResponse<check_registration_token_validity::v1::Response>> {
    // Spec: 403 when registration is closed, since then no token is valid.
    if !services.config.allow_registration {
        return Err(Error::forbidden("Registration is disabled on this server."));
    }
    let valid = match services.config.registration_token.as_deref() {
        Some(expected) => services
            .registration
            .check_token(&request.body.token, expected)?,
        None => false,
    };
    Ok(RumaResponse(
        check_registration_token_validity::v1::Response::new(valid),
    ))
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(
    State(_services): State<Arc<Services>>,
    request: Ruma<whoami::v3::Request>,
) -> Result<RumaResponse<whoami::v3::Response>> {
    let (user_id, device_id) = request.sender()?;
    let mut response = whoami::v3::Response::new(user_id.clone(), false);
    response.device_id = Some(device_id.clone());
    Ok(RumaResponse(response))
}

/// `POST /_matrix/client/v3/account/password`
///
/// Needs the current password (UIA). Other devices are logged out unless
/// `logout_devices` is false; the calling device stays logged in.
pub async fn change_password(
    State(services): State<Arc<Services>>,
    request: Ruma<change_password::v3::Request>,
) -> Result<RumaResponse<change_password::v3::Response>> {
    let (user_id, device_id) = request.sender()?;
    let body = &request.body;
    services
        .uiaa
        .authorize(&services, body.auth.as_ref(), Stage::Password(user_id))
        .await?;
    if body.new_password.is_empty() {
        return Err(Error::new(
            ErrorKind::WeakPassword,
            "The new password must not be empty.",
        ));
    }
    if body.new_password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid_param("The new password is too long."));
    }
    // The other devices are logged out in the same atomic write as the password change.
    let logout = if body.logout_devices {
        services.devices.removal(user_id, Some(device_id))?
    } else {
        crate::storage::Batch::new()
    };
    services
        .users
        .set_password(user_id, body.new_password.clone(), logout)
        .await?;
    services.device_list_changed(user_id).await?;
    tracing::info!(%user_id, "password changed");
    Ok(RumaResponse(change_password::v3::Response::new()))
}

/// `POST /_matrix/client/v3/account/deactivate`
///
/// Needs the password (UIA). The account can never log in again, its name stays taken, and
/// every device is logged out. With `erase`, the profile is removed too.
pub async fn deactivate(
    State(services): State<Arc<Services>>,
    request: Ruma<deactivate::v3::Request>,
) -> Result<RumaResponse<deactivate::v3::Response>> {
    let (user_id, _) = request.sender()?;
    services
        .uiaa
        .authorize(
            &services,
            request.body.auth.as_ref(),
            Stage::Password(user_id),
        )
        .await?;
    // Every device and token goes in the same atomic write as the deactivation.
    let logout = services.deactivation_batch(user_id)?;
    services
        .users
        .deactivate(user_id, request.body.erase, logout)
        .await?;
    services.device_list_changed(user_id).await?;
    tracing::info!(%user_id, "account deactivated");
    Ok(RumaResponse(deactivate::v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    )))
}
