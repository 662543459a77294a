//! Synapse's shared-secret registration API, `GET/POST /_synapse/admin/v1/register`, so the
//! widely used `register_new_matrix_user` tool works unchanged against this server.
//!
//! The client fetches a nonce, then posts the new account with
//! `mac = hex(HMAC-SHA1(registration_shared_secret,
//!   nonce NUL username NUL password NUL ("admin" | "notadmin") [NUL user_type]))`.
//! It works whether or not public registration is open: knowing the secret is the permission.
//!
//! The rest of the admin API (accounts: `users.rs`) is for server admins only: the
//! [`ServerAdmin`] extractor answers anyone else `403 M_FORBIDDEN`, as Synapse does.

pub mod users;

use std::sync::Arc;

use axum::{Json, extract::State};
use ring::hmac;
use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    api::ruma::{Authenticated, JsonBody},
    service::Services,
};

/// A request from a server admin (an access token of an account with `admin` set).
pub struct ServerAdmin(pub OwnedUserId);

impl axum::extract::FromRequestParts<Arc<Services>> for ServerAdmin {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        services: &Arc<Services>,
    ) -> Result<Self> {
        let Authenticated(user, _) = Authenticated::from_request_parts(parts, services).await?;
        match services.users.account(&user)? {
            Some(account) if account.admin => Ok(Self(user)),
            _ => Err(Error::forbidden("You are not a server admin")),
        }
    }
}

#[derive(Serialize)]
pub struct NonceResponse {
    nonce: String,
}

#[derive(Deserialize)]
pub struct RegisterRequest {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    user_type: Option<String>,
    mac: String,
}

#[derive(Serialize)]
pub struct RegisterResponse {
    access_token: String,
    user_id: OwnedUserId,
    home_server: OwnedServerName,
    device_id: OwnedDeviceId,
}

fn shared_secret(services: &Services) -> Result<&str> {
    services
        .config
        .registration_shared_secret
        .as_deref()
        .ok_or_else(|| {
            Error::with_status(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Shared secret registration is not enabled.",
            )
        })
}

/// The message the MAC is computed over.
fn mac_message(request: &RegisterRequest) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(request.nonce.as_bytes());
    message.push(0);
    message.extend_from_slice(request.username.as_bytes());
    message.push(0);
    message.extend_from_slice(request.password.as_bytes());
    message.push(0);
    message.extend_from_slice(if request.admin { b"admin" } else { b"notadmin" });
    if let Some(user_type) = &request.user_type {
        message.push(0);
        message.extend_from_slice(user_type.as_bytes());
    }
    message
}

/// `GET /_synapse/admin/v1/register`: a single-use nonce, valid for 60 seconds.
pub async fn get_nonce(State(services): State<Arc<Services>>) -> Result<Json<NonceResponse>> {
    shared_secret(&services)?;
    Ok(Json(NonceResponse {
        nonce: services.registration.new_nonce(),
    }))
}

/// `POST /_synapse/admin/v1/register`
pub async fn register(
    State(services): State<Arc<Services>>,
    JsonBody(request): JsonBody<RegisterRequest>,
) -> Result<Json<RegisterResponse>> {
    let secret = shared_secret(&services)?;
    if !services.registration.take_nonce(&request.nonce) {
        return Err(Error::with_status(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::Unknown,
            "Unrecognised nonce.",
        ));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let mac = crate::crypto::hex_decode(&request.mac)
        .ok_or_else(|| Error::forbidden("HMAC incorrect."))?;
    hmac::verify(&key, &mac_message(&request), &mac)
        .map_err(|_| Error::forbidden("HMAC incorrect."))?;
    if request.password.is_empty() || request.password.contains('\0') {
        return Err(Error::bad_json("Invalid password."));
    }

    let user_id = services
        .registration
        .new_user_id(Some(&request.username), &services.config)?;
    services
        .users
        .create(
            &user_id,
            Some(request.password),
            request.admin,
            request.displayname,
        )
        .await?;
    let (device_id, access_token) = services.devices.login(&user_id, None, None).await?;
    services.device_list_changed(&user_id).await?;
    tracing::info!(%user_id, admin = request.admin, "registered an account with the shared secret");
    Ok(Json(RegisterResponse {
        access_token,
        user_id,
        home_server: services.config.server_name.clone(),
        device_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_message_matches_synapse_layout() {
        let request = RegisterRequest {
            nonce: "n".into(),
            username: "u".into(),
            password: "p".into(),
            displayname: None,
            admin: false,
            user_type: None,
            mac: String::new(),
        };
        assert_eq!(mac_message(&request), b"n\0u\0p\0notadmin");
        let request = RegisterRequest {
            admin: true,
            user_type: Some("bot".into()),
            ..request
        };
        assert_eq!(mac_message(&request), b"n\0u\0p\0admin\0bot");
    }
}
