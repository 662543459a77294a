//! Rooms: events (PDUs), the compact state core, timelines and membership indexes.
//!
//! - [`pdu`]: the stored event type and its client forms.
//! - [`pos`]: timeline positions ([`pos::Pos`], live > 0, backfilled < 0) and their keys.
//! - [`short`]: interning of event ids, state keys and room ids.
//! - [`state`]: state sets stored as diffs with periodic snapshots.
//! - [`append`]: sending a local event, in four steps: [`build`] (prev and auth events,
//!   JSON, hash, signature, event id; local events only), [`check`] (the authorization
//!   rules; shared with remote events), [`prepare`] (state sets, the current state's
//!   resolution, membership changes: under the room lock, outside the commit lock) and
//!   [`commit`] (the one store step: writes at the next stream position).
//! - [`resolve`]: state resolution where forks meet (ruma's state-res).
//! - [`auth_chain`]: every event's auth chain, recorded compactly and cached, for resolution.
//! - [`verify`]: the first checks on an event from another server (format, signatures,
//!   content hash), before anything is stored.
//! - [`create`], [`membership`], [`alias`], [`upgrade`]: createRoom, membership changes,
//!   aliases and the public directory, room upgrades, all built on `append`.
//! - [`redact`]: redactions rewriting their target, local and remote, and remote ones
//!   waiting for their target.
//! - [`visibility`], [`relations`], [`power`]: history visibility, relations and threads,
//!   power levels for client-side checks.
//! - [`timestamp`]: the event closest to a date (`timestamp_to_event`).
//! - [`directory`], [`space`]: pages of the published-room directory, and rooms as a
//!   space hierarchy shows them (with who may see them).
//!
//! Trees owned here (besides those of `short` and `state`):
//! - `pduid_pdu`: `short room id (u64) ‖ pos key (8 or 16 bytes, see [`pos`])` → stored PDU
//!   JSON. Timeline order.
//! - `eventid_pduid`: event id → pdu id (16 or 24 bytes).
//! - `eventid_pdu`: event id → stored PDU JSON, for events without a timeline place
//!   (outliers, soft-failed and rejected events). An event is in this tree or in
//!   `eventid_pduid`, never both.
//! - `shorteventid_verdict`: short event id → `S` (soft-failed) or `R` ‖ reason
//!   (rejected); absent = accepted ([`check::Verdict`]).
//! - `shorteventid_statehashes`: short event id → state hash before (u64, 0 = empty) and
//!   after (u64) the event.
//! - `roomid_info`: room id → [`RoomInfo`] (version, current state hash, last count, depth).
//! - `roomid_extremities`: room id → its forward extremities, event ids joined by `0xFF`
//!   (one value per room, rewritten whole: a log-structured store scans a prefix of
//!   per-event keys through every removed one, and extremities change with every event;
//!   schema 3, `service::migrations`).
//! - `roomid_backwardextremity`: `room id 0xFF event id` → empty. Events named in the
//!   `prev_events` of an event with state that we do not hold with state: holes in the
//!   DAG, where backfill starts ([`Rooms::backward_extremities`]). An event that fills one
//!   is never a forward extremity.
//! - `shorteventid_pendingredaction`: `target short event id ‖ redaction short event id` →
//!   empty. Redactions from other servers whose target is not held yet ([`redact`]).
//! - `userroomid_membership`: `user 0xFF room` → [`MembershipEntry`] (JSON; with stripped
//!   state for a room this server is not in).
//! - `roomuserid_membership`: `room 0xFF user` → membership string.
//! - `userdevicetxnid_eventid`: `user 0xFF device 0xFF txn id` → event id (idempotent send).
//! - `eventid_devicetxnid`: event id → `device 0xFF txn id` (for `unsigned.transaction_id`).
//! - `reportid_report`: report number (u64) → report (JSON: reporter, room, event, reason).
//! - `userroomid_remoteinvite`: see [`remote_invite`] (invites from other servers to rooms
//!   not held here, and their rejections).

