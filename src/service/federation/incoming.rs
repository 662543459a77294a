//! Room events (PDUs) from other servers: the checks of server-server API "Checks
//! performed on receipt of a PDU", in order, and the fetching that fills what an event
//! needs and we lack.
//!
//! 1–3. Format and size, signatures (keys through the keyring), content hash (a mismatch
//!      stores the redacted copy): [`crate::service::rooms::verify`]; a failure drops the
//!      event.
//! 4–6. Auth against its auth events, the state before it, the current state:
//!      [`crate::service::rooms::accept`].
//!
//! When the room core answers `Missing`, the origin is asked, within a budget per event
//! (S2S "Backfilling and retrieving missing events"):
//! - missing auth events: `GET /event_auth/{roomId}/{eventId}` (the event's whole auth
//!   chain), stored as outliers;
//! - missing prev events: `POST /get_missing_events/{roomId}` between our forward
//!   extremities and the event, each accepted as a live event, oldest first;
//! - prev events still missing after that (a gap too long to walk): the prev event itself
//!   (`GET /event`) and the state before it (`GET /state`, with its auth chain), stored as
//!   outliers, and the event is accepted with the state after the prev event as given
//!   state; the prev event becomes a hole that backfill can fill later.

use std::collections::HashSet;

use ruma::{
    CanonicalJsonObject, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::{
        authorization::get_event_authorization,
        event::{get_event, get_missing_events, get_room_state},
    },
    events::StateEventType,
    state_res::StateMap,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Result,
    service::{
        Services,
        rooms::{
            accept::{Outcome, Place, StateBefore},
            check::Verdict,
            verify::{Dropped, Verified, check_format, check_signatures_and_hash, keys_needed},
        },
    },
};

/// Events fetched for one incoming event at most (all requests together).
const FETCH_BUDGET: usize = 2_000;
/// Events asked for in one `get_missing_events` (Synapse asks for 10).
const MISSING_EVENTS_LIMIT: u32 = 10;
/// How many rounds of "accept, fetch what is missing, accept again" one event gets.
const ROUNDS: usize = 4;

/// What became of one incoming PDU, for the transaction's answer.
pub type PduResult = std::result::Result<(), String>;

impl Services {
    /// Checks and stores one PDU of a transaction from `origin`. `None` when the event is
    /// not for a room this server is in (nothing to answer it with: its id depends on the
    /// room version).
    pub async fn receive_pdu(
        &self,
        origin: &ServerName,
        raw: &RawJsonValue,
    ) -> Result<Option<(OwnedEventId, PduResult)>> {
        #[derive(serde::Deserialize)]
        struct RoomOf {
            room_id: Option<OwnedRoomId>,
        }
        let Some(room_id) = serde_json::from_str::<RoomOf>(raw.get())
            .ok()
            .and_then(|event| event.room_id)
        else {
            return Ok(None);
        };
        let Some(info) = self.rooms.info(&room_id)? else {
            tracing::debug!(%origin, %room_id, "PDU for a room this server is not in dropped");
            return Ok(None);
        };
        let version = info.version;
        let object = match check_format(raw, &version) {
            Ok(object) => object,
            Err(Dropped(reason)) => {
                // Without the format there is no event id to answer under.
                tracing::debug!(%origin, %reason, "PDU dropped");
                return Ok(None);
            }
        };
        let event_id = event_id_of(&object, &version);
        // S2S "Server Access Control Lists": each PDU of a transaction is checked against
        // the room's ACL for the transaction's origin.
        if !self.server_acl_allows(origin, &room_id)? {
            tracing::info!(%origin, %room_id, "PDU from a server the room's ACL denies dropped");
            return Ok(event_id.map(|id| (id, Err("denied by the room's server ACL".to_owned()))));
        }
        let verified = match self.verify_object(object, &version).await {
            Ok(verified) => verified,
            Err(Dropped(reason)) => {
                tracing::info!(%origin, %reason, "PDU dropped");
                return Ok(event_id.map(|id| (id, Err(reason))));
            }
        };
        let event_id = verified.event_id.clone();
        let mut budget = FETCH_BUDGET;
        let outcome = self
            .accept_fetching(origin, &room_id, &version, verified, &mut budget)
            .await?;
        let result = match outcome {
            Outcome::Committed(committed) | Outcome::AlreadyKnown(committed) => {
                match committed.verdict {
                    Verdict::Rejected(reason) => Err(format!("rejected: {reason}")),
                    Verdict::Accepted | Verdict::SoftFailed => {
                        if committed.position.is_some() && committed.verdict == Verdict::Accepted {
                            self.count_notifications(&committed.pdu).await;
                        }
                        Ok(())
                    }
                }
            }
            Outcome::Missing { auth, prev } => Err(format!(
                "could not fetch {} auth and {} prev events it needs",
                auth.len(),
                prev.len()
            )),
        };
        Ok(Some((event_id, result)))
    }

