//! Spaces: `GET /rooms/{roomId}/hierarchy` (client-server API, "Spaces"), over the rooms
//! this server knows, breadth first along `m.space.child` state events.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use axum::extract::State;
use ruma::{
    OwnedRoomId, RoomId, UInt, UserId,
    api::client::space::{SpaceHierarchyRoomsChunk, get_hierarchy},
    events::{StateEventType, room::member::MembershipState},
    room::{JoinRule, JoinRuleKind, JoinRuleSummary, RoomSummary},
    serde::Raw,
};
use serde_json::json;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse},
    service::Services,
};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// The walk stops after this many rooms, whatever the space looks like.
const MAX_ROOMS: usize = 1_000;

/// A room `user` may see in a hierarchy: they are in it, or anyone could join or peek.
fn may_see(services: &Services, room_id: &RoomId, user: &UserId) -> Result<bool> {
    if services.rooms.info(room_id)?.is_none() {
        return Ok(false);
    }
    if matches!(
        services.rooms.membership(room_id, user)?,
        Some(MembershipState::Join | MembershipState::Invite)
    ) {
        return Ok(true);
    }
    let field = |kind: StateEventType, key: &str| -> Result<Option<String>> {
        Ok(services
            .rooms
            .current_state_event(room_id, &kind, "")?
            .and_then(|event| event.content_str(key)))
    };
    Ok(
        field(StateEventType::RoomJoinRules, "join_rule")?.as_deref() == Some("public")
            || field(StateEventType::RoomHistoryVisibility, "history_visibility")?.as_deref()
                == Some("world_readable"),
    )
}

/// The room's join rule as the summary shows it, with `allowed_room_ids` for a restricted
/// room (spec: `GET /hierarchy`). A rule this server gives no meaning to (any string is valid
/// in `m.room.join_rules`) lets no one join, as the auth rules say; ruma cannot write such a
/// rule back out, so it is shown as `private`, the spec's rule reserved with no meaning.
fn join_rule_summary(services: &Services, room_id: &RoomId) -> Result<JoinRuleSummary> {
    let content = services
        .rooms
        .current_state_event(room_id, &StateEventType::RoomJoinRules, "")?
        .map(|event| event.content_value());
    let summary = match content {
        // A room without join rules is invite-only (spec: auth rules, m.room.join_rules).
        None => JoinRuleSummary::Invite,
        Some(content) => match serde_json::from_value::<JoinRule>(content.clone()) {
            Ok(rule) => JoinRuleSummary::from(rule),
            // A known rule with a malformed extra field (a restricted rule's `allow`).
            Err(_) => JoinRuleSummary::from(JoinRuleKind::from(
                content["join_rule"].as_str().unwrap_or_default(),
            )),
        },
    };
    Ok(match summary.kind() {
        JoinRuleKind::Invite
        | JoinRuleKind::Knock
        | JoinRuleKind::Private
        | JoinRuleKind::Restricted
        | JoinRuleKind::KnockRestricted
        | JoinRuleKind::Public => summary,
        _ => JoinRuleSummary::Private,
    })
}

fn chunk(
    services: &Services,
    room_id: &RoomId,
    suggested_only: bool,
) -> Result<(SpaceHierarchyRoomsChunk, Vec<OwnedRoomId>)> {
    let rooms = &services.rooms;
    let facts = rooms.facts(room_id)?;
    let mut summary = RoomSummary::new(
        room_id.to_owned(),
        join_rule_summary(services, room_id)?,
        facts.guest_can_join,
        UInt::new(facts.joined_members).unwrap_or_default(),
        facts.world_readable,
    );
    summary.name = facts.name;
    summary.topic = facts.topic;
    summary.canonical_alias = facts.canonical_alias;
    summary.avatar_url = facts.avatar_url.map(Into::into);
    summary.room_type = facts.room_type.map(|t| t.as_str().into());
    summary.room_version = Some(facts.version);
    let state = rooms.current_state(&rooms.existing(room_id)?)?;

    let mut children_state = Vec::new();
    let mut children = Vec::new();
    for pdu in rooms.state_events(&state)? {
        if pdu.kind.to_string() != "m.space.child" {
            continue;
        }
        let content = pdu.content_value();
        // A child without `via` has been removed (spec: m.space.child).
        let has_via = content["via"].as_array().is_some_and(|via| !via.is_empty());
        let suggested = content["suggested"].as_bool().unwrap_or(false);
        let Some(child) = pdu
            .state_key
            .as_deref()
            .and_then(|key| OwnedRoomId::try_from(key).ok())
        else {
            continue;
        };
        if !has_via || (suggested_only && !suggested) {
            continue;
        }
        let event = json!({
            "type": "m.space.child",
            "state_key": child,
            "content": content,
            "sender": pdu.sender,
            "origin_server_ts": pdu.origin_server_ts,
        });
        children_state.push(Raw::from_json(
            serde_json::value::to_raw_value(&event).expect("JSON serialises"),
        ));
        children.push(child);
    }
    Ok((
        SpaceHierarchyRoomsChunk::new(summary, children_state),
        children,
    ))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
pub async fn get_hierarchy(
    State(services): State<Arc<Services>>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<RumaResponse<get_hierarchy::v1::Response>> {
    let (sender, _) = request.sender()?;
    let body = &request.body;
    if !may_see(&services, &body.room_id, sender)? {
        return Err(Error::forbidden("You cannot see this room."));
    }
    let limit = body
        .limit
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let max_depth = body
        .max_depth
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(usize::MAX);
    let offset = match body.from.as_deref() {
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| Error::invalid_param("Invalid from token."))?,
        None => 0,
    };

    let mut chunks = Vec::new();
    let mut seen = HashSet::from([body.room_id.clone()]);
    let mut queue = VecDeque::from([(body.room_id.clone(), 0usize)]);
    while let Some((room_id, depth)) = queue.pop_front() {
        if chunks.len() >= MAX_ROOMS || chunks.len() > offset + limit {
            break;
        }
        let (chunk, children) = chunk(&services, &room_id, body.suggested_only)?;
        chunks.push(chunk);
        if depth < max_depth {
            for child in children {
                if seen.insert(child.clone()) && may_see(&services, &child, sender)? {
                    queue.push_back((child, depth + 1));
                }
            }
        }
    }
    let more = chunks.len() > offset + limit;
    let rooms: Vec<_> = chunks.into_iter().skip(offset).take(limit).collect();
    let mut response = get_hierarchy::v1::Response::new();
    response.next_batch = more.then(|| (offset + limit).to_string());
    response.rooms = rooms;
    Ok(RumaResponse(response))
}
