//! Creating a local event. Under the room lock: pick `prev_events` (the forward
//! extremities, or given ones) and `auth_events` (from the state before the event, per the room version's auth-event
//! selection), build the PDU, add the content hash, sign it, derive the event id (reference
//! hash, rooms v3+), check it against the authorization rules with ruma's state-res, then
//! store event, state, timeline position, extremities and membership indexes in one batch.
//! A rejected event is never stored.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, DeviceId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    RoomId, RoomVersionId, UserId,
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
    signatures::{JsonError, hash_and_sign_event, reference_hash},
    state_res::{
        auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules,
    },
};
use serde_json::{Value as JsonValue, json};

use super::state::StateHash;
use super::{
    MembershipEntry, RoomInfo, Rooms, pair_key,
    pdu::{Pdu, room_id_from_create_event_id},
    pdu_id,
    pos::Pos,
    prefix_key, txn_key,
};
use crate::{Error, Result};

/// What a caller wants to send; the rest of the PDU is filled in here.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: TimelineEventType,
    pub content: JsonValue,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: JsonValue,
    ) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
        }
    }

    pub fn message(kind: impl Into<TimelineEventType>, content: JsonValue) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: None,
            redacts: None,
        }
    }
}

/// What only some appends have: the client's transaction, explicit `prev_events`.
#[derive(Default)]
pub(super) struct Extra<'a> {
    pub transaction: Option<Transaction<'a>>,
    pub prev_events: Option<Vec<OwnedEventId>>,
}

/// Where the state before a new event comes from.
enum BeforeSource {
    /// The create event: nothing before it.
    Empty,
    /// The state after its single prev_event.
    Stored(StateHash),
    /// Resolved over several prev_events; stored as a diff against `parent`.
    Resolved { parent: StateHash },
}

/// The client transaction an event answers, for idempotent sends.
pub struct Transaction<'a> {
    pub device_id: &'a DeviceId,
    pub txn_id: &'a str,
}

/// Room versions this server creates and serves. Versions 1 and 2 use the original event
/// format (event ids chosen by the sender, `[id, hash]` references) and, for version 1,
/// state resolution v1, which ruma's state-res does not implement; they are not offered.
pub fn supported_room_version(version: &RoomVersionId) -> bool {
    matches!(
        version,
        RoomVersionId::V3
            | RoomVersionId::V4
            | RoomVersionId::V5
            | RoomVersionId::V6
            | RoomVersionId::V7
            | RoomVersionId::V8
            | RoomVersionId::V9
            | RoomVersionId::V10
            | RoomVersionId::V11
            | RoomVersionId::V12
    )
}

/// The largest event, signed and as canonical JSON (client-server API, "Size limits").
pub const MAX_EVENT_BYTES: usize = 65_536;
/// The longest `type` and `state_key`, in bytes (the same section).
pub const MAX_KEY_BYTES: usize = 255;

fn too_large() -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!("The event is larger than {MAX_EVENT_BYTES} bytes."),
    )
}

/// `type` and `state_key` within their limits; 413 `M_TOO_LARGE` otherwise, as Synapse.
fn check_key_sizes(event: &NewEvent) -> Result<()> {
    let kind = event.kind.to_string();
    let state_key = event.state_key.as_deref().unwrap_or_default();
    for (name, value) in [("type", kind.as_str()), ("state_key", state_key)] {
        if value.len() > MAX_KEY_BYTES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("The event's `{name}` is longer than {MAX_KEY_BYTES} bytes."),
            ));
        }
    }
    Ok(())
}

/// The complete signed event, as canonical JSON, within [`MAX_EVENT_BYTES`].
fn check_event_size(object: &CanonicalJsonObject) -> Result<()> {
    let size = serde_json::to_vec(object)
        .map_err(|e| Error::internal(format!("event serialisation: {e}")))?
        .len();
    if size > MAX_EVENT_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn canonical(value: JsonValue) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err(Error::bad_json("Event content must be an object.")),
        Err(error) => Err(Error::bad_json(format!(
            "Event is not canonical JSON: {error}"
        ))),
    }
}

