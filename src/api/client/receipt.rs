//! Typing notifications, read receipts and read markers.

use std::{sync::Arc, time::Duration};

use axum::extract::State;
use ruma::{
    EventId, OwnedUserId, RoomId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt,
        typing::create_typing_event::{self, v3::Typing},
    },
    events::{receipt::ReceiptThread, room::member::MembershipState},
};
use serde_json::json;

use super::room::require_joined;
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, rooms::relations::relates_to},
};

fn joined_members(services: &Services, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
    Ok(services
        .rooms
        .members(room_id)?
        .into_iter()
        .filter(|(_, membership)| *membership == MembershipState::Join)
        .map(|(user, _)| user)
        .collect())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn create_typing_event(
    State(services): State<Arc<Services>>,
    request: Ruma<create_typing_event::v3::Request>,
) -> Result<RumaResponse<create_typing_event::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    if *sender != body.user_id {
        return Err(Error::forbidden("You can only set your own typing state."));
    }
    require_joined(&services, &body.room_id, sender)?;
    let timeout = match &body.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    let members = joined_members(&services, &body.room_id)?;
    let expires = services.ephemeral.set_typing(
        &body.room_id,
        sender,
        timeout,
        members.iter().map(|u| u.as_ref()),
    )?;
    services
        .typing_sent(&body.room_id, sender, timeout.is_some())
        .await?;
    if let Some(expires) = expires {
        // When it runs out, the others are told the user stopped typing.
        let services = Arc::clone(&services);
        let room_id = body.room_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(expires.into()).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            if let Ok(Some(position)) = services.ephemeral.expire(&room_id)
                && let Ok(members) = joined_members(&services, &room_id)
            {
                services
                    .stream
                    .touch(members.iter().map(|u| u.as_ref()), position);
            }
        });
    }
    Ok(RumaResponse(create_typing_event::v3::Response::new()))
}

async fn receipt(
    services: &Services,
    room_id: &RoomId,
    user: &ruma::UserId,
    kind: &str,
    thread: Option<&str>,
    event_id: ruma::OwnedEventId,
) -> Result<()> {
    if services
        .rooms
        .client_pdu(&event_id)?
        .is_none_or(|pdu| pdu.room_id() != room_id)
    {
        return Err(Error::not_found("Unknown event."));
    }
    let members = joined_members(services, room_id)?;
    let event_id_sent = event_id.clone();
    services
        .ephemeral
        .set_receipt(
            room_id,
            user,
            kind,
            thread,
            event_id,
            members.iter().map(|u| u.as_ref()),
        )
        .await?;
    // Public receipts go to the other servers in the room too.
    if kind == "m.read" {
        services
            .receipt_sent(room_id, user, &event_id_sent, thread)
            .await?;
    }
    // Reading the room clears its notification counts.
    if kind == "m.read" || kind == "m.read.private" {
        services.push.read(&services.rooms, user, room_id).await?;
    }
    Ok(())
}

/// A receipt's type and thread (client-server API, `POST /rooms/{roomId}/receipt/…`):
/// 400 `M_INVALID_PARAM` for an unknown type, and for a `thread_id` that is empty or not
/// `main` or an event id, that comes with `m.fully_read`, or that names a thread the event is
/// not part of (as Synapse).
fn check_receipt(
    services: &Services,
    kind: &str,
    thread: &ReceiptThread,
    event_id: &EventId,
) -> Result<()> {
    if !matches!(kind, "m.read" | "m.read.private" | "m.fully_read") {
        return Err(Error::invalid_param(format!(
            "Unknown receipt type {kind}: expected m.read, m.read.private or m.fully_read."
        )));
    }
    match thread {
        ReceiptThread::Unthreaded => Ok(()),
        _ if kind == "m.fully_read" => Err(Error::invalid_param(
            "A thread_id cannot be given for m.fully_read.",
        )),
        ReceiptThread::Main => Ok(()),
        ReceiptThread::Thread(root) => {
            let in_thread = root == event_id
                || services.rooms.pdu(event_id)?.is_some_and(|pdu| {
                    serde_json::from_str(pdu.content.get())
                        .ok()
                        .and_then(|content| relates_to(&content))
                        .is_some_and(|(rel_type, target)| rel_type == "m.thread" && target == *root)
                });
            if in_thread {
                Ok(())
            } else {
                Err(Error::invalid_param(
                    "The event is not part of the thread named by thread_id.",
                ))
            }
        }
        _ => Err(Error::invalid_param(
            "thread_id must be \"main\" or the id of a thread's root event.",
        )),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn create_receipt(
    State(services): State<Arc<Services>>,
    request: Ruma<create_receipt::v3::Request>,
) -> Result<RumaResponse<create_receipt::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    require_joined(&services, &body.room_id, sender)?;
    let kind = body.receipt_type.to_string();
    check_receipt(&services, &kind, &body.thread, &body.event_id)?;
    if kind == "m.fully_read" {
        services
            .account_data
            .set(
                sender,
                Some(&body.room_id),
                "m.fully_read",
                json!({ "event_id": body.event_id }),
            )
            .await?;
    } else {
        receipt(
            &services,
            &body.room_id,
            sender,
            &kind,
            body.thread.as_str(),
            body.event_id.clone(),
        )
        .await?;
    }
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub async fn set_read_marker(
    State(services): State<Arc<Services>>,
    request: Ruma<set_read_marker::v3::Request>,
) -> Result<RumaResponse<set_read_marker::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    require_joined(&services, &body.room_id, sender)?;
    if let Some(event_id) = &body.fully_read {
        services
            .account_data
            .set(
                sender,
                Some(&body.room_id),
                "m.fully_read",
                json!({ "event_id": event_id }),
            )
            .await?;
    }
    if let Some(event_id) = &body.read_receipt {
        receipt(
            &services,
            &body.room_id,
            sender,
            "m.read",
            None,
            event_id.clone(),
        )
        .await?;
    }
    if let Some(event_id) = &body.private_read_receipt {
        receipt(
            &services,
            &body.room_id,
            sender,
            "m.read.private",
            None,
            event_id.clone(),
        )
        .await?;
    }
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
}
