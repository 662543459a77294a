//! Simplified sliding sync (MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`),
//! the only sync Element X speaks.
//!
//! A client keeps a *connection* (per device and `conn_id`) and asks for windows (`ranges`)
//! of room lists sorted by recency (`bump_stamp`), plus explicitly subscribed rooms. The
//! server remembers, per connection, which rooms it has sent and with which settings
//! ([`Snapshot`]), so a later request gets only what changed: a room new to the connection
//! (or asked for with different settings) comes with `initial: true` and its full
//! `required_state` and last `timeline_limit` events; a known room only with what happened
//! since it was last sent; an unchanged room not at all.
//!
//! `pos` names a snapshot. The last [`SNAPSHOTS_KEPT`] of each connection are kept, so a
//! client that retries after losing a response is answered from the snapshot it has.
//! Connections live in memory (at most [`MAX_CONNECTIONS`], least recently used dropped):
//! after a restart, or for a `pos` that is gone, the answer is `400 M_UNKNOWN_POS`, on which
//! clients start a new connection from scratch.
//!
//! Positions are those of [`super::stream::Stream`], as in `/sync` v3: a snapshot's `next`
//! is one past the stream position it covered, and "changed since `P`" means "written at a
//! position `>= P`". A long-poll waits on the user's notifier, armed before the check.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ruma::{
    DeviceId, OwnedDeviceId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::{
        client::sync::sync_events::{
            DeviceLists,
            v5::{Request, Response, request, response},
        },
        error::ErrorKind,
    },
    directory::RoomTypeFilter,
    events::{AnySyncStateEvent, StateEventType, room::member::MembershipState},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::{
    Services,
    rooms::{MembershipEntry, RoomInfo, pos::Pos},
    sync::{device_list_changes, invite_state, invited_by_ignored, own_transaction, raw, shown},
};
use crate::{Error, Result};

/// Connections kept in memory, across all users. A connection costs about 100 bytes per
/// room it has seen, per kept snapshot: for users in 500 rooms, 256 connections stay
/// under 60 MB.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections per user (Element X keeps two per device); past it, the user's least
/// recently used one goes, so nobody can push other users' connections out.
pub const MAX_CONNECTIONS_PER_USER: usize = 8;
/// Snapshots (answered `pos` values) kept per connection.
pub const SNAPSHOTS_KEPT: usize = 4;
/// Limits on one request's shape (`400 M_INVALID_PARAM` beyond).
const MAX_LISTS: usize = 64;
const MAX_RANGES: usize = 64;
const MAX_REQUIRED_STATE: usize = 256;
const MAX_SUBSCRIPTIONS: usize = 512;
/// Most timeline events per room in one response, whatever the client asks.
const MAX_TIMELINE_LIMIT: usize = 100;
/// Longest long-poll, whatever the client asks (and when it gives no `timeout`).
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Heroes sent for a room (client-server API, "Calculating the display name for a room").
const MAX_HEROES: usize = 5;

/// What the server has sent on one connection up to one `pos`.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    /// One past the stream position this answer covered.
    next: u64,
    /// A hash of what the request asked for (lists, subscriptions, extensions): an answer
    /// to the same request with nothing new for the user since `next` can skip building.
    shape: u64,
    /// The answer listed rooms the user has left (shown once): the next one differs even
    /// if nothing happens.
    transient: bool,
    rooms: HashMap<OwnedRoomId, KnownRoom>,
    list_counts: BTreeMap<String, u64>,
}

#[derive(Clone, Debug)]
struct KnownRoom {
    /// `next` of the answer that last carried (or checked) this room.
    sent_at: u64,
    /// The user's membership then: a change (an invite accepted, a rejoin) sends the room
    /// in full again.
    membership: MembershipState,
    /// Shared between the rooms asked for alike (usually all rooms of a list).
    config: Arc<RoomConfig>,
}

/// How a room is asked for: the largest timeline limit and the union of the required state
/// of every list window and subscription that covers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RoomConfig {
    timeline_limit: usize,
    required_state: BTreeSet<(String, String)>,
}

impl RoomConfig {
    fn merge(&mut self, timeline_limit: UInt, required_state: &[(StateEventType, String)]) {
        let limit = usize::try_from(u64::from(timeline_limit)).unwrap_or(usize::MAX);
        self.timeline_limit = self.timeline_limit.max(limit.min(MAX_TIMELINE_LIMIT));
        self.required_state.extend(
            required_state
                .iter()
                .map(|(kind, key)| (kind.to_string(), key.clone())),
        );
    }

    fn has_wildcard(&self) -> bool {
        self.required_state
            .iter()
            .any(|(kind, key)| kind == "*" || key == "*")
    }

    fn lazy_members(&self) -> bool {
        self.required_state
            .iter()
            .any(|(kind, key)| kind == "m.room.member" && key == "$LAZY")
    }

    /// Whether the state event `(kind, key)` is asked for. `$ME` is the user, `$LAZY` (for
    /// members) the senders of the events being sent.
    fn wants(&self, kind: &str, key: &str, user: &UserId, senders: &BTreeSet<&UserId>) -> bool {
        self.required_state.iter().any(|(want_kind, want_key)| {
            (want_kind == "*" || want_kind == kind)
                && match want_key.as_str() {
                    "*" => true,
                    "$ME" => key == user.as_str(),
                    "$LAZY" => kind == "m.room.member" && senders.iter().any(|s| s.as_str() == key),
                    exact => exact == key,
                }
        })
    }
}

