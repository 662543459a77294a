//! This server as the *resident* server of its rooms, for other servers (server-server API,
//! "Joining Rooms", "Retrieving events", "Backfilling and retrieving missing events"):
//!
//! - [`Services::make_join`] and [`Services::send_join`]: another server's user joins a room
//!   here (the template, then the signed event, accepted through the room core like any
//!   remote event, answered with the state before it and its auth chain);
//! - the read endpoints another server in a room uses to fill gaps: one event
//!   ([`Services::federation_event`]), the state before an event ([`Services::state_at`]),
//!   an event's auth chain ([`Services::event_auth`]), the prev events it misses
//!   ([`Services::missing_events`]) and older history ([`Services::backfill`]).
//!
//! Who may read: a server with a user joined in the room's current state (as Synapse's
//! `assert_host_in_room`); otherwise 403. Events are served in federation form (the stored
//! PDU without `unsigned` and `event_id`), never rejected ones, and without state only
//! through `/event`; an event the asking server may not see by the room's history
//! visibility at that event is served redacted (as Synapse's `filter_events_for_server`).

use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, OwnedUserId,
    RoomId, RoomVersionId, ServerName, UserId,
    api::error::{ErrorKind, IncompatibleRoomVersionErrorData},
    events::{
        StateEventType,
        room::{
            join_rules::{AllowRule, JoinRule, RoomJoinRulesEventContent},
            member::MembershipState,
            server_acl::RoomServerAclEventContent,
        },
    },
    signatures::PublicKeyMap,
};
use serde_json::{json, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            Rooms,
            accept::{Outcome, Place, StateBefore},
            check::Verdict,
            pdu::Pdu,
            state::{StateHash, StateSet},
            verify::{Verified, check_format, check_signatures_and_hash, keys_needed},
        },
    },
};

/// `get_missing_events`: events when the request names no `limit` (the spec's default).
pub const DEFAULT_MISSING_LIMIT: usize = 10;
/// `get_missing_events` and `/backfill`: events per answer at most, whatever the request
/// asks (Synapse caps both at 100).
pub const MAX_WALK_LIMIT: usize = 100;
/// Events a walk looks at per answer at most (hidden, rejected and state-less ones are
/// looked at but not returned), so a request never walks a whole room.
const MAX_WALK_VISITS: usize = 1_000;

/// What `send_join` answers (server-server API, `PUT /v2/send_join`).
#[derive(Debug)]
pub struct JoinAnswer {
    /// The join event as stored (with our signature on a restricted join).
    pub event: Box<RawJsonValue>,
    /// The state before the join, in federation form.
    pub state: Vec<Box<RawJsonValue>>,
    /// The auth chains of the join and of every event of `state`.
    pub auth_chain: Vec<Box<RawJsonValue>>,
    /// The servers with a joined member before the join.
    pub servers_in_room: Vec<OwnedServerName>,
}

/// The state before an event and its auth chain, as event ids (`/state_ids`); `/state` loads
/// them with [`Services::federation_pdus`].
#[derive(Debug)]
pub struct StateAt {
    pub state: Vec<OwnedEventId>,
    pub auth_chain: Vec<OwnedEventId>,
}

fn invalid(reason: impl std::fmt::Display) -> Error {
    Error::invalid_param(format!("Invalid join event: {reason}"))
}

fn not_in_room(origin: &ServerName) -> Error {
    Error::forbidden(format!("{origin} is not in this room."))
}

/// A stored event as other servers get it: the signed PDU, without `unsigned` (ours, never
/// signed) and `event_id` (rooms v3+: the id is the reference hash, not a field).
pub fn federation_form(mut stored: serde_json::Value) -> Result<Box<RawJsonValue>> {
    if let Some(object) = stored.as_object_mut() {
        object.remove("unsigned");
        object.remove("event_id");
    }
    serde_json::value::to_raw_value(&stored)
        .map_err(|e| Error::internal(format!("PDU serialisation: {e}")))
}