    /// Steps 1–3 for a PDU fetched from another server.
    pub(crate) async fn verify_pdu(
        &self,
        raw: &RawJsonValue,
        version: &RoomVersionId,
    ) -> std::result::Result<Verified, Dropped> {
        let object = check_format(raw, version)?;
        self.verify_object(object, version).await
    }

    /// Steps 2–3: fetches the keys the event's signatures need, then checks them and the
    /// content hash.
    async fn verify_object(
        &self,
        object: CanonicalJsonObject,
        version: &RoomVersionId,
    ) -> std::result::Result<Verified, Dropped> {
        let needed = keys_needed(&object, version)?;
        let keys = self
            .keyring
            .public_key_map(
                &object,
                needed.servers.iter().map(std::ops::Deref::deref),
                needed.signed_at,
            )
            .await
            .map_err(|error| Dropped(format!("keys unavailable: {error}")))?;
        check_signatures_and_hash(object, version, &keys)
    }

    /// Accepts `event` as a live event, fetching from `origin` what it needs.
    async fn accept_fetching(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event: Verified,
        budget: &mut usize,
    ) -> Result<Outcome> {
        let mut given = StateBefore::default();
        let mut asked_missing = false;
        let mut outcome = Outcome::Missing {
            auth: Vec::new(),
            prev: Vec::new(),
        };
        for _ in 0..ROUNDS {
            // Flushed once for the whole transaction, before it is answered
            // (`receive_transaction`).
            outcome = self
                .rooms
                .accept_deferred(event.clone(), Place::Live, given.clone())
                .await?;
            let Outcome::Missing { auth, prev } = &outcome else {
                return Ok(outcome);
            };
            if !auth.is_empty() {
                let fetched = self
                    .fetch_auth_chain(origin, room_id, &event.event_id, version, budget)
                    .await;
                // Events named in given state (or an auth chain the origin left short):
                // one by one.
                let mut single = Vec::new();
                for id in auth {
                    if self.rooms.pdu(id)?.is_none()
                        && !fetched.contains(id)
                        && let Some(event) = self.fetch_event(origin, id, version, budget).await
                    {
                        single.push(event);
                    }
                }
                if !single.is_empty() {
                    self.store_outliers(origin, room_id, version, single, budget)
                        .await?;
                }
                continue;
            }
            if !prev.is_empty() {
                if !asked_missing {
                    asked_missing = true;
                    self.fetch_missing_events(origin, room_id, version, &event, budget)
                        .await?;
                    continue;
                }
                given = self
                    .state_after_prevs(origin, room_id, version, prev, budget)
                    .await?;
                if given.fetched.is_empty() {
                    break;
                }
                continue;
            }
        }
        Ok(outcome)
    }

