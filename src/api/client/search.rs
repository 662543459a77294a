//! Server-side search (`POST /search`, room events): case-insensitive matching of every
//! search word against `content.body`, `content.name` and `content.topic` (as `keys` asks)
//! of unencrypted events in the user's joined rooms, newest first, with history visibility
//! applied. There is no full-text index: each request scans at most [`MAX_SCANNED`] events
//! per room, newest first, which suits small servers; older history is reached by paging.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
};
use ruma::{
    OwnedRoomId, UInt,
    api::{
        OutgoingResponse,
        client::search::search_events::{
            self,
            v3::{Criteria, ResultCategories, ResultRoomEvents, SearchKeys, SearchResult},
        },
    },
    events::room::member::MembershipState,
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::Ruma,
    service::{
        Services,
        rooms::{pdu::Pdu, pos::Pos},
    },
};

/// Events looked at per room and request.
const MAX_SCANNED: usize = 2_000;
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 50;

fn matches(pdu: &Pdu, words: &[String], keys: &[&str]) -> bool {
    let content = pdu.content_value();
    let text: String = keys
        .iter()
        .filter_map(|key| content.get(*key).and_then(JsonValue::as_str))
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    !text.is_empty() && words.iter().all(|word| text.contains(word.as_str()))
}

/// `next_batch` tokens are `room index:pos`: where to continue (`pos` a decimal [`Pos`], so
/// tokens from before backfill existed parse as before).
fn parse_batch(token: Option<&str>) -> Result<(usize, Option<Pos>)> {
    let Some(token) = token else {
        return Ok((0, None));
    };
    let (room, count) = token
        .split_once(':')
        .ok_or_else(|| Error::invalid_param("Invalid next_batch."))?;
    let room = room
        .parse()
        .map_err(|_| Error::invalid_param("Invalid next_batch."))?;
    let count = count
        .parse()
        .map_err(|_| Error::invalid_param("Invalid next_batch."))?;
    Ok((room, Some(count)))
}

fn search_rooms(
    services: &Services,
    user: &ruma::UserId,
    criteria: &Criteria,
    next_batch: Option<&str>,
) -> Result<ResultRoomEvents> {
    let words: Vec<String> = criteria
        .search_term
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    if words.is_empty() {
        return Err(Error::invalid_param("The search term is empty."));
    }
    let keys: Vec<&str> = match &criteria.keys {
        Some(keys) => keys
            .iter()
            .map(|key| match key {
                SearchKeys::ContentName => "name",
                SearchKeys::ContentTopic => "topic",
                _ => "body",
            })
            .collect(),
        None => vec!["body", "name", "topic"],
    };
    let filter = &criteria.filter;
    let limit = filter
        .limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let mut rooms: Vec<OwnedRoomId> = services
        .rooms
        .rooms_of(user)?
        .into_iter()
        .filter(|(_, entry)| entry.membership == MembershipState::Join)
        .map(|(room, _)| room)
        .filter(|room| {
            filter
                .rooms
                .as_ref()
                .is_none_or(|wanted| wanted.contains(room))
        })
        .filter(|room| !filter.not_rooms.contains(room))
        .collect();
    rooms.sort();

    let (first_room, mut before) = parse_batch(next_batch)?;
    let mut results = Vec::new();
    let mut next = None;
    'rooms: for (index, room_id) in rooms.iter().enumerate().skip(first_room) {
        let info = services.rooms.existing(room_id)?;
        let mut visibility = services.rooms.visibility(room_id, user)?;
        let events =
            services
                .rooms
                .events_before(&info, before.take().unwrap_or(Pos::MAX), MAX_SCANNED)?;
        for (pos, pdu) in events {
            if !matches(&pdu, &words, &keys) || !visibility.can_see(pos, &pdu)? {
                continue;
            }
            if results.len() == limit {
                next = Some(format!("{index}:{}", pos.next()));
                break 'rooms;
            }
            let mut result = SearchResult::new();
            result.rank = Some(1.0);
            result.result = Some(services.rooms.room_event(&pdu, user)?);
            results.push(result);
        }
    }
    let mut found = ResultRoomEvents::new();
    found.count = UInt::new(results.len() as u64);
    found.results = results;
    found.next_batch = next;
    found.highlights = words;
    Ok(found)
}

/// The search answer with `results` present even when empty: ruma leaves an empty list out,
/// but Synapse always sends it and clients (matrix-js-sdk) iterate it without a check.
pub struct SearchResponse(search_events::v3::Response);

impl IntoResponse for SearchResponse {
    fn into_response(self) -> Response {
        let response = match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => response,
            Err(error) => {
                return Error::internal(format!("response serialisation: {error}")).into_response();
            }
        };
        response
            .map(|bytes| {
                let Ok(mut json) = serde_json::from_slice::<JsonValue>(&bytes) else {
                    return Body::from(bytes);
                };
                if let Some(events) = json
                    .pointer_mut("/search_categories/room_events")
                    .and_then(JsonValue::as_object_mut)
                {
                    events
                        .entry("results")
                        .or_insert_with(|| JsonValue::Array(Vec::new()));
                }
                Body::from(json.to_string())
            })
            .into_response()
    }
}

/// `POST /_matrix/client/v3/search`
pub async fn search_events(
    State(services): State<Arc<Services>>,
    request: Ruma<search_events::v3::Request>,
) -> Result<SearchResponse> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let mut categories = ResultCategories::new();
    if let Some(criteria) = &body.search_categories.room_events {
        categories.room_events =
            search_rooms(&services, sender, criteria, body.next_batch.as_deref())?;
    }
    Ok(SearchResponse(search_events::v3::Response::new(categories)))
}