type ConnectionKey = (OwnedUserId, OwnedDeviceId, String);

struct Connection {
    last_used: Instant,
    snapshots: VecDeque<(String, Arc<Snapshot>)>,
}

/// The sliding sync connections of all users.
pub struct SlidingSync {
    connections: Mutex<HashMap<ConnectionKey, Connection>>,
    next_pos: AtomicU64,
    /// Random per start, so a `pos` from before a restart is never taken for a new one.
    epoch: String,
}

impl Default for SlidingSync {
    fn default() -> Self {
        Self {
            connections: Mutex::default(),
            next_pos: AtomicU64::new(0),
            epoch: crate::crypto::random_string(6, b"abcdefghijklmnopqrstuvwxyz0123456789"),
        }
    }
}

/// A room the user could see in a list: joined, invited, knocked, or left since the
/// connection's last answer (so the client learns it left).
struct Candidate {
    room_id: OwnedRoomId,
    entry: MembershipEntry,
    /// `None` for a room this server is not in: a pending invite from another server, or
    /// a knock through another server (the entry has its stripped state).
    info: Option<RoomInfo>,
    bump: u64,
}

fn unknown_pos() -> Error {
    Error::new(
        ErrorKind::UnknownPos,
        "Unknown or expired position: start a new sliding sync connection.",
    )
}

impl SlidingSync {
    fn snapshot(&self, key: &ConnectionKey, pos: &str) -> Option<Arc<Snapshot>> {
        let mut connections = self.connections.lock().expect("sliding sync lock");
        let connection = connections.get_mut(key)?;
        connection.last_used = Instant::now();
        connection
            .snapshots
            .iter()
            .find(|(name, _)| name == pos)
            .map(|(_, snapshot)| Arc::clone(snapshot))
    }

    /// Remembers `snapshot`, answered to a request with position `from` (none: a new
    /// connection), under a new `pos`. Kept: `from` itself (the client retries with it if
    /// this answer is lost), the new one, and the newest others up to [`SNAPSHOTS_KEPT`];
    /// positions before `from` are dropped, as the client has moved past them.
    fn remember(&self, key: ConnectionKey, from: Option<&str>, snapshot: Snapshot) -> String {
        let pos = format!(
            "{}_{}",
            self.epoch,
            self.next_pos.fetch_add(1, Ordering::Relaxed)
        );
        let mut connections = self.connections.lock().expect("sliding sync lock");
        if !connections.contains_key(&key) {
            let same_user = connections.keys().filter(|k| k.0 == key.0).count();
            let oldest = |connections: &HashMap<ConnectionKey, Connection>, only_user: bool| {
                connections
                    .iter()
                    .filter(|(k, _)| !only_user || k.0 == key.0)
                    .min_by_key(|(_, connection)| connection.last_used)
                    .map(|(k, _)| k.clone())
            };
            let evict = if same_user >= MAX_CONNECTIONS_PER_USER {
                oldest(&connections, true)
            } else if connections.len() >= MAX_CONNECTIONS {
                oldest(&connections, false)
            } else {
                None
            };
            if let Some(evict) = evict {
                connections.remove(&evict);
            }
        }
        let connection = connections.entry(key).or_insert_with(|| Connection {
            last_used: Instant::now(),
            snapshots: VecDeque::new(),
        });
        connection.last_used = Instant::now();
        match from.and_then(|from| connection.snapshots.iter().position(|(p, _)| p == from)) {
            Some(at) => {
                connection.snapshots.drain(..at);
            }
            None => connection.snapshots.clear(),
        }
        connection
            .snapshots
            .push_back((pos.clone(), Arc::new(snapshot)));
        while connection.snapshots.len() > SNAPSHOTS_KEPT {
            // Never the one the client came from (index 0) or the new one.
            connection.snapshots.remove(1);
        }
        pos
    }

    /// Answers one sliding sync request, long-polling up to its `timeout` when a known
    /// connection has nothing new.
    pub async fn sync(
        &self,
        services: &Services,
        user: &UserId,
        device: &DeviceId,
        request: &Request,
    ) -> Result<Response> {
        let key = (
            user.to_owned(),
            device.to_owned(),
            request.conn_id.clone().unwrap_or_default(),
        );
        let previous = match &request.pos {
            None => None,
            Some(pos) => Some(self.snapshot(&key, pos).ok_or_else(unknown_pos)?),
        };
        check_limits(request)?;
        let shape = shape_of(request);
        let timeout = request.timeout.unwrap_or(MAX_TIMEOUT).min(MAX_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let handle = services.stream.notifier.handle(user);
        loop {
            let notified = handle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (mut response, snapshot) = match previous.as_deref() {
                // The same request, and nothing concerning the user since: nothing to build.
                Some(previous)
                    if previous.shape == shape
                        && !previous.transient
                        && !services.stream.changed_for(user, previous.next) =>
                {
                    unchanged(previous)
                }
                _ => build(services, user, device, request, previous.as_deref(), shape)?,
            };
            let to_device_events =
                add_to_device(services, user, device, request, &snapshot, &mut response).await?;
            let has_news =
                previous.is_none() || to_device_events || has_news(&response, previous.as_deref());
            let left = deadline.saturating_duration_since(Instant::now());
            if has_news || left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                response.txn_id = request.txn_id.clone();
                response.pos = self.remember(key, request.pos.as_deref(), snapshot);
                return Ok(response);
            }
        }
    }
}

