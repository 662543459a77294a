//! The public room directory (`publicRooms`, per-room visibility) and user directory search.

use std::{collections::BTreeSet, sync::Arc};

use axum::extract::State;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::Visibility,
        user_directory::search_users,
    },
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::room::member::MembershipState,
    room::JoinRuleKind,
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

const DEFAULT_LIMIT: usize = 30;
const MAX_LIMIT: usize = 500;

/// The directory entry for a room, from its current state.
fn chunk(services: &Services, room_id: &RoomId) -> Result<PublicRoomsChunk> {
    let facts = services.rooms.facts(room_id)?;
    let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::new(facts.joined_members).unwrap_or_default(),
        room_id: facts.room_id,
        world_readable: facts.world_readable,
        guest_can_join: facts.guest_can_join,
    }
    .into();
    chunk.name = facts.name;
    chunk.topic = facts.topic;
    chunk.canonical_alias = facts.canonical_alias;
    chunk.avatar_url = facts.avatar_url.map(Into::into);
    chunk.join_rule = facts.join_rule.map_or(JoinRuleKind::Public, |rule| {
        JoinRuleKind::from(rule.as_str())
    });
    Ok(chunk)
}

/// One page of the directory.
struct Page {
    chunk: Vec<PublicRoomsChunk>,
    next: Option<String>,
    prev: Option<String>,
    total: usize,
}

/// Published rooms matching `term`, largest first, paged by offset tokens.
fn page(
    services: &Services,
    term: Option<&str>,
    limit: Option<UInt>,
    since: Option<&str>,
) -> Result<Page> {
    let term = term.map(str::to_lowercase).filter(|t| !t.is_empty());
    let mut all = Vec::new();
    for room_id in services.rooms.aliases.public_rooms()? {
        let Ok(chunk) = chunk(services, &room_id) else {
            continue;
        };
        let matches = term.as_deref().is_none_or(|term| {
            [
                chunk.name.as_deref(),
                chunk.topic.as_deref(),
                chunk.canonical_alias.as_ref().map(|a| a.as_str()),
            ]
            .into_iter()
            .flatten()
            .any(|text| text.to_lowercase().contains(term))
        });
        if matches {
            all.push(chunk);
        }
    }
    all.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then(a.room_id.cmp(&b.room_id))
    });
    let total = all.len();
    let offset = match since {
        Some(token) => token
            .strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::invalid_param("Invalid since token."))?,
        None => 0,
    };
    let limit = limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let chunk: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
    let next = (offset + chunk.len() < total).then(|| format!("n{}", offset + chunk.len()));
    let prev = (offset > 0).then(|| format!("n{}", offset.saturating_sub(limit)));
    Ok(Page {
        chunk,
        next,
        prev,
        total,
    })
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms(
    State(services): State<Arc<Services>>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<RumaResponse<get_public_rooms::v3::Response>> {
    let body = &request.body;
    let Page {
        chunk,
        next,
        prev,
        total,
    } = page(&services, None, body.limit, body.since.as_deref())?;
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::new(total as u64);
    Ok(RumaResponse(response))
}

/// `POST /_matrix/client/v3/publicRooms`, with `filter.generic_search_term`.
pub async fn get_public_rooms_filtered(
    State(services): State<Arc<Services>>,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<RumaResponse<get_public_rooms_filtered::v3::Response>> {
    let body = &request.body;
    let term = body.filter.generic_search_term.as_deref();
    let Page {
        chunk,
        next,
        prev,
        total,
    } = page(&services, term, body.limit, body.since.as_deref())?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = UInt::new(total as u64);
    Ok(RumaResponse(response))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility(
    State(services): State<Arc<Services>>,
    request: Ruma<get_room_visibility::v3::Request>,
) -> Result<RumaResponse<get_room_visibility::v3::Response>> {
    services.rooms.existing(&request.body.room_id)?;
    let public = services.rooms.aliases.is_public(&request.body.room_id)?;
    let visibility = if public {
        Visibility::Public
    } else {
        Visibility::Private
    };
    Ok(RumaResponse(get_room_visibility::v3::Response::new(
        visibility,
    )))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`: needs the power to change the
/// room's state events (`state_default`) or server admin.
pub async fn set_room_visibility(
    State(services): State<Arc<Services>>,
    request: Ruma<set_room_visibility::v3::Request>,
) -> Result<RumaResponse<set_room_visibility::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let info = services.rooms.existing(&body.room_id)?;
    let state = services.rooms.current_state(&info)?;
    let level = services.rooms.power_level(&body.room_id, &state, sender)?;
    let needed = services.rooms.required_level(&state, "state_default", 50)?;
    let admin = services
        .users
        .account(sender)?
        .is_some_and(|account| account.admin);
    if level < needed && !admin {
        return Err(Error::forbidden("You may not publish this room."));
    }
    services
        .rooms
        .aliases
        .set_public(&body.room_id, body.visibility == Visibility::Public)
        .await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}

/// Users `searcher` may find: those sharing a room with them, and members of public rooms
/// (client-server API, "User directory").
fn visible_users(services: &Services, searcher: &UserId) -> Result<BTreeSet<OwnedUserId>> {
    let mut rooms: BTreeSet<OwnedRoomId> = services
        .rooms
        .rooms_of(searcher)?
        .into_iter()
        .filter(|(_, entry)| entry.membership == MembershipState::Join)
        .map(|(room, _)| room)
        .collect();
    rooms.extend(services.rooms.aliases.public_rooms()?);
    let mut users = BTreeSet::new();
    for room in rooms {
        for (user, membership) in services.rooms.members(&room)? {
            if membership == MembershipState::Join {
                users.insert(user);
            }
        }
    }
    Ok(users)
}

/// `POST /_matrix/client/v3/user_directory/search`
pub async fn search_users(
    State(services): State<Arc<Services>>,
    request: Ruma<search_users::v3::Request>,
) -> Result<RumaResponse<search_users::v3::Response>> {
    let (sender, _) = request.sender()?;
    let term = request.body.search_term.to_lowercase();
    let limit = usize::try_from(request.body.limit)
        .unwrap_or(10)
        .clamp(1, 50);
    let mut results = Vec::new();
    let mut limited = false;
    for user_id in visible_users(&services, sender)? {
        let profile = services.users.profile(&user_id)?.unwrap_or_default();
        let name = profile
            .get("displayname")
            .and_then(JsonValue::as_str)
            .map(str::to_owned);
        let hit = user_id.as_str().to_lowercase().contains(&term)
            || name
                .as_deref()
                .is_some_and(|name| name.to_lowercase().contains(&term));
        if !hit {
            continue;
        }
        if results.len() == limit {
            limited = true;
            break;
        }
        let mut user = search_users::v3::User::new(user_id);
        user.display_name = name;
        user.avatar_url = profile
            .get("avatar_url")
            .and_then(JsonValue::as_str)
            .map(Into::into);
        results.push(user);
    }
    Ok(RumaResponse(search_users::v3::Response::new(
        results, limited,
    )))
}
