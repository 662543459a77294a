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
    api::{
        Direction,
        client::sync::sync_events::v3::{
            InviteState, InvitedRoom, JoinedRoom, LeftRoom, Response, RoomSummary, State,
            StateEvents, Timeline,
        },
    },
    events::{
        AnyRoomAccountDataEvent, StateEventType, TimelineEventType, room::member::MembershipState,
    },
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::{
    Services,
    filter::{LazyMembers, SyncFilter, Walk, scan},
    rooms::{MembershipEntry, RoomInfo, pdu::Pdu, pos::Pos, state::StateHash},
};
use crate::Result;

/// What a client asked for.
pub struct SyncRequest<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a DeviceId,
    pub since: Option<u64>,
    pub full_state: bool,
    pub timeout: Duration,
    /// The request's filter, compiled (the default lets everything through). Lazy-loaded
    /// members (client-server API, "Lazy-loading room members"): `state` holds only the
    /// member events of the timeline's senders and the user's own; without
    /// `include_redundant_members`, each is sent once per device ([`SentMembers`]).
    ///
    /// [`SentMembers`]: super::filter::SentMembers
    pub filter: SyncFilter,
}

/// State an invitee sees (client-server API, "Stripped state").
pub(crate) const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// Events read per room, at most, to fill a timeline through a filter that drops events
/// (a multiple of the limit): past it the timeline is `limited` and the client pages back.
const FILTERED_READ_FACTOR: usize = 10;

pub async fn sync(services: &Arc<Services>, request: SyncRequest<'_>) -> Result<Response> {
    let handle = services.stream.notifier.handle(request.user_id);
    if request.since.is_none() || request.full_state {
        // A new sync sequence: the client has no member events from before.
        services
            .sent_members
            .reset(request.user_id, request.device_id);
    }
    let deadline = tokio::time::Instant::now() + request.timeout;
    loop {
        // Armed before building, so a change between the build and the wait still wakes it.
        let notified = handle.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let mut response = build(services, &request)?;
        add_to_device(services, &request, &mut response).await?;
        add_key_counts(services, &request, &mut response)?;
        if request.since.is_none() || request.timeout.is_zero() || !is_empty(&response) {
            return Ok(response);
        }
        // Nothing the filter lets through yet (a wake-up for something it drops, such as
        // one's own presence with presence filtered out, goes back to waiting): wait for the
        // rest of the timeout.
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(response);
        }
    }
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
    let filter = &request.filter;
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
    if services.config.allow_presence && !filter.presence.blocks_all() {
        response.presence.events = presence_events(services, request)?;
    }
    let mut room_account_data: BTreeMap<OwnedRoomId, Vec<Raw<AnyRoomAccountDataEvent>>> =
        BTreeMap::new();
    for item in services.account_data_since(request.user_id, request.since)? {
        let event = raw(json!({ "type": item.kind, "content": item.content }));
        match item.room_id {
            None => response.account_data.events.push(event.cast_unchecked()),
            Some(room_id) => {
                let wanted = filter.allows_room(&room_id)
                    && filter.room_account_data.allows_room(&room_id)
                    && filter.room_account_data.allows(&item.kind, None);
                if wanted {
                    room_account_data.entry(room_id).or_default().push(event);
                }
            }
        }
    }
    if let Some(since) = request.since {
        device_lists(services, request.user_id, since, &mut response)?;
    }
    let ignored = services.account_data.ignored_users(request.user_id)?;
    // Left rooms: those left since `since`, and with `include_leave` every one in an
    // initial (or `full_state`) sync.
    let all_left = filter.include_leave && (request.since.is_none() || request.full_state);
    for (room_id, entry) in rooms.rooms_of(request.user_id)? {
        if !filter.allows_room(&room_id) {
            continue;
        }
        let Some(info) = rooms.info(&room_id)? else {
            // A room this server is not in: an invite from another server (or its
            // rejection), or a knock through another server.
            out_of_band_room(services, request, &room_id, &entry, &ignored, &mut response)?;
            continue;
        };
        let changed_since = |since: u64| {
            entry.count >= since
                || info.last_count >= since
                || room_account_data.contains_key(&room_id)
                || services.ephemeral.typing_position(&room_id) >= since
                || services.ephemeral.receipt_position(&room_id).unwrap_or(0) >= since
                // Read last: it costs a few lookups (a failure shows the room, where
                // reading the counts again reports it).
                || services
                    .push
                    .counts(rooms, request.user_id, &room_id)
                    .map_or(true, |counts| counts.position >= since)
        };
        match entry.membership {
            MembershipState::Join
                if request.full_state || request.since.is_none_or(changed_since) =>
            {
                let mut room = joined_room(services, request, &room_id, &info, &entry, &ignored)?;
                let mut account_data = room_account_data.remove(&room_id).unwrap_or_default();
                if let Some(limit) = filter.room_account_data.limit {
                    account_data.truncate(limit);
                }
                room.account_data.events = account_data;
                let counts = services.push.counts(rooms, request.user_id, &room_id)?;
                room.unread_notifications.notification_count = UInt::new(counts.notifications);
                room.unread_notifications.highlight_count = UInt::new(counts.highlights);
                add_ephemeral(services, request, &room_id, &mut room)?;
                // An incremental sync leaves out a room whose news the filter all dropped,
                // so such news does not end a long-poll. Changed counts are news: they are
                // committed just after the event that changed them, so a long-poll woken by
                // the event may have answered with the counts before it.
                let news = request.full_state
                    || request
                        .since
                        .is_none_or(|since| entry.count >= since || counts.position >= since)
                    || !room.timeline.events.is_empty()
                    || !state_is_empty(&room.state)
                    || !room.ephemeral.events.is_empty()
                    || !room.account_data.events.is_empty();
                if news {
                    response.rooms.join.insert(room_id, room);
                }
            }
            MembershipState::Invite if request.since.is_none_or(|since| entry.count >= since) => {
                if invited_by_ignored(services, &room_id, request.user_id, &ignored)? {
                    continue;
                }
                let room = invited_room(services, &room_id, request.user_id)?;
                response.rooms.invite.insert(room_id, room);
            }
            MembershipState::Leave | MembershipState::Ban
                if all_left || request.since.is_some_and(|since| entry.count >= since) =>
            {
                let left = left_room(services, request, &room_id, &info, &entry, &ignored)?;
                response.rooms.leave.insert(room_id, left);
            }
            MembershipState::Knock if request.since.is_none_or(|since| entry.count >= since) => {
                let state = invite_state(services, &room_id, request.user_id)?;
                response.rooms.knock.insert(room_id, knocked_room(state));
            }
            _ => {}
        }
    }
    // Last, so that every global account data event passes the filter.
    filter
        .account_data
        .retain_raw(&mut response.account_data.events);
    Ok(response)
}

