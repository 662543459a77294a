//! Devices: list, get, rename, delete one (UIA), delete several (UIA).

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    OwnedDeviceId,
    api::client::device::{
        self as ruma_device, delete_device, delete_devices, get_device, get_devices, update_device,
    },
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, devices::Device, uiaa::Stage},
};

fn to_ruma(device_id: OwnedDeviceId, device: Device) -> ruma_device::Device {
    let mut out = ruma_device::Device::new(device_id);
    out.display_name = device.display_name;
    // Last-seen time and address are not tracked yet (a write per request); see issue notes.
    out
}

/// `GET /_matrix/client/v3/devices`
pub async fn get_devices(
    State(services): State<Arc<Services>>,
    request: Ruma<get_devices::v3::Request>,
) -> Result<RumaResponse<get_devices::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let devices = services
        .devices
        .list(user_id)?
        .into_iter()
        .map(|(id, d)| to_ruma(id, d))
        .collect();
    Ok(RumaResponse(get_devices::v3::Response::new(devices)))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get_device(
    State(services): State<Arc<Services>>,
    request: Ruma<get_device::v3::Request>,
) -> Result<RumaResponse<get_device::v3::Response>> {
    let (user_id, _) = request.sender()?;
    let device_id = request.body.device_id.clone();
    let device = services
        .devices
        .get(user_id, &device_id)?
        .ok_or_else(|| Error::not_found("No such device."))?;
    Ok(RumaResponse(get_device::v3::Response::new(to_ruma(
        device_id, device,
    ))))
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
