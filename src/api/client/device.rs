//! Devices: list, get (with last-seen time and address), rename, delete one (UIA), delete
//! several (UIA).

use std::sync::Arc;

use axum::{Json, extract::State};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt, UserId,
    api::client::device::{
        self as ruma_device, delete_device, delete_devices, get_device, get_devices, update_device,
    },
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, devices::Device, uiaa::Stage},
};

/// A device as the spec describes it, with its last-seen time and address (recorded on
/// each authenticated request).
fn to_ruma(
    services: &Services,
    user_id: &UserId,
    device_id: OwnedDeviceId,
    device: Device,
) -> Result<ruma_device::Device> {
    let last_seen = services.devices.last_seen(user_id, &device_id)?;
    let mut out = ruma_device::Device::new(device_id);
    out.display_name = device.display_name;
    if let Some(last_seen) = last_seen {
        out.last_seen_ip = last_seen.ip.map(|ip| ip.to_string());
        out.last_seen_ts = UInt::new(last_seen.ts).map(MilliSecondsSinceUnixEpoch);
    }
    Ok(out)
}

/// The device as JSON with every field present: `display_name`, `last_seen_ip` and
/// `last_seen_ts` are `null` when unknown, as Synapse answers. ruma leaves out an absent
/// `last_seen_ts`, and some client libraries (matrix-nio) reject a device without it.
fn device_json(device: ruma_device::Device) -> Result<JsonValue> {
    let mut value = serde_json::to_value(device)
        .map_err(|error| Error::internal(format!("device serialisation: {error}")))?;
    if let Some(fields) = value.as_object_mut() {
        for field in ["display_name", "last_seen_ip", "last_seen_ts"] {
            fields.entry(field).or_insert(JsonValue::Null);
        }
    }
    Ok(value)
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(
    State(services): State<Arc<Services>>,
    request: Ruma<get_devices::v3::Request>,
) -> Result<Json<JsonValue>> {
    let (user_id, _) = request.sender()?;
    let devices = services
        .devices
        .list(user_id)?
        .into_iter()
        .map(|(id, device)| device_json(to_ruma(&services, user_id, id, device)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(serde_json::json!({ "devices": devices })))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(
    State(services): State<Arc<Services>>,
    request: Ruma<get_device::v3::Request>,
) -> Result<Json<JsonValue>> {
    let (user_id, _) = request.sender()?;
    let device_id = request.body.device_id.clone();
    let device = services
        .devices
        .get(user_id, &device_id)?
        .ok_or_else(|| Error::not_found("No such device."))?;
    Ok(Json(device_json(to_ruma(
        &services, user_id, device_id, device,
    )?)?))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`: sets (or with `null`, clears) the name.
pub async fn update_device(
    State(services): State<Arc<Services>>,
    request: Ruma<update_device::v3::Request>,
) -> Result<RumaResponse<update_device::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    services
        .devices
        .rename(user_id, &body.device_id, body.display_name.clone())
        .await?;
    Ok(RumaResponse(update_device::v3::Response::new()))
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`: needs the password (UIA); the device's
/// token stops working at once. An unknown device is not an error.
pub async fn delete_device(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_device::v3::Request>,
) -> Result<RumaResponse<delete_device::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    // Spec: 200 also when the device "had been removed previously".
    services
        .uiaa
        .authorize(&services, body.auth.as_ref(), Stage::Password(user_id))
        .await?;
    services
        .devices
        .remove(user_id, std::slice::from_ref(&body.device_id))
        .await?;
    services.device_list_changed(user_id).await?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

/// `POST /_matrix/client/v3/delete_devices`: needs the password (UIA); unknown ids are
/// ignored, as the spec allows.
pub async fn delete_devices(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_devices::v3::Request>,
) -> Result<RumaResponse<delete_devices::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    services
        .uiaa
        .authorize(&services, body.auth.as_ref(), Stage::Password(user_id))
        .await?;
    services.devices.remove(user_id, &body.devices).await?;
    services.device_list_changed(user_id).await?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}
