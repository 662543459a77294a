//! End-to-end encryption keys: `keys/upload`, `keys/query`, `keys/claim`, `keys/changes`
//! (client-server API, "Key management API"), and cross-signing: `keys/device_signing/upload`,
//! `keys/signatures/upload` ("Cross-signing"). The Matrix logic is in `service::keys` and
//! `service::cross_signing`.

use std::sync::Arc;

use axum::extract::State;
use ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};
use serde_json::json;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, cross_signing::SigningKeysUpload, uiaa::Stage},
};

/// Users one query or claim may name, and devices per user in a claim.
const MAX_USERS: usize = 1_000;

/// `POST /_matrix/client/v3/keys/upload`
pub async fn upload_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<upload_keys::v3::Request>,
) -> Result<RumaResponse<upload_keys::v3::Response>> {
    let (user_id, device_id) = request.sender()?;
    let body = &request.body;
    let one_time: Vec<_> = body
        .one_time_keys
        .iter()
        .map(|(id, raw)| (id.as_str(), raw.json()))
        .collect();
    let fallback: Vec<_> = body
        .fallback_keys
        .iter()
        .map(|(id, raw)| (id.as_str(), raw.json()))
        .collect();
    let changed = services
        .keys
        .upload(
            user_id,
            device_id,
            body.device_keys.as_ref().map(|raw| raw.json()),
            &one_time,
            &fallback,
        )
        .await?;
    if changed {
        services.device_list_changed(user_id).await?;
    }
    Ok(RumaResponse(upload_keys::v3::Response::new(
        services.keys.counts(user_id, device_id)?,
    )))
}

/// `POST /_matrix/client/v3/keys/query`: this server's users from the store, others' from
/// their servers (`service::key_query`).
pub async fn get_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<get_keys::v3::Request>,
) -> Result<RumaResponse<get_keys::v3::Response>> {
    let (viewer, _) = request.sender()?;
    let body = &request.body;
    if body.device_keys.len() > MAX_USERS {
        return Err(Error::bad_json("Too many users in one query."));
    }
    let answer = services
        .query_keys(viewer, &body.device_keys, body.timeout)
        .await?;
    let mut response = get_keys::v3::Response::new();
    response.device_keys = answer.device_keys;
    response.master_keys = answer.master_keys;
    response.self_signing_keys = answer.self_signing_keys;
    response.user_signing_keys = answer.user_signing_keys;
    response.failures = answer.failures;
    Ok(RumaResponse(response))
}

/// `POST /_matrix/client/v3/keys/claim`
pub async fn claim_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<claim_keys::v3::Request>,
) -> Result<RumaResponse<claim_keys::v3::Response>> {
    request.sender()?;
    let body = &request.body;
    if body.one_time_keys.len() > MAX_USERS
        || body
            .one_time_keys
            .values()
            .any(|devices| devices.len() > MAX_USERS)
    {
        return Err(Error::bad_json("Too many keys claimed in one request."));
    }
    let answer = services
        .claim_keys(&body.one_time_keys, body.timeout)
        .await?;
    let mut response = claim_keys::v3::Response::new(answer.one_time_keys);
    response.failures = answer.failures;
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v3/keys/changes`: users whose devices changed since `from` (a sync
/// token), as `/sync`'s `device_lists` would report them. Changes after `to` may be
/// included too; the spec allows reporting users who "may have" changed.
pub async fn get_key_changes(
    State(services): State<Arc<Services>>,
    request: Ruma<get_key_changes::v3::Request>,
) -> Result<RumaResponse<get_key_changes::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let from = parse_token(&request.body.from)?;
    parse_token(&request.body.to)?;
    let (changed, left) = crate::service::sync::device_list_changes(&services, user_id, from)?;
    Ok(RumaResponse(get_key_changes::v3::Response::new(
        changed, left,
    )))
}

fn parse_token(token: &str) -> Result<u64> {
    token
        .parse()
        .map_err(|_| Error::invalid_param(format!("Invalid sync token: {token}")))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`. Needs the password (UIA) unless
/// the user has no master key yet or the upload repeats the stored keys (spec
/// "Cross-signing": servers may skip UIA in those cases, v1.11).
pub async fn upload_signing_keys(
    State(services): State<Arc<Services>>,
    request: Ruma<upload_signing_keys::v3::Request>,
) -> Result<RumaResponse<upload_signing_keys::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let upload = SigningKeysUpload {
        master: body.master_key.as_ref().map(|raw| raw.json()),
        self_signing: body.self_signing_key.as_ref().map(|raw| raw.json()),
        user_signing: body.user_signing_key.as_ref().map(|raw| raw.json()),
    };
    if services.cross_signing.has_master(user_id)?
        && !services.cross_signing.is_unchanged(user_id, &upload)?
    {
        services
            .uiaa
            .authorize(&services, body.auth.as_ref(), Stage::Password(user_id))
            .await?;
    }
    services.cross_signing.upload(user_id, &upload).await?;
    services.signing_keys_changed(user_id).await?;
    Ok(RumaResponse(upload_signing_keys::v3::Response::new()))
}

/// `POST /_matrix/client/v3/keys/signatures/upload`: each signature is checked and stored on
/// its own; the ones that fail are listed in `failures` with `M_INVALID_SIGNATURE`.
pub async fn upload_signatures(
    State(services): State<Arc<Services>>,
    request: Ruma<upload_signatures::v3::Request>,
) -> Result<RumaResponse<upload_signatures::v3::Response>> {
    let (signer, _) = request.sender()?;
    let mut response = upload_signatures::v3::Response::new();
    let mut count = 0;
    let mut stored = false;
    for (target, signed) in &request.body.signed_keys {
        for (key_id, object) in signed.iter() {
            count += 1;
            if count > MAX_USERS {
                return Err(Error::bad_json("Too many signatures in one request."));
            }
            let result = if services.users.is_local(target) {
                services
                    .cross_signing
                    .add_signature(signer, target, key_id, object)
                    .await
            } else {
                Err(Error::invalid_param(
                    "Federation is not available on this server.",
                ))
            };
            match result {
                Ok(()) => stored = true,
                Err(Error::Matrix { message, .. }) => {
                    let failure = serde_json::from_value(json!({
                        "errcode": "M_INVALID_SIGNATURE",
                        "error": message,
                    }))
                    .map_err(|e| Error::internal(e.to_string()))?;
                    response
                        .failures
                        .entry(target.clone())
                        .or_default()
                        .insert(key_id.to_owned(), failure);
                }
                // A storage failure is the server's, not the signature's.
                Err(error) => return Err(error),
            }
        }
    }
    if stored {
        services.device_list_changed(signer).await?;
    }
    Ok(RumaResponse(response))
}