fn state_is_empty(state: &State) -> bool {
    match state {
        State::Before(events) => events.events.is_empty(),
        _ => false,
    }
}

/// `m.typing` and `m.receipt` for a joined room, through the `ephemeral` filter.
fn add_ephemeral(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    room: &mut JoinedRoom,
) -> Result<()> {
    let ephemeral = &request.filter.ephemeral;
    if ephemeral.blocks_all() || !ephemeral.allows_room(room_id) {
        return Ok(());
    }
    if ephemeral.allows("m.typing", None)
        && let Some(typing) = services.ephemeral.typing_event(room_id, request.since)
    {
        room.ephemeral.events.push(raw(typing));
    }
    if ephemeral.allows("m.receipt", None)
        && let Some(receipts) =
            services
                .ephemeral
                .receipt_event(room_id, request.user_id, request.since)?
    {
        room.ephemeral.events.push(raw(receipts));
    }
    if let Some(limit) = ephemeral.limit {
        room.ephemeral.events.truncate(limit);
    }
    Ok(())
}

/// A room the user left or was banned from: its timeline up to their leaving and the full
/// state at the timeline's start (as Synapse sends it).
fn left_room(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    info: &RoomInfo,
    entry: &MembershipEntry,
    ignored: &HashSet<OwnedUserId>,
) -> Result<LeftRoom> {
    let until = Pos::live(entry.count)?.next();
    let part = room_part(services, request, room_id, info, entry, until, ignored)?;
    let mut left = LeftRoom::new();
    left.timeline = part.timeline;
    left.state = part.state;
    Ok(left)
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
    let filter = &request.filter.presence;
    let mut events: Vec<_> = changed
        .into_iter()
        .filter(|(user, _)| audience.contains(user) && filter.allows("m.presence", Some(user)))
        .map(|(user, entry)| {
            let ago = entry.last_active.elapsed();
            let mut content = json!({
                "presence": entry.state,
                "last_active_ago": ago.as_millis() as u64,
                "currently_active": entry.currently_active(),
            });
            if let Some(status) = entry.status_msg {
                content["status_msg"] = status.into();
            }
            raw(json!({ "type": "m.presence", "sender": user, "content": content }))
        })
        .collect();
    if let Some(limit) = filter.limit {
        events.truncate(limit);
    }
    Ok(events)
}