/// The answer when nothing changed: the lists' counts, and the same snapshot under a new
/// `pos`. Its `next` stays where it was: a change committed just now but not yet announced
/// to the notifier is then still ahead of it, never skipped.
fn unchanged(previous: &Snapshot) -> (Response, Snapshot) {
    let mut response = Response::new(String::new());
    for (name, count) in &previous.list_counts {
        let mut list = response::List::default();
        list.count = UInt::new(*count).unwrap_or_default();
        response.lists.insert(name.clone(), list);
    }
    (response, previous.clone())
}

/// Refuses requests whose shape alone would make the server work without bound.
fn check_limits(request: &Request) -> Result<()> {
    let too_many = |what: &str, limit: usize| {
        Err(Error::invalid_param(format!(
            "At most {limit} {what} per request."
        )))
    };
    if request.lists.len() > MAX_LISTS {
        return too_many("lists", MAX_LISTS);
    }
    if request.room_subscriptions.len() > MAX_SUBSCRIPTIONS {
        return too_many("room subscriptions", MAX_SUBSCRIPTIONS);
    }
    for list in request.lists.values() {
        if list.ranges.len() > MAX_RANGES {
            return too_many("ranges per list", MAX_RANGES);
        }
        if list.room_details.required_state.len() > MAX_REQUIRED_STATE {
            return too_many("required_state entries per list", MAX_REQUIRED_STATE);
        }
    }
    if request
        .room_subscriptions
        .values()
        .any(|sub| sub.required_state.len() > MAX_REQUIRED_STATE)
    {
        return too_many(
            "required_state entries per subscription",
            MAX_REQUIRED_STATE,
        );
    }
    Ok(())
}

/// A hash of the request's lists, subscriptions and extension settings (without the
/// to-device `since`, which moves on every request).
fn shape_of(request: &Request) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut extensions = request.extensions.clone();
    extensions.to_device.since = None;
    let text = serde_json::to_string(&(&request.lists, &request.room_subscriptions, &extensions))
        .unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Whether an answer carries anything the client did not have.
fn has_news(response: &Response, previous: Option<&Snapshot>) -> bool {
    let extensions = &response.extensions;
    !response.rooms.is_empty()
        || !extensions.e2ee.device_lists.is_empty()
        || !extensions.account_data.is_empty()
        || !extensions.receipts.is_empty()
        || !extensions.typing.is_empty()
        || previous.is_none_or(|previous| {
            response
                .lists
                .iter()
                .any(|(name, list)| previous.list_counts.get(name) != Some(&u64::from(list.count)))
        })
}

/// The user's direct-message rooms, from `m.direct` account data.
fn direct_rooms(services: &Services, user: &UserId) -> Result<HashSet<OwnedRoomId>> {
    let mut rooms = HashSet::new();
    if let Some(JsonValue::Object(direct)) = services.account_data.get(user, None, "m.direct")? {
        for ids in direct.values() {
            for id in ids.as_array().into_iter().flatten() {
                if let Some(room) = id.as_str().and_then(|id| OwnedRoomId::try_from(id).ok()) {
                    rooms.insert(room);
                }
            }
        }
    }
    Ok(rooms)
}

/// Whether an invite is to a direct chat (`is_direct` on the invite).
fn invite_is_direct(services: &Services, room_id: &RoomId, user: &UserId) -> Result<bool> {
    if let Some(invite) = services.rooms.pending_remote_invite(room_id, user)? {
        return Ok(invite.invite.content_value()["is_direct"] == json!(true));
    }
    Ok(services
        .rooms
        .current_state_event(room_id, &StateEventType::RoomMember, user.as_str())?
        .is_some_and(|event| event.content_value()["is_direct"] == json!(true)))
}

fn is_dm(
    services: &Services,
    candidate: &Candidate,
    user: &UserId,
    direct: &HashSet<OwnedRoomId>,
) -> Result<bool> {
    Ok(direct.contains(&candidate.room_id)
        || (candidate.entry.membership == MembershipState::Invite
            && invite_is_direct(services, &candidate.room_id, user)?))
}

