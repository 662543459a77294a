//! Membership: join (by id, by id or alias), invite, leave, forget, kick, ban, unban, knock,
//! and the member lists (`joined_members`, `members`).

use std::{collections::BTreeMap, sync::Arc};

use axum::extract::State;
use ruma::{
    OwnedRoomId, OwnedRoomOrAliasId, OwnedServerName, RoomId,
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
            join_room_by_id_or_alias, joined_members, kick_user, leave_room, unban_user,
        },
    },
    events::{StateEventType, room::member::MembershipState},
};

use super::room::{member_profile, readable_state, require_joined};
use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::{
        Services,
        rooms::{membership::MemberProfile, pos::Pos},
    },
};

/// A room id, or the room an alias points at (asking the alias's server for another
/// server's alias), with the servers known to be in it.
async fn resolve(
    services: &Services,
    target: &OwnedRoomOrAliasId,
    via: &[OwnedServerName],
) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    match OwnedRoomId::try_from(target.as_str()) {
        Ok(room_id) => {
            let mut servers = via.to_vec();
            if servers.is_empty()
                && let Some(server) = room_id.server_name()
            {
                servers.push(server.to_owned());
            }
            Ok((room_id, servers))
        }
        Err(_) => {
            let alias = ruma::OwnedRoomAliasId::try_from(target.as_str())
                .map_err(|_| Error::invalid_param("Not a room id or alias."))?;
            if alias.server_name() != services.config.server_name {
                return services.federation.alias(&alias).await;
            }
            let room_id = services
                .rooms
                .aliases
                .resolve_local(&alias)?
                .ok_or_else(|| Error::not_found("Room alias not found."))?;
            Ok((room_id, Vec::new()))
        }
    }
}

/// A room this server is not in and cannot reach through another server (see
/// [`through_others`]): with federation off, an error naming the first of `servers`; a
/// room with no other server known is unknown (404).
fn remote_room(
    services: &Services,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    what: &str,
) -> Result<()> {
    if services.rooms.info(room_id)?.is_some() {
        return Ok(());
    }
    match servers
        .iter()
        .find(|server| **server != services.config.server_name)
    {
        Some(server) => Err(services
            .federation
            .not_yet(server, &format!("{what} {room_id}"))),
        None => Err(Error::not_found("No known room with this id.")),
    }
}

/// Whether `room_id` is a room this server is not in and may reach through one of
/// `servers`.
fn through_others(
    services: &Services,
    room_id: &RoomId,
    servers: &[OwnedServerName],
) -> Result<bool> {
    Ok(services.rooms.info(room_id)?.is_none()
        && services.federation.enabled()
        && servers
            .iter()
            .any(|server| *server != services.config.server_name))
}

