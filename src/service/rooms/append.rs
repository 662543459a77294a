//! Sending a local event: the orchestration of [`super::build`] (prev and auth events,
//! JSON, hash, signature, event id), [`super::check`] (the authorization rules against the
//! event's auth events and the state before it), [`super::prepare`] (state sets, current
//! state, membership changes; outside the commit lock) and [`super::commit`] (one batch at
//! the next stream position). A local event the rules refuse is never stored (403).

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, DeviceId, EventId, OwnedEventId, RoomId,
    RoomVersionId, ServerName, UserId, api::error::ErrorKind, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::Value as JsonValue;

use super::{RoomInfo, Rooms, build::Built, pdu::Pdu};
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
        let pdu = self
            .send_unpersisted(room_id, sender, event, transaction)
            .await?;
        self.db.persist().await?;
        Ok(pdu)
    }

    /// [`Rooms::send`] without making it durable: the caller must `persist` before it
    /// acknowledges the event (`Services::send_event` does, after counting it).
    pub async fn send_unpersisted(
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
        let rules = rules_of(version)?;
        let prev_events = match (extra.prev_events, room_id) {
            (Some(prevs), _) => prevs,
            (None, Some(room_id)) => self.pick_prev_events(room_id)?,
            (None, None) => Vec::new(),
        };
        let built = self.build_checked(room_id, &rules, sender, &event, prev_events)?;

        // A redaction rewrites its target with the room version's redaction algorithm, in
        // the same batch (client-server API, "Redactions"; rooms, "Handling redactions").
        let redaction = match (&built.pdu.kind, &event.redacts) {
            (TimelineEventType::RoomRedaction, Some(target_id)) => self.local_redaction(
                &built.room_id,
                &std::sync::Arc::new(built.state.clone()),
                sender,
                target_id,
                &built.object,
                &rules,
            )?,
            _ => None,
        };
        let prepared = self.prepare(&rules, version, info, built.into(), redaction)?;
        Ok(self.commit(prepared, extra.transaction)?.0)
    }

    /// Builds `event` and checks it against the authorization rules (server-server API,
    /// "Checks performed on receipt of a PDU", steps 4 and 5: against the auth events, and
    /// against the state before the event; a local event is built on the state before it,
    /// so step 6 is step 5). A refusal is 403.
    fn build_checked(
        &self,
        room_id: Option<&RoomId>,
        rules: &RoomVersionRules,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Vec<OwnedEventId>,
    ) -> Result<Built> {
        let built = self.build(room_id, rules, sender, event, prev_events)?;
        let forbidden = |reason: String| Error::forbidden(format!("Event not allowed: {reason}"));
        self.auth_against_auth_events(&rules.authorization, &built.pdu)?
            .map_err(forbidden)?;
        self.auth_against_state(&rules.authorization, &built.pdu, &built.state)?
            .map_err(forbidden)?;
        Ok(built)
    }

    /// Builds and authorises `event` like [`Rooms::send`] without storing it: an invite of
    /// another server's user is stored only once that server has signed it too
    /// (server-server API, "Inviting to a room"; [`Rooms::commit_pending`]).
    pub async fn build_pending(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: NewEvent,
    ) -> Result<Pending> {
        let _guard = self.lock(room_id).await;
        let info = self.existing(room_id)?;
        let rules = rules_of(&info.version)?;
        let prev_events = self.pick_prev_events(room_id)?;
        let built = self.build_checked(Some(room_id), &rules, sender, &event, prev_events)?;
        Ok(Pending {
            version: info.version,
            built,
        })
    }

    /// Stores `pending` as a local event (it goes to the room's other servers too), with
    /// `server`'s `signature` (its entry of `signatures`, verified by the caller) added.
    /// Events sent meanwhile make it a fork, resolved where it meets them.
    pub async fn commit_pending(
        &self,
        pending: Pending,
        server: &ServerName,
        signature: CanonicalJsonValue,
    ) -> Result<Pdu> {
        let Pending { version, mut built } = pending;
        let room_id = built.room_id.clone();
        let pdu = {
            let _guard = self.lock(&room_id).await;
            let info = self.existing(&room_id)?;
            let rules = rules_of(&version)?;
            match built.object.get_mut("signatures") {
                Some(CanonicalJsonValue::Object(signatures)) => {
                    signatures.insert(server.to_string(), signature);
                }
                _ => return Err(Error::internal("a built event without signatures")),
            }
            built.stored = serde_json::to_vec(&built.object)
                .map_err(|e| Error::internal(format!("PDU serialisation: {e}")))?;
            let prepared = self.prepare(&rules, &version, Some(info), built.into(), None)?;
            self.commit(prepared, None)?.0
        };
        self.db.persist().await?;
        Ok(pdu)
    }
}

/// A local event built and authorised, not stored ([`Rooms::build_pending`]).
pub struct Pending {
    version: RoomVersionId,
    built: Built,
}

impl Pending {
    pub fn event_id(&self) -> &EventId {
        &self.built.event_id
    }

    pub fn version(&self) -> &RoomVersionId {
        &self.version
    }

    /// The signed event as other servers get it (without `event_id` and `unsigned`).
    pub fn federation_form(&self) -> CanonicalJsonObject {
        let mut object = self.built.object.clone();
        object.remove("event_id");
        object.remove("unsigned");
        object
    }
}

fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .filter(|_| supported_room_version(version))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "Unsupported room version.",
            )
        })
}
