//! `PUT /sendToDevice/{eventType}/{txnId}`: to one device, or `*` for all of a user's devices.

use std::{collections::BTreeMap, sync::Arc};

use axum::extract::State;
use ruma::{
    OwnedServerName, OwnedUserId, api::client::to_device::send_event_to_device,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value as JsonValue, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, federation::sender::Item},
};

/// Messages one request may address.
const MAX_TARGETS: usize = 10_000;
/// Other servers one request may address (each gets its own queue and task).
const MAX_SERVERS: usize = 100;

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_event_to_device(
    State(services): State<Arc<Services>>,
    request: Ruma<send_event_to_device::v3::Request>,
) -> Result<RumaResponse<send_event_to_device::v3::Response>> {
    let (sender, device) = request.sender()?;
    let body = &request.body;
    let mut targets = Vec::new();
    // Messages for other servers' users, per server: one `m.direct_to_device` EDU each.
    let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, JsonValue>> = BTreeMap::new();
    let mut remote_targets = 0;
    for (user_id, by_device) in &body.messages {
        if !services.users.is_local(user_id) {
            let messages = serde_json::to_value(by_device)
                .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))?;
            remote_targets += by_device.len();
            remote
                .entry(user_id.server_name().to_owned())
                .or_default()
                .insert(user_id.clone(), messages);
            if remote_targets + targets.len() > MAX_TARGETS || remote.len() > MAX_SERVERS {
                return Err(Error::bad_json("Too many recipients."));
            }
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
            if targets.len() + remote_targets > MAX_TARGETS {
                return Err(Error::bad_json("Too many recipients."));
            }
        }
    }
    if services
        .to_device
        .was_sent(sender, device, body.txn_id.as_str())?
    {
        return Ok(RumaResponse(send_event_to_device::v3::Response::new()));
    }
    // Other servers' first: if the local part then fails, the client's retry queues them
    // again under the same `message_id`, which the receiving server drops.
    if !remote.is_empty() {
        send_remote(&services, sender, device, body, remote).await?;
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

/// Queues one `m.direct_to_device` EDU per server (server-server API, "Send-to-device
/// messaging"), with a `message_id` made from the sender's device and transaction id so a
/// repeated request is dropped by the receiver. With federation off they are dropped, as
/// before (the spec gives sendToDevice no error for unreachable users).
async fn send_remote(
    services: &Services,
    sender: &ruma::UserId,
    device: &ruma::DeviceId,
    body: &send_event_to_device::v3::Request,
    remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, JsonValue>>,
) -> Result<()> {
    let Some(queue) = services.federation.sender() else {
        tracing::debug!("to-device messages for other servers dropped: federation is off");
        return Ok(());
    };
    let message_id = format!("{device}_{}", body.txn_id);
    let per_server = remote
        .into_iter()
        .map(|(server, messages)| {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": sender,
                    "type": body.event_type.to_string(),
                    "message_id": message_id,
                    "messages": messages,
                },
            });
            (server, vec![Item::Edu(edu)])
        })
        .collect();
    queue.queue_many(per_server).await
}
