//! Redactions applied to stored events (rooms v3+, "Handling redactions"): a redaction
//! rewrites its target with the room version's redaction algorithm, in the redaction's
//! batch, wherever the target is stored (the timeline, or `eventid_pdu` for an outlier, a
//! soft-failed or a rejected event).
//!
//! A local redaction by a user who may not redact is refused (403) before anything is
//! stored. A redaction from another server is always accepted by the auth rules; it takes
//! effect only if its sender's server is the target sender's, or its sender has the
//! `redact` power level in the state before the redaction. When its target is not held yet,
//! `shorteventid_pendingredaction` (`target short id ‖ redaction short id` → empty) keeps it
//! until the target is stored: [`Rooms::apply_pending_redactions`], run in `prepare` for
//! every event, then stores the target redacted (same conditions) and drops the entry.
//!
//! Not done yet: the spec adds that a redaction should reach clients only once it is
//! applied ("If the server would apply a redaction, the redaction event is also sent to
//! clients. Otherwise, the server simply waits"); here an accepted remote redaction takes
//! its timeline place at once, applied or not.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, UserId,
    room_version_rules::RoomVersionRules,
};

use super::{
    Rooms,
    pdu::Pdu,
    pos::PduId,
    short::{ShortEventId, u64_from},
    state::StateSet,
};
use crate::{Error, Result, storage::Batch};

/// Where a stored event's JSON lives.
pub(super) enum StoredAt {
    Timeline(PduId),
    /// `eventid_pdu`: an event without a timeline place.
    Placeless(OwnedEventId),
}

/// What a redaction does to its target, written in the redaction's batch.
pub(super) enum RedactionEffect {
    /// The target's redacted form.
    Rewrite { at: StoredAt, bytes: Vec<u8> },
    /// The target is not held: wait for it.
    Pending { target: ShortEventId },
}