pub mod accept;
#[cfg(test)]
mod accept_tests;
pub mod alias;
pub mod append;
pub mod auth_chain;
#[cfg(test)]
mod backfill_tests;
mod build;
pub mod check;
mod commit;
pub mod create;
pub mod directory;
pub mod facts;
#[cfg(test)]
mod failure_tests;
pub mod membership;
pub mod pdu;
pub mod pos;
pub mod power;
mod prepare;
mod redact;
#[cfg(test)]
mod redact_tests;
pub mod relations;
pub mod remote_invite;
#[cfg(test)]
pub(crate) mod remote_tests;
pub mod resolve;
pub mod short;
pub mod space;
pub mod state;
#[cfg(test)]
mod tests;
pub mod timestamp;
pub mod upgrade;
pub mod verify;
pub mod visibility;

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    sync::Arc,
};

use ruma::{
    DeviceId, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, UserId,
    events::{AnyStrippedStateEvent, StateEventType, room::member::MembershipState},
    serde::Raw,
};
use serde::{Deserialize, Serialize};

use self::{
    pdu::Pdu,
    pos::{PduId, Pos},
    short::{ShortIds, ShortRoomId, u64_from},
    state::{StateHash, StateSet, StateStore},
};
use super::{server_keys::ServerKeys, stream::Stream};
use crate::{
    Error, Result,
    storage::{Batch, Db, Table, Tree},
};

/// The tree of each room's forward extremities (see the module's tree list).
pub(crate) const EXTREMITIES: &str = "roomid_extremities";

/// Event ids joined by `0xFF`, the value of [`EXTREMITIES`] (and how the schema-3 step
/// writes it).
pub(crate) fn join_extremities<'a>(ids: impl IntoIterator<Item = &'a EventId>) -> Vec<u8> {
    let mut value = Vec::new();
    for id in ids {
        if !value.is_empty() {
            value.push(0xFF);
        }
        value.extend_from_slice(id.as_bytes());
    }
    value
}

/// Per-room facts read on every append.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RoomInfo {
    pub version: RoomVersionId,
    pub short_room_id: ShortRoomId,
    /// The current (resolved) state.
    pub state_hash: StateHash,
    /// Count of the newest event.
    pub last_count: u64,
    /// Largest depth in the room.
    pub depth: u64,
    /// Count of the newest event that moves the room up a recency-sorted room list
    /// ([`bumps`]); 0 in rooms created before it was tracked (read [`RoomInfo::bump_stamp`]).
    #[serde(default)]
    pub bump_count: u64,
}

/// The first byte of [`RoomInfo`]'s stored form (JSON, written before, starts with `{`).
const ROOM_INFO_FORMAT: u8 = 1;

impl RoomInfo {
    /// Rewritten on every event, so kept small (issue 13): a format byte, five big-endian
    /// 64-bit numbers and the room version, about 45 bytes where JSON took 150.
    fn encode(&self) -> Vec<u8> {
        let version = self.version.as_str().as_bytes();
        let mut bytes = Vec::with_capacity(41 + version.len());
        bytes.push(ROOM_INFO_FORMAT);
        for number in [
            self.short_room_id,
            self.state_hash,
            self.last_count,
            self.depth,
            self.bump_count,
        ] {
            bytes.extend_from_slice(&number.to_be_bytes());
        }
        bytes.extend_from_slice(version);
        bytes
    }