async fn join(
    services: &Services,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    user: &ruma::UserId,
    reason: Option<&str>,
) -> Result<()> {
    let profile = member_profile(services, user)?;
    // Accepting an invite from another server: through the inviting server first, then
    // the others named (client-server API, "Room membership"; S2S "Joining Rooms").
    if let Some(invite) = services.rooms.pending_remote_invite(room_id, user)? {
        let mut candidates = vec![invite.sender().server_name().to_owned()];
        for server in servers {
            if !candidates.contains(server) {
                candidates.push(server.clone());
            }
        }
        services
            .join_remote(
                room_id,
                &candidates,
                user,
                profile.content("join", reason, false),
            )
            .await?;
        return services.rooms.drop_remote_invite(room_id, user);
    }
    // A room this server is not in: through one of the servers that are.
    if through_others(services, room_id, servers)? {
        return services
            .join_remote(
                room_id,
                servers,
                user,
                profile.content("join", reason, false),
            )
            .await;
    }
    remote_room(services, room_id, servers, "joining")?;
    services.rooms.join(room_id, user, &profile, reason).await?;
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id(
    State(services): State<Arc<Services>>,
    request: Ruma<join_room_by_id::v3::Request>,
) -> Result<RumaResponse<join_room_by_id::v3::Response>> {
    let (sender, _) = request.sender()?;
    let room_id = &request.body.room_id;
    let servers: Vec<OwnedServerName> = room_id
        .server_name()
        .map(ToOwned::to_owned)
        .into_iter()
        .collect();
    join(
        &services,
        room_id,
        &servers,
        sender,
        request.body.reason.as_deref(),
    )
    .await?;
    Ok(RumaResponse(join_room_by_id::v3::Response::new(
        request.body.room_id.clone(),
    )))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
pub async fn join_room_by_id_or_alias(
    State(services): State<Arc<Services>>,
    request: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<RumaResponse<join_room_by_id_or_alias::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let (room_id, servers) = resolve(&services, &body.room_id_or_alias, &body.via).await?;
    join(
        &services,
        &room_id,
        &servers,
        sender,
        body.reason.as_deref(),
    )
    .await?;
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(
        room_id,
    )))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user(
    State(services): State<Arc<Services>>,
    request: Ruma<invite_user::v3::Request>,
) -> Result<RumaResponse<invite_user::v3::Response>> {
    let (sender, _) = request.sender()?;
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &request.body.recipient else {
        return Err(Error::forbidden("Third-party invites are not supported."));
    };
    let target = &recipient.user_id;
    if !services.users.is_local(target) {
        // Another server's user: their server signs the invite first.
        let content =
            MemberProfile::default().content("invite", recipient.reason.as_deref(), false);
        let pdu = services
            .invite_remote(&request.body.room_id, sender, target, content)
            .await?;
        services.count_notifications(&pdu).await;
        return Ok(RumaResponse(invite_user::v3::Response::new()));
    }
    if !services.users.exists(target)? {
        return Err(Error::not_found("Unknown user."));
    }
    let profile = member_profile(&services, target)?;
    let pdu = services
        .rooms
        .invite(
            &request.body.room_id,
            sender,
            target,
            &profile,
            recipient.reason.as_deref(),
            false,
        )
        .await?;
    services.count_notifications(&pdu).await;
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(
    State(services): State<Arc<Services>>,
    request: Ruma<leave_room::v3::Request>,
) -> Result<RumaResponse<leave_room::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    // An invite from another server to a room not held here: rejected through that server
    // (S2S "Leaving Rooms (Rejecting Invites)").
    if services
        .rooms
        .pending_remote_invite(&body.room_id, sender)?
        .is_some()
    {
        services
            .reject_remote_invite(&body.room_id, sender, body.reason.as_deref())
            .await?;
        return Ok(RumaResponse(leave_room::v3::Response::new()));
    }
    // A knock through another server on a room not held here: taken back the same way.
    if services
        .rooms
        .outside_knock(&body.room_id, sender)?
        .is_some()
    {
        services
            .retract_remote_knock(&body.room_id, sender, body.reason.as_deref())
            .await?;
        return Ok(RumaResponse(leave_room::v3::Response::new()));
    }
    services
        .rooms
        .leave(&body.room_id, sender, sender, body.reason.as_deref())
        .await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room(
    State(services): State<Arc<Services>>,
    request: Ruma<forget_room::v3::Request>,
) -> Result<RumaResponse<forget_room::v3::Response>> {
    let (sender, _) = request.sender()?;
    services.rooms.forget(&request.body.room_id, sender).await?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick_user(
    State(services): State<Arc<Services>>,
    request: Ruma<kick_user::v3::Request>,
) -> Result<RumaResponse<kick_user::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    services
        .rooms
        .leave(&body.room_id, sender, &body.user_id, body.reason.as_deref())
        .await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user(
    State(services): State<Arc<Services>>,
    request: Ruma<ban_user::v3::Request>,
) -> Result<RumaResponse<ban_user::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    services
        .rooms
        .ban(&body.room_id, sender, &body.user_id, body.reason.as_deref())
        .await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban_user(
    State(services): State<Arc<Services>>,
    request: Ruma<unban_user::v3::Request>,
) -> Result<RumaResponse<unban_user::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    services
        .rooms
        .unban(&body.room_id, sender, &body.user_id, body.reason.as_deref())
        .await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`
pub async fn knock_room(
    State(services): State<Arc<Services>>,
    request: Ruma<knock_room::v3::Request>,
) -> Result<RumaResponse<knock_room::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let (room_id, servers) = resolve(&services, &body.room_id_or_alias, &body.via).await?;
    let profile = member_profile(&services, sender)?;
    if through_others(&services, &room_id, &servers)? {
        services
            .member_remote(
                &room_id,
                &servers,
                sender,
                profile.content("knock", body.reason.as_deref(), false),
                MembershipState::Knock,
            )
            .await?;
        return Ok(RumaResponse(knock_room::v3::Response::new(room_id)));
    }
    remote_room(&services, &room_id, &servers, "knocking on")?;
    services
        .rooms
        .knock(&room_id, sender, &profile, request.body.reason.as_deref())
        .await?;
    Ok(RumaResponse(knock_room::v3::Response::new(room_id)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members(
    State(services): State<Arc<Services>>,
    request: Ruma<joined_members::v3::Request>,
) -> Result<RumaResponse<joined_members::v3::Response>> {
    let (sender, _) = request.sender()?;
    let room_id = &request.body.room_id;
    require_joined(&services, room_id, sender)?;
    let mut joined = BTreeMap::new();
    for (user_id, membership) in services.rooms.members(room_id)? {
        if membership != MembershipState::Join {
            continue;
        }
        let mut member = joined_members::v3::RoomMember::new();
        if let Some(event) = services.rooms.current_state_event(
            room_id,
            &"m.room.member".into(),
            user_id.as_str(),
        )? {
            member.display_name = event.content_str("displayname");
            member.avatar_url = event.content_str("avatar_url").map(Into::into);
        }
        joined.insert(user_id, member);
    }
    Ok(RumaResponse(joined_members::v3::Response::new(joined)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`, with `membership` and `not_membership`
/// filters, at the current state or, with `at` (a sync or pagination token), at that point.
pub async fn get_member_events(
    State(services): State<Arc<Services>>,
    request: Ruma<get_member_events::v3::Request>,
) -> Result<RumaResponse<get_member_events::v3::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    let readable = readable_state(&services, &body.room_id, sender)?;
    let rooms = &services.rooms;
    let info = rooms.existing(&body.room_id)?;
    let hash = match body.at.as_deref() {
        // A former member sees the members as they left them, whatever `at` says.
        _ if readable != info.state_hash => readable,
        Some(token) => {
            // A sync token (a stream position) or a pagination token: both name the
            // boundary before that timeline position.
            let at: Pos = token
                .parse()
                .map_err(|_| Error::invalid_param("Invalid `at` token."))?;
            match rooms.events_before(&info, at, 1)?.first() {
                Some((_, last)) => rooms
                    .state_hashes(&last.event_id)?
                    .map(|(_, after)| after)
                    .unwrap_or(info.state_hash),
                None => info.state_hash,
            }
        }
        None => info.state_hash,
    };
    let state = rooms.state.load(hash)?;
    let mut chunk = Vec::new();
    for (short_key, short_event) in state.iter() {
        let (kind, _) = rooms.short.state_key(*short_key)?;
        if kind != StateEventType::RoomMember {
            continue;
        }
        let Some(event) = rooms.pdu(&rooms.short.event_id(*short_event)?)? else {
            continue;
        };
        let membership =
            MembershipState::from(event.content_str("membership").unwrap_or_default().as_str());
        if body
            .membership
            .as_ref()
            .is_some_and(|wanted| *wanted != membership)
            || body
                .not_membership
                .as_ref()
                .is_some_and(|unwanted| *unwanted == membership)
        {
            continue;
        }
        chunk.push(event.to_state_event().cast_unchecked());
    }
    Ok(RumaResponse(get_member_events::v3::Response::new(chunk)))
}
