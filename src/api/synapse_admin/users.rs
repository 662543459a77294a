//! Accounts in Synapse's admin API (`/_synapse/admin/…`), in Synapse's shapes, so admin
//! tools work unchanged. Synapse's documentation: "User Admin API". The facts come from
//! `service/admin.rs`; fields Synapse has and this server does not (guests, threepids,
//! external ids, shadow bans, locks, suspension, consent) read as their empty values.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use http::StatusCode;
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::ServerAdmin;
use crate::{
    Error, Result,
    api::{client::account::MAX_PASSWORD_BYTES, ruma::JsonBody},
    service::{
        Services,
        admin::{self, OrderBy, UserChanges, UserQuery, UserSummary},
    },
};

/// `GET /_synapse/admin/v1/server_version`: open to anyone, as in Synapse.
pub async fn server_version() -> Json<JsonValue> {
    Json(json!({ "server_version": env!("CARGO_PKG_VERSION") }))
}

/// The `{userId}` of the path: 400 `M_INVALID_PARAM` when it is not valid UTF-8 or not a
/// user ID (axum's own rejection has no Matrix error body).
pub struct UserPath(OwnedUserId);

impl axum::extract::FromRequestParts<Arc<Services>> for UserPath {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        services: &Arc<Services>,
    ) -> Result<Self> {
        let Path(raw) = Path::<String>::from_request_parts(parts, services)
            .await
            .map_err(|_| Error::invalid_param("Invalid user ID."))?;
        OwnedUserId::try_from(raw)
            .map(Self)
            .map_err(|_| Error::invalid_param("Invalid user ID."))
    }
}

/// `GET /_synapse/admin/v2/users/{userId}`.
pub async fn get_user(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserPath(user): UserPath,
) -> Result<Json<JsonValue>> {
    let summary =
        admin::user(&services, &user)?.ok_or_else(|| Error::not_found("User not found"))?;
    let mut body = listed(&summary);
    let extra = json!({
        "threepids": [],
        "appservice_id": null,
        "consent_server_notice_sent": null,
        "consent_version": null,
        "consent_ts": null,
        "external_ids": [],
        "suspended": false,
    });
    if let (Some(body), JsonValue::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    Ok(Json(body))
}

/// An account as `GET /_synapse/admin/v2/users` lists it.
fn listed(summary: &UserSummary) -> JsonValue {
    json!({
        "name": summary.name,
        "is_guest": false,
        "admin": summary.admin,
        "user_type": null,
        "deactivated": summary.deactivated,
        "erased": false,
        "shadow_banned": false,
        "displayname": summary.displayname,
        "avatar_url": summary.avatar_url,
        "creation_ts": summary.creation_ts,
        "last_seen_ts": summary.last_seen_ts,
        "locked": false,
    })
}

/// A query parameter that is a boolean (`true`/`false`), or 400 `M_INVALID_PARAM`.
fn flag(params: &HashMap<String, String>, name: &str) -> Result<Option<bool>> {
    params
        .get(name)
        .map(|value| match value.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Error::invalid_param(format!(
                "Boolean query parameter {name:?} must be one of ['true', 'false']"
            ))),
        })
        .transpose()
}

/// A query parameter that is a number of 0 or more, or 400 `M_INVALID_PARAM`.
fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<usize>> {
    params
        .get(name)
        .map(|value| {
            value.parse::<usize>().map_err(|_| {
                Error::invalid_param(format!(
                    "Query parameter {name:?} must be a non-negative integer"
                ))
            })
        })
        .transpose()
}

/// `GET /_synapse/admin/v2/users`: a page of accounts, `next_token` when there are more.
pub async fn list_users(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    params: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<JsonValue>> {
    let Query(params) =
        params.map_err(|_| Error::invalid_param("The query string could not be read."))?;
    let order_by = match params.get("order_by") {
        None => OrderBy::Name,
        Some(name) => OrderBy::parse(name)
            .ok_or_else(|| Error::invalid_param(format!("Unknown value for order_by: {name}")))?,
    };
    let backwards = match params.get("dir").map(String::as_str) {
        None | Some("f") => false,
        Some("b") => true,
        Some(_) => {
            return Err(Error::invalid_param(
                "Unknown direction: dir must be f or b",
            ));
        }
    };
    let query = UserQuery {
        from: number(&params, "from")?.unwrap_or(0),
        limit: number(&params, "limit")?.unwrap_or(100),
        user_id: params.get("user_id").cloned(),
        name: params.get("name").cloned(),
        deactivated: flag(&params, "deactivated")?.unwrap_or(false),
        admins: flag(&params, "admins")?,
        order_by,
        backwards,
    };
    // There are no guest accounts here: `guests` is checked, and changes nothing.
    flag(&params, "guests")?;
    let (page, total) = admin::users(&services, &query)?;
    let next = query.from + page.len();
    let mut body = json!({
        "users": page.iter().map(listed).collect::<Vec<_>>(),
        "total": total,
    });
    if next < total {
        body["next_token"] = json!(next.to_string());
    }
    Ok(Json(body))
}

/// The body of `PUT /_synapse/admin/v2/users/{userId}`.
#[derive(Deserialize)]
pub struct UserBody {
    password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
}

fn yes() -> bool {
    true
}

/// `PUT /_synapse/admin/v2/users/{userId}`: creates the account (201) or changes it (200),
/// and answers with it as `GET` does.
pub async fn put_user(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserPath(user): UserPath,
    JsonBody(body): JsonBody<UserBody>,
) -> Result<(StatusCode, Json<JsonValue>)> {
    if let Some(password) = &body.password
        && (password.is_empty() || password.len() > MAX_PASSWORD_BYTES)
    {
        return Err(Error::invalid_param("Invalid password"));
    }
    let changes = UserChanges {
        password: body.password,
        logout_devices: body.logout_devices,
        displayname: body.displayname,
        avatar_url: body.avatar_url,
        admin: body.admin,
        deactivated: body.deactivated,
    };
    let created = admin::create_or_change(&services, &user, &changes).await?;
    if changes.displayname.is_some() || changes.avatar_url.is_some() {
        // The member events carry both fields: either name rewrites them.
        crate::api::client::profile::propagate(&services, &user, "displayname").await?;
    }
    let Json(answer) = get_user(State(services), _admin, UserPath(user)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)))
}