fn joined_room(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    info: &RoomInfo,
    entry: &MembershipEntry,
    ignored: &HashSet<OwnedUserId>,
) -> Result<JoinedRoom> {
    let part = room_part(services, request, room_id, info, entry, Pos::MAX, ignored)?;
    let mut room = JoinedRoom::new();
    room.timeline = part.timeline;
    room.state = part.state;
    room.summary = summary(services, room_id, request.user_id)?;
    Ok(room)
}

/// A room's timeline and state in a sync.
struct RoomPart {
    timeline: Timeline,
    state: State,
}

/// The timeline (events before `until`, from `since` on, through the timeline filter) and
/// the state at its start, as a delta from what the client had at `since` (everything, if
/// it has nothing, just joined, or asked for `full_state`), through the state filter.
fn room_part(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    info: &RoomInfo,
    entry: &MembershipEntry,
    until: Pos,
    ignored: &HashSet<OwnedUserId>,
) -> Result<RoomPart> {
    let rooms = &services.rooms;
    let filter = &request.filter;
    let TimelinePage {
        events,
        limited,
        prev_batch,
    } = timeline_events(services, request, room_id, info, until, ignored)?;

    // The state after the last event the timeline could show.
    let end_hash = if until == Pos::MAX {
        Some(info.state_hash)
    } else {
        match rooms.events_before(info, until, 1)?.first() {
            Some((_, last)) => rooms.state_hashes(&last.event_id)?.map(|(_, after)| after),
            None => None,
        }
    };
    let start_hash = match events.first() {
        Some((_, first)) => rooms
            .state_hashes(&first.event_id)?
            .and_then(|(before, _)| before),
        None => end_hash,
    };
    let since_hash = match request.since {
        Some(since) if !request.full_state && entry.count < since => {
            match rooms.events_before(info, Pos::live(since)?, 1)?.first() {
                Some((_, last_seen)) => rooms
                    .state_hashes(&last_seen.event_id)?
                    .map(|(_, after)| after),
                None => None,
            }
        }
        _ => None,
    };
    let state_events = match start_hash {
        Some(start_hash) => {
            state_section(services, request, &events, since_hash, start_hash, end_hash)?
        }
        None => Vec::new(),
    };

    let lazy_dedup = matches!(
        filter.lazy_members,
        LazyMembers::On {
            include_redundant_members: false
        }
    );
    if lazy_dedup {
        // Member events in this response count as sent to the device.
        let members = state_events
            .iter()
            .chain(events.iter().map(|(_, pdu)| pdu))
            .filter(|pdu| pdu.kind == TimelineEventType::RoomMember)
            .map(|pdu| &*pdu.event_id);
        services
            .sent_members
            .record(request.user_id, request.device_id, members);
    }

    let mut timeline = Timeline::new();
    timeline.limited = limited;
    timeline.prev_batch = prev_batch.map(|pos| pos.to_string());
    timeline.events = events
        .iter()
        .map(|(_, pdu)| {
            client_event(services, filter, pdu, || {
                let txn = own_transaction(services, pdu, request.user_id, request.device_id)?;
                rooms.sync_event(pdu, request.user_id, txn.as_deref())
            })
        })
        .collect::<Result<_>>()?;
    let mut state = StateEvents::new();
    state.events = state_events
        .iter()
        .map(|pdu| client_event(services, filter, pdu, || Ok(pdu.to_sync_state_event())))
        .collect::<Result<_>>()?;
    Ok(RoomPart {
        timeline,
        state: State::Before(state),
    })
}

/// An event in the form the filter asks for: the client format (built by `client`) or, with
/// `event_format: federation`, the stored PDU; then only the `event_fields`, if named.
fn client_event<T>(
    services: &Services,
    filter: &SyncFilter,
    pdu: &Pdu,
    client: impl FnOnce() -> Result<Raw<T>>,
) -> Result<Raw<T>> {
    let event = match filter.federation_format {
        true => match services.rooms.pdu_json(&pdu.event_id)? {
            Some(stored) => raw(stored),
            None => client()?,
        },
        false => client()?,
    };
    Ok(match &filter.event_fields {
        Some(fields) => fields.project_raw(event),
        None => event,
    })
}

/// A room's timeline in a sync, before it is turned into client events.
struct TimelinePage {
    /// Oldest first.
    events: Vec<(Pos, Pdu)>,
    /// Whether more events are left before these.
    limited: bool,
    /// The position to paginate back from (a `/messages` token; may be a backfilled one).
    prev_batch: Option<Pos>,
}

