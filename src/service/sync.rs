//! `/sync` (client-server API, "Syncing"): what changed for a user since a token.
//!
//! Tokens are stream positions (see `Stream::position`): `since = T` asks for everything
//! from position `T` on, and `next_batch` is one past the current stream position. When
//! the notifier shows nothing has concerned the user since `T`, the answer is built without
//! reading a single room. A long-poll waits on the notifier, armed before the check, so an
//! event arriving in between still wakes it.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::{
    DeviceId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::sync::sync_events::v3::{
        InviteState, InvitedRoom, JoinedRoom, LeftRoom, Response, RoomSummary, State, StateEvents,
        Timeline,
    },
    events::{AnyRoomAccountDataEvent, StateEventType, room::member::MembershipState},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::{
    Services,
    rooms::{MembershipEntry, RoomInfo, pdu::Pdu},
};
use crate::Result;

/// What a client asked for.
pub struct SyncRequest<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a DeviceId,
    pub since: Option<u64>,
    pub full_state: bool,
    pub timeline_limit: usize,
    pub timeout: Duration,
    /// Lazy-loaded members (client-server API, "Lazy-loading room members"): `state` holds
    /// only the member events of the timeline's senders and the user's own. They are sent each
    /// time (the spec allows redundant members), not tracked per device.
    pub lazy_members: bool,
}

/// State an invitee sees (client-server API, "Stripped state").
const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

pub async fn sync(services: &Arc<Services>, request: SyncRequest<'_>) -> Result<Response> {
    let handle = services.stream.notifier.handle(request.user_id);
    let notified = handle.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();

    let mut response = build(services, &request)?;
    add_to_device(services, &request, &mut response).await?;
    add_key_counts(services, &request, &mut response)?;
    if request.since.is_none() || request.timeout.is_zero() || !is_empty(&response) {
        return Ok(response);
    }
    if tokio::time::timeout(request.timeout, notified)
        .await
        .is_err()
    {
        return Ok(response);
    }
    let mut response = build(services, &request)?;
    add_to_device(services, &request, &mut response).await?;
    add_key_counts(services, &request, &mut response)?;
    Ok(response)
}

/// The syncing device's unclaimed one-time keys per algorithm and its unused fallback key
/// types (client-server API, "Extensions to /sync"): clients top their keys up from these.
/// Not a reason to answer an empty long-poll early.
fn add_key_counts(
    services: &Services,
    request: &SyncRequest<'_>,
    response: &mut Response,
) -> Result<()> {
    let keys = &services.keys;
    response.device_one_time_keys_count = keys.counts(request.user_id, request.device_id)?;
    response.device_unused_fallback_key_types =
        Some(keys.unused_fallback_types(request.user_id, request.device_id)?);
    Ok(())
}

/// Pending to-device messages for the syncing device; acknowledged ones are deleted. If some
/// must wait for the next response, `next_batch` stays before them so they are not lost.
async fn add_to_device(
    services: &Services,
    request: &SyncRequest<'_>,
    response: &mut Response,
) -> Result<()> {
    let before = response.next_batch.parse::<u64>().unwrap_or(u64::MAX);
    let (messages, left_behind) = services
        .to_device
        .take(request.user_id, request.device_id, request.since, before)
        .await?;
    response.to_device.events = messages.into_iter().map(raw).collect();
    if let Some(position) = left_behind
        && response
            .next_batch
            .parse::<u64>()
            .is_ok_and(|next| next > position)
    {
        response.next_batch = position.to_string();
    }
    Ok(())
}

pub(crate) fn raw<T>(value: JsonValue) -> Raw<T> {
    Raw::from_json(serde_json::value::to_raw_value(&value).expect("JSON value serialises"))
}

fn is_empty(response: &Response) -> bool {
    response.device_lists.changed.is_empty()
        && response.device_lists.left.is_empty()
        && response.to_device.events.is_empty()
        && response.presence.events.is_empty()
        && response.account_data.events.is_empty()
        && response.rooms.join.is_empty()
        && response.rooms.invite.is_empty()
        && response.rooms.leave.is_empty()
        && response.rooms.knock.is_empty()
}