/// The servers with a member of `membership` in `state` (any of `memberships`).
fn member_servers(
    rooms: &Rooms,
    state: &StateSet,
    memberships: &[MembershipState],
) -> Result<BTreeSet<OwnedServerName>> {
    let mut servers = BTreeSet::new();
    for (short_key, short_event) in state.iter() {
        let (kind, state_key) = rooms.short.state_key(*short_key)?;
        if kind != StateEventType::RoomMember {
            continue;
        }
        let Ok(user) = <&UserId>::try_from(state_key.as_str()) else {
            continue;
        };
        if servers.contains(user.server_name()) {
            continue;
        }
        let event_id = rooms.short.event_id(*short_event)?;
        let pdu = rooms
            .pdu(&event_id)?
            .ok_or_else(|| Error::internal(format!("state event {event_id} is not stored")))?;
        let membership = MembershipState::from(pdu.content_str("membership").unwrap_or_default());
        if memberships.contains(&membership) {
            servers.insert(user.server_name().to_owned());
        }
    }
    Ok(servers)
}

/// Whether a server may see an event whose state after it is `state` (rooms' history
/// visibility, as Synapse's `filter_events_for_server`): always for `shared` (the default)
/// and `world_readable`; for `invited`, when one of its users is invited or joined there;
/// for `joined`, when one is joined. `users` are the server's users with a membership in
/// the room (from the membership index), so only their member events are read.
fn server_may_see(rooms: &Rooms, users: &[OwnedUserId], state: &StateSet) -> Result<bool> {
    let visibility = rooms
        .state_event(state, &StateEventType::RoomHistoryVisibility, "")?
        .and_then(|pdu| pdu.content_str("history_visibility"))
        .unwrap_or_else(|| "shared".to_owned());
    let memberships: &[MembershipState] = match visibility.as_str() {
        "invited" => &[MembershipState::Join, MembershipState::Invite],
        "joined" => &[MembershipState::Join],
        _ => return Ok(true),
    };
    for user in users {
        if let Some(member) =
            rooms.state_event(state, &StateEventType::RoomMember, user.as_str())?
            && memberships.contains(&MembershipState::from(
                member.content_str("membership").unwrap_or_default(),
            ))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Serves events to one server for one request: federation form, redacted where the server
/// may not see them, history visibility decided once per state set.
struct Serve<'a> {
    rooms: &'a Rooms,
    /// The asking server's users with a membership in the room.
    users: Vec<OwnedUserId>,
    version: RoomVersionId,
    seen_by_state: HashMap<StateHash, bool>,
}

impl<'a> Serve<'a> {
    fn new(rooms: &'a Rooms, users: Vec<OwnedUserId>, version: RoomVersionId) -> Self {
        Self {
            rooms,
            users,
            version,
            seen_by_state: HashMap::new(),
        }
    }

    /// The event in federation form, redacted when the history visibility at it hides it
    /// from the asking server (an event without state counts as hidden).
    fn event(&mut self, event_id: &EventId) -> Result<Option<Box<RawJsonValue>>> {
        let Some(stored) = self.rooms.pdu_json(event_id)? else {
            return Ok(None);
        };
        let visible = match self.rooms.state_hashes(event_id)? {
            None => false,
            Some((_, after)) => match self.seen_by_state.get(&after) {
                Some(visible) => *visible,
                None => {
                    let state = self.rooms.state.load(after)?;
                    let visible = server_may_see(self.rooms, &self.users, &state)?;
                    self.seen_by_state.insert(after, visible);
                    visible
                }
            },
        };
        if visible {
            return federation_form(stored).map(Some);
        }
        let rules = self
            .version
            .rules()
            .ok_or_else(|| Error::internal("room of an unknown version"))?;
        let mut object: CanonicalJsonObject = serde_json::from_value(stored)
            .map_err(|e| Error::internal(format!("stored PDU is not canonical JSON: {e}")))?;
        object.remove("unsigned");
        let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
        federation_form(serde_json::to_value(redacted).map_err(|e| Error::internal(e.to_string()))?)
            .map(Some)
    }
}

/// What a walk does with an event it meets.
enum Step {
    /// Returned, and its prev events walked: held with state (a timeline or soft-failed
    /// event), in the room, not rejected.
    Take(Pdu),
    /// Walked through, not returned: a rejected event (S2S "Rejection": never served, but
    /// the events before it are part of the room).
    Through(Pdu),
    /// The end of this branch: unknown, another room's, or held without state.
    Stop,
}

fn step(rooms: &Rooms, room_id: &RoomId, event_id: &EventId) -> Result<Step> {
    let Some(pdu) = rooms.pdu(event_id)? else {
        return Ok(Step::Stop);
    };
    if pdu.room_id() != room_id {
        return Ok(Step::Stop);
    }
    if matches!(rooms.verdict(event_id)?, Verdict::Rejected(_)) {
        return Ok(Step::Through(pdu));
    }
    if rooms.state_hashes(event_id)?.is_none() {
        return Ok(Step::Stop);
    }
    Ok(Step::Take(pdu))
}

/// `get_missing_events` (server-server API, "Backfilling and retrieving missing events"):
/// a breadth-first walk of the `prev_events` of `latest` (which are not returned), skipping
/// `earliest` and events below `min_depth` (and not walking past them), until `limit`
/// events; the result oldest first (by depth, then as found). Rejected events are walked
/// through, not returned; unknown ones and outliers end their branch (see [`Step`]).
pub fn missing_events_walk(
    rooms: &Rooms,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: usize,
    min_depth: u64,
) -> Result<Vec<(OwnedEventId, u64)>> {
    let limit = limit.min(MAX_WALK_LIMIT);
    let mut seen: HashSet<OwnedEventId> = earliest.iter().cloned().collect();
    let mut front: Vec<OwnedEventId> = Vec::new();
    for id in latest {
        if seen.insert(id.clone())
            && let Some(pdu) = rooms.pdu(id)?
            && pdu.room_id() == room_id
        {
            front.extend(pdu.prev_events.iter().cloned());
        }
    }
    let mut found = Vec::new();
    let mut visits = 0;
    while !front.is_empty() && found.len() < limit && visits < MAX_WALK_VISITS {
        let mut next = Vec::new();
        for id in front {
            if found.len() >= limit || visits >= MAX_WALK_VISITS {
                break;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            visits += 1;
            let (pdu, take) = match step(rooms, room_id, &id)? {
                Step::Take(pdu) => (pdu, true),
                Step::Through(pdu) => (pdu, false),
                Step::Stop => continue,
            };
            let depth = u64::from(pdu.depth);
            if depth < min_depth {
                continue;
            }
            next.extend(pdu.prev_events.iter().cloned());
            if take {
                found.push((id, depth));
            }
        }
        front = next;
    }
    // Found newest first; answered oldest first (Synapse reverses the walk the same way).
    found.reverse();
    found.sort_by_key(|(_, depth)| *depth);
    Ok(found)
}

/// `/backfill`: the events `from` and those before them, following `prev_events` deepest
/// first (as Synapse), until `limit` events; newest first. Rejected events are walked
/// through, not returned; unknown ones and outliers end their branch (see [`Step`]).
pub fn backfill_walk(
    rooms: &Rooms,
    room_id: &RoomId,
    from: &[OwnedEventId],
    limit: usize,
) -> Result<Vec<OwnedEventId>> {
    let limit = limit.min(MAX_WALK_LIMIT);
    let mut queue = BinaryHeap::new();
    let mut queued: HashSet<OwnedEventId> = HashSet::new();
    let mut found = Vec::new();
    let mut visits = 0;
    let enqueue = |queue: &mut BinaryHeap<_>, id: &OwnedEventId| -> Result<()> {
        match step(rooms, room_id, id)? {
            Step::Take(pdu) => {
                queue.push((u64::from(pdu.depth), id.clone(), true, pdu.prev_events))
            }
            Step::Through(pdu) => {
                queue.push((u64::from(pdu.depth), id.clone(), false, pdu.prev_events))
            }
            Step::Stop => {}
        }
        Ok(())
    };
    for id in from {
        if queued.insert(id.clone()) {
            enqueue(&mut queue, id)?;
        }
    }
    while let Some((_, id, take, prevs)) = queue.pop() {
        if found.len() >= limit {
            break;
        }
        if take {
            found.push(id);
        }
        for prev in prevs {
            if visits >= MAX_WALK_VISITS {
                break;
            }
            if queued.insert(prev.clone()) {
                visits += 1;
                enqueue(&mut queue, &prev)?;
            }
        }
    }
    Ok(found)
}

/// The content field `join_authorised_via_users_server`, when it names a user.
fn authorising_user(object: &CanonicalJsonObject) -> Option<OwnedUserId> {
    match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => {
            match content.get("join_authorised_via_users_server") {
                Some(CanonicalJsonValue::String(user)) => OwnedUserId::try_from(user.as_str()).ok(),
                _ => None,
            }
        }
        _ => None,
    }
}

fn string_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(value)) => Some(value),
        _ => None,
    }
}