    /// `GET /event_auth` for `event_id`: its auth chain, stored as outliers. Returns the
    /// ids fetched.
    pub(crate) async fn fetch_auth_chain(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &OwnedEventId,
        version: &RoomVersionId,
        budget: &mut usize,
    ) -> HashSet<OwnedEventId> {
        let Some(client) = self.federation.client() else {
            return HashSet::new();
        };
        let request =
            get_event_authorization::v1::Request::new(room_id.to_owned(), event_id.to_owned());
        let chain = match client.send(origin, request).await {
            Ok(response) => response.auth_chain,
            Err(error) => {
                tracing::info!(%origin, %event_id, %error, "could not fetch an auth chain");
                return HashSet::new();
            }
        };
        match self
            .store_outliers_raw(origin, room_id, version, &chain, budget)
            .await
        {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%origin, %event_id, %error, "could not store an auth chain");
                HashSet::new()
            }
        }
    }

    /// `GET /event/{eventId}`, checked; `None` when it cannot be had or is not that event.
    pub(crate) async fn fetch_event(
        &self,
        origin: &ServerName,
        event_id: &OwnedEventId,
        version: &RoomVersionId,
        budget: &mut usize,
    ) -> Option<Verified> {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let client = self.federation.client()?;
        let response = match client
            .send(origin, get_event::v1::Request::new(event_id.to_owned()))
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::info!(%origin, %event_id, %error, "could not fetch an event");
                return None;
            }
        };
        match self.verify_pdu(&response.pdu, version).await {
            Ok(event) if event.event_id == *event_id => Some(event),
            Ok(event) => {
                tracing::info!(%origin, asked = %event_id, got = %event.event_id, "another event than asked for");
                None
            }
            Err(Dropped(reason)) => {
                tracing::info!(%origin, %event_id, %reason, "fetched event dropped");
                None
            }
        }
    }

    /// Checks fetched PDUs and stores those of `room_id` as outliers. Returns their ids.
    async fn store_outliers_raw(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        raws: &[Box<RawJsonValue>],
        budget: &mut usize,
    ) -> Result<HashSet<OwnedEventId>> {
        let mut events = Vec::new();
        for raw in raws.iter().take(*budget) {
            match self.verify_pdu(raw, version).await {
                Ok(event) => events.push(event),
                Err(Dropped(reason)) => {
                    tracing::debug!(%origin, %reason, "fetched event dropped");
                }
            }
        }
        *budget = budget.saturating_sub(raws.len());
        self.store_outliers(origin, room_id, version, events, budget)
            .await
    }

    pub(crate) async fn store_outliers(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        _version: &RoomVersionId,
        events: Vec<Verified>,
        _budget: &mut usize,
    ) -> Result<HashSet<OwnedEventId>> {
        // Another room's events have no business in this room's auth chain or state.
        let events: Vec<Verified> = events
            .into_iter()
            .filter(|event| {
                let ours = event.room_id == room_id;
                if !ours {
                    tracing::info!(%origin, event_id = %event.event_id, "fetched event of another room dropped");
                }
                ours
            })
            .collect();
        let ids = events.iter().map(|event| event.event_id.clone()).collect();
        self.rooms.accept_outliers(events).await?;
        Ok(ids)
    }

    /// `POST /get_missing_events`: the events between our forward extremities and `event`,
    /// accepted as live events, oldest first (each may fetch what it needs in turn, within
    /// the same budget, but does not walk further back itself).
    async fn fetch_missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event: &Verified,
        budget: &mut usize,
    ) -> Result<()> {
        let Some(client) = self.federation.client() else {
            return Ok(());
        };
        let earliest = self.rooms.extremities(room_id)?;
        let mut request = get_missing_events::v1::Request::new(
            room_id.to_owned(),
            earliest,
            vec![event.event_id.clone()],
        );
        request.limit = UInt::from(MISSING_EVENTS_LIMIT);
        let room_depth = self.rooms.existing(room_id)?.depth;
        // Nothing older than a little below our deepest event: what lies further back is
        // history, for backfill.
        request.min_depth = UInt::try_from(room_depth.saturating_sub(20)).unwrap_or_default();
        let events = match client.send(origin, request).await {
            Ok(response) => response.events,
            Err(error) => {
                tracing::info!(%origin, %room_id, %error, "get_missing_events failed");
                return Ok(());
            }
        };
        let mut verified = Vec::new();
        for raw in events.iter().take(*budget) {
            match self.verify_pdu(raw, version).await {
                Ok(found) if found.room_id == room_id => verified.push(found),
                Ok(_) => {}
                Err(Dropped(reason)) => tracing::debug!(%origin, %reason, "missing event dropped"),
            }
        }
        *budget = budget.saturating_sub(events.len());
        verified.sort_by_key(|found| u64::from(found.pdu.depth));
        for found in verified {
            // An event the walk did not reach below is left to the state fallback.
            let outcome = self
                .rooms
                .accept(found.clone(), Place::Live, StateBefore::default())
                .await?;
            if let Outcome::Missing { auth, .. } = outcome
                && !auth.is_empty()
            {
                self.fetch_auth_chain(origin, room_id, &found.event_id, version, budget)
                    .await;
                self.rooms
                    .accept(found, Place::Live, StateBefore::default())
                    .await?;
            }
        }
        Ok(())
    }

    /// For prev events we still lack: each prev event and the state before it (`GET
    /// /state`, with its auth chain), stored as outliers; the state after it is the state
    /// before it plus the prev event itself when that is a state event (as Synapse does).
    async fn state_after_prevs(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        prevs: &[OwnedEventId],
        budget: &mut usize,
    ) -> Result<StateBefore> {
        let mut fetched = Vec::new();
        for prev in prevs {
            let prev_event = match self.rooms.pdu(prev)? {
                Some(pdu) => pdu,
                None => {
                    let Some(event) = self.fetch_event(origin, prev, version, budget).await else {
                        return Ok(StateBefore::default());
                    };
                    // Its auth events first, then the event itself, as outliers.
                    self.fetch_auth_chain(origin, room_id, prev, version, budget)
                        .await;
                    self.store_outliers(origin, room_id, version, vec![event], budget)
                        .await?;
                    match self.rooms.pdu(prev)? {
                        Some(pdu) => pdu,
                        None => return Ok(StateBefore::default()),
                    }
                }
            };
            let Some(mut map) = self
                .fetch_state_before(origin, room_id, version, prev, budget)
                .await?
            else {
                return Ok(StateBefore::default());
            };
            if let Some(state_key) = &prev_event.state_key {
                map.insert(
                    (
                        StateEventType::from(prev_event.kind.to_string()),
                        state_key.clone(),
                    ),
                    prev_event.event_id.clone(),
                );
            }
            fetched.push(map);
        }
        Ok(StateBefore { fetched })
    }
}