fn build(services: &Services, request: &SyncRequest<'_>) -> Result<Response> {
    let rooms = &services.rooms;
    let position = services.stream.position();
    if let Some(since) = request.since
        && !request.full_state
        && !services.stream.changed_for(request.user_id, since)
    {
        // Nothing for the user: the same token again. (Moving it on could step over a
        // change committed just now whose notification is still on its way.)
        return Ok(Response::new(since.to_string()));
    }
    let mut response = Response::new((position + 1).to_string());
    if services.config.allow_presence {
        response.presence.events = presence_events(services, request)?;
    }
    let mut room_account_data: BTreeMap<OwnedRoomId, Vec<Raw<AnyRoomAccountDataEvent>>> =
        BTreeMap::new();
    for item in services.account_data_since(request.user_id, request.since)? {
        let event = raw(json!({ "type": item.kind, "content": item.content }));
        match item.room_id {
            None => response.account_data.events.push(event.cast_unchecked()),
            Some(room_id) => room_account_data.entry(room_id).or_default().push(event),
        }
    }
    if let Some(since) = request.since {
        device_lists(services, request.user_id, since, &mut response)?;
    }
    let ignored = services.account_data.ignored_users(request.user_id)?;
    for (room_id, entry) in rooms.rooms_of(request.user_id)? {
        let Some(info) = rooms.info(&room_id)? else {
            continue;
        };
        let changed_since = |since: u64| {
            entry.count >= since
                || info.last_count >= since
                || room_account_data.contains_key(&room_id)
                || services.ephemeral.typing_position(&room_id) >= since
                || services.ephemeral.receipt_position(&room_id).unwrap_or(0) >= since
                || services
                    .push
                    .counts(request.user_id, &room_id)
                    .is_ok_and(|c| c.position >= since)
        };
        match entry.membership {
            MembershipState::Join
                if request.full_state || request.since.is_none_or(changed_since) =>
            {
                let mut room = joined_room(services, request, &room_id, &info, &entry, &ignored)?;
                room.account_data.events = room_account_data.remove(&room_id).unwrap_or_default();
                let counts = services.push.counts(request.user_id, &room_id)?;
                room.unread_notifications.notification_count = UInt::new(counts.notifications);
                room.unread_notifications.highlight_count = UInt::new(counts.highlights);
                if let Some(typing) = services.ephemeral.typing_event(&room_id, request.since) {
                    room.ephemeral.events.push(raw(typing));
                }
                if let Some(receipts) =
                    services
                        .ephemeral
                        .receipt_event(&room_id, request.user_id, request.since)?
                {
                    room.ephemeral.events.push(raw(receipts));
                }
                response.rooms.join.insert(room_id, room);
            }
            MembershipState::Invite if request.since.is_none_or(|since| entry.count >= since) => {
                if invited_by_ignored(services, &room_id, request.user_id, &ignored)? {
                    continue;
                }
                let room = invited_room(services, &room_id, request.user_id)?;
                response.rooms.invite.insert(room_id, room);
            }
            MembershipState::Leave | MembershipState::Ban => {
                // Left rooms appear once, in the first incremental sync after leaving.
                if let Some(since) = request.since
                    && entry.count >= since
                {
                    let mut left = LeftRoom::new();
                    let events = rooms.events_from(&info, since, request.timeline_limit)?;
                    let mut visibility = rooms.visibility(&room_id, request.user_id)?;
                    for (count, pdu) in events.iter().filter(|(count, _)| *count <= entry.count) {
                        if shown(pdu, &ignored) && visibility.can_see(*count, pdu)? {
                            left.timeline.events.push(rooms.sync_event(
                                pdu,
                                request.user_id,
                                None,
                            )?);
                        }
                    }
                    response.rooms.leave.insert(room_id, left);
                }
            }
            MembershipState::Knock if request.since.is_none_or(|since| entry.count >= since) => {
                let mut knocked = ruma::api::client::sync::sync_events::v3::KnockedRoom::new();
                knocked.knock_state.events = invited_room(services, &room_id, request.user_id)?
                    .invite_state
                    .events
                    .into_iter()
                    .map(|event| event.cast_unchecked())
                    .collect();
                response.rooms.knock.insert(room_id, knocked);
            }
            _ => {}
        }
    }
    Ok(response)
}

/// `device_lists` for an incremental sync (client-server API, "Tracking the device list for
/// a user"): `changed` holds users sharing a room whose devices changed since `since`, and
/// users who newly share a room with the syncing user; `left`, users who no longer share any.
fn device_lists(
    services: &Services,
    user_id: &UserId,
    since: u64,
    response: &mut Response,
) -> Result<()> {
    let (changed, left) = device_list_changes(services, user_id, since)?;
    response.device_lists.changed = changed;
    response.device_lists.left = left;
    Ok(())
}