/// The body of `POST /_synapse/admin/v1/deactivate/{userId}`.
#[derive(Deserialize)]
pub struct DeactivateBody {
    #[serde(default)]
    erase: bool,
}

/// `POST /_synapse/admin/v1/deactivate/{userId}`.
pub async fn deactivate(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserPath(user): UserPath,
    JsonBody(body): JsonBody<DeactivateBody>,
) -> Result<Json<JsonValue>> {
    admin::deactivate(&services, &user, body.erase).await?;
    // No identity server is ever bound here, so there is nothing to unbind.
    Ok(Json(json!({ "id_server_unbind_result": "success" })))
}

/// The body of `POST /_synapse/admin/v1/reset_password/{userId}`.
#[derive(Deserialize)]
pub struct ResetPasswordBody {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`.
pub async fn reset_password(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserPath(user): UserPath,
    JsonBody(body): JsonBody<ResetPasswordBody>,
) -> Result<Json<JsonValue>> {
    if body.new_password.is_empty() || body.new_password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid_param("Invalid password"));
    }
    admin::reset_password(&services, &user, body.new_password, body.logout_devices).await?;
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/whois/{userId}`: the account's devices' last use.
pub async fn whois(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserPath(user): UserPath,
) -> Result<Json<JsonValue>> {
    let connections: Vec<JsonValue> = admin::whois(&services, &user)?
        .into_iter()
        .filter_map(|(_, seen)| seen)
        .map(|seen| {
            json!({
                "ip": seen.ip.map(|ip| ip.to_string()),
                "last_seen": seen.ts,
                "user_agent": null,
            })
        })
        .collect();
    Ok(Json(json!({
        "user_id": user,
        "devices": { "": { "sessions": [{ "connections": connections }] } },
    })))
}

/// `{userId}` and `{deviceId}` of the path, as [`UserPath`].
pub struct UserDevicePath(OwnedUserId, ruma::OwnedDeviceId);

impl axum::extract::FromRequestParts<Arc<Services>> for UserDevicePath {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        services: &Arc<Services>,
    ) -> Result<Self> {
        let Path((user, device)) = Path::<(String, String)>::from_request_parts(parts, services)
            .await
            .map_err(|_| Error::invalid_param("Invalid user or device ID."))?;
        let user =
            OwnedUserId::try_from(user).map_err(|_| Error::invalid_param("Invalid user ID."))?;
        Ok(Self(user, device.into()))
    }
}

/// A device as Synapse's admin API shows it.
fn device_json(
    user: &OwnedUserId,
    device_id: &ruma::OwnedDeviceId,
    device: &crate::service::devices::Device,
    seen: Option<&crate::service::devices::LastSeen>,
) -> JsonValue {
    json!({
        "device_id": device_id,
        "display_name": device.display_name,
        "last_seen_ip": seen.and_then(|seen| seen.ip).map(|ip| ip.to_string()),
        "last_seen_ts": seen.map(|seen| seen.ts),
        "last_seen_user_agent": null,
        "user_id": user,
    })
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`.
pub async fn list_devices(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserPath(user): UserPath,
) -> Result<Json<JsonValue>> {
    let devices: Vec<JsonValue> = admin::devices(&services, &user)?
        .iter()
        .map(|(device_id, device, seen)| device_json(&user, device_id, device, seen.as_ref()))
        .collect();
    Ok(Json(json!({ "total": devices.len(), "devices": devices })))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn get_device(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserDevicePath(user, device_id): UserDevicePath,
) -> Result<Json<JsonValue>> {
    admin::devices(&services, &user)?
        .iter()
        .find(|(id, ..)| *id == device_id)
        .map(|(id, device, seen)| Json(device_json(&user, id, device, seen.as_ref())))
        .ok_or_else(|| Error::not_found("No device found"))
}

/// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn delete_device(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserDevicePath(user, device_id): UserDevicePath,
) -> Result<Json<JsonValue>> {
    admin::delete_device(&services, &user, device_id).await?;
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
pub async fn joined_rooms(
    State(services): State<Arc<Services>>,
    _admin: ServerAdmin,
    UserPath(user): UserPath,
) -> Result<Json<JsonValue>> {
    let rooms = admin::joined_rooms(&services, &user)?;
    Ok(Json(json!({ "total": rooms.len(), "joined_rooms": rooms })))
}