impl Services {
    /// `GET /state` at `event_id` on `origin`: the state before that event and its auth
    /// chain, checked and stored as outliers. Returns the state as a map of what was
    /// stored; `None` when it cannot be had or does not fit in `budget`.
    pub(crate) async fn fetch_state_before(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &OwnedEventId,
        budget: &mut usize,
    ) -> Result<Option<StateMap<OwnedEventId>>> {
        let Some(client) = self.federation.client() else {
            return Ok(None);
        };
        let request = get_room_state::v1::Request::new(event_id.to_owned(), room_id.to_owned());
        let response = match client.send(origin, request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::info!(%origin, %event_id, %error, "could not fetch the state at an event");
                return Ok(None);
            }
        };
        if response.pdus.len() + response.auth_chain.len() > *budget {
            tracing::info!(%origin, %event_id, "state too large to fetch for one event");
            return Ok(None);
        }
        // The state's ids from the reference hashes (cheap); only what is checked and
        // stored below counts in the map.
        let state_ids: Vec<OwnedEventId> = response
            .pdus
            .iter()
            .filter_map(|raw| event_id_of(&check_format(raw, version).ok()?, version))
            .collect();
        let mut all = response.auth_chain;
        all.extend(response.pdus);
        self.store_outliers_raw(origin, room_id, version, &all, budget)
            .await?;
        Ok(Some(self.state_map_of(state_ids)?))
    }

    /// The state map of `ids`: those that are stored state events and not rejected (S2S
    /// "Rejection": a rejected event is in no state).
    pub(crate) fn state_map_of(
        &self,
        ids: impl IntoIterator<Item = OwnedEventId>,
    ) -> Result<StateMap<OwnedEventId>> {
        let mut map = StateMap::new();
        for id in ids {
            if let Some(pdu) = self.rooms.pdu(&id)?
                && let Some(state_key) = &pdu.state_key
                && !matches!(self.rooms.verdict(&id)?, Verdict::Rejected(_))
            {
                map.insert(
                    (
                        StateEventType::from(pdu.kind.to_string()),
                        state_key.clone(),
                    ),
                    id,
                );
            }
        }
        Ok(map)
    }
}

/// The event id (reference hash) of a format-checked event, if it can be computed.
fn event_id_of(object: &CanonicalJsonObject, version: &RoomVersionId) -> Option<OwnedEventId> {
    let rules = version.rules()?;
    let hash = ruma::signatures::reference_hash(object, &rules).ok()?;
    OwnedEventId::try_from(format!("${hash}")).ok()
}

#[cfg(test)]
mod tests;
