//! History from before this server joined a room (server-server API, "Backfilling and
//! retrieving missing events"): when `/messages` reaches the oldest event held and the room
//! has holes (`roomid_backwardextremity`: prev events we never got, e.g. of the event we
//! joined with), a server in the room is asked for `/backfill` from those holes. The answer
//! is checked (format, signatures, content hash) and stored through the room core as
//! backfilled events, which sort before everything held, so the client's next page shows
//! them. The oldest events of an answer, whose prev events are still unknown, get the state
//! before them from `/state` (stored as outliers).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ruma::{OwnedEventId, RoomId, UInt, api::federation::backfill::get_backfill};

use crate::{
    Result,
    service::{
        Services,
        rooms::{
            accept::{Outcome, StateBefore},
            verify::{Dropped, Verified},
        },
    },
};

/// Events asked for in one backfill (Synapse's cap for `/backfill` answers is 100).
const BACKFILL_LIMIT: u32 = 50;
/// Servers tried in turn.
const SERVERS_TRIED: usize = 3;
/// Holes named in one request.
const HOLES_ASKED: usize = 20;
/// Oldest events of an answer whose state is fetched (one `/state` each).
const STATES_FETCHED: usize = 3;
/// Events fetched besides the answer (states, auth events) at most, as for one received PDU.
const FETCH_BUDGET: usize = 2_000;

impl Services {
    /// Fills the oldest holes of `room_id` from another server in it. Returns how many
    /// events were stored in the timeline (0: nothing to fetch, or nobody answered).
    pub async fn backfill_from_others(&self, room_id: &RoomId) -> Result<usize> {
        let Some(client) = self.federation.client() else {
            return Ok(0);
        };
        let holes = self.rooms.backward_extremities(room_id)?;
        if holes.is_empty() {
            return Ok(0);
        }
        let Some(info) = self.rooms.info(room_id)? else {
            return Ok(0);
        };
        let version = info.version;
        let servers = self.rooms.joined_servers(room_id)?;
        for server in servers.iter().take(SERVERS_TRIED) {
            let request = get_backfill::v1::Request::new(
                room_id.to_owned(),
                holes.iter().take(HOLES_ASKED).cloned().collect(),
                UInt::from(BACKFILL_LIMIT),
            );
            let pdus = match client.send(server, request).await {
                Ok(response) => response.pdus,
                Err(error) => {
                    tracing::info!(%server, %room_id, %error, "backfill failed");
                    continue;
                }
            };
            let mut events: Vec<Verified> = Vec::new();
            for raw in pdus.iter().take(BACKFILL_LIMIT as usize) {
                match self.verify_pdu(raw, &version).await {
                    Ok(event) if event.room_id == room_id => events.push(event),
                    Ok(_) => {}
                    Err(Dropped(reason)) => {
                        tracing::debug!(%server, %reason, "backfilled event dropped");
                    }
                }
            }
            if events.is_empty() {
                continue;
            }
            // Auth events the answer needs and we lack.
            let mut missing_auth: BTreeSet<OwnedEventId> = BTreeSet::new();
            for event in &events {
                for auth in &event.pdu.auth_events {
                    if self.rooms.pdu(auth)?.is_none() {
                        missing_auth.insert(auth.clone());
                    }
                }
            }
            // The oldest events: their prev events are neither in the answer nor held with
            // state. They need the state before them.
            let in_answer: HashSet<&OwnedEventId> = events.iter().map(|e| &e.event_id).collect();
            let mut given = BTreeMap::new();
            let mut oldest = Vec::new();
            for event in &events {
                let mut lacking = false;
                for prev in &event.pdu.prev_events {
                    if !in_answer.contains(prev) && self.rooms.state_hashes(prev)?.is_none() {
                        lacking = true;
                    }
                }
                if lacking {
                    oldest.push(event.event_id.clone());
                }
            }
            let mut budget = FETCH_BUDGET;
            for event_id in oldest.iter().take(STATES_FETCHED) {
                if let Some(map) = self
                    .fetch_state_before(server, room_id, &version, event_id, &mut budget)
                    .await?
                {
                    given.insert(event_id.clone(), StateBefore { fetched: vec![map] });
                }
            }
            let mut chain = Vec::new();
            for id in &missing_auth {
                if self.rooms.pdu(id)?.is_none()
                    && let Some(found) = self.fetch_event(server, id, &version, &mut budget).await
                {
                    chain.push(found);
                }
            }
            if !chain.is_empty() {
                self.store_outliers(server, room_id, &version, chain, &mut budget)
                    .await?;
            }
            let outcomes = self.rooms.accept_backfill(events, given).await?;
            let stored = outcomes
                .iter()
                .filter(|outcome| {
                    matches!(outcome, Outcome::Committed(committed) if committed.position.is_some())
                })
                .count();
            if stored > 0 {
                return Ok(stored);
            }
        }
        Ok(0)
    }
}
