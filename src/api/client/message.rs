//! Messages: `send` (with per-device transaction-id idempotency), `/messages` (pagination
//! both ways, with `to`, `limit` and the filter) and `/context`. Filters are compiled by
//! `service::filter`, the same rules as `/sync`.
//!
//! Pagination tokens are timeline positions ([`Pos`], decimal i64): token `T` is the boundary
//! just before the event at `T`. Backwards from `T` yields positions below `T`; forwards,
//! positions from `T` on. Backfilled events sort below every live one, so a token stays valid
//! when history is added below it.

use std::{collections::BTreeSet, sync::Arc};

use axum::extract::State;
use ruma::{
    OwnedUserId,
    api::{
        Direction,
        client::{
            context::get_context,
            message::{get_message_events, send_message_event},
            redact::redact_event,
        },
    },
    events::{StateEventType, TimelineEventType},
};
use serde_json::Value as JsonValue;

use super::room::{reader, require_joined};
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{
        Services,
        filter::{EventMatcher, Scanned, Walk, scan},
        rooms::{
            append::{NewEvent, Transaction},
            pos::Pos,
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

fn parse_token(token: Option<&str>) -> Result<Option<Pos>> {
    token.map(str::parse::<Pos>).transpose()
}

/// Events read, at most, per page: a filter that drops events reads further to fill the
/// page, up to this multiple of its limit (at least [`MIN_READ`]).
const READ_FACTOR: usize = 10;
const MIN_READ: usize = 1000;

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`: pages of events the `filter` (a
/// `RoomEventFilter`: types, senders, rooms, `contains_url`, `limit`, lazy-loaded members)
/// lets through and history visibility shows.
pub async fn get_message_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_message_events::v3::Request>,
) -> Result<RumaResponse<get_message_events::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let mut visibility = reader(&services, &body.room_id, sender)?;
    let info = services.rooms.existing(&body.room_id)?;
    let matcher = EventMatcher::from_room_event_filter(&body.filter);
    let limit = usize::try_from(body.limit)
        .unwrap_or(MAX_LIMIT)
        .min(matcher.limit.unwrap_or(MAX_LIMIT))
        .min(MAX_LIMIT);
    let to = parse_token(body.to.as_deref())?;
    let from = match body.dir {
        Direction::Backward => match parse_token(body.from.as_deref())? {
            Some(from) => from,
            None => Pos::live(services.stream.position())?.next(),
        },
        // Before everything, backfilled history included.
        Direction::Forward => parse_token(body.from.as_deref())?.unwrap_or(Pos::MIN),
    };
    let mut response = get_message_events::v3::Response::new();
    response.start = from.to_string();
    if body.limit == ruma::UInt::MIN || matcher.limit == Some(0) {
        // `limit` is "the maximum number of events to return" (client-server API, `GET
        // /rooms/{roomId}/messages`): none, and an `end` the client may go on from.
        response.end = Some(from.to_string());
        return Ok(RumaResponse(response));
    }
    if matcher.blocks_all() || !matcher.allows_room(&body.room_id) {
        // Nothing here can pass: an empty page, and no more to come.
        return Ok(RumaResponse(response));
    }
    let ignored = services.account_data.ignored_users(sender)?;
    let walk = Walk {
        dir: body.dir,
        from,
        bound: to,
        limit,
        max_read: (limit * READ_FACTOR).max(MIN_READ),
    };
    let mut scanned = scan(&services.rooms, &info, walk, |pos, pdu| {
        Ok(matcher.allows_pdu(pdu) && shown(pdu, &ignored) && visibility.can_see(pos, pdu)?)
    })?;
    // The start of what this server holds, but not of the room: older history comes from
    // another server in it (backfill), then the page is read again.
    if body.dir == Direction::Backward
        && scanned.exhausted
        && scanned.events.len() < limit
        && services.backfill_from_others(&body.room_id).await? > 0
    {
        let mut visibility = reader(&services, &body.room_id, sender)?;
        scanned = scan(&services.rooms, &info, walk, |pos, pdu| {
            Ok(matcher.allows_pdu(pdu) && shown(pdu, &ignored) && visibility.can_see(pos, pdu)?)
        })?;
    }
    // No `end` once the start of the room (or `to`) is reached going backwards.
    response.end = match (body.dir, scanned.last_read) {
        (_, None) => None,
        (Direction::Backward, Some(_)) if scanned.exhausted => None,
        (Direction::Backward, Some(pos)) => Some(pos.to_string()),
        (Direction::Forward, Some(pos)) => Some(pos.next().to_string()),
    };
    let events = scanned.events;

    // Lazy-loaded members: the member events of the senders on this page.
    if !body.filter.lazy_load_options.is_disabled() {
        let senders: BTreeSet<OwnedUserId> =
            events.iter().map(|(_, pdu)| pdu.sender.clone()).collect();
        for user in senders {
            let member = StateEventType::RoomMember;
            if let Some(event) =
                services
                    .rooms
                    .current_state_event(&body.room_id, &member, user.as_str())?
            {
                response.state.push(event.to_state_event());
            }
        }
    }
    response.chunk = events
        .iter()
        .map(|(_, pdu)| services.rooms.room_event(pdu, sender))
        .collect::<Result<_>>()?;
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`: the event, up to `limit`
/// events around it (half before, half after) that the `filter` lets through, and the state
/// before it (with lazy-loading, only the members who sent the events returned; then
/// through the filter, as Synapse does).
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
        .client_pdu(&body.event_id)?
        .filter(|pdu| pdu.room_id() == body.room_id)
        .ok_or_else(|| Error::not_found("Event not found."))?;
    let pos = rooms
        .pos_of(&body.event_id)?
        .ok_or_else(|| Error::not_found("Event not found."))?;
    if !visibility.can_see(pos, &event)? {
        return Err(Error::not_found("Event not found."));
    }
    let matcher = EventMatcher::from_room_event_filter(&body.filter);
    let limit = usize::try_from(body.limit)
        .unwrap_or(10)
        .min(matcher.limit.unwrap_or(MAX_LIMIT))
        .min(MAX_LIMIT);
    let before_limit = limit / 2;
    let after_limit = limit - before_limit;
    let ignored = services.account_data.ignored_users(sender)?;
    let nothing_passes = matcher.blocks_all() || !matcher.allows_room(&body.room_id);
    let mut around = |dir: Direction, from: Pos, limit: usize| {
        if nothing_passes {
            return Ok(Scanned {
                events: Vec::new(),
                last_read: None,
                exhausted: true,
            });
        }
        let walk = Walk {
            dir,
            from,
            bound: None,
            limit,
            max_read: (limit * READ_FACTOR).max(MIN_READ),
        };
        scan(rooms, &info, walk, |pos, pdu| {
            Ok(matcher.allows_pdu(pdu) && shown(pdu, &ignored) && visibility.can_see(pos, pdu)?)
        })
    };
    let before = around(Direction::Backward, pos, before_limit)?;
    let after = around(Direction::Forward, pos.next(), after_limit)?;

    let mut state = Vec::new();
    if let Some((before_hash, after_hash)) = rooms.state_hashes(&body.event_id)? {
        let hash = before_hash.unwrap_or(after_hash);
        let lazy = !body.filter.lazy_load_options.is_disabled();
        let senders: BTreeSet<&ruma::UserId> = before
            .events
            .iter()
            .chain(&after.events)
            .map(|(_, pdu)| &*pdu.sender)
            .chain([&*event.sender])
            .collect();
        for pdu in rooms.state_events(&rooms.state.load(hash)?)? {
            let member_of_other = pdu.kind == TimelineEventType::RoomMember
                && pdu
                    .state_key
                    .as_deref()
                    .is_some_and(|key| !senders.iter().any(|s| s.as_str() == key));
            if lazy && member_of_other {
                continue;
            }
            if matcher.allows_pdu(&pdu) {
                state.push(pdu.to_state_event());
            }
        }
    }
    let mut response = get_context::v3::Response::new();
    response.start = Some(before.last_read.unwrap_or(pos).to_string());
    response.end = Some(after.last_read.unwrap_or(pos).next().to_string());
    response.events_before = before
        .events
        .iter()
        .map(|(_, pdu)| rooms.room_event(pdu, sender))
        .collect::<Result<_>>()?;
    response.event = Some(rooms.room_event(&event, sender)?);
    response.events_after = after
        .events
        .iter()
        .map(|(_, pdu)| rooms.room_event(pdu, sender))
        .collect::<Result<_>>()?;
    response.state = state;
    Ok(RumaResponse(response))
}