impl Services {
    /// The room's current join rule (absent: `invite`, rooms "m.room.join_rules").
    fn join_rule(&self, room_id: &RoomId) -> Result<JoinRule> {
        Ok(self
            .rooms
            .current_state_event(room_id, &StateEventType::RoomJoinRules, "")?
            .and_then(|pdu| {
                serde_json::from_str::<RoomJoinRulesEventContent>(pdu.content.get()).ok()
            })
            .map_or(JoinRule::Invite, |content| content.join_rule))
    }

    /// For a join under a `restricted` or `knock_restricted` rule by a user who is neither
    /// invited nor joined (client-server API, "Restricted rooms"; S2S "Restricted rooms"):
    /// a local member who may invite, to name in `join_authorised_via_users_server`, when
    /// the user is joined to one of the allowed rooms as far as this server knows. `None`
    /// when no authorisation is needed. 400 `M_UNABLE_TO_AUTHORISE_JOIN` when this server
    /// knows none of the allowed rooms, 403 when the user is in none of them, 400
    /// `M_UNABLE_TO_GRANT_JOIN` when no local member may invite.
    fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let allow = match self.join_rule(room_id)? {
            JoinRule::Restricted(restricted) | JoinRule::KnockRestricted(restricted) => {
                restricted.allow
            }
            _ => return Ok(None),
        };
        if matches!(
            self.rooms.membership(room_id, user_id)?,
            Some(MembershipState::Invite | MembershipState::Join)
        ) {
            return Ok(None);
        }
        let mut known_any = false;
        let mut satisfied = false;
        for rule in &allow {
            if let AllowRule::RoomMembership(membership) = rule
                && self.rooms.info(&membership.room_id)?.is_some()
            {
                known_any = true;
                if self.rooms.is_joined(&membership.room_id, user_id)? {
                    satisfied = true;
                    break;
                }
            }
        }
        if !known_any {
            return Err(Error::new(
                ErrorKind::UnableToAuthorizeJoin,
                "This server knows none of the rooms whose members may join.",
            ));
        }
        if !satisfied {
            return Err(Error::forbidden(
                "You are not a member of a room whose members may join this one.",
            ));
        }
        let info = self.rooms.existing(room_id)?;
        let state = self.rooms.current_state(&info)?;
        let needed = self.rooms.required_level(&state, "invite", 0)?;
        for (member, membership) in self.rooms.members(room_id)? {
            if membership == MembershipState::Join
                && self.users.is_local(&member)
                && self.rooms.power_level(room_id, &state, &member)? >= needed
            {
                return Ok(Some(member));
            }
        }
        Err(Error::new(
            ErrorKind::UnableToGrantJoin,
            "No member of this server may invite you; try another server in the room.",
        ))
    }

    /// 403 `M_FORBIDDEN` when the room's current `m.room.server_acl` denies `origin` (S2S
    /// "Server Access Control Lists": `make_join`, `send_join`, `/state`, `/state_ids`,
    /// `/backfill`, `/event_auth` and `get_missing_events` must check it; `/send` per PDU).
    pub fn check_server_acl(&self, origin: &ServerName, room_id: &RoomId) -> Result<()> {
        let Some(acl) =
            self.rooms
                .current_state_event(room_id, &StateEventType::RoomServerAcl, "")?
        else {
            return Ok(());
        };
        // Content that does not parse denies nobody.
        match serde_json::from_str::<RoomServerAclEventContent>(acl.content.get()) {
            Ok(acl) if !acl.is_allowed(origin) => Err(Error::forbidden(format!(
                "{origin} is denied by the room's server ACL."
            ))),
            _ => Ok(()),
        }
    }

    /// 403 unless the server ACL allows `origin` and it has a user joined in the room's
    /// current state; its users with a membership in the room otherwise (for [`Serve`]).
    /// One scan of the room's membership index (there is no index by server).
    fn require_server_in_room(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
    ) -> Result<Vec<OwnedUserId>> {
        self.check_server_acl(origin, room_id)?;
        let mut joined = false;
        let mut users = Vec::new();
        for (user, membership) in self.rooms.members(room_id)? {
            if user.server_name() == origin {
                joined |= membership == MembershipState::Join;
                users.push(user);
            }
        }
        if joined {
            Ok(users)
        } else {
            Err(not_in_room(origin))
        }
    }

    /// `GET /make_join/{roomId}/{userId}`: the join template for `user_id` of `origin`, if
    /// the room is here, its version among `supported` and the join allowed (see
    /// [`super::super::rooms::Rooms::join_template`]).
    pub fn make_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden(format!(
                "{user_id} is not a user of {origin}."
            )));
        }
        let info = self.rooms.existing(room_id)?;
        self.check_server_acl(origin, room_id)?;
        if !supported.contains(&info.version) {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(
                    info.version.clone(),
                )),
                format!(
                    "The room's version is {}, which your server does not support.",
                    info.version
                ),
            ));
        }
        let mut content = json!({ "membership": "join" });
        if let Some(authoriser) = self.restricted_join_authoriser(room_id, user_id)? {
            content["join_authorised_via_users_server"] = authoriser.as_str().into();
        }
        self.rooms.join_template(room_id, user_id, content)
    }

    /// `PUT /v2/send_join/{roomId}/{eventId}`: `raw`, a join event of a user of `origin`
    /// signed by `origin`, is checked (format, the fields of a join, signatures, content
    /// hash, its id), signed by us too when it names one of our users as the authoriser of
    /// a restricted join, and accepted into the room as a live event. Only an accepted join
    /// is answered; a repeat of an accepted one gets the same answer.
    pub async fn send_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
    ) -> Result<JoinAnswer> {
        let (version, object) = self.check_join_event(origin, room_id, raw)?;
        let needed = keys_needed(&object, &version).map_err(invalid)?;
        // Collected first: a closure over the servers held across the await would not be
        // `Send` for every lifetime (rustc's higher-ranked inference).
        let servers: Vec<&ServerName> = needed.servers.iter().map(|server| &**server).collect();
        let keys = self
            .keyring
            .public_key_map(&object, servers, needed.signed_at)
            .await?;
        self.accept_join(room_id, event_id, &version, object, &keys)
            .await
    }

    /// `send_join`'s checks before signatures: the format, the fields of a join by a user
    /// of `origin` in `room_id`; our signature added for a restricted join one of our users
    /// authorises. Returns the room version and the event.
    fn check_join_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        raw: &RawJsonValue,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let info = self.rooms.existing(room_id)?;
        self.check_server_acl(origin, room_id)?;
        let version = info.version.clone();
        let mut object = check_format(raw, &version).map_err(invalid)?;
        if string_field(&object, "type") != Some("m.room.member") {
            return Err(invalid("not an `m.room.member` event"));
        }
        let sender = string_field(&object, "sender")
            .and_then(|sender| OwnedUserId::try_from(sender).ok())
            .ok_or_else(|| invalid("no valid `sender`"))?;
        if sender.server_name() != origin {
            return Err(invalid(format!("the sender is not a user of {origin}")));
        }
        if string_field(&object, "state_key") != Some(sender.as_str()) {
            return Err(invalid("the `state_key` is not the sender"));
        }
        if string_field(&object, "room_id") != Some(room_id.as_str()) {
            return Err(invalid("the event is for another room"));
        }
        let membership = match object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => match content.get("membership") {
                Some(CanonicalJsonValue::String(membership)) => membership.as_str(),
                _ => "",
            },
            _ => "",
        };
        if membership != "join" {
            return Err(invalid("the membership is not `join`"));
        }
        // A restricted join one of our users authorises: the conditions again (they may
        // have changed since make_join), then our signature, which the room version's
        // rules require (S2S "Restricted rooms"; rooms v8 "Authorization rules").
        if let Some(authoriser) = authorising_user(&object)
            && authoriser.server_name() == self.config.server_name
        {
            self.restricted_join_authoriser(room_id, &sender)?;
            self.sign_event(&mut object, &version)?;
        }
        Ok((version, object))
    }

    /// `send_join`'s last steps: signatures and content hash with `keys`, the event id
    /// against the path, then the room core (a live event); only an accepted join is
    /// answered.
    async fn accept_join(
        &self,
        room_id: &RoomId,
        event_id: &EventId,
        version: &RoomVersionId,
        object: CanonicalJsonObject,
        keys: &PublicKeyMap,
    ) -> Result<JoinAnswer> {
        let verified: Verified =
            check_signatures_and_hash(object, version, keys).map_err(invalid)?;
        if verified.event_id.as_str() != event_id.as_str() {
            return Err(invalid(format!(
                "its id is {}, not {event_id}",
                verified.event_id
            )));
        }
        let join_id = verified.event_id.clone();
        match self
            .rooms
            .accept(verified, Place::Live, StateBefore::default())
            .await?
        {
            Outcome::Committed(committed) | Outcome::AlreadyKnown(committed) => {
                match committed.verdict {
                    Verdict::Accepted if committed.position.is_some() => {}
                    Verdict::Accepted => {
                        return Err(Error::forbidden(
                            "The join is known here only without its place in the room.",
                        ));
                    }
                    Verdict::SoftFailed => {
                        return Err(Error::forbidden(
                            "The join is not allowed by the room's current state.",
                        ));
                    }
                    Verdict::Rejected(reason) => {
                        return Err(Error::forbidden(format!(
                            "The join is not allowed: {reason}"
                        )));
                    }
                }
            }
            Outcome::Missing { auth, prev } => {
                let names: Vec<_> = auth.iter().chain(&prev).map(|id| id.as_str()).collect();
                return Err(Error::invalid_param(format!(
                    "The join cites events this server does not hold: {}.",
                    names.join(", ")
                )));
            }
        }
        self.join_answer(room_id, &join_id)
    }

    /// Adds our signature to an event (over its redacted form, as every event signature:
    /// S2S "Signing events"), leaving its hashes and the other signatures as they are.
    fn sign_event(&self, object: &mut CanonicalJsonObject, version: &RoomVersionId) -> Result<()> {
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal("room of an unknown version"))?;
        let mut redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
            .map_err(|e| invalid(format!("cannot be redacted: {e}")))?;
        redacted.remove("signatures");
        self.server_keys
            .sign_json(&self.config.server_name, &mut redacted)?;
        let ours = match redacted.remove("signatures") {
            Some(CanonicalJsonValue::Object(mut signatures)) => {
                signatures.remove(self.config.server_name.as_str())
            }
            _ => None,
        }
        .ok_or_else(|| Error::internal("signing added no signature"))?;
        let signatures = object
            .entry("signatures".to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        match signatures {
            CanonicalJsonValue::Object(signatures) => {
                signatures.insert(self.config.server_name.to_string(), ours);
                Ok(())
            }
            _ => Err(invalid("`signatures` is not an object")),
        }
    }

    /// The answer to an accepted join: the state before it, the auth chains, the servers.
    fn join_answer(&self, room_id: &RoomId, join_id: &EventId) -> Result<JoinAnswer> {
        let (before, _) = self
            .rooms
            .state_hashes(join_id)?
            .ok_or_else(|| Error::internal(format!("accepted join {join_id} has no state")))?;
        let state = match before {
            Some(hash) => self.rooms.state.load(hash)?,
            None => Default::default(),
        };
        let state_ids: Vec<OwnedEventId> = state
            .values()
            .map(|short| self.rooms.short.event_id(*short))
            .collect::<Result<_>>()?;
        let chain = self
            .rooms
            .auth_chain_ids(state_ids.iter().map(|id| &**id).chain([join_id]))?;
        let servers_in_room = member_servers(&self.rooms, &state, &[MembershipState::Join])?;
        let event = self
            .rooms
            .pdu_json(join_id)?
            .ok_or_else(|| Error::internal(format!("accepted join {join_id} is not stored")))?;
        tracing::info!(room = %room_id, join = %join_id, "remote join accepted");
        Ok(JoinAnswer {
            event: federation_form(event)?,
            state: self.federation_pdus(&state_ids)?,
            auth_chain: self.federation_pdus(&chain)?,
            servers_in_room: servers_in_room.into_iter().collect(),
        })
    }

    /// Stored events in federation form, as they are (no visibility filter: state and auth
    /// chains are what a server in the room needs to check events).
    pub fn federation_pdus(&self, ids: &[OwnedEventId]) -> Result<Vec<Box<RawJsonValue>>> {
        ids.iter()
            .map(|id| {
                let stored = self
                    .rooms
                    .pdu_json(id)?
                    .ok_or_else(|| Error::internal(format!("event {id} is not stored")))?;
                federation_form(stored)
            })
            .collect()
    }

    /// `GET /v1/event/{eventId}`: any event we hold except a rejected one, for a server in
    /// its room; redacted when the history visibility at it hides it from that server.
    pub fn federation_event(
        &self,
        origin: &ServerName,
        event_id: &EventId,
    ) -> Result<Box<RawJsonValue>> {
        let not_found = || Error::not_found("Event not found.");
        let pdu = self.rooms.pdu(event_id)?.ok_or_else(not_found)?;
        if matches!(self.rooms.verdict(event_id)?, Verdict::Rejected(_)) {
            return Err(not_found());
        }
        let room_id = pdu.room_id();
        let info = self.rooms.info(&room_id)?.ok_or_else(not_found)?;
        let users = self.require_server_in_room(origin, &room_id)?;
        Serve::new(&self.rooms, users, info.version)
            .event(event_id)?
            .ok_or_else(not_found)
    }

    /// `GET /v1/state_ids/{roomId}?event_id=` (and `/state`): the state before the event
    /// and its auth chain. 404 for an unknown room, an event of another room, or one whose
    /// state we do not know (an outlier) or that was rejected.
    pub fn state_at(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<StateAt> {
        let not_found = || Error::not_found("Event not found, or its state is not known here.");
        self.rooms.existing(room_id)?;
        self.require_server_in_room(origin, room_id)?;
        let pdu = self.rooms.pdu(event_id)?.ok_or_else(not_found)?;
        if pdu.room_id() != room_id || matches!(self.rooms.verdict(event_id)?, Verdict::Rejected(_))
        {
            return Err(not_found());
        }
        let (before, _) = self.rooms.state_hashes(event_id)?.ok_or_else(not_found)?;
        let state: Vec<OwnedEventId> = match before {
            Some(hash) => self
                .rooms
                .state
                .load(hash)?
                .values()
                .map(|short| self.rooms.short.event_id(*short))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        let auth_chain = self.rooms.auth_chain_ids(state.iter().map(|id| &**id))?;
        Ok(StateAt { state, auth_chain })
    }

    /// `GET /v1/event_auth/{roomId}/{eventId}`: the event's full auth chain.
    pub fn event_auth(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.rooms.existing(room_id)?;
        self.require_server_in_room(origin, room_id)?;
        let pdu = self
            .rooms
            .pdu(event_id)?
            .filter(|pdu| pdu.room_id() == room_id)
            .ok_or_else(|| Error::not_found("Event not found."))?;
        let chain = self.rooms.auth_chain_ids([&*pdu.event_id])?;
        self.federation_pdus(&chain)
    }

    /// `POST /v1/get_missing_events/{roomId}` ([`missing_events_walk`]).
    pub fn missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let info = self.rooms.existing(room_id)?;
        let users = self.require_server_in_room(origin, room_id)?;
        let found = missing_events_walk(&self.rooms, room_id, earliest, latest, limit, min_depth)?;
        let mut serve = Serve::new(&self.rooms, users, info.version);
        let mut events = Vec::with_capacity(found.len());
        for (id, _) in found {
            events.extend(serve.event(&id)?);
        }
        Ok(events)
    }

    /// `GET /v1/backfill/{roomId}?v=…&limit=…` ([`backfill_walk`]).
    pub fn backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let info = self.rooms.existing(room_id)?;
        let users = self.require_server_in_room(origin, room_id)?;
        let found = backfill_walk(&self.rooms, room_id, from, limit)?;
        let mut serve = Serve::new(&self.rooms, users, info.version);
        let mut events = Vec::with_capacity(found.len());
        for id in found {
            events.extend(serve.event(&id)?);
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests;