/// The rooms the user could see in lists, newest activity first.
fn candidates(
    services: &Services,
    user: &UserId,
    previous: Option<&Snapshot>,
) -> Result<Vec<Candidate>> {
    let ignored = services.account_data.ignored_users(user)?;
    let mut out = Vec::new();
    for (room_id, entry) in services.rooms.rooms_of(user)? {
        let listed = match entry.membership {
            MembershipState::Join | MembershipState::Knock => true,
            // Invites from ignored users are not shown (module "Ignoring Users").
            MembershipState::Invite => !invited_by_ignored(services, &room_id, user, &ignored)?,
            // Left (or kicked, banned) since the client last heard of the room: shown once.
            MembershipState::Leave | MembershipState::Ban => match previous {
                Some(previous) => {
                    entry.count >= previous.next && previous.rooms.contains_key(&room_id)
                }
                // A new connection (perhaps after a restart) lists rooms the user was
                // removed from by someone else, so a client that still holds the room as
                // joined learns otherwise. Rooms left by choice are not listed.
                None => removed_by_someone_else(services, &room_id, user)?,
            },
            _ => false,
        };
        if !listed {
            continue;
        }
        let info = services.rooms.info(&room_id)?;
        // A room held nowhere here: listed only while an invite from another server to it
        // is pending, or a knock through another server stands.
        if info.is_none()
            && entry.stripped_state.is_none()
            && entry.membership != MembershipState::Invite
        {
            continue;
        }
        // Joined rooms by their newest message-like event (not by the user's own member
        // events: a new display name must not reorder every room); others by the invite,
        // the leave.
        let bump = match (&entry.membership, &info) {
            (MembershipState::Join, Some(info)) => info.bump_stamp(),
            _ => entry.count,
        };
        out.push(Candidate {
            room_id,
            entry,
            info,
            bump,
        });
    }
    out.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(out)
}

/// Whether the user's leave or ban in `room_id` was sent by someone else (a kick, a ban).
fn removed_by_someone_else(services: &Services, room_id: &RoomId, user: &UserId) -> Result<bool> {
    Ok(services
        .rooms
        .current_state_event(room_id, &StateEventType::RoomMember, user.as_str())?
        .is_some_and(|event| event.sender != user))
}