impl Rooms {
    /// Sends `event` into an existing room as `sender` and makes it durable. Returns the
    /// stored event.
    pub async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
        transaction: Option<Transaction<'_>>,
    ) -> Result<Pdu> {
        let pdu = {
            let _guard = self.lock(room_id).await;
            // Checked again under the room lock: two concurrent retries of one transaction
            // must not both create an event.
            if let Some(transaction) = &transaction
                && let Some(existing) =
                    self.txn_event(sender, transaction.device_id, transaction.txn_id)?
            {
                return self
                    .pdu(&existing)?
                    .ok_or_else(|| Error::internal("transaction event missing"));
            }
            let info = self.existing(room_id)?;
            self.append_locked(
                Some(room_id),
                &info.version.clone(),
                Some(info),
                sender,
                event,
                Extra {
                    transaction,
                    prev_events: None,
                },
            )?
        };
        self.db.persist().await?;
        Ok(pdu)
    }

    /// Sends an event with explicit `prev_events` (a fork, as other servers create them;
    /// federation will receive such events). The room's state is resolved where they meet.
    pub async fn send_with_prev_events(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
        prev_events: Vec<OwnedEventId>,
    ) -> Result<Pdu> {
        let pdu = {
            let _guard = self.lock(room_id).await;
            let info = self.existing(room_id)?;
            self.append_locked(
                Some(room_id),
                &info.version.clone(),
                Some(info),
                sender,
                event,
                Extra {
                    transaction: None,
                    prev_events: Some(prev_events),
                },
            )?
        };
        self.db.persist().await?;
        Ok(pdu)
    }

    fn state_before(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        prev_events: &[OwnedEventId],
    ) -> Result<(BTreeMap<u64, u64>, BeforeSource)> {
        let after_of = |id: &OwnedEventId| -> Result<StateHash> {
            self.state_hashes(id)?
                .map(|(_, after)| after)
                .ok_or_else(|| Error::not_found(format!("Unknown prev_event {id}.")))
        };
        match prev_events {
            [] => Ok((BTreeMap::new(), BeforeSource::Empty)),
            [single] => {
                let after = after_of(single)?;
                Ok((
                    (*self.state.load(after)?).clone(),
                    BeforeSource::Stored(after),
                ))
            }
            several => {
                let hashes = several.iter().map(after_of).collect::<Result<Vec<_>>>()?;
                let resolved = self.resolve_states(rules, &hashes, None)?;
                Ok((resolved, BeforeSource::Resolved { parent: hashes[0] }))
            }
        }
    }

    /// Builds, authorises and stores one event; the caller holds the room lock. `room_id` is
    /// `None` only for a version-12 create event, whose id names the room.
    pub(super) fn append_locked(
        &self,
        room_id: Option<&RoomId>,
        version: &RoomVersionId,
        info: Option<RoomInfo>,
        sender: &UserId,
        event: NewEvent,
        extra: Extra<'_>,
    ) -> Result<Pdu> {
        let Extra {
            transaction,
            prev_events: prev_override,
        } = extra;
        let room_id_given = room_id;
        check_key_sizes(&event)?;
        let rules = version
            .rules()
            .filter(|_| supported_room_version(version))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnsupportedRoomVersion,
                    "Unsupported room version.",
                )
            })?;
        let prev_events = match (&prev_override, room_id) {
            (Some(prevs), _) => prevs.clone(),
            (None, Some(room_id)) => self.extremities(room_id)?,
            (None, None) => Vec::new(),
        };
        // The state before the event: after its one prev_event, or resolved over several.
        let (state, before_source) = self.state_before(&rules, &prev_events)?;
        // Server-server API, "PDUs": `depth` is one more than the largest `depth` among the
        // prev events, capped at the largest integer canonical JSON allows (2^53 - 1).
        let mut depth: u64 = 0;
        for prev in &prev_events {
            let prev = self
                .pdu(prev)?
                .ok_or_else(|| Error::internal(format!("prev event {prev} is not stored")))?;
            depth = depth.max(u64::from(prev.depth));
        }
        let depth = (depth + 1).min(u64::from(ruma::UInt::MAX));
        let room_depth = info.as_ref().map_or(depth, |info| info.depth.max(depth));

        // Auth events: the room version's selection from the state before the event
        // (server-server API, "Auth events selection").
        let content_raw = serde_json::value::to_raw_value(&event.content)
            .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))?;
        let auth_types = auth_types_for_event(
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;
        let mut auth_events = Vec::new();
        for (kind, state_key) in &auth_types {
            if let Some(short_key) = self.short.get_short_state_key(kind, state_key)?
                && let Some(short_event) = state.get(&short_key)
            {
                auth_events.push(self.short.event_id(*short_event)?);
            }
        }

        let mut object = json!({
            "auth_events": auth_events,
            "content": event.content,
            "depth": depth,
            "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
            "prev_events": prev_events,
            "sender": sender,
            "type": event.kind,
        });
        if let Some(room_id) = room_id {
            object["room_id"] = room_id.as_str().into();
        }
        if let Some(state_key) = &event.state_key {
            object["state_key"] = state_key.as_str().into();
        }
        if let Some(redacts) = &event.redacts {
            // Since rooms v11 `redacts` lives in the content; before, at the top level.
            if rules.redaction.keep_room_redaction_redacts {
                object["content"]["redacts"] = redacts.as_str().into();
            } else {
                object["redacts"] = redacts.as_str().into();
            }
        }
        let mut object = canonical(object)?;
        hash_and_sign_event(
            self.server_name.as_str(),
            self.keys.keypair(),
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| match e {
            JsonError::PduTooLarge => too_large(),
            e => Error::bad_json(format!("Event cannot be signed: {e}")),
        })?;
        check_event_size(&object)?;
        let hash = reference_hash(&object, &rules).map_err(|e| match e {
            JsonError::PduTooLarge => too_large(),
            e => Error::bad_json(format!("Event cannot be hashed: {e}")),
        })?;
        let event_id = OwnedEventId::try_from(format!("${hash}"))
            .map_err(|_| Error::internal("reference hash is not an event id"))?;
        let room_id = match room_id {
            Some(room_id) => room_id.to_owned(),
            None => room_id_from_create_event_id(&event_id),
        };

        // The previous holder of this state key goes into `unsigned` (not signed, not hashed)
        // so clients can render changes.
        let state_short_key = match &event.state_key {
            Some(state_key) => Some(
                self.short
                    .short_state_key(&event.kind.to_string().into(), state_key)?,
            ),
            None => None,
        };
        let replaced = match state_short_key.and_then(|key| state.get(&key)) {
            Some(short) => self.pdu(&self.short.event_id(*short)?)?,
            None => None,
        };
        let mut stored = object.clone();
        stored.insert(
            "event_id".into(),
            CanonicalJsonValue::String(event_id.to_string()),
        );
        if let Some(replaced) = &replaced {
            let unsigned = json!({
                "prev_content": replaced.content_value(),
                "replaces_state": replaced.event_id,
                "prev_sender": replaced.sender,
            });
            stored.insert(
                "unsigned".into(),
                CanonicalJsonValue::try_from(unsigned).unwrap_or_default(),
            );
        }
        let bytes = serde_json::to_vec(&stored)
            .map_err(|e| Error::internal(format!("PDU serialisation: {e}")))?;
        let pdu: Pdu = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bad_json(format!("Invalid event: {e}")))?;

        // Authorization rules (server-server API, "Checks performed on receipt of a PDU",
        // steps 4 and 5): against the auth events, and against the state before the event.
        // ruma's fetch callbacks can only say "missing": a storage error is kept aside and
        // returned instead of the verdict, so a failing disk never reads as a missing event.
        let failure: std::cell::RefCell<Option<Error>> = std::cell::RefCell::new(None);
        let keep = |result: Result<Option<Pdu>>| match result {
            Ok(pdu) => pdu,
            Err(error) => {
                failure.borrow_mut().get_or_insert(error);
                None
            }
        };
        let fetch = |id: &ruma::EventId| keep(self.pdu(id));
        let verdict = check_state_independent_auth_rules(&rules.authorization, &pdu, fetch);
        if let Some(error) = failure.borrow_mut().take() {
            return Err(error);
        }
        verdict.map_err(|reason| Error::forbidden(format!("Event not allowed: {reason}")))?;
        let fetch_state = |kind: &StateEventType, key: &str| {
            keep((|| {
                let Some(short_key) = self.short.get_short_state_key(kind, key)? else {
                    return Ok(None);
                };
                let Some(short_event) = state.get(&short_key) else {
                    return Ok(None);
                };
                self.pdu(&self.short.event_id(*short_event)?)
            })())
        };
        let verdict = check_state_dependent_auth_rules(&rules.authorization, &pdu, fetch_state);
        if let Some(error) = failure.borrow_mut().take() {
            return Err(error);
        }
        verdict.map_err(|reason| Error::forbidden(format!("Event not allowed: {reason}")))?;

        // A redaction rewrites its target with the room version's redaction algorithm, in
        // the same batch (client-server API, "Redactions"; rooms, "Handling redactions").
        let redacted_target = match (&pdu.kind, &event.redacts) {
            (TimelineEventType::RoomRedaction, Some(target_id)) => {
                self.redacted_copy(&room_id, &state, sender, target_id, &stored, &rules)?
            }
            _ => None,
        };

        let relation_content = pdu.content_value();
        let mut resolved_members = Vec::new();
        let old_extremities = match room_id_given {
            Some(room_id) => self.extremities(room_id)?,
            None => Vec::new(),
        };
        // Store everything in one batch, at the next stream position.
        let (count, touched) = self.stream.commit(|count, batch| {
            self.index_relation(
                batch,
                &room_id,
                pdu.kind.to_string().as_str(),
                &event_id,
                &relation_content,
                Pos::live(count)?,
            )?;
            if let Some((target_pdu_id, bytes)) = redacted_target {
                batch.insert(&*self.pdus, target_pdu_id.to_vec(), bytes);
            }
            let short_room_id = match &info {
                Some(info) => info.short_room_id,
                None => self.short.short_room_id(&room_id)?,
            };
            let short_event_id = self.short.short_event_id(&event_id)?;
            let before = match before_source {
                BeforeSource::Empty => None,
                BeforeSource::Stored(hash) => Some(hash),
                BeforeSource::Resolved { parent } => {
                    Some(self.state.save(batch, Some(parent), state.clone())?)
                }
            };
            let after = match state_short_key {
                Some(key) => {
                    let mut new_state = state;
                    new_state.insert(key, short_event_id);
                    self.state.save(batch, before, new_state)?
                }
                None => match before {
                    Some(hash) => hash,
                    None => self.state.save(batch, None, BTreeMap::new())?,
                },
            };
            let id = pdu_id(short_room_id, Pos::live(count)?);
            batch.insert(&*self.pdus, id.to_vec(), bytes);
            batch.insert(
                &*self.eventid_pduid,
                event_id.as_bytes().to_vec(),
                id.to_vec(),
            );
            let mut hashes = before.unwrap_or(0).to_be_bytes().to_vec();
            hashes.extend_from_slice(&after.to_be_bytes());
            batch.insert(
                &*self.statehashes,
                short_event_id.to_be_bytes().to_vec(),
                hashes,
            );
            // The room's current state: after this event, unless forks leave several forward
            // extremities, whose states are then resolved.
            let others: Vec<StateHash> = old_extremities
                .iter()
                .filter(|id| !pdu.prev_events.contains(id))
                .map(|id| {
                    self.state_hashes(id)?
                        .map(|(_, after)| after)
                        .ok_or_else(|| Error::internal("extremity without state"))
                })
                .collect::<Result<_>>()?;
            let current = if others.is_empty() {
                after
            } else {
                let mut hashes = others;
                hashes.push(after);
                let resolved = self.resolve_states(&rules, &hashes, Some(&pdu))?;
                self.reindex_members(
                    batch,
                    &room_id,
                    &resolved,
                    &pdu,
                    count,
                    &mut resolved_members,
                )?;
                self.state.save(batch, Some(after), resolved)?
            };
            let bump_count = if super::bumps(&pdu.kind) {
                count
            } else {
                info.as_ref().map_or(count, |info| info.bump_count)
            };
            let new_info = RoomInfo {
                version: version.clone(),
                short_room_id,
                state_hash: current,
                last_count: count,
                depth: room_depth,
                bump_count,
            };
            batch.insert_json(&self.info, room_id.as_bytes().to_vec(), &new_info);
            for prev in &pdu.prev_events {
                batch.remove(
                    &*self.extremities,
                    pair_key(room_id.as_str(), prev.as_str()),
                );
            }
            batch.insert(
                &*self.extremities,
                pair_key(room_id.as_str(), event_id.as_str()),
                Vec::new(),
            );
            if let Some(transaction) = &transaction {
                batch.insert(
                    &*self.txn_event,
                    txn_key(sender, transaction.device_id, transaction.txn_id),
                    event_id.as_bytes().to_vec(),
                );
                let mut value = prefix_key(transaction.device_id.as_str());
                value.extend_from_slice(transaction.txn_id.as_bytes());
                batch.insert(&*self.event_txn, event_id.as_bytes().to_vec(), value);
            }
            let mut touched = Vec::new();
            // After a resolution `reindex_members` has set the indexes from the resolved
            // state; this event's own membership may have lost.
            let resolved = !resolved_members.is_empty() || current != after;
            if !resolved
                && pdu.kind == TimelineEventType::RoomMember
                && let Some(target) = pdu
                    .state_key
                    .as_deref()
                    .and_then(|key| ruma::UserId::parse(key).ok())
            {
                self.index_membership(batch, &room_id, &target, membership_of(&pdu), count);
                touched.push(target);
            }
            Ok(touched)
        })?;

        // Wake everyone in the room (and a user whose membership just changed).
        let members = self.members(&room_id)?;
        let joined = members
            .iter()
            .filter(|(_, membership)| *membership == MembershipState::Join)
            .map(|(user, _)| user.as_ref());
        self.stream.touch(
            joined
                .chain(touched.iter().map(|u| u.as_ref()))
                .chain(resolved_members.iter().map(|u| u.as_ref())),
            count,
        );
        Ok(pdu)
    }

    /// The redacted form of `target_id` to store, if `sender` may redact it: their own event,
    /// or anyone's with the `redact` power level. Refuses anything else.
    fn redacted_copy(
        &self,
        room_id: &RoomId,
        state: &BTreeMap<u64, u64>,
        sender: &UserId,
        target_id: &ruma::EventId,
        redaction: &CanonicalJsonObject,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<Option<(super::pos::PduId, Vec<u8>)>> {
        let Some(target) = self.pdu(target_id)?.filter(|pdu| pdu.room_id() == room_id) else {
            return Err(Error::not_found("The event to redact is not in this room."));
        };
        if target.sender != sender {
            let state = std::sync::Arc::new(state.clone());
            let level = self.power_level(room_id, &state, sender)?;
            if level < self.required_level(&state, "redact", 50)? {
                return Err(Error::forbidden(
                    "You may not redact other users' events here.",
                ));
            }
        }
        let Some(target_pdu_id) = self.pdu_id_of(target_id)? else {
            return Ok(None);
        };
        let Some(bytes) = self.pdus.get(&target_pdu_id)? else {
            return Ok(None);
        };
        let mut object: CanonicalJsonObject = serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("stored PDU is not canonical JSON: {e}")))?;
        object.remove("unsigned");
        let because = ruma::canonical_json::RedactedBecause::from_json(redaction.clone());
        let mut redacted = ruma::canonical_json::redact(object, &rules.redaction, Some(because))
            .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
        redacted.insert(
            "event_id".into(),
            CanonicalJsonValue::String(target_id.to_string()),
        );
        let bytes = serde_json::to_vec(&redacted).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some((target_pdu_id, bytes)))
    }

    /// After a resolution, makes the membership indexes agree with the resolved state (a ban
    /// may have beaten a racing join). Users whose membership changed are added to `changed`.
    fn reindex_members(
        &self,
        batch: &mut crate::storage::Batch,
        room_id: &RoomId,
        resolved: &BTreeMap<u64, u64>,
        pending: &Pdu,
        count: u64,
        changed: &mut Vec<ruma::OwnedUserId>,
    ) -> Result<()> {
        for (short_key, short_event) in resolved {
            let (kind, state_key) = self.short.state_key(*short_key)?;
            if kind != StateEventType::RoomMember {
                continue;
            }
            let Ok(user) = ruma::OwnedUserId::try_from(state_key) else {
                continue;
            };
            let event_id = self.short.event_id(*short_event)?;
            let event = if event_id == pending.event_id {
                Some(pending.clone())
            } else {
                self.pdu(&event_id)?
            };
            // A resolved state names only stored events: a missing one is corrupt data.
            let event = event
                .ok_or_else(|| Error::internal(format!("state event {event_id} is not stored")))?;
            let membership = membership_of(&event);
            if self.membership(room_id, &user)?.as_ref() != Some(&membership) {
                self.index_membership(batch, room_id, &user, membership, count);
                changed.push(user);
            }
        }
        Ok(())
    }

    /// Writes both membership indexes for `user` in `room_id`.
    fn index_membership(
        &self,
        batch: &mut crate::storage::Batch,
        room_id: &RoomId,
        user: &UserId,
        membership: MembershipState,
        count: u64,
    ) {
        batch.insert(
            &*self.room_users,
            pair_key(room_id.as_str(), user.as_str()),
            membership.as_str().as_bytes().to_vec(),
        );
        batch.insert_json(
            &self.user_rooms,
            pair_key(user.as_str(), room_id.as_str()),
            &MembershipEntry { membership, count },
        );
    }
}

/// The membership a member event sets (`leave` if it says nothing understandable).
fn membership_of(event: &Pdu) -> MembershipState {
    event
        .content_str("membership")
        .map(|m| MembershipState::from(m.as_str()))
        .unwrap_or(MembershipState::Leave)
}
