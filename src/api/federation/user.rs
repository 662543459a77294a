//! A local user's devices and keys for other servers (server-server API, "End-to-End
//! Encryption" and "Device Management"), and OpenID user info ("OpenID").

use std::{collections::BTreeMap, sync::Arc};

use axum::extract::State;
use ruma::{
    UInt,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
        openid::get_openid_userinfo,
    },
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// Users one query or claim may name, as for clients.
const MAX_USERS: usize = 1_000;

/// `GET /_matrix/federation/v1/user/devices/{userId}`: the devices with keys and the
/// cross-signing keys of a user of this server. `stream_id` is the stream position now: it
/// only grows, so a later answer always has a larger one. No device names (as Synapse by
/// default).
pub async fn get_devices(
    State(services): State<Arc<Services>>,
    request: Ruma<get_devices::v1::Request>,
) -> Result<RumaResponse<get_devices::v1::Response>> {
    let user_id = &request.body.user_id;
    if !services.users.is_local(user_id) {
        return Err(Error::invalid_param("The user is not on this server."));
    }
    if !services.users.exists(user_id)? {
        return Err(Error::not_found("Unknown user."));
    }
    let keys = services.local_keys(user_id, &[], user_id, false)?;
    let stream_id = UInt::new_saturating(services.stream.position());
    let mut response = get_devices::v1::Response::new(user_id.clone(), stream_id);
    response.devices = keys
        .devices
        .into_iter()
        .map(|(device_id, keys)| get_devices::v1::UserDevice::new(device_id, keys))
        .collect();
    response.master_key = keys.master;
    response.self_signing_key = keys.self_signing;
    Ok(RumaResponse(response))
}

/// `POST /_matrix/federation/v1/user/keys/query`: device and cross-signing keys of users of
/// this server (others are ignored: a server speaks for its own users).
pub async fn get_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<get_keys::v1::Request>,
) -> Result<RumaResponse<get_keys::v1::Response>> {
    let wanted = &request.body.device_keys;
    if wanted.len() > MAX_USERS {
        return Err(Error::bad_json("Too many users in one query."));
    }
    let mut response = get_keys::v1::Response::new(BTreeMap::new());
    for (user_id, devices) in wanted {
        if !services.users.is_local(user_id) {
            continue;
        }
        let keys = services.local_keys(user_id, devices, user_id, false)?;
        response.device_keys.insert(user_id.clone(), keys.devices);
        if let Some(key) = keys.master {
            response.master_keys.insert(user_id.clone(), key);
        }
        if let Some(key) = keys.self_signing {
            response.self_signing_keys.insert(user_id.clone(), key);
        }
    }
    Ok(RumaResponse(response))
}

/// `POST /_matrix/federation/v1/user/keys/claim`: one one-time key per device of users of
/// this server.
pub async fn claim_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<claim_keys::v1::Request>,
) -> Result<RumaResponse<claim_keys::v1::Response>> {
    let wanted = &request.body.one_time_keys;
    if wanted.len() > MAX_USERS || wanted.values().any(|devices| devices.len() > MAX_USERS) {
        return Err(Error::bad_json("Too many keys claimed in one request."));
    }
    let mut claimed = BTreeMap::new();
    for (user_id, devices) in wanted {
        if !services.users.is_local(user_id) {
            continue;
        }
        let keys = services.claim_local(user_id, devices).await?;
        if !keys.is_empty() {
            claimed.insert(user_id.clone(), keys);
        }
    }
    Ok(RumaResponse(claim_keys::v1::Response::new(claimed)))
}

/// `GET /_matrix/federation/v1/openid/userinfo`: the user an OpenID token (from the
/// client's `request_token`) belongs to. Not signed: the token is the credential.
pub async fn get_openid_userinfo(
    State(services): State<Arc<Services>>,
    request: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<RumaResponse<get_openid_userinfo::v1::Response>> {
    let user = services
        .openid
        .user_for_token(&request.body.access_token)?
        .ok_or_else(|| Error::unknown_token("Unknown OpenID token."))?;
    Ok(RumaResponse(get_openid_userinfo::v1::Response::new(user)))
}