/// The timeline: up to `limit` events before `until`, from `since` on, oldest first, that
/// the timeline filter lets through and the user may see; whether more are left
/// (`limited`); and the `prev_batch` position.
fn timeline_events(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    info: &RoomInfo,
    until: Pos,
    ignored: &HashSet<OwnedUserId>,
) -> Result<TimelinePage> {
    let rooms = &services.rooms;
    // Only live events are news: backfilled history sorts below every stream position.
    let since = request.since.map(Pos::live).transpose()?;
    let matcher = &request.filter.timeline;
    let limit = request.filter.timeline_limit;
    let mut visibility = rooms.visibility(room_id, request.user_id)?;
    if matcher.blocks_all() || !matcher.allows_room(room_id) {
        let more = rooms
            .events_before(info, until, 1)?
            .first()
            .is_some_and(|(pos, _)| since.is_none_or(|since| *pos >= since));
        return Ok(TimelinePage {
            events: Vec::new(),
            limited: more,
            prev_batch: None,
        });
    }
    if matcher.lets_all() {
        // Newest first, one more than asked so we know whether the timeline is `limited`.
        let mut events = rooms.events_before(info, until, limit + 1)?;
        if let Some(since) = since {
            events.retain(|(pos, _)| *pos >= since);
        }
        let limited = events.len() > limit;
        events.truncate(limit);
        events.reverse();
        // History visibility: e.g. with `joined`, nothing from before the user joined.
        let mut seen = Vec::with_capacity(events.len());
        for (pos, pdu) in events {
            if shown(&pdu, ignored) && visibility.can_see(pos, &pdu)? {
                seen.push((pos, pdu));
            }
        }
        let prev_batch = seen.first().map(|(pos, _)| *pos);
        return Ok(TimelinePage {
            events: seen,
            limited,
            prev_batch,
        });
    }
    // A filter that drops events: read further back to fill the timeline, within bounds.
    let walk = Walk {
        dir: Direction::Backward,
        from: until,
        bound: since,
        limit: limit + 1,
        max_read: (limit * FILTERED_READ_FACTOR).max(100),
    };
    let scanned = scan(rooms, info, walk, |pos, pdu| {
        Ok(matcher.allows_pdu(pdu) && shown(pdu, ignored) && visibility.can_see(pos, pdu)?)
    })?;
    let mut events = scanned.events;
    let limited = events.len() > limit || !scanned.exhausted;
    events.truncate(limit);
    events.reverse();
    let prev_batch = match events.first() {
        Some((pos, _)) => Some(*pos),
        None if limited => scanned.last_read,
        None => None,
    };
    Ok(TimelinePage {
        events,
        limited,
        prev_batch,
    })
}

