//! The public room directory (`publicRooms`, per-room visibility) and user directory search.

use std::{collections::BTreeSet, sync::Arc};

use axum::extract::State;
use ruma::{
    OwnedRoomId, OwnedUserId, UInt, UserId,
    api::client::{
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::Visibility,
        user_directory::search_users,
    },
    events::room::member::MembershipState,
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{Services, rooms::directory::DirectoryQuery},
};

/// `GET /_matrix/client/v3/publicRooms` (`server`: another server's, over federation)
pub async fn get_public_rooms(
    State(services): State<Arc<Services>>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<RumaResponse<get_public_rooms::v3::Response>> {
    let body = &request.body;
    let query = DirectoryQuery {
        limit: body.limit,
        since: body.since.as_deref(),
        ..DirectoryQuery::default()
    };
    let page = services
        .public_rooms(body.server.as_deref(), &query)
        .await?;
    let mut response = get_public_rooms::v3::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::new(page.total as u64);
    Ok(RumaResponse(response))
}

/// `POST /_matrix/client/v3/publicRooms`, with `filter` (search term, room types) and the
/// network (`server`: another server's, over federation).
pub async fn get_public_rooms_filtered(
    State(services): State<Arc<Services>>,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<RumaResponse<get_public_rooms_filtered::v3::Response>> {
    let body = &request.body;
    let query = DirectoryQuery {
        limit: body.limit,
        since: body.since.as_deref(),
        filter: Some(&body.filter),
        network: Some(&body.room_network),
    };
    let page = services
        .public_rooms(body.server.as_deref(), &query)
        .await?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::new(page.total as u64);
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