fn matches_filters(
    services: &Services,
    candidate: &Candidate,
    user: &UserId,
    filters: Option<&request::ListFilters>,
    direct: &HashSet<OwnedRoomId>,
) -> Result<bool> {
    let Some(filters) = filters else {
        return Ok(true);
    };
    if let Some(wanted) = filters.is_invite
        && (candidate.entry.membership == MembershipState::Invite) != wanted
    {
        return Ok(false);
    }
    if let Some(wanted) = filters.is_dm
        && is_dm(services, candidate, user, direct)? != wanted
    {
        return Ok(false);
    }
    let rooms = &services.rooms;
    if let Some(wanted) = filters.is_encrypted {
        let encrypted = rooms
            .current_state_event(&candidate.room_id, &StateEventType::RoomEncryption, "")?
            .is_some();
        if encrypted != wanted {
            return Ok(false);
        }
    }
    if !filters.room_types.is_empty() || !filters.not_room_types.is_empty() {
        let room_type = rooms
            .current_state_event(&candidate.room_id, &StateEventType::RoomCreate, "")?
            .and_then(|create| create.content_value()["type"].as_str().map(str::to_owned));
        let kind = match room_type {
            None => RoomTypeFilter::Default,
            Some(kind) => RoomTypeFilter::from(Some(kind.as_str())),
        };
        if filters.not_room_types.contains(&kind) {
            return Ok(false);
        }
        if !filters.room_types.is_empty() && !filters.room_types.contains(&kind) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a room the connection knows changed from `since` on (events, the user's own
/// membership, notification counts). Typing, receipts and account data travel in
/// extensions.
fn room_changed(
    services: &Services,
    user: &UserId,
    candidate: &Candidate,
    since: u64,
) -> Result<bool> {
    Ok(candidate.entry.count >= since
        || candidate
            .info
            .as_ref()
            .is_some_and(|info| info.last_count >= since)
        || services
            .push
            .counts(&services.rooms, user, &candidate.room_id)?
            .position
            >= since)
}

fn build(
    services: &Services,
    user: &UserId,
    device: &DeviceId,
    request: &Request,
    previous: Option<&Snapshot>,
    shape: u64,
) -> Result<(Response, Snapshot)> {
    let next = services.stream.position() + 1;
    let since = previous.map(|previous| previous.next);
    let mut response = Response::new(String::new());
    let candidates = candidates(services, user, previous)?;
    let direct = direct_rooms(services, user)?;
    let index: HashMap<&RoomId, &Candidate> = candidates
        .iter()
        .map(|candidate| (&*candidate.room_id, candidate))
        .collect();

    // Lists: filter, count, cut out the windows.
    let mut configs: HashMap<OwnedRoomId, RoomConfig> = HashMap::new();
    let mut list_rooms: BTreeMap<&str, Vec<OwnedRoomId>> = BTreeMap::new();
    let mut list_counts = BTreeMap::new();
    for (name, list) in &request.lists {
        let mut matching = Vec::new();
        for candidate in &candidates {
            if matches_filters(services, candidate, user, list.filters.as_ref(), &direct)? {
                matching.push(candidate);
            }
        }
        let mut list_response = response::List::default();
        list_response.count = UInt::new(matching.len() as u64).unwrap_or_default();
        response.lists.insert(name.clone(), list_response);
        list_counts.insert(name.clone(), matching.len() as u64);
        // The windows' indices, each once, within the list.
        let mut indices = BTreeSet::new();
        for (start, end) in &list.ranges {
            let start = usize::try_from(u64::from(*start)).unwrap_or(usize::MAX);
            let end = usize::try_from(u64::from(*end))
                .unwrap_or(usize::MAX)
                .min(matching.len().saturating_sub(1));
            if start <= end && start < matching.len() {
                indices.extend(start..=end);
            }
        }
        let in_window = list_rooms.entry(name.as_str()).or_default();
        for index in indices {
            let candidate = matching[index];
            configs.entry(candidate.room_id.clone()).or_default().merge(
                list.room_details.timeline_limit,
                &list.room_details.required_state,
            );
            in_window.push(candidate.room_id.clone());
        }
    }
    let mut subscribed = Vec::new();
    for (room_id, subscription) in &request.room_subscriptions {
        if index.contains_key(&**room_id) {
            configs
                .entry(room_id.clone())
                .or_default()
                .merge(subscription.timeline_limit, &subscription.required_state);
            subscribed.push(room_id.clone());
        }
    }

    // Rooms: new to the connection (or asked for differently) in full, known ones if changed.
    let mut initial_rooms = HashSet::new();
    for (room_id, config) in &configs {
        let candidate = index[&**room_id];
        let known = previous.and_then(|previous| previous.rooms.get(room_id));
        let room_since = match known {
            Some(known)
                if *known.config == *config && known.membership == candidate.entry.membership =>
            {
                if !room_changed(services, user, candidate, known.sent_at)? {
                    continue;
                }
                Some(known.sent_at)
            }
            _ => {
                initial_rooms.insert(room_id.clone());
                None
            }
        };
        let room = build_room(
            services, user, device, candidate, config, room_since, since, &direct,
        )?;
        response.rooms.insert(room_id.clone(), room);
    }

    // Extensions, over the rooms in the requested lists' windows and subscriptions.
    let extensions = &request.extensions;
    let scope = |lists: &Option<Vec<String>>, rooms: &Option<Vec<request::ExtensionRoomConfig>>| {
        let mut scoped: BTreeSet<OwnedRoomId> = BTreeSet::new();
        for (name, ids) in &list_rooms {
            if lists
                .as_ref()
                .is_none_or(|lists| lists.iter().any(|l| l == name))
            {
                scoped.extend(ids.iter().cloned());
            }
        }
        match rooms {
            None => scoped.extend(subscribed.iter().cloned()),
            Some(rooms) => {
                for room in rooms {
                    match room {
                        request::ExtensionRoomConfig::AllSubscribed => {
                            scoped.extend(subscribed.iter().cloned());
                        }
                        request::ExtensionRoomConfig::Room(room_id)
                            if index.contains_key(&**room_id) =>
                        {
                            scoped.insert(room_id.clone());
                        }
                        _ => {}
                    }
                }
            }
        }
        scoped
    };
    // A room new to the connection gets everything; others what changed since they were
    // last in scope (a room coming back into a window gets what it missed meanwhile).
    let room_since = |room_id: &RoomId| {
        if initial_rooms.contains(room_id) {
            None
        } else {
            previous
                .and_then(|previous| previous.rooms.get(room_id))
                .map(|known| known.sent_at)
                .or(since)
        }
    };
    if extensions.e2ee.enabled == Some(true) {
        let e2ee = &mut response.extensions.e2ee;
        if let Some(since) = since {
            let (changed, left) = device_list_changes(services, user, since)?;
            let mut lists = DeviceLists::new();
            lists.changed = changed;
            lists.left = left;
            e2ee.device_lists = lists;
        }
        e2ee.device_one_time_keys_count = services.keys.counts(user, device)?;
        e2ee.device_unused_fallback_key_types =
            Some(services.keys.unused_fallback_types(user, device)?);
    }
    if extensions.account_data.enabled == Some(true) {
        let scoped = scope(
            &extensions.account_data.lists,
            &extensions.account_data.rooms,
        );
        // Everything for a new connection; else what changed since each room (and the
        // global data since the last answer) was last seen.
        let oldest = scoped
            .iter()
            .map(|room_id| room_since(room_id))
            .chain([since])
            .try_fold(u64::MAX, |oldest, since| {
                since.map(|since| oldest.min(since))
            });
        let data = &mut response.extensions.account_data;
        for item in services.account_data_since(user, oldest)? {
            let event = json!({ "type": item.kind, "content": item.content });
            match item.room_id {
                None if since.is_none_or(|since| item.position >= since) => {
                    data.global.push(raw(event));
                }
                Some(room_id)
                    if scoped.contains(&room_id)
                        && room_since(&room_id).is_none_or(|since| item.position >= since) =>
                {
                    data.rooms.entry(room_id).or_default().push(raw(event));
                }
                _ => {}
            }
        }
    }
    if extensions.receipts.enabled == Some(true) {
        for room_id in scope(&extensions.receipts.lists, &extensions.receipts.rooms) {
            if index[&*room_id].entry.membership != MembershipState::Join {
                continue;
            }
            if let Some(event) =
                services
                    .ephemeral
                    .receipt_event(&room_id, user, room_since(&room_id))?
            {
                response
                    .extensions
                    .receipts
                    .rooms
                    .insert(room_id, raw(event));
            }
        }
    }
    if extensions.typing.enabled == Some(true) {
        for room_id in scope(&extensions.typing.lists, &extensions.typing.rooms) {
            if index[&*room_id].entry.membership != MembershipState::Join {
                continue;
            }
            if let Some(event) = services
                .ephemeral
                .typing_event(&room_id, room_since(&room_id))
            {
                response.extensions.typing.rooms.insert(room_id, raw(event));
            }
        }
    }

    let mut snapshot = previous.cloned().unwrap_or_default();
    snapshot.next = next;
    snapshot.shape = shape;
    snapshot.transient = candidates.iter().any(|candidate| {
        !matches!(
            candidate.entry.membership,
            MembershipState::Join | MembershipState::Invite | MembershipState::Knock
        )
    });
    snapshot.list_counts = list_counts;
    let mut distinct: Vec<Arc<RoomConfig>> = Vec::new();
    for (room_id, config) in configs {
        let config = match distinct.iter().find(|known| ***known == config) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared = Arc::new(config);
                distinct.push(Arc::clone(&shared));
                shared
            }
        };
        let membership = index[&*room_id].entry.membership.clone();
        snapshot.rooms.insert(
            room_id,
            KnownRoom {
                sent_at: next,
                membership,
                config,
            },
        );
    }
    Ok((response, snapshot))
}

/// To-device messages (MSC3885): what the client's `since` acknowledges is deleted; up to
/// 100 pending come back with a `next_batch` that stays before any left behind. Returns
/// whether there were any.
async fn add_to_device(
    services: &Services,
    user: &UserId,
    device: &DeviceId,
    request: &Request,
    snapshot: &Snapshot,
    response: &mut Response,
) -> Result<bool> {
    let settings = &request.extensions.to_device;
    if settings.enabled != Some(true) {
        return Ok(false);
    }
    let since = match settings.since.as_deref() {
        None => None,
        Some(since) => Some(
            since
                .parse::<u64>()
                .map_err(|_| Error::invalid_param("Invalid to_device since token."))?,
        ),
    };
    let (messages, left_behind) = services
        .to_device
        .take(user, device, since, snapshot.next)
        .await?;
    let any = !messages.is_empty();
    let mut to_device = response::ToDevice::default();
    to_device.next_batch = left_behind.unwrap_or(snapshot.next).to_string();
    to_device.events = messages.into_iter().map(raw).collect();
    response.extensions.to_device = Some(to_device);
    Ok(any)
}

#[allow(clippy::too_many_arguments)]
fn build_room(
    services: &Services,
    user: &UserId,
    device: &DeviceId,
    candidate: &Candidate,
    config: &RoomConfig,
    room_since: Option<u64>,
    since: Option<u64>,
    direct: &HashSet<OwnedRoomId>,
) -> Result<response::Room> {
    let rooms = &services.rooms;
    let room_id = &*candidate.room_id;
    let mut room = response::Room::new();
    room.bump_stamp = UInt::new(candidate.bump);
    room.is_dm = Some(is_dm(services, candidate, user, direct)?);
    if room_since.is_none() {
        room.initial = Some(true);
    }
    if matches!(
        candidate.entry.membership,
        MembershipState::Invite | MembershipState::Knock
    ) {
        // Stripped state with the user's own member event, whose membership (`invite` or
        // `knock`) tells the client which it is.
        let state = match &candidate.entry.stripped_state {
            Some(state) => state.clone(),
            None => invite_state(services, room_id, user)?,
        };
        room.name = state.iter().find_map(|event| {
            let event = event.deserialize_as_unchecked::<JsonValue>().ok()?;
            (event["type"] == "m.room.name")
                .then(|| event["content"]["name"].as_str().map(str::to_owned))
                .flatten()
        });
        room.invite_state = Some(state);
        return Ok(room);
    }

    // A room this server is not in has no timeline or state here.
    let Some(info) = &candidate.info else {
        return Ok(room);
    };
    // Timeline: the newest `timeline_limit` events (since the room was last sent), up to
    // the user's leave for a room they left.
    let limit = config.timeline_limit;
    let upto = match candidate.entry.membership {
        MembershipState::Join => Pos::MAX,
        _ => Pos::live(candidate.entry.count)?.next(),
    };
    let mut events = rooms.events_before(info, upto, limit + 1)?;
    // Only live events are news: backfilled history sorts below every stream position.
    if let Some(room_since) = room_since {
        let room_since = Pos::live(room_since)?;
        events.retain(|(pos, _)| *pos >= room_since);
    }
    room.limited = events.len() > limit;
    events.truncate(limit);
    events.reverse();
    let ignored = services.account_data.ignored_users(user)?;
    let mut visibility = rooms.visibility(room_id, user)?;
    let mut timeline = Vec::with_capacity(events.len());
    for (pos, pdu) in events {
        if shown(&pdu, &ignored) && visibility.can_see(pos, &pdu)? {
            timeline.push((pos, pdu));
        }
    }
    room.prev_batch = timeline.first().map(|(pos, _)| pos.to_string());
    room.num_live = UInt::new(match since {
        Some(since) => {
            let since = Pos::live(since)?;
            timeline.iter().filter(|(pos, _)| *pos >= since).count() as u64
        }
        None => 0,
    });
    // The room's state: current for a joined room; for a room the user left, as it was at
    // the leave (what happened after is none of their business).
    let state_hash = match candidate.entry.membership {
        MembershipState::Join => info.state_hash,
        _ => rooms
            .current_state_event(room_id, &StateEventType::RoomMember, user.as_str())?
            .map(|leave| rooms.state_hashes(&leave.event_id))
            .transpose()?
            .flatten()
            .map_or(info.state_hash, |(_, after)| after),
    };
    let state = rooms.state.load(state_hash)?;
    // For a known room, the state keys that changed since it was last sent.
    let changed = match room_since {
        None => None,
        Some(room_since) => {
            let since_hash = match rooms
                .events_before(info, Pos::live(room_since)?, 1)?
                .first()
            {
                Some((_, last_seen)) => rooms
                    .state_hashes(&last_seen.event_id)?
                    .map(|(_, after)| after),
                None => None,
            };
            let mut keys = BTreeSet::new();
            for (key, _) in rooms.state.changed(since_hash, state_hash)? {
                keys.insert((key, rooms.short.state_key(key)?));
            }
            Some(keys)
        }
    };
    // Member counts and heroes: sent in full, and again whenever membership changed.
    let membership_moved = changed.as_ref().is_none_or(|keys| {
        keys.iter()
            .any(|(_, (kind, _))| *kind == StateEventType::RoomMember)
    });

    // Required state: state *after* the timeline, as MSC4186 has it.
    let senders: BTreeSet<&UserId> = timeline
        .iter()
        .map(|(_, pdu)| &*pdu.sender)
        .chain([user])
        .collect();
    room.required_state =
        required_state(services, &state, config, user, &senders, changed.as_ref())?;

    room.timeline = timeline
        .iter()
        .map(|(_, pdu)| {
            let txn = own_transaction(services, pdu, user, device)?;
            rooms.sync_event(pdu, user, txn.as_deref())
        })
        .collect::<Result<_>>()?;

    if let Some(name) = rooms.state_event(&state, &StateEventType::RoomName, "")? {
        room.name = name.content_value()["name"].as_str().map(str::to_owned);
    }
    if let Some(avatar) = rooms.state_event(&state, &StateEventType::RoomAvatar, "")?
        && let Some(url) = avatar.content_value()["url"].as_str()
    {
        room.avatar = ruma::JsOption::Some(OwnedMxcUri::from(url));
    }
    if candidate.entry.membership == MembershipState::Join {
        let counts = services.push.counts(&services.rooms, user, room_id)?;
        room.unread_notifications.notification_count = UInt::new(counts.notifications);
        room.unread_notifications.highlight_count = UInt::new(counts.highlights);
    }
    if membership_moved && candidate.entry.membership == MembershipState::Join {
        let members = rooms.members(room_id)?;
        let count = |wanted: MembershipState| members.iter().filter(|(_, m)| *m == wanted).count();
        room.joined_count = UInt::new(count(MembershipState::Join) as u64);
        room.invited_count = UInt::new(count(MembershipState::Invite) as u64);
        let mut heroes = Vec::new();
        for (member, _) in members.iter().filter(|(member, membership)| {
            member != user && matches!(membership, MembershipState::Join | MembershipState::Invite)
        }) {
            if heroes.len() >= MAX_HEROES {
                break;
            }
            let mut hero = response::Hero::new(member.clone());
            if let Some(event) =
                rooms.state_event(&state, &StateEventType::RoomMember, member.as_str())?
            {
                let content = event.content_value();
                hero.name = content["displayname"].as_str().map(str::to_owned);
                hero.avatar = content["avatar_url"].as_str().map(OwnedMxcUri::from);
            }
            heroes.push(hero);
        }
        room.heroes = Some(heroes);
    }
    Ok(room)
}

/// The state events of `state` that `config` asks for: all of them for a room new to the
/// connection, else those among the `changed` keys (plus the members of this timeline's
/// senders, for `$LAZY`). Wildcards make a new room's state be walked key by key; exact
/// pairs are looked up directly.
fn required_state(
    services: &Services,
    state: &super::rooms::state::StateSet,
    config: &RoomConfig,
    user: &UserId,
    senders: &BTreeSet<&UserId>,
    changed: Option<&BTreeSet<(u64, (StateEventType, String))>>,
) -> Result<Vec<Raw<AnySyncStateEvent>>> {
    let rooms = &services.rooms;
    if config.required_state.is_empty() {
        return Ok(Vec::new());
    }
    // Short state keys to look at.
    let mut keys = BTreeSet::new();
    match changed {
        None if config.has_wildcard() => keys.extend(state.keys().copied()),
        None => {
            for (kind, key) in &config.required_state {
                let kind = StateEventType::from(kind.as_str());
                let wanted: Vec<&str> = match key.as_str() {
                    "$ME" => vec![user.as_str()],
                    "$LAZY" => senders.iter().map(|s| s.as_str()).collect(),
                    exact => vec![exact],
                };
                for key in wanted {
                    if let Some(short) = rooms.short.get_short_state_key(&kind, key)? {
                        keys.insert(short);
                    }
                }
            }
        }
        Some(changed) => {
            keys.extend(changed.iter().map(|(key, _)| *key));
            if config.lazy_members() {
                for sender in senders {
                    if let Some(short) = rooms
                        .short
                        .get_short_state_key(&StateEventType::RoomMember, sender.as_str())?
                    {
                        keys.insert(short);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for short_key in keys {
        let Some(short_event) = state.get(&short_key) else {
            continue;
        };
        let (kind, key) = rooms.short.state_key(short_key)?;
        if !config.wants(&kind.to_string(), &key, user, senders) {
            continue;
        }
        if let Some(pdu) = rooms.pdu(&rooms.short.event_id(*short_event)?)? {
            out.push(pdu.to_sync_state_event());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> RoomConfig {
        RoomConfig {
            timeline_limit: 1,
            required_state: pairs
                .iter()
                .map(|(kind, key)| ((*kind).to_owned(), (*key).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn required_state_matching() {
        let alice = user_id!("@alice:example.org");
        let bob = user_id!("@bob:example.org");
        let carol = user_id!("@carol:example.org");
        let senders: BTreeSet<&UserId> = [alice, bob].into_iter().collect();

        let exact = config(&[("m.room.name", ""), ("m.room.member", "$ME")]);
        assert!(exact.wants("m.room.name", "", alice, &senders));
        assert!(!exact.wants("m.room.topic", "", alice, &senders));
        assert!(exact.wants("m.room.member", alice.as_str(), alice, &senders));
        assert!(!exact.wants("m.room.member", bob.as_str(), alice, &senders));
        assert!(!exact.has_wildcard() && !exact.lazy_members());

        let lazy = config(&[("m.room.member", "$LAZY")]);
        assert!(lazy.lazy_members());
        assert!(lazy.wants("m.room.member", bob.as_str(), alice, &senders));
        assert!(!lazy.wants("m.room.member", carol.as_str(), alice, &senders));
        // `$LAZY` means members only.
        assert!(!config(&[("m.room.name", "$LAZY")]).wants(
            "m.room.name",
            bob.as_str(),
            alice,
            &senders
        ));

        let keys = config(&[("m.space.child", "*")]);
        assert!(keys.has_wildcard());
        assert!(keys.wants("m.space.child", "!a:example.org", alice, &senders));
        assert!(!keys.wants("m.space.parent", "!a:example.org", alice, &senders));

        let everything = config(&[("*", "*")]);
        assert!(everything.wants("m.room.power_levels", "", alice, &senders));
        assert!(everything.wants("m.room.member", carol.as_str(), alice, &senders));
    }

    #[test]
    fn configs_merge_to_the_largest_limit_and_the_union_of_state() {
        let mut merged = RoomConfig::default();
        merged.merge(
            UInt::from(1u32),
            &[(StateEventType::RoomName, String::new())],
        );
        merged.merge(
            UInt::from(20u32),
            &[(StateEventType::RoomTopic, String::new())],
        );
        merged.merge(UInt::from(5u32), &[]);
        assert_eq!(merged.timeline_limit, 20);
        assert_eq!(merged.required_state.len(), 2);
        let mut huge = RoomConfig::default();
        huge.merge(UInt::from(1_000_000u32), &[]);
        assert_eq!(huge.timeline_limit, MAX_TIMELINE_LIMIT);
    }

    #[test]
    fn positions_are_kept_per_connection_and_bounded() {
        let sliding = SlidingSync::default();
        let user = user_id!("@alice:example.org").to_owned();
        let key = |conn: &str| {
            (
                user.clone(),
                device_id!("PHONE").to_owned(),
                conn.to_owned(),
            )
        };
        let snapshot = |next| Snapshot {
            next,
            ..Snapshot::default()
        };
        let first = sliding.remember(key("main"), None, snapshot(1));
        let second = sliding.remember(key("main"), Some(&first), snapshot(2));
        // The client moved on from `first` to `second`: answering `second` drops `first`.
        let third = sliding.remember(key("main"), Some(&second), snapshot(3));
        assert!(sliding.snapshot(&key("main"), &first).is_none());
        assert!(
            sliding.snapshot(&key("main"), &second).is_some(),
            "kept for a retry"
        );
        // Cancelled requests from `third` pile up; `third` itself is never pushed out.
        let mut last = third.clone();
        for next in 4..20 {
            last = sliding.remember(key("main"), Some(&third), snapshot(next));
        }
        assert!(sliding.snapshot(&key("main"), &third).is_some());
        assert_eq!(sliding.snapshot(&key("main"), &last).unwrap().next, 19);
        let kept = sliding.connections.lock().unwrap()[&key("main")]
            .snapshots
            .len();
        assert_eq!(kept, SNAPSHOTS_KEPT);
        // Another conn_id has its own positions; positions carry this start's epoch.
        assert!(sliding.snapshot(&key("other"), &last).is_none());
        assert!(last.starts_with(&sliding.epoch));
        // A request without pos starts over.
        let fresh = sliding.remember(key("main"), None, snapshot(50));
        assert!(sliding.snapshot(&key("main"), &last).is_none());
        assert!(sliding.snapshot(&key("main"), &fresh).is_some());

        // At most MAX_CONNECTIONS_PER_USER per user: the user's least recently used goes.
        for n in 0..MAX_CONNECTIONS_PER_USER {
            sliding.remember(key(&format!("c{n}")), None, snapshot(1));
        }
        assert!(
            sliding.snapshot(&key("main"), &fresh).is_none(),
            "the oldest went"
        );
        let count = sliding.connections.lock().unwrap().len();
        assert_eq!(count, MAX_CONNECTIONS_PER_USER);

        // At most MAX_CONNECTIONS in all.
        for n in 0..MAX_CONNECTIONS + 10 {
            let other = ruma::OwnedUserId::try_from(format!("@u{n}:example.org")).unwrap();
            sliding.remember(
                (other, device_id!("D").to_owned(), String::new()),
                None,
                snapshot(1),
            );
        }
        assert_eq!(sliding.connections.lock().unwrap().len(), MAX_CONNECTIONS);
    }
}