/// The `state` of a room: the delta from `since_hash` to `start_hash` (the state before the
/// timeline). When the timeline filter drops events, state changes after the timeline's
/// start that the timeline does not carry are added, so the client still ends up with the
/// current state (as Synapse does). Then lazy-loading and the state filter.
fn state_section(
    services: &Services,
    request: &SyncRequest<'_>,
    events: &[(Pos, Pdu)],
    since_hash: Option<StateHash>,
    start_hash: StateHash,
    end_hash: Option<StateHash>,
) -> Result<Vec<Pdu>> {
    let rooms = &services.rooms;
    let filter = &request.filter;
    let mut delta: BTreeMap<u64, u64> = rooms
        .state
        .changed(since_hash, start_hash)?
        .into_iter()
        .collect();
    if !filter.timeline.lets_all()
        && let Some(end_hash) = end_hash
        && end_hash != start_hash
    {
        let in_timeline: HashSet<&ruma::EventId> =
            events.iter().map(|(_, pdu)| &*pdu.event_id).collect();
        for (key, short_event) in rooms.state.changed(Some(start_hash), end_hash)? {
            let event_id = rooms.short.event_id(short_event)?;
            if !in_timeline.contains(&*event_id) {
                delta.insert(key, short_event);
            }
        }
    }
    let lazy = filter.lazy_members.is_on();
    let dedup = lazy
        && filter.lazy_members
            == (LazyMembers::On {
                include_redundant_members: false,
            })
        && request.since.is_some()
        && !request.full_state;
    let senders: std::collections::BTreeSet<&UserId> = events
        .iter()
        .map(|(_, pdu)| &*pdu.sender)
        .chain([request.user_id])
        .collect();
    let mut members_seen = std::collections::BTreeSet::new();
    let mut state_events = Vec::new();
    for short_event in delta.into_values() {
        let Some(pdu) = rooms.pdu(&rooms.short.event_id(short_event)?)? else {
            continue;
        };
        if lazy && pdu.kind == TimelineEventType::RoomMember {
            let wanted = pdu
                .state_key
                .as_deref()
                .is_some_and(|key| senders.iter().any(|s| s.as_str() == key));
            if !wanted {
                continue;
            }
            members_seen.insert(pdu.state_key.clone().unwrap_or_default());
        }
        state_events.push(pdu);
    }
    if lazy {
        // Senders whose member event did not change still need it.
        let start_state = rooms.state.load(start_hash)?;
        for sender in senders {
            if !members_seen.contains(sender.as_str())
                && let Some(pdu) =
                    rooms.state_event(&start_state, &StateEventType::RoomMember, sender.as_str())?
            {
                state_events.push(pdu);
            }
        }
    }
    state_events.retain(|pdu| {
        let redundant = dedup
            && pdu.kind == TimelineEventType::RoomMember
            && services
                .sent_members
                .was_sent(request.user_id, request.device_id, &pdu.event_id);
        !redundant && filter.state.allows_pdu(pdu)
    });
    Ok(state_events)
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
    if let Some(invite) = services.rooms.pending_remote_invite(room_id, user_id)? {
        return Ok(ignored.contains(invite.sender()));
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
) -> Result<Option<String>> {
    if pdu.sender != user_id {
        return Ok(None);
    }
    services.rooms.transaction_id_for(&pdu.event_id, device_id)
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

/// A room this server holds no state of, in which the user has an out-of-band membership
/// (`rooms::remote_invite`): a pending invite from another server is shown as any invite
/// (the same `invited_room`), its rejection as a left room whose timeline is the leave.
fn out_of_band_room(
    services: &Services,
    request: &SyncRequest<'_>,
    room_id: &RoomId,
    entry: &MembershipEntry,
    ignored: &HashSet<OwnedUserId>,
    response: &mut Response,
) -> Result<()> {
    if request.since.is_some_and(|since| entry.count < since)
        || !request.filter.allows_room(room_id)
    {
        return Ok(());
    }
    match entry.membership {
        MembershipState::Invite
            if !invited_by_ignored(services, room_id, request.user_id, ignored)? =>
        {
            let room = invited_room(services, room_id, request.user_id)?;
            response.rooms.invite.insert(room_id.to_owned(), room);
        }
        // A knock through another server, shown with the stripped state that server gave.
        MembershipState::Knock => {
            if let Some(state) = entry.stripped_state.clone() {
                response
                    .rooms
                    .knock
                    .insert(room_id.to_owned(), knocked_room(state));
            }
        }
        MembershipState::Leave if request.since.is_some() || request.filter.include_leave => {
            if let Some(leave) = services
                .rooms
                .remote_invite(room_id, request.user_id)?
                .and_then(|invite| invite.leave)
            {
                let mut left = LeftRoom::new();
                left.timeline.events.push(leave.to_sync_event(None));
                response.rooms.leave.insert(room_id.to_owned(), left);
            } else if entry.stripped_state.is_some() {
                // A knock through another server, taken back: the room leaves the knock
                // section (no timeline: the room's events are not held here).
                response
                    .rooms
                    .leave
                    .insert(room_id.to_owned(), LeftRoom::new());
            }
        }
        _ => {}
    }
    Ok(())
}

fn invited_room(services: &Services, room_id: &RoomId, user_id: &UserId) -> Result<InvitedRoom> {
    let mut state = InviteState::new();
    state.events = invite_state(services, room_id, user_id)?;
    let mut room = InvitedRoom::new();
    room.invite_state = state;
    Ok(room)
}

fn knocked_room(
    state: Vec<Raw<ruma::events::AnyStrippedStateEvent>>,
) -> ruma::api::client::sync::sync_events::v3::KnockedRoom {
    let mut knocked = ruma::api::client::sync::sync_events::v3::KnockedRoom::new();
    knocked.knock_state.events = state.into_iter().map(Raw::cast_unchecked).collect();
    knocked
}

/// The stripped state an invitee (or knocker) sees, with their own member event.
pub(crate) fn invite_state(
    services: &Services,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
    let rooms = &services.rooms;
    // An invite from another server: the stripped state it sent.
    if let Some(invite) = rooms.pending_remote_invite(room_id, user_id)? {
        return invite.invite_state();
    }
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