    /// The stored form, or the JSON of earlier builds.
    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |detail: String| Error::internal(format!("bad room info: {detail}"));
        let Some((&ROOM_INFO_FORMAT, rest)) = bytes.split_first() else {
            return serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()));
        };
        if rest.len() < 40 {
            return Err(bad(format!("{} bytes", bytes.len())));
        }
        let (numbers, version) = rest.split_at(40);
        let number =
            |n: usize| u64::from_be_bytes(numbers[n * 8..n * 8 + 8].try_into().expect("8 bytes"));
        let version = std::str::from_utf8(version)
            .ok()
            .and_then(|version| RoomVersionId::try_from(version).ok())
            .ok_or_else(|| bad("the room version is not valid".into()))?;
        Ok(Self {
            version,
            short_room_id: number(0),
            state_hash: number(1),
            last_count: number(2),
            depth: number(3),
            bump_count: number(4),
        })
    }

    /// The room's recency for sliding sync's `bump_stamp`.
    pub fn bump_stamp(&self) -> u64 {
        if self.bump_count == 0 {
            self.last_count
        } else {
            self.bump_count
        }
    }
}

/// Event types that count as activity for a room's place in a recency-sorted list (the set
/// Synapse uses for sliding sync's `bump_stamp`): messages and other things people post, not
/// state changes, reactions or receipts.
pub fn bumps(kind: &ruma::events::TimelineEventType) -> bool {
    matches!(
        kind.to_string().as_str(),
        "m.room.create"
            | "m.room.message"
            | "m.room.encrypted"
            | "m.sticker"
            | "m.call.invite"
            | "m.poll.start"
            | "org.matrix.msc3381.poll.start"
            | "m.beacon_info"
            | "org.matrix.msc3672.beacon_info"
    )
}

/// A user's relation to a room, as sync needs it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MembershipEntry {
    pub membership: MembershipState,
    /// Count of the membership event.
    pub count: u64,
    /// For a room this server is not in (a knock on another server's room): the stripped
    /// state that server gave, with the user's own member event, shown instead of the
    /// room's state ([`Rooms::set_outside_membership`]). `None` for rooms held here; a
    /// membership event of the room, once held, rewrites the entry without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripped_state: Option<Vec<Raw<AnyStrippedStateEvent>>>,
    /// For our own users while joined: the count of the event that made them a member
    /// (a later profile change keeps it), from which their notification counts start
    /// (`push.rs`). 0 when not joined, for other servers' users, and in entries written
    /// before it was kept (read as "joined before anything was counted").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub joined_since: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Number of room locks. Appends to one room are serialised; different rooms mostly not.
const LOCK_STRIPES: usize = 256;

pub struct Rooms {
    db: Db,
    server_name: OwnedServerName,
    keys: Arc<ServerKeys>,
    pub short: ShortIds,
    pub state: StateStore,
    auth_chains: auth_chain::AuthChains,
    pub stream: Arc<Stream>,
    pdus: Arc<dyn Tree>,
    eventid_pduid: Arc<dyn Tree>,
    outliers: Arc<dyn Tree>,
    verdicts: Arc<dyn Tree>,
    backward_extremities: Arc<dyn Tree>,
    pending_redactions: Arc<dyn Tree>,
    statehashes: Arc<dyn Tree>,
    /// `roomid_info`: [`RoomInfo::encode`].
    info: Arc<dyn Tree>,
    extremities: Arc<dyn Tree>,
    user_rooms: Table<MembershipEntry>,
    room_users: Arc<dyn Tree>,
    remote_invites: Table<remote_invite::RemoteInvite>,
    txn_event: Arc<dyn Tree>,
    event_txn: Arc<dyn Tree>,
    reports: Table<serde_json::Value>,
    relations: Arc<dyn Tree>,
    thread_roots: Arc<dyn Tree>,
    pub aliases: alias::Aliases,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// The federation queue: our events go to the other servers in the room, queued in the
    /// event's own commit. `None` when federation is off.
    outgoing: Option<Arc<crate::service::federation::sender::Sender>>,
}

/// `a 0xFF b`.
pub(crate) fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + 1 + b.len());
    key.extend_from_slice(a.as_bytes());
    key.push(0xFF);
    key.extend_from_slice(b.as_bytes());
    key
}

