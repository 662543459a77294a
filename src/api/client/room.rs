//! Rooms: `createRoom`, `GET /rooms/{roomId}/event/{eventId}`, `joined_rooms`,
//! `timestamp_to_event`.

use std::sync::Arc;

use axum::extract::State;
use ruma::{
    OwnedRoomAliasId, RoomId, RoomVersionId, UserId,
    api::{
        client::{
            membership::joined_rooms,
            room::{
                Visibility, create_room, get_event_by_timestamp, get_room_event, report_content,
                report_room, upgrade_room,
            },
        },
        error::ErrorKind,
    },
};
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{
        Services,
        rooms::{
            append::supported_room_version,
            create::{CreateRoom, Preset},
            membership::MemberProfile,
            pos::Pos,
        },
    },
};

/// Rooms are created in version 12 unless the client asks otherwise (as current Synapse).
pub const DEFAULT_ROOM_VERSION: RoomVersionId = RoomVersionId::V12;

/// The display name and avatar to copy into `user_id`'s member events.
pub fn member_profile(services: &Services, user_id: &UserId) -> Result<MemberProfile> {
    let profile = services.users.profile(user_id)?.unwrap_or_default();
    let text = |key: &str| {
        profile
            .get(key)
            .and_then(JsonValue::as_str)
            .map(str::to_owned)
    };
    Ok(MemberProfile {
        displayname: text("displayname"),
        avatar_url: text("avatar_url"),
    })
}

/// A history-visibility checker for `user_id`, or 403 if they may not read the room at all
/// (never a member, and not world-readable).
pub fn reader<'a>(
    services: &'a Services,
    room_id: &RoomId,
    user_id: &'a UserId,
) -> Result<crate::service::rooms::visibility::Visibility<'a>> {
    let mut visibility = services.rooms.visibility(room_id, user_id)?;
    if visibility.may_enter(room_id)? {
        Ok(visibility)
    } else {
        Err(Error::forbidden("You are not a member of this room."))
    }
}

/// [`reader`] for endpoints about one event (`/event`, `/relations`), whose spec answers 404
/// "not found or you do not have permission" alike: a room the user may not read gives
/// nothing away either.
pub fn event_reader<'a>(
    services: &'a Services,
    room_id: &RoomId,
    user_id: &'a UserId,
) -> Result<crate::service::rooms::visibility::Visibility<'a>> {
    match reader(services, room_id, user_id) {
        Err(error) if error.status() == http::StatusCode::FORBIDDEN => {
            Err(Error::not_found("Event not found."))
        }
        other => other,
    }
}