/// Users whose device lists the syncing user must refetch since `since`, and users who no
/// longer share a room (`device_lists`, also `keys/changes`).
pub fn device_list_changes(
    services: &Services,
    user_id: &UserId,
    since: u64,
) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
    let rooms = &services.rooms;
    let peers = services.room_peers(user_id)?;
    let mut changed = std::collections::BTreeSet::new();
    let mut left = std::collections::BTreeSet::new();
    for peer in &peers {
        if services.devices.list_position(peer)? >= since {
            changed.insert(peer.clone());
        }
    }
    for (room_id, entry) in rooms.rooms_of(user_id)? {
        let joined_since = entry.count >= since;
        match entry.membership {
            MembershipState::Join => {
                for (member, membership) in rooms.members(&room_id)? {
                    let moved = joined_since
                        || rooms
                            .membership_entry(&room_id, &member)?
                            .is_some_and(|e| e.count >= since);
                    if !moved {
                        continue;
                    }
                    match membership {
                        MembershipState::Join => {
                            changed.insert(member);
                        }
                        MembershipState::Leave | MembershipState::Ban => {
                            left.insert(member);
                        }
                        _ => {}
                    }
                }
            }
            MembershipState::Leave | MembershipState::Ban if joined_since => {
                for (member, membership) in rooms.members(&room_id)? {
                    if membership == MembershipState::Join {
                        left.insert(member);
                    }
                }
            }
            _ => {}
        }
    }
    // Only those who share no room any more have left; oneself never does.
    left.retain(|user| !peers.contains(user));
    Ok((changed.into_iter().collect(), left.into_iter().collect()))
}

/// Presence changes of the user and of everyone sharing a joined room with them.
fn presence_events(
    services: &Services,
    request: &SyncRequest<'_>,
) -> Result<Vec<Raw<ruma::events::presence::PresenceEvent>>> {
    let changed = services.presence.changed_since(request.since);
    if changed.is_empty() {
        return Ok(Vec::new());
    }
    let mut audience = std::collections::BTreeSet::new();
    audience.insert(request.user_id.to_owned());
    for (room_id, entry) in services.rooms.rooms_of(request.user_id)? {
        if entry.membership == MembershipState::Join {
            for (member, membership) in services.rooms.members(&room_id)? {
                if membership == MembershipState::Join {
                    audience.insert(member);
                }
            }
        }
    }
    Ok(changed
        .into_iter()
        .filter(|(user, _)| audience.contains(user))
        .map(|(user, entry)| {
            let ago = entry.last_active.elapsed();
            let mut content = json!({
                "presence": entry.state,
                "last_active_ago": ago.as_millis() as u64,
                "currently_active": ago < Duration::from_secs(300),
            });
            if let Some(status) = entry.status_msg {
                content["status_msg"] = status.into();
            }
            raw(json!({ "type": "m.presence", "sender": user, "content": content }))
        })
        .collect())
}

