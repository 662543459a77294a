//! Messages: `send` (with per-device transaction-id idempotency) and `/messages`
//! (pagination both ways, with `to`, `limit` and the type/sender/lazy-member filter).
//!
//! Pagination tokens are stream positions: token `T` is the boundary just before the event
//! with count `T`. Backwards from `T` yields counts below `T`; forwards, counts from `T` on.

use std::{collections::BTreeSet, sync::Arc};

use axum::extract::State;
use ruma::{
    OwnedUserId,
    api::{
        Direction,
        client::{
            context::get_context,
            filter::RoomEventFilter,
            message::{get_message_events, send_message_event},
            redact::redact_event,
        },
    },
    events::StateEventType,
};
use serde_json::Value as JsonValue;

use super::room::{reader, require_joined};
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{
        Services,
        rooms::{
            append::{NewEvent, Transaction},
            pdu::Pdu,
        },
        sync::shown,
    },
};

/// The largest page `/messages` returns.
const MAX_LIMIT: usize = 1000;

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
pub async fn send_message_event(
    State(services): State<Arc<Services>>,
    request: Ruma<send_message_event::v3::Request>,
) -> Result<RumaResponse<send_message_event::v3::Response>> {
    let (sender, device) = request.sender()?;
    let body = &request.body;
    // The same transaction id from the same device is the same request (spec: "Transaction
    // identifiers"): answer with the event it created.
    if let Some(event_id) = services
        .rooms
        .txn_event(sender, device, body.txn_id.as_str())?
    {
        return Ok(RumaResponse(send_message_event::v3::Response::new(
            event_id,
        )));
    }
    require_joined(&services, &body.room_id, sender)?;
    let content: JsonValue = serde_json::from_str(body.body.json().get())
        .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))?;
    if !content.is_object() {
        return Err(Error::bad_json("Event content must be an object."));
    }
    let event = NewEvent::message(body.event_type.to_string().as_str(), content);
    let transaction = Transaction {
        device_id: device,
        txn_id: body.txn_id.as_str(),
    };
    let pdu = services
        .send_event(&body.room_id, sender, event, Some(transaction))
        .await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(
        pdu.event_id,
    )))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`: own events, or any
/// with the room's `redact` power level; the target is redacted in the same write.
pub async fn redact_event(
    State(services): State<Arc<Services>>,
    request: Ruma<redact_event::v3::Request>,
) -> Result<RumaResponse<redact_event::v3::Response>> {
    let (sender, device) = request.sender()?;
    let body = &request.body;
    if let Some(event_id) = services
        .rooms
        .txn_event(sender, device, body.txn_id.as_str())?
    {
        return Ok(RumaResponse(redact_event::v3::Response::new(event_id)));
    }
    require_joined(&services, &body.room_id, sender)?;
    let mut content = serde_json::Map::new();
    if let Some(reason) = &body.reason {
        content.insert("reason".into(), reason.as_str().into());
    }
    let mut event = NewEvent::message("m.room.redaction", JsonValue::Object(content));
    event.redacts = Some(body.event_id.clone());
    let transaction = Transaction {
        device_id: device,
        txn_id: body.txn_id.as_str(),
    };
    let pdu = services
        .send_event(&body.room_id, sender, event, Some(transaction))
        .await?;
    Ok(RumaResponse(redact_event::v3::Response::new(pdu.event_id)))
}

/// The events of a page the user may see (history visibility).
fn visible(
    visibility: &mut crate::service::rooms::visibility::Visibility<'_>,
    events: Vec<(u64, Pdu)>,
) -> Result<Vec<(u64, Pdu)>> {
    let mut out = Vec::with_capacity(events.len());
    for (count, pdu) in events {
        if visibility.can_see(count, &pdu)? {
            out.push((count, pdu));
        }
    }
    Ok(out)
}

fn parse_token(token: Option<&str>) -> Result<Option<u64>> {
    token
        .map(|token| {
            token
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("Invalid pagination token."))
        })
        .transpose()
}

/// Whether `pdu` passes the filter's `types`, `not_types` and `senders` (with `*` wildcards).
fn passes(filter: &RoomEventFilter, pdu: &Pdu) -> bool {
    let kind = pdu.kind.to_string();
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => *pattern == kind,
    };
    if filter.not_types.iter().any(matches) {
        return false;
    }
    if filter
        .types
        .as_ref()
        .is_some_and(|types| !types.iter().any(matches))
    {
        return false;
    }
    if filter.not_senders.contains(&pdu.sender) {
        return false;
    }
    filter
        .senders
        .as_ref()
        .is_none_or(|senders| senders.contains(&pdu.sender))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub async fn get_message_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_message_events::v3::Request>,
) -> Result<RumaResponse<get_message_events::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let mut visibility = reader(&services, &body.room_id, sender)?;
    let info = services.rooms.existing(&body.room_id)?;
    let limit = usize::try_from(body.limit)
        .unwrap_or(MAX_LIMIT)
        .clamp(1, MAX_LIMIT);
    let to = parse_token(body.to.as_deref())?;
    let filter = &body.filter;

    let (from, mut events) = match body.dir {
        Direction::Backward => {
            let from = parse_token(body.from.as_deref())?.unwrap_or(services.stream.position() + 1);
            let events = services.rooms.events_before(&info, from, limit)?;
            (
                from,
                events
                    .into_iter()
                    .filter(|(count, _)| to.is_none_or(|to| *count >= to))
                    .collect::<Vec<_>>(),
            )
        }
        Direction::Forward => {
            let from = parse_token(body.from.as_deref())?.unwrap_or(0);
            let events = services.rooms.events_from(&info, from, limit)?;
            (
                from,
                events
                    .into_iter()
                    .filter(|(count, _)| to.is_none_or(|to| *count < to))
                    .collect(),
            )
        }
    };
    let end = match (body.dir, events.last()) {
        (_, None) => None,
        (Direction::Backward, Some((count, _))) => Some(count.to_string()),
        (Direction::Forward, Some((count, _))) => Some((count + 1).to_string()),
    };
    // A short page means the start (or the current end) of the room was reached.
    let end = if events.len() < limit && body.dir == Direction::Backward {
        None
    } else {
        end
    };
    let ignored = services.account_data.ignored_users(sender)?;
    events.retain(|(_, pdu)| passes(filter, pdu) && shown(pdu, &ignored));
    let events = visible(&mut visibility, events)?;

    // Lazy-loaded members: the member events of the senders on this page.
    let mut state = Vec::new();
    if !filter.lazy_load_options.is_disabled() {
        let senders: BTreeSet<OwnedUserId> =
            events.iter().map(|(_, pdu)| pdu.sender.clone()).collect();
        for user in senders {
            let member = StateEventType::RoomMember;
            if let Some(event) =
                services
                    .rooms
                    .current_state_event(&body.room_id, &member, user.as_str())?
            {
                state.push(event.to_state_event());
            }
        }
    }
    let mut response = get_message_events::v3::Response::new();
    response.start = from.to_string();
    response.end = end;
    response.chunk = events
        .iter()
        .map(|(_, pdu)| services.rooms.room_event(pdu, sender))
        .collect::<Result<_>>()?;
    response.state = state;
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`: the event, up to `limit`
/// events around it (half before, half after), and the state before it.
pub async fn get_context(
    State(services): State<Arc<Services>>,
    request: Ruma<get_context::v3::Request>,
) -> Result<RumaResponse<get_context::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let mut visibility = reader(&services, &body.room_id, sender)?;
    let rooms = &services.rooms;
    let info = rooms.existing(&body.room_id)?;
    let event = rooms
        .pdu(&body.event_id)?
        .filter(|pdu| pdu.room_id() == body.room_id)
        .ok_or_else(|| Error::not_found("Event not found."))?;
    let count = rooms
        .count_of(&body.event_id)?
        .ok_or_else(|| Error::not_found("Event not found."))?;
    if !visibility.can_see(count, &event)? {
        return Err(Error::not_found("Event not found."));
    }
    let limit = usize::try_from(body.limit).unwrap_or(10).min(MAX_LIMIT);
    let before_limit = limit / 2;
    let after_limit = limit - before_limit;
    let ignored = services.account_data.ignored_users(sender)?;
    let mut before = rooms.events_before(&info, count, before_limit)?;
    before.retain(|(_, pdu)| shown(pdu, &ignored));
    let before = visible(&mut visibility, before)?;
    let mut after = rooms.events_from(&info, count + 1, after_limit)?;
    after.retain(|(_, pdu)| shown(pdu, &ignored));
    let after = visible(&mut visibility, after)?;

    let mut state = Vec::new();
    if let Some((before_hash, after_hash)) = rooms.state_hashes(&body.event_id)? {
        let hash = before_hash.unwrap_or(after_hash);
        let lazy = !body.filter.lazy_load_options.is_disabled();
        let senders: BTreeSet<&ruma::UserId> = before
            .iter()
            .chain(&after)
            .map(|(_, pdu)| &*pdu.sender)
            .chain([&*event.sender])
            .collect();
        for pdu in rooms.state_events(&rooms.state.load(hash)?)? {
            let member_of_other = pdu.kind.to_string() == "m.room.member"
                && pdu
                    .state_key
                    .as_deref()
                    .is_some_and(|key| !senders.iter().any(|s| s.as_str() == key));
            if lazy && member_of_other {
                continue;
            }
            state.push(pdu.to_state_event());
        }
    }
    let mut response = get_context::v3::Response::new();
    response.start = Some(before.last().map_or(count, |(c, _)| *c).to_string());
    response.end = Some(after.last().map_or(count + 1, |(c, _)| c + 1).to_string());
    let rooms = &services.rooms;
    response.events_before = before
        .iter()
        .filter(|(_, pdu)| passes(&body.filter, pdu))
        .map(|(_, pdu)| rooms.room_event(pdu, sender))
        .collect::<Result<_>>()?;
    response.event = Some(rooms.room_event(&event, sender)?);
    response.events_after = after
        .iter()
        .filter(|(_, pdu)| passes(&body.filter, pdu))
        .map(|(_, pdu)| rooms.room_event(pdu, sender))
        .collect::<Result<_>>()?;
    response.state = state;
    Ok(RumaResponse(response))
}
