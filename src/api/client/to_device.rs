//! `PUT /sendToDevice/{eventType}/{txnId}`: to one device, or `*` for all of a user's devices.

use std::sync::Arc;

use axum::extract::State;
use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

/// Messages one request may address.
const MAX_TARGETS: usize = 10_000;

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_event_to_device(
    State(services): State<Arc<Services>>,
    request: Ruma<send_event_to_device::v3::Request>,
) -> Result<RumaResponse<send_event_to_device::v3::Response>> {
    let (sender, device) = request.sender()?;
    let body = &request.body;
    let mut targets = Vec::new();
    for (user_id, by_device) in &body.messages {
        if !services.users.is_local(user_id) {
            // Delivery to other servers comes with federation.
            tracing::debug!(%user_id, "to-device message for a remote user dropped");
            continue;
        }
        for (target, raw) in by_device {
            let content: JsonValue = serde_json::from_str(raw.json().get())
                .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))?;
            match target {
                DeviceIdOrAllDevices::DeviceId(device_id) => {
                    targets.push((user_id.clone(), device_id.clone(), content))
                }
                DeviceIdOrAllDevices::AllDevices => {
                    for (device_id, _) in services.devices.list(user_id)? {
                        targets.push((user_id.clone(), device_id, content.clone()));
                    }
                }
            }
            if targets.len() > MAX_TARGETS {
                return Err(Error::bad_json("Too many recipients."));
            }
        }
    }
    services
        .to_device
        .send(
            sender,
            device,
            body.txn_id.as_str(),
            &body.event_type.to_string(),
            targets,
        )
        .await?;
    Ok(RumaResponse(send_event_to_device::v3::Response::new()))
}