fn joined_room(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    info: &RoomInfo,
    entry: &MembershipEntry,
    ignored: &HashSet<OwnedUserId>,
) -> Result<JoinedRoom> {
    let rooms = &services.rooms;
    let limit = request.timeline_limit;
    // Newest first, one more than asked so we know whether the timeline is `limited`.
    let mut events = rooms.events_before(info, u64::MAX, limit + 1)?;
    if let Some(since) = request.since {
        events.retain(|(count, _)| *count >= since);
    }
    let limited = events.len() > limit;
    events.truncate(limit);
    events.reverse();
    // History visibility: e.g. with `joined`, nothing from before the user joined.
    let mut visibility = rooms.visibility(room_id, request.user_id)?;
    let mut seen = Vec::with_capacity(events.len());
    for (count, pdu) in events {
        if shown(&pdu, ignored) && visibility.can_see(count, &pdu)? {
            seen.push((count, pdu));
        }
    }
    let events = seen;

    // `state` is the state at the start of the timeline, as a delta from what the client
    // already has at `since` (everything, if it has nothing or just joined).
    let start_hash = match events.first() {
        Some((_, first)) => rooms
            .state_hashes(&first.event_id)?
            .and_then(|(before, _)| before),
        None => Some(info.state_hash),
    };
    let since_hash = match request.since {
        Some(since) if !request.full_state && entry.count < since => {
            match rooms.events_before(info, since, 1)?.first() {
                Some((_, last_seen)) => rooms
                    .state_hashes(&last_seen.event_id)?
                    .map(|(_, after)| after),
                None => None,
            }
        }
        _ => None,
    };
    let mut state_events = Vec::new();
    if let Some(start_hash) = start_hash {
        let senders: std::collections::BTreeSet<&UserId> = events
            .iter()
            .map(|(_, pdu)| &*pdu.sender)
            .chain([request.user_id])
            .collect();
        let mut members_sent = std::collections::BTreeSet::new();
        for (_, short_event) in rooms.state.changed(since_hash, start_hash)? {
            if let Some(pdu) = rooms.pdu(&rooms.short.event_id(short_event)?)? {
                if request.lazy_members && pdu.kind.to_string() == "m.room.member" {
                    let wanted = pdu
                        .state_key
                        .as_deref()
                        .is_some_and(|key| senders.iter().any(|s| s.as_str() == key));
                    if !wanted {
                        continue;
                    }
                    members_sent.insert(pdu.state_key.clone().unwrap_or_default());
                }
                state_events.push(pdu.to_sync_state_event());
            }
        }
        if request.lazy_members {
            // Senders whose member event did not change still need it.
            let start_state = rooms.state.load(start_hash)?;
            for sender in senders {
                if !members_sent.contains(sender.as_str())
                    && let Some(pdu) = rooms.state_event(
                        &start_state,
                        &StateEventType::RoomMember,
                        sender.as_str(),
                    )?
                {
                    state_events.push(pdu.to_sync_state_event());
                }
            }
        }
    }

    let mut room = JoinedRoom::new();
    let mut timeline = Timeline::new();
    timeline.limited = limited;
    timeline.prev_batch = events.first().map(|(count, _)| count.to_string());
    timeline.events = events
        .iter()
        .map(|(_, pdu)| {
            let txn = own_transaction(services, pdu, request.user_id, request.device_id);
            services
                .rooms
                .sync_event(pdu, request.user_id, txn.as_deref())
        })
        .collect::<Result<_>>()?;
    room.timeline = timeline;
    let mut state = StateEvents::new();
    state.events = state_events;
    room.state = State::Before(state);
    room.summary = summary(services, room_id, request.user_id)?;
    Ok(room)
}

/// Whether `pdu` goes to a user who ignores `ignored`: their state events do (so a room's
/// name does not depend on whom one ignores), nothing else of theirs (module "Ignoring
/// Users").
pub(crate) fn shown(pdu: &Pdu, ignored: &HashSet<OwnedUserId>) -> bool {
    pdu.is_state() || !ignored.contains(&pdu.sender)
}

/// Whether the user's pending invite to `room_id` came from someone they ignore (such
/// invites are not shown).
pub(crate) fn invited_by_ignored(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
    ignored: &HashSet<OwnedUserId>,
) -> Result<bool> {
    if ignored.is_empty() {
        return Ok(false);
    }
    Ok(services
        .rooms
        .current_state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
        .is_some_and(|invite| ignored.contains(&invite.sender)))
}

/// The transaction id, for the device that sent the event.
pub(crate) fn own_transaction(
    services: &Services,
    pdu: &Pdu,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Option<String> {
    if pdu.sender != user_id {
        return None;
    }
    services
        .rooms
        .transaction_id_for(&pdu.event_id, device_id)
        .ok()
        .flatten()
}

/// Member counts and heroes (client-server API, "Calculating the display name for a room").
fn summary(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<RoomSummary> {
    let members = services.rooms.members(room_id)?;
    let count = |wanted: MembershipState| members.iter().filter(|(_, m)| *m == wanted).count();
    let mut summary = RoomSummary::new();
    summary.joined_member_count = UInt::new(count(MembershipState::Join) as u64);
    summary.invited_member_count = UInt::new(count(MembershipState::Invite) as u64);
    summary.heroes = members
        .iter()
        .filter(|(user, m)| {
            user != user_id && matches!(m, MembershipState::Join | MembershipState::Invite)
        })
        .map(|(user, _)| user.clone())
        .take(5)
        .collect::<Vec<OwnedUserId>>();
    Ok(summary)
}

fn invited_room(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<InvitedRoom> {
    let mut state = InviteState::new();
    state.events = invite_state(services, room_id, user_id)?;
    let mut room = InvitedRoom::new();
    room.invite_state = state;
    Ok(room)
}

/// The stripped state an invitee (or knocker) sees, with their own member event.
pub(crate) fn invite_state(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
    let rooms = &services.rooms;
    let mut events = Vec::new();
    for kind in INVITE_STATE_TYPES {
        if let Some(pdu) = rooms.current_state_event(room_id, &StateEventType::from(*kind), "")? {
            events.push(pdu.to_stripped_state_event());
        }
    }
    if let Some(pdu) =
        rooms.current_state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
    {
        events.push(pdu.to_stripped_state_event());
    }
    Ok(events)
}
