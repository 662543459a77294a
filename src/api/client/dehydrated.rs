//! Dehydrated devices (MSC3814, unstable prefix `org.matrix.msc3814.v1`): put, get and
//! delete the user's dehydrated device, and page through the to-device messages it
//! received. The steps span several services (devices, keys, to-device), so they are
//! sequenced here; each service write is durable on its own.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    api::client::dehydrated_device::{
        delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, dehydrated::DehydratedDevice},
};

/// `PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device`: replaces the
/// user's dehydrated device (the old one, its keys and messages are deleted).
pub async fn put_dehydrated_device(
    State(services): State<Arc<Services>>,
    request: Ruma<put_dehydrated_device::unstable::Request>,
) -> Result<RumaResponse<put_dehydrated_device::unstable::Response>> {
    let (user_id, own_device) = request.sender()?;
    let body = &request.body;
    let device_data: JsonValue = serde_json::from_str(body.device_data.json().get())
        .map_err(|e| Error::bad_json(format!("Invalid device_data: {e}")))?;
    if !device_data.is_object() {
        return Err(Error::bad_json("device_data must be an object."));
    }
    // The id may name the current dehydrated device (replaced in place), but no other
    // existing device: that would turn an ordinary device into the dehydrated one.
    let previous = services.dehydrated.get(user_id)?;
    let replaces_previous = previous
        .as_ref()
        .is_some_and(|d| d.device_id == body.device_id);
    let taken = body.device_id == *own_device
        || (!replaces_previous && services.devices.get(user_id, &body.device_id)?.is_some());
    if taken {
        return Err(Error::invalid_param(
            "This device id belongs to an existing device.",
        ));
    }
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
    // Checks the keys (signed by the new device, naming it) before anything changes.
    services.keys.check_upload(
        user_id,
        &body.device_id,
        body.device_keys.json(),
        &one_time,
        &fallback,
    )?;
    if let Some(old) = previous {
        services.devices.remove(user_id, &[old.device_id]).await?;
    }
    services
        .devices
        .create_without_token(
            user_id,
            &body.device_id,
            body.initial_device_display_name.clone(),
        )
        .await?;
    services
        .keys
        .upload(
            user_id,
            &body.device_id,
            Some(body.device_keys.json()),
            &one_time,
            &fallback,
        )
        .await?;
    services
        .dehydrated
        .set(
            user_id,
            &DehydratedDevice {
                device_id: body.device_id.clone(),
                device_data,
            },
        )
        .await?;
    services.device_list_changed(user_id).await?;
    Ok(RumaResponse(
        put_dehydrated_device::unstable::Response::new(body.device_id.clone()),
    ))
}

fn current(services: &Services, user_id: &ruma::UserId) -> Result<DehydratedDevice> {
    services
        .dehydrated
        .get(user_id)?
        .ok_or_else(|| Error::not_found("No dehydrated device."))
}

/// `GET …/dehydrated_device`: 404 `M_NOT_FOUND` when the user has none.
pub async fn get_dehydrated_device(
    State(services): State<Arc<Services>>,
    request: Ruma<get_dehydrated_device::unstable::Request>,
) -> Result<RumaResponse<get_dehydrated_device::unstable::Response>> {
    let (user_id, _) = request.sender()?;
    let device = current(&services, user_id)?;
    let data = serde_json::value::to_raw_value(&device.device_data)
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(RumaResponse(
        get_dehydrated_device::unstable::Response::new(device.device_id, Raw::from_json(data)),
    ))
}

/// `DELETE …/dehydrated_device`: deletes the device with its keys.
pub async fn delete_dehydrated_device(
    State(services): State<Arc<Services>>,
    request: Ruma<delete_dehydrated_device::unstable::Request>,
) -> Result<RumaResponse<delete_dehydrated_device::unstable::Response>> {
    let (user_id, _) = request.sender()?;
    let device = current(&services, user_id)?;
    services
        .devices
        .remove(user_id, std::slice::from_ref(&device.device_id))
        .await?;
    services.dehydrated.remove(user_id).await?;
    services.device_list_changed(user_id).await?;
    Ok(RumaResponse(
        delete_dehydrated_device::unstable::Response::new(device.device_id),
    ))
}

/// `POST …/dehydrated_device/{deviceId}/events`: the device's to-device messages, a page
/// at a time; a `next_batch` acknowledges (deletes) the pages before it.
pub async fn get_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_events::unstable::Request>,
) -> Result<RumaResponse<get_events::unstable::Response>> {
    let (user_id, _) = request.sender()?;
    let body = &request.body;
    let device = current(&services, user_id)?;
    if device.device_id != body.device_id {
        return Err(Error::forbidden("This is not your dehydrated device."));
    }
    let from = body
        .next_batch
        .as_deref()
        .map(|token| {
            token
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("Invalid next_batch."))
        })
        .transpose()?;
    let (messages, next) = services
        .to_device
        .page(user_id, &device.device_id, from)
        .await?;
    let mut events = Vec::with_capacity(messages.len());
    for message in messages {
        let raw = serde_json::value::to_raw_value(&message)
            .map_err(|e| Error::internal(e.to_string()))?;
        events.push(Raw::from_json(raw));
    }
    let mut response = get_events::unstable::Response::new(events);
    response.next_batch = next.map(|n| n.to_string());
    Ok(RumaResponse(response))
}