pub(crate) fn prefix_key(a: &str) -> Vec<u8> {
    let mut key = a.as_bytes().to_vec();
    key.push(0xFF);
    key
}

/// `user 0xFF device 0xFF txn id`.
pub(crate) fn txn_key(user_id: &UserId, device_id: &DeviceId, txn_id: &str) -> Vec<u8> {
    let mut key = pair_key(user_id.as_str(), device_id.as_str());
    key.push(0xFF);
    key.extend_from_slice(txn_id.as_bytes());
    key
}

/// `short room id ‖ pos key`: the key of a timeline event in `pduid_pdu`.
pub fn pdu_id(short_room_id: ShortRoomId, pos: Pos) -> PduId {
    PduId::new(short_room_id, pos)
}

impl Rooms {
    pub fn new(
        db: &Db,
        server_name: OwnedServerName,
        keys: Arc<ServerKeys>,
        stream: Arc<Stream>,
    ) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            server_name,
            keys,
            short: ShortIds::new(db)?,
            state: StateStore::new(db)?,
            auth_chains: auth_chain::AuthChains::new(db)?,
            stream,
            pdus: db.tree("pduid_pdu")?,
            eventid_pduid: db.tree("eventid_pduid")?,
            outliers: db.tree("eventid_pdu")?,
            verdicts: db.tree("shorteventid_verdict")?,
            backward_extremities: db.tree("roomid_backwardextremity")?,
            pending_redactions: db.tree("shorteventid_pendingredaction")?,
            statehashes: db.tree("shorteventid_statehashes")?,
            info: db.tree("roomid_info")?,
            extremities: db.tree(EXTREMITIES)?,
            user_rooms: db.table("userroomid_membership")?,
            room_users: db.tree("roomuserid_membership")?,
            remote_invites: db.table("userroomid_remoteinvite")?,
            txn_event: db.tree("userdevicetxnid_eventid")?,
            event_txn: db.tree("eventid_devicetxnid")?,
            reports: db.table("reportid_report")?,
            relations: db.tree("relations")?,
            thread_roots: db.tree("roomid_threadroot")?,
            aliases: alias::Aliases::new(db)?,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            outgoing: None,
        })
    }

    /// Sends this server's room events to the other servers in each room through `sender`.
    pub fn with_outgoing(
        mut self,
        sender: Option<Arc<crate::service::federation::sender::Sender>>,
    ) -> Self {
        self.outgoing = sender;
        self
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// Serialises appends to one room.
    pub async fn lock(&self, room_id: &RoomId) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        room_id.hash(&mut hasher);
        self.locks[hasher.finish() as usize % LOCK_STRIPES]
            .lock()
            .await
    }

    pub fn info(&self, room_id: &RoomId) -> Result<Option<RoomInfo>> {
        self.info
            .get(room_id.as_bytes())?
            .map(|bytes| RoomInfo::decode(&bytes))
            .transpose()
    }

    /// The room's info, or 404 `M_NOT_FOUND`.
    pub fn existing(&self, room_id: &RoomId) -> Result<RoomInfo> {
        self.info(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))
    }

    fn decode_pdu(bytes: &[u8]) -> Result<Pdu> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::internal(format!("corrupt stored PDU: {e}")))
    }

    pub fn pdu_id_of(&self, event_id: &EventId) -> Result<Option<PduId>> {
        match self.eventid_pduid.get(event_id.as_bytes())? {
            None => Ok(None),
            // A value that is no pdu id is corrupt data, not a missing event.
            Some(id) => PduId::from_bytes(&id)
                .map(Some)
                .ok_or_else(|| Error::internal(format!("corrupt pdu id of {event_id}"))),
        }
    }

    /// Any event we hold: with a timeline place, or without one (an outlier, a soft-failed
    /// or a rejected event). For what clients may see use [`Rooms::client_pdu`]; for ruma's
    /// auth checks [`Rooms::pdu_for_auth`].
    pub fn pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        Ok(self.pdu_placed(event_id)?.map(|(pdu, _)| pdu))
    }

    /// The event and whether it has a timeline place.
    pub(super) fn pdu_placed(&self, event_id: &EventId) -> Result<Option<(Pdu, bool)>> {
        if let Some(id) = self.pdu_id_of(event_id)? {
            // `eventid_pduid` names a timeline entry: a dangling one is corrupt data.
            let bytes = self
                .pdus
                .get(&id)?
                .ok_or_else(|| Error::internal(format!("timeline entry of {event_id} missing")))?;
            return Ok(Some((Self::decode_pdu(&bytes)?, true)));
        }
        match self.outliers.get(event_id.as_bytes())? {
            Some(bytes) => Ok(Some((Self::decode_pdu(&bytes)?, false))),
            None => Ok(None),
        }
    }

    /// What the checks decided about a stored event (accepted for an unknown one).
    pub fn verdict(&self, event_id: &EventId) -> Result<check::Verdict> {
        let Some(short) = self.short.get_short_event_id(event_id)? else {
            return Ok(check::Verdict::Accepted);
        };
        check::Verdict::decode(self.verdicts.get(&short.to_be_bytes())?.as_deref())
    }

    /// The event for ruma's authorization checks and state resolution: with
    /// [`Pdu::rejected`] set, so that an event citing a rejected auth event is rejected
    /// (rooms v1+ authorization rules) and resolution skips it.
    pub fn pdu_for_auth(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        let Some((mut pdu, placed)) = self.pdu_placed(event_id)? else {
            return Ok(None);
        };
        // Only accepted events have a timeline place: no verdict lookup for them.
        if !placed {
            pdu.rejected = matches!(self.verdict(event_id)?, check::Verdict::Rejected(_));
        }
        Ok(Some(pdu))
    }

    /// The event as a client may ask for it by id: `None` for rejected and soft-failed
    /// events, which clients are never shown (server-server API, "Rejection", "Soft
    /// failure"). Outliers are returned; they have no state, so history visibility hides
    /// them.
    pub fn client_pdu(&self, event_id: &EventId) -> Result<Option<Pdu>> {
        let Some((pdu, placed)) = self.pdu_placed(event_id)? else {
            return Ok(None);
        };
        if placed || self.verdict(event_id)? == check::Verdict::Accepted {
            Ok(Some(pdu))
        } else {
            Ok(None)
        }
    }

    /// The event as stored: the signed PDU (with `hashes` and `signatures`) plus `event_id`
    /// and `unsigned`, for `event_format: federation`.
    pub fn pdu_json(&self, event_id: &EventId) -> Result<Option<serde_json::Value>> {
        let bytes = match self.pdu_id_of(event_id)? {
            Some(id) => self.pdus.get(&id)?,
            None => self.outliers.get(event_id.as_bytes())?,
        };
        bytes
            .map(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::internal(format!("corrupt stored PDU: {e}")))
            })
            .transpose()
    }

    /// The event at `pos` in the room, if there is one.
    pub fn pdu_at(&self, short_room_id: ShortRoomId, pos: Pos) -> Result<Option<Pdu>> {
        self.pdus
            .get(&pdu_id(short_room_id, pos))?
            .map(|bytes| Self::decode_pdu(&bytes))
            .transpose()
    }

    /// The timeline position of a stored event (`None`: not stored, or without a place).
    pub fn pos_of(&self, event_id: &EventId) -> Result<Option<Pos>> {
        Ok(self.pdu_id_of(event_id)?.map(|id| id.pos()))
    }

    /// Up to `limit` events before `pos` (exclusive), newest first.
    pub fn events_before(
        &self,
        info: &RoomInfo,
        pos: Pos,
        limit: usize,
    ) -> Result<Vec<(Pos, Pdu)>> {
        // From the key of `pos` itself, skipping an event stored there: `pos - 1` would not
        // be the key just below across the live/backfill boundary.
        let start = pdu_id(info.short_room_id, pos);
        let iter = self
            .pdus
            .iter_from(&start, true)
            .filter(|entry| !matches!(entry, Ok((key, _)) if key.as_slice() == &*start));
        self.collect_events(iter, info.short_room_id, limit)
    }

    /// Up to `limit` events from `pos` (inclusive) on, oldest first.
    pub fn events_from(&self, info: &RoomInfo, pos: Pos, limit: usize) -> Result<Vec<(Pos, Pdu)>> {
        let start = pdu_id(info.short_room_id, pos);
        self.collect_events(
            self.pdus.iter_from(&start, false),
            info.short_room_id,
            limit,
        )
    }

    fn collect_events(
        &self,
        iter: impl Iterator<Item = crate::storage::StorageResult<crate::storage::KeyValue>>,
        short_room_id: ShortRoomId,
        limit: usize,
    ) -> Result<Vec<(Pos, Pdu)>> {
        let prefix = short_room_id.to_be_bytes();
        let mut out = Vec::new();
        for entry in iter {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            if !key.starts_with(&prefix) {
                break;
            }
            let pos = Pos::from_key(&key[8..])
                .ok_or_else(|| Error::internal(format!("bad pdu id {key:02x?}")))?;
            out.push((pos, Self::decode_pdu(&value)?));
        }
        Ok(out)
    }

    /// State hashes before and after an event.
    pub fn state_hashes(
        &self,
        event_id: &EventId,
    ) -> Result<Option<(Option<StateHash>, StateHash)>> {
        let Some(short) = self.short.get_short_event_id(event_id)? else {
            return Ok(None);
        };
        let Some(bytes) = self.statehashes.get(&short.to_be_bytes())? else {
            return Ok(None);
        };
        let corrupt = || Error::internal("bad value in shorteventid_statehashes");
        let before = bytes.get(..8).and_then(u64_from).ok_or_else(corrupt)?;
        let after = bytes.get(8..16).and_then(u64_from).ok_or_else(corrupt)?;
        let before = (before != 0).then_some(before);
        Ok(Some((before, after)))
    }

    pub fn current_state(&self, info: &RoomInfo) -> Result<StateSet> {
        self.state.load(info.state_hash)
    }

    /// The event holding `(kind, state_key)` in `state`.
    pub fn state_event(
        &self,
        state: &StateSet,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        let Some(short_key) = self.short.get_short_state_key(kind, state_key)? else {
            return Ok(None);
        };
        match state.get(&short_key) {
            // A state set names only stored events: one that is missing is corrupt data,
            // not "no such state".
            Some(short_event) => {
                let event_id = self.short.event_id(*short_event)?;
                self.pdu(&event_id)?
                    .map(Some)
                    .ok_or_else(|| Error::internal(format!("state event {event_id} is not stored")))
            }
            None => Ok(None),
        }
    }

    /// The current state event `(kind, state_key)` of a room.
    pub fn current_state_event(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Pdu>> {
        let Some(info) = self.info(room_id)? else {
            return Ok(None);
        };
        self.state_event(&self.current_state(&info)?, kind, state_key)
    }

    /// Every event of a state set.
    pub fn state_events(&self, state: &StateSet) -> Result<Vec<Pdu>> {
        state
            .values()
            .map(|short| {
                let event_id = self.short.event_id(*short)?;
                self.pdu(&event_id)?
                    .ok_or_else(|| Error::internal(format!("state event {event_id} missing")))
            })
            .collect()
    }

    pub fn extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        let Some(bytes) = self.extremities.get(room_id.as_bytes())? else {
            return Ok(Vec::new());
        };
        bytes
            .split(|byte| *byte == 0xFF)
            .map(|id| {
                OwnedEventId::try_from(String::from_utf8_lossy(id).into_owned())
                    .map_err(|_| Error::internal(format!("bad event id in {EXTREMITIES}")))
            })
            .collect()
    }

    /// Writes the room's forward extremities as `extremities` (none: the entry goes).
    pub(super) fn write_extremities<'a>(
        &self,
        batch: &mut Batch,
        room_id: &RoomId,
        extremities: impl IntoIterator<Item = &'a EventId>,
    ) {
        // In event id order, as they always were.
        let sorted: std::collections::BTreeSet<&EventId> = extremities.into_iter().collect();
        let value = join_extremities(sorted);
        if value.is_empty() {
            batch.remove(&*self.extremities, room_id.as_bytes().to_vec());
        } else {
            batch.insert(&*self.extremities, room_id.as_bytes().to_vec(), value);
        }
    }

    /// The room's backward extremities: events that an event we hold with state names in
    /// its `prev_events` but that we do not hold with state (holes in the DAG). Backfill
    /// (`/backfill` with these as `v`) starts here; an event accepted as
    /// [`accept::Place::Backfill`] (or live) closes its hole, and its own unknown prev
    /// events become holes.
    /// The other servers with a user joined in `room_id` (as the membership index says):
    /// where our events, typing notices and receipts go, and whom to ask for history.
    pub fn joined_servers(
        &self,
        room_id: &RoomId,
    ) -> Result<std::collections::BTreeSet<ruma::OwnedServerName>> {
        let mut servers = std::collections::BTreeSet::new();
        for (user, membership) in self.members(room_id)? {
            if membership == MembershipState::Join {
                servers.insert(user.server_name().to_owned());
            }
        }
        servers.remove(&self.server_name);
        Ok(servers)
    }

    pub fn backward_extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        Self::event_ids_under(&*self.backward_extremities, room_id)
    }

    /// The event ids of the `room id 0xFF event id` keys of `tree` for `room_id`.
    fn event_ids_under(tree: &dyn Tree, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        let prefix = prefix_key(room_id.as_str());
        tree.scan_prefix(&prefix)
            .map(|entry| {
                let (key, _) = entry?;
                OwnedEventId::try_from(String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
                    .map_err(|_| Error::internal(format!("bad key in {}", tree.name())))
            })
            .collect()
    }

    /// The user's membership in the room, from the index.
    pub fn membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipState>> {
        Ok(self
            .room_users
            .get(&pair_key(room_id.as_str(), user_id.as_str()))?
            .map(|bytes| MembershipState::from(String::from_utf8_lossy(&bytes).as_ref())))
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.membership(room_id, user_id)? == Some(MembershipState::Join))
    }

    /// All members of a room with their membership.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, MembershipState)>> {
        let prefix = prefix_key(room_id.as_str());
        self.room_users
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry?;
                let user = OwnedUserId::try_from(
                    String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                )
                .map_err(|_| Error::internal("bad member key"))?;
                Ok((
                    user,
                    MembershipState::from(String::from_utf8_lossy(&value).as_ref()),
                ))
            })
            .collect()
    }

    /// The user's membership entry for one room (with the count of its event).
    pub fn membership_entry(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipEntry>> {
        Ok(self
            .user_rooms
            .get(&pair_key(user_id.as_str(), room_id.as_str()))?)
    }

    /// Every room the user has a membership in, with that membership.
    pub fn rooms_of(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, MembershipEntry)>> {
        let prefix = prefix_key(user_id.as_str());
        self.user_rooms
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry?;
                let room = OwnedRoomId::try_from(
                    String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                )
                .map_err(|_| Error::internal("bad membership key"))?;
                Ok((room, value))
            })
            .collect()
    }

    /// Records `user_id`'s `membership` in `room_id`, a room this server is not in (a knock
    /// made through another server), with the stripped state that server gave, at a new
    /// stream position, and wakes the user's syncs. Does nothing (returns `false`) once
    /// the room is held here: its own member events are the truth then.
    pub async fn set_outside_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        membership: MembershipState,
        stripped_state: Vec<Raw<AnyStrippedStateEvent>>,
    ) -> Result<bool> {
        let _room = self.lock(room_id).await;
        if self.info(room_id)?.is_some() {
            return Ok(false);
        }
        // Only the user's index: the room's member index is for rooms held here.
        let (count, ()) = self.stream.commit(|count, batch| {
            batch.insert_json(
                &self.user_rooms,
                pair_key(user_id.as_str(), room_id.as_str()),
                &MembershipEntry {
                    membership,
                    count,
                    stripped_state: Some(stripped_state),
                    joined_since: 0,
                },
            );
            Ok(())
        })?;
        self.db.persist().await?;
        self.stream.touch([user_id], count);
        Ok(true)
    }

    /// The stripped state of `user_id`'s knock on `room_id` made through another server,
    /// while it stands and the room is not held here ([`Rooms::set_outside_membership`]).
    pub fn outside_knock(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<Vec<Raw<AnyStrippedStateEvent>>>> {
        if self.info(room_id)?.is_some() {
            return Ok(None);
        }
        Ok(self
            .membership_entry(room_id, user_id)?
            .filter(|entry| entry.membership == MembershipState::Knock)
            .and_then(|entry| entry.stripped_state))
    }

    /// Forgets a room the user has left: it disappears from their sync.
    pub async fn forget(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        // A room not held here has only the user's entry (a knock through another server).
        let membership = match self.membership(room_id, user_id)? {
            Some(membership) => Some(membership),
            None => self
                .membership_entry(room_id, user_id)?
                .map(|entry| entry.membership),
        };
        match membership {
            Some(MembershipState::Leave | MembershipState::Ban) | None => {}
            Some(_) => {
                return Err(Error::bad_request(
                    ruma::api::error::ErrorKind::Unknown,
                    "You are still in the room; leave it first.",
                ));
            }
        }
        self.user_rooms
            .remove(&pair_key(user_id.as_str(), room_id.as_str()))?;
        self.drop_remote_invite(room_id, user_id)?;
        self.db.persist().await?;
        Ok(())
    }

    /// The event an earlier send with this transaction id created, if any.
    pub fn txn_event(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        txn_id: &str,
    ) -> Result<Option<OwnedEventId>> {
        Ok(self
            .txn_event
            .get(&txn_key(user_id, device_id, txn_id))?
            .and_then(|bytes| {
                OwnedEventId::try_from(String::from_utf8_lossy(&bytes).into_owned()).ok()
            }))
    }

    /// The transaction id to show `device_id` for its own event.
    pub fn transaction_id_for(
        &self,
        event_id: &EventId,
        device_id: &DeviceId,
    ) -> Result<Option<String>> {
        let Some(bytes) = self.event_txn.get(event_id.as_bytes())? else {
            return Ok(None);
        };
        let prefix = prefix_key(device_id.as_str());
        Ok(bytes
            .strip_prefix(prefix.as_slice())
            .map(|txn| String::from_utf8_lossy(txn).into_owned()))
    }

    /// Stores a report for the server's admins (and logs it), durably.
    pub async fn report(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: Option<&EventId>,
        reason: Option<&str>,
    ) -> Result<()> {
        let id = self.db.next_id()?;
        let report = serde_json::json!({
            "reporter": reporter,
            "room_id": room_id,
            "event_id": event_id,
            "reason": reason,
            "ts": ruma::MilliSecondsSinceUnixEpoch::now(),
        });
        self.reports.insert(&id.to_be_bytes(), &report)?;
        self.db.persist().await?;
        tracing::warn!(%reporter, %room_id, event_id = ?event_id, reason = ?reason, "content reported");
        Ok(())
    }
}