/// The redacted form of a stored event (`stored`: its stored JSON) by the room version's
/// redaction algorithm, with `unsigned.redacted_because` = `redaction` (its stored form).
pub(super) fn redacted_form(
    stored: &[u8],
    target_id: &EventId,
    redaction: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<Vec<u8>> {
    let mut object: CanonicalJsonObject = serde_json::from_slice(stored)
        .map_err(|e| Error::internal(format!("stored PDU is not canonical JSON: {e}")))?;
    object.remove("unsigned");
    let because = ruma::canonical_json::RedactedBecause::from_json(redaction.clone());
    let mut redacted = ruma::canonical_json::redact(object, &rules.redaction, Some(because))
        .map_err(|e| Error::internal(format!("redaction failed: {e}")))?;
    redacted.insert(
        "event_id".into(),
        CanonicalJsonValue::String(target_id.to_string()),
    );
    serde_json::to_vec(&redacted).map_err(|e| Error::internal(e.to_string()))
}

/// The event a redaction names: `content.redacts` since rooms v11, the top-level `redacts`
/// before (rooms v11, "Redactions").
pub(super) fn redaction_target(pdu: &Pdu, rules: &RoomVersionRules) -> Option<OwnedEventId> {
    if rules.redaction.keep_room_redaction_redacts {
        pdu.content_value()["redacts"]
            .as_str()
            .and_then(|id| OwnedEventId::try_from(id).ok())
    } else {
        pdu.redacts.clone()
    }
}

fn pending_key(target: ShortEventId, redaction: ShortEventId) -> Vec<u8> {
    let mut key = target.to_be_bytes().to_vec();
    key.extend_from_slice(&redaction.to_be_bytes());
    key
}

impl Rooms {
    /// A stored event's JSON and where it lives.
    pub(super) fn stored_at(&self, event_id: &EventId) -> Result<Option<(StoredAt, Vec<u8>)>> {
        if let Some(id) = self.pdu_id_of(event_id)? {
            let bytes = self
                .pdus
                .get(&id)?
                .ok_or_else(|| Error::internal(format!("timeline entry of {event_id} missing")))?;
            return Ok(Some((StoredAt::Timeline(id), bytes)));
        }
        Ok(self
            .outliers
            .get(event_id.as_bytes())?
            .map(|bytes| (StoredAt::Placeless(event_id.to_owned()), bytes)))
    }

    /// Whether `sender`'s redaction may rewrite an event by `target_sender` (rooms v3+,
    /// "Handling redactions"): the same server, or the `redact` power level in `state`, the
    /// state before the redaction.
    fn may_redact(
        &self,
        room_id: &RoomId,
        state: &StateSet,
        sender: &UserId,
        target_sender: &UserId,
    ) -> Result<bool> {
        if sender.server_name() == target_sender.server_name() {
            return Ok(true);
        }
        Ok(
            self.power_level(room_id, state, sender)?
                >= self.required_level(state, "redact", 50)?,
        )
    }

    /// A local redaction: the rewrite of its target, which must be in the room; a user who
    /// may not redact it (neither its sender nor holding the `redact` level) is refused.
    pub(super) fn local_redaction(
        &self,
        room_id: &RoomId,
        state: &StateSet,
        sender: &UserId,
        target_id: &EventId,
        redaction: &CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<Option<RedactionEffect>> {
        let Some(target) = self.pdu(target_id)?.filter(|pdu| pdu.room_id() == room_id) else {
            return Err(Error::not_found("The event to redact is not in this room."));
        };
        if target.sender != sender {
            let level = self.power_level(room_id, state, sender)?;
            if level < self.required_level(state, "redact", 50)? {
                return Err(Error::forbidden(
                    "You may not redact other users' events here.",
                ));
            }
        }
        let Some((at, stored)) = self.stored_at(target_id)? else {
            return Ok(None);
        };
        Ok(Some(RedactionEffect::Rewrite {
            at,
            bytes: redacted_form(&stored, target_id, redaction, rules)?,
        }))
    }

    /// An accepted redaction from another server (`redaction`: its stored form; `state`: the
    /// state before it): the rewrite of its held target when its sender may redact it,
    /// nothing when not, and a pending entry when the target is not held.
    pub(super) fn remote_redaction(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        redaction: &CanonicalJsonObject,
        state: &StateSet,
    ) -> Result<Option<RedactionEffect>> {
        let Some(target_id) = redaction_target(pdu, rules) else {
            return Ok(None);
        };
        let Some((at, stored)) = self.stored_at(&target_id)? else {
            return Ok(Some(RedactionEffect::Pending {
                target: self.short.short_event_id(&target_id)?,
            }));
        };
        let target = Self::decode_pdu(&stored)?;
        let room_id = pdu.room_id();
        if target.room_id() != room_id
            || !self.may_redact(&room_id, state, &pdu.sender, &target.sender)?
        {
            return Ok(None);
        }
        Ok(Some(RedactionEffect::Rewrite {
            at,
            bytes: redacted_form(&stored, &target_id, redaction, rules)?,
        }))
    }

    /// Writes a redaction's effect into its batch.
    pub(super) fn write_redaction(
        &self,
        batch: &mut Batch,
        redaction: ShortEventId,
        effect: RedactionEffect,
    ) {
        match effect {
            RedactionEffect::Rewrite {
                at: StoredAt::Timeline(id),
                bytes,
            } => batch.insert(&*self.pdus, id.to_vec(), bytes),
            RedactionEffect::Rewrite {
                at: StoredAt::Placeless(event_id),
                bytes,
            } => batch.insert(&*self.outliers, event_id.as_bytes().to_vec(), bytes),
            RedactionEffect::Pending { target } => batch.insert(
                &*self.pending_redactions,
                pending_key(target, redaction),
                Vec::new(),
            ),
        }
    }

    /// For an event about to be stored: the redactions that arrived before it, applied to
    /// `stored` (and `pdu`, parsed again) when their sender may redact it; their entries go.
    pub(super) fn apply_pending_redactions(
        &self,
        rules: &RoomVersionRules,
        short_event_id: ShortEventId,
        stored: &mut Vec<u8>,
        pdu: &mut Pdu,
        batch: &mut Batch,
    ) -> Result<()> {
        let prefix = short_event_id.to_be_bytes();
        let mut redactions = Vec::new();
        for entry in self.pending_redactions.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let redaction = key
                .get(8..)
                .and_then(u64_from)
                .ok_or_else(|| Error::internal("bad key in shorteventid_pendingredaction"))?;
            redactions.push((key, redaction));
        }
        for (key, short_redaction) in redactions {
            batch.remove(&*self.pending_redactions, key);
            let redaction_id = self.short.event_id(short_redaction)?;
            let Some((_, redaction_bytes)) = self.stored_at(&redaction_id)? else {
                return Err(Error::internal(format!(
                    "pending redaction {redaction_id} is not stored"
                )));
            };
            let redaction = Self::decode_pdu(&redaction_bytes)?;
            let room_id = redaction.room_id();
            if pdu.room_id() != room_id {
                continue;
            }
            // The state before the redaction (it was recorded with its state).
            let state = match self.state_hashes(&redaction_id)? {
                Some((Some(before), _)) => self.state.load(before)?,
                _ => Arc::default(),
            };
            if !self.may_redact(&room_id, &state, &redaction.sender, &pdu.sender)? {
                continue;
            }
            let object: CanonicalJsonObject = serde_json::from_slice(&redaction_bytes)
                .map_err(|e| Error::internal(format!("stored PDU is not canonical JSON: {e}")))?;
            *stored = redacted_form(stored, &pdu.event_id, &object, rules)?;
            *pdu = Self::decode_pdu(stored)?;
        }
        Ok(())
    }
}