/// The state `user_id` may read in the room (see `Rooms::readable_state`), or 403
/// "You aren't a member of the room and weren't previously a member of the room".
pub fn readable_state(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<crate::service::rooms::state::StateHash> {
    services
        .rooms
        .readable_state(room_id, user_id)?
        .ok_or_else(|| Error::forbidden("You are not and were not a member of this room."))
}

/// Refuses unless `user_id` is joined to the room: for sending, and for the state and
/// member listings (which do not yet serve non-members of world-readable rooms). Reading
/// events goes through [`reader`] and history visibility instead.
pub fn require_joined(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<()> {
    if services.rooms.is_joined(room_id, user_id)? {
        Ok(())
    } else {
        Err(Error::forbidden("You are not a member of this room."))
    }
}

fn object(raw: &serde_json::value::RawValue, what: &str) -> Result<Map<String, JsonValue>> {
    match serde_json::from_str(raw.get()) {
        Ok(JsonValue::Object(map)) => Ok(map),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object."))),
    }
}

/// `POST /_matrix/client/v3/createRoom`
pub async fn create_room(
    State(services): State<Arc<Services>>,
    request: Ruma<create_room::v3::Request>,
) -> Result<RumaResponse<create_room::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let version = body.room_version.clone().unwrap_or(DEFAULT_ROOM_VERSION);
    if !supported_room_version(&version) {
        return Err(Error::new(
            ErrorKind::UnsupportedRoomVersion,
            "This room version is not supported.",
        ));
    }
    let preset = match body.preset.as_ref().map(|preset| preset.as_str()) {
        Some("private_chat") => Preset::PrivateChat,
        Some("trusted_private_chat") => Preset::TrustedPrivateChat,
        Some("public_chat") => Preset::PublicChat,
        Some(other) => return Err(Error::bad_json(format!("Unknown preset {other}."))),
        // Spec: without a preset, visibility decides.
        None if body.visibility == Visibility::Public => Preset::PublicChat,
        None => Preset::PrivateChat,
    };
    let alias = match &body.room_alias_name {
        Some(name) => {
            if name.is_empty() || name.contains([':', '#', ' ']) {
                return Err(Error::new(
                    ErrorKind::InvalidParam,
                    "Invalid room_alias_name.",
                ));
            }
            let alias = format!("#{name}:{}", services.config.server_name);
            // Appendices, "Room aliases": at most 255 bytes, sigil and domain included.
            if alias.len() > 255 {
                return Err(Error::invalid_param(
                    "The room alias is longer than 255 bytes.",
                ));
            }
            Some(
                OwnedRoomAliasId::try_from(alias)
                    .map_err(|_| Error::invalid_param("Invalid room_alias_name."))?,
            )
        }
        None => None,
    };
    let mut initial_state = Vec::new();
    for event in &body.initial_state {
        let event = object(event.json(), "initial_state events")?;
        let kind = event
            .get("type")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event without type."))?;
        let state_key = event
            .get("state_key")
            .and_then(JsonValue::as_str)
            .unwrap_or("");
        let content = event
            .get("content")
            .cloned()
            .unwrap_or(JsonValue::Object(Map::new()));
        initial_state.push((kind.to_owned(), state_key.to_owned(), content));
    }
    for invitee in &body.invite {
        if !services.users.is_local(invitee) {
            // Refused before the room exists when federation is off.
            services
                .federation
                .reach(invitee.server_name(), &format!("inviting {invitee}"))?;
            continue;
        }
        if !services.users.exists(invitee)? {
            return Err(Error::not_found(format!("Unknown user {invitee}.")));
        }
    }
    let options = CreateRoom {
        version,
        preset,
        creation_content: match &body.creation_content {
            Some(raw) => object(raw.json(), "creation_content")?,
            None => Map::new(),
        },
        power_level_content_override: match &body.power_level_content_override {
            Some(raw) => Some(object(raw.json(), "power_level_content_override")?),
            None => None,
        },
        alias,
        initial_state,
        name: body.name.clone(),
        topic: body.topic.clone(),
        invite: body.invite.clone(),
        is_direct: body.is_direct,
        publish: body.visibility == Visibility::Public,
    };
    let profile = member_profile(&services, sender)?;
    let room_id = services.rooms.create_room(sender, profile, options).await?;
    tracing::info!(%room_id, creator = %sender, "room created");
    // Other servers' users: each invite is signed by their server first. One that fails
    // does not undo the room (as Synapse: the room exists; the invite is logged).
    for invitee in body
        .invite
        .iter()
        .filter(|user| !services.users.is_local(user))
    {
        let content = json!({ "membership": "invite", "is_direct": body.is_direct });
        match services
            .invite_remote(&room_id, sender, invitee, content)
            .await
        {
            Ok(pdu) => services.count_notifications(&pdu).await,
            Err(error) => tracing::warn!(%room_id, %invitee, %error, "remote invite failed"),
        }
    }
    Ok(RumaResponse(create_room::v3::Response::new(room_id)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event(
    State(services): State<Arc<Services>>,
    request: Ruma<get_room_event::v3::Request>,
) -> Result<RumaResponse<get_room_event::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    // Spec: 404 "The event was not found or you do not have permission to read this event",
    // alike for a room the user cannot read at all: nothing tells that the event exists.
    let not_found = || Error::not_found("Event not found.");
    let mut visibility = event_reader(&services, &body.room_id, sender)?;
    let pdu = services
        .rooms
        .client_pdu(&body.event_id)?
        .filter(|pdu| pdu.room_id() == body.room_id)
        .ok_or_else(not_found)?;
    let pos = services.rooms.pos_of(&body.event_id)?.unwrap_or(Pos::MIN);
    if !visibility.can_see(pos, &pdu)? {
        return Err(not_found());
    }
    Ok(RumaResponse(get_room_event::v3::Response::new(
        services.rooms.room_event(&pdu, sender)?,
    )))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`: the closest event the caller
/// may see in the asked direction, asking other servers in the room when what we hold ends
/// there (`service::federation::timestamp`), or `404 M_NOT_FOUND`; `403` for a room they
/// may not read.
pub async fn get_event_by_timestamp(
    State(services): State<Arc<Services>>,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let ts = u64::from(body.ts.get());
    let local = {
        let mut visibility = reader(&services, &body.room_id, sender)?;
        services
            .rooms
            .event_at_timestamp(&body.room_id, ts, body.dir, &mut visibility)?
    };
    let (event_id, origin_server_ts) = services
        .timestamp_to_event(&body.room_id, ts, body.dir, local)
        .await?;
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(
        event_id,
        origin_server_ts,
    )))
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(
    State(services): State<Arc<Services>>,
    request: Ruma<joined_rooms::v3::Request>,
) -> Result<RumaResponse<joined_rooms::v3::Response>> {
    let (sender, _) = request.sender()?;
    let rooms = services
        .rooms
        .rooms_of(sender)?
        .into_iter()
        .filter(|(_, entry)| entry.membership == ruma::events::room::member::MembershipState::Join)
        .map(|(room_id, _)| room_id)
        .collect();
    Ok(RumaResponse(joined_rooms::v3::Response::new(rooms)))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`: 404 for an event the reporter
/// cannot see, so reports do not reveal what exists.
pub async fn report_content(
    State(services): State<Arc<Services>>,
    request: Ruma<report_content::v3::Request>,
) -> Result<RumaResponse<report_content::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let not_found = || Error::not_found("Event not found.");
    let mut visibility = reader(&services, &body.room_id, sender).map_err(|_| not_found())?;
    let pdu = services
        .rooms
        .client_pdu(&body.event_id)?
        .filter(|pdu| pdu.room_id() == body.room_id)
        .ok_or_else(not_found)?;
    let pos = services.rooms.pos_of(&body.event_id)?.unwrap_or(Pos::MIN);
    if !visibility.can_see(pos, &pdu)? {
        return Err(not_found());
    }
    services
        .rooms
        .report(
            sender,
            &body.room_id,
            Some(&body.event_id),
            body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(report_content::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`
pub async fn report_room(
    State(services): State<Arc<Services>>,
    request: Ruma<report_room::v3::Request>,
) -> Result<RumaResponse<report_room::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    services.rooms.existing(&body.room_id)?;
    services
        .rooms
        .report(sender, &body.room_id, None, Some(&body.reason))
        .await?;
    Ok(RumaResponse(report_room::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
pub async fn upgrade_room(
    State(services): State<Arc<Services>>,
    request: Ruma<upgrade_room::v3::Request>,
) -> Result<RumaResponse<upgrade_room::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    require_joined(&services, &body.room_id, sender)?;
    if !supported_room_version(&body.new_version) {
        return Err(Error::new(
            ErrorKind::UnsupportedRoomVersion,
            "This room version is not supported.",
        ));
    }
    let profile = member_profile(&services, sender)?;
    let new_room = services
        .rooms
        .upgrade(
            &body.room_id,
            sender,
            profile,
            body.new_version.clone(),
            body.additional_creators.clone(),
        )
        .await?;
    tracing::info!(old = %body.room_id, new = %new_room, "room upgraded");
    Ok(RumaResponse(upgrade_room::v3::Response::new(new_room)))
}
