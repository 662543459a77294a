//! `/relations` (all, by type, by type and event type) and `/threads`.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    EventId, RoomId, UInt, UserId,
    api::{
        Direction,
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads,
        },
    },
    events::AnyMessageLikeEvent,
    serde::Raw,
};

use super::room::{event_reader, reader};
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, rooms::pos::Pos},
};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

struct Page {
    chunk: Vec<Raw<AnyMessageLikeEvent>>,
    next_batch: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn relating(
    services: &Services,
    user: &UserId,
    room_id: &RoomId,
    target: &EventId,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    from: Option<&str>,
    dir: Direction,
    limit: Option<UInt>,
) -> Result<Page> {
    let mut visibility = event_reader(services, room_id, user)?;
    let rooms = &services.rooms;
    let parent = rooms
        .client_pdu(target)?
        .filter(|pdu| pdu.room_id() == room_id)
        .ok_or_else(|| Error::not_found("Event not found."))?;
    if !visibility.can_see(rooms.pos_of(target)?.unwrap_or(Pos::MIN), &parent)? {
        return Err(Error::not_found("Event not found."));
    }
    let from = from
        .map(|t| {
            t.parse::<Pos>()
                .map_err(|_| Error::invalid_param("Invalid from token."))
        })
        .transpose()?;
    let limit = limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let forward = dir == Direction::Forward;
    let relations = rooms.relations(target, from, forward, limit)?;
    let next_batch = match relations.last() {
        Some(last) if relations.len() == limit => {
            Some(if forward { last.pos.next() } else { last.pos }.to_string())
        }
        _ => None,
    };
    let mut chunk = Vec::new();
    for relation in relations {
        if rel_type.is_some_and(|wanted| wanted != relation.rel_type)
            || event_type.is_some_and(|wanted| wanted != relation.event_type)
        {
            continue;
        }
        if let Some(pdu) = rooms.pdu(&relation.event_id)?
            && visibility.can_see(relation.pos, &pdu)?
        {
            chunk.push(rooms.room_event(&pdu, user)?.cast_unchecked());
        }
    }
    Ok(Page { chunk, next_batch })
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
pub async fn get_relating_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_relating_events::v1::Request>,
) -> Result<RumaResponse<get_relating_events::v1::Response>> {
    let (sender, _) = request.sender()?;
    let b = &request.body;
    let page = relating(
        &services,
        sender,
        &b.room_id,
        &b.event_id,
        None,
        None,
        b.from.as_deref(),
        b.dir,
        b.limit,
    )?;
    let mut response = get_relating_events::v1::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
pub async fn get_relating_events_with_rel_type(
    State(services): State<Arc<Services>>,
    request: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<RumaResponse<get_relating_events_with_rel_type::v1::Response>> {
    let (sender, _) = request.sender()?;
    let b = &request.body;
    let rel_type = b.rel_type.to_string();
    let page = relating(
        &services,
        sender,
        &b.room_id,
        &b.event_id,
        Some(&rel_type),
        None,
        b.from.as_deref(),
        b.dir,
        b.limit,
    )?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
pub async fn get_relating_events_with_rel_type_and_event_type(
    State(services): State<Arc<Services>>,
    request: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<RumaResponse<get_relating_events_with_rel_type_and_event_type::v1::Response>> {
    let (sender, _) = request.sender()?;
    let b = &request.body;
    let (rel_type, event_type) = (b.rel_type.to_string(), b.event_type.to_string());
    let page = relating(
        &services,
        sender,
        &b.room_id,
        &b.event_id,
        Some(&rel_type),
        Some(&event_type),
        b.from.as_deref(),
        b.dir,
        b.limit,
    )?;
    let mut response =
        get_relating_events_with_rel_type_and_event_type::v1::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

/// Replies looked at per thread to decide whether the user took part.
const MAX_REPLIES_CHECKED: usize = 500;

fn participated(services: &Services, user: &UserId, root: &EventId) -> Result<bool> {
    if services
        .rooms
        .pdu(root)?
        .is_some_and(|pdu| pdu.sender == user)
    {
        return Ok(true);
    }
    for relation in services
        .rooms
        .relations(root, None, false, MAX_REPLIES_CHECKED)?
    {
        if relation.rel_type == "m.thread"
            && services
                .rooms
                .pdu(&relation.event_id)?
                .is_some_and(|pdu| pdu.sender == user)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`: thread roots, most recently active
/// first, paged by offset.
pub async fn get_threads(
    State(services): State<Arc<Services>>,
    request: Ruma<get_threads::v1::Request>,
) -> Result<RumaResponse<get_threads::v1::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let mut visibility = reader(&services, &body.room_id, sender)?;
    let offset = body
        .from
        .as_deref()
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| Error::invalid_param("Invalid from token."))
        })
        .transpose()?
        .unwrap_or(0);
    let limit = body
        .limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let mut roots = services.rooms.thread_roots(&body.room_id)?;
    if body.include == get_threads::v1::IncludeThreads::Participated {
        // Threads the user started or replied in.
        roots.retain(|(root, _)| participated(services.as_ref(), sender, root).unwrap_or(false));
    }
    let total = roots.len();
    let mut chunk = Vec::new();
    for (root, _) in roots.into_iter().skip(offset).take(limit) {
        if let Some(pdu) = services.rooms.client_pdu(&root)?
            && visibility.can_see(services.rooms.pos_of(&root)?.unwrap_or(Pos::MIN), &pdu)?
        {
            chunk.push(services.rooms.room_event(&pdu, sender)?);
        }
    }
    let mut response = get_threads::v1::Response::new(chunk);
    response.next_batch = (offset + limit < total).then(|| (offset + limit).to_string());
    Ok(RumaResponse(response))
}
