//! The reads another server in a room uses to fill gaps (server-server API, "Retrieving
//! events", "Backfilling and retrieving missing events"): one event, the state before an
//! event, an event's auth chain, missing prev events, older history.

use std::collections::{BinaryHeap, HashMap, HashSet};

use ruma::{
    CanonicalJsonObject, EventId, OwnedEventId, OwnedUserId, RoomId, RoomVersionId, ServerName,
    events::{StateEventType, room::member::MembershipState},
};
use serde_json::value::RawValue as RawJsonValue;

use super::{MAX_WALK_LIMIT, MAX_WALK_VISITS, federation_form};
use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            Rooms,
            check::Verdict,
            pdu::Pdu,
            state::{StateHash, StateSet},
        },
    },
};

/// The state before an event and its auth chain, as event ids (`/state_ids`); `/state` loads
/// them with [`Services::federation_pdus`].
#[derive(Debug)]
pub struct StateAt {
    pub state: Vec<OwnedEventId>,
    pub auth_chain: Vec<OwnedEventId>,
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

impl Services {
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
