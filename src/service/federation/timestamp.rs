//! Jumping to a date across servers (client-server API `GET /timestamp_to_event`,
//! server-server API `GET /timestamp_to_event`).
//!
//! A server that joined a room late holds only part of its history. When the local answer is
//! missing, or is the oldest event held in a room with holes (`roomid_backwardextremity`:
//! history from before our join that we never fetched), the other servers in the room are
//! asked (up to [`SERVERS_TRIED`], as Synapse does "next to a gap"); an answer closer to the
//! asked time in the asked direction wins. Its event is fetched (`/event`), checked (format,
//! signatures, content hash) and stored through the room core as an outlier, its auth chain
//! fetched first when we lack it; an event the room core rejects is not returned.

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName,
    api::{Direction, federation::event::get_event_by_timestamp},
};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{accept::Outcome, check::Verdict, pdu::Pdu, pos::Pos},
    },
};

/// Other servers asked in turn.
pub const SERVERS_TRIED: usize = 3;
/// How long one server may take to answer (the event fetch has the client's own limits).
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Events fetched for one remote answer at most (the event and its auth chain).
const FETCH_BUDGET: usize = 500;

/// An event found for a timestamp: its id and `origin_server_ts`.
pub type Found = (OwnedEventId, MilliSecondsSinceUnixEpoch);

/// The answer when no event is found: 404 `M_NOT_FOUND` (client-server API).
pub fn not_found(ts: u64, direction: Direction) -> Error {
    let direction = match direction {
        Direction::Forward => "forward",
        Direction::Backward => "backward",
    };
    Error::not_found(format!(
        "Unable to find an event from {ts} in the {direction} direction."
    ))
}

/// Whether `candidate` (a timestamp) answers `ts` in `direction` better than `current`:
/// on the asked side of `ts`, and nearer to it.
pub fn closer(ts: u64, direction: Direction, candidate: u64, current: Option<u64>) -> bool {
    match direction {
        Direction::Forward => candidate >= ts && current.is_none_or(|current| candidate < current),
        Direction::Backward => candidate <= ts && current.is_none_or(|current| candidate > current),
    }
}

impl Services {
    /// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`: the timeline event closest
    /// to `ts` in `direction`, for a server with a user joined in the room (403 otherwise;
    /// the server ACL applies). 404 when there is none.
    pub fn federation_timestamp_to_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        ts: u64,
        direction: Direction,
    ) -> Result<Found> {
        self.rooms.existing(room_id)?;
        self.require_server_in_room(origin, room_id)?;
        let (_, pdu) = self
            .rooms
            .event_at_timestamp_where(room_id, ts, direction, |_, _| Ok(true))?
            .ok_or_else(|| not_found(ts, direction))?;
        Ok((pdu.event_id, pdu.origin_server_ts))
    }

    /// Whether the local answer `local` for `room_id` lies at the edge of what we hold:
    /// there is none, or it is the oldest event of a room with holes.
    fn at_history_edge(&self, room_id: &RoomId, local: Option<&(Pos, Pdu)>) -> Result<bool> {
        let Some((pos, _)) = local else {
            return Ok(true);
        };
        let first = self.rooms.first_event(room_id)?.map(|(first, _)| first);
        Ok(first == Some(*pos) && !self.rooms.backward_extremities(room_id)?.is_empty())
    }

    /// The client's `timestamp_to_event` after the local search found `local`: the local
    /// answer, or a closer one from another server in the room when the local one lies at
    /// the edge of what we hold ([`Self::at_history_edge`]). 404 when neither has one.
    pub async fn timestamp_to_event(
        &self,
        room_id: &RoomId,
        ts: u64,
        direction: Direction,
        local: Option<(Pos, Pdu)>,
    ) -> Result<Found> {
        let local_found = local
            .as_ref()
            .map(|(_, pdu)| (pdu.event_id.clone(), pdu.origin_server_ts));
        if self.federation.client().is_none() || !self.at_history_edge(room_id, local.as_ref())? {
            return local_found.ok_or_else(|| not_found(ts, direction));
        }
        let current = local_found.as_ref().map(|(_, at)| u64::from(at.get()));
        for server in self
            .rooms
            .joined_servers(room_id)?
            .iter()
            .take(SERVERS_TRIED)
        {
            match self
                .remote_timestamp_event(server, room_id, ts, direction, current)
                .await
            {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(error) => {
                    tracing::info!(%server, %room_id, %error, "remote timestamp_to_event failed");
                }
            }
        }
        local_found.ok_or_else(|| not_found(ts, direction))
    }

    /// Asks `server` for its answer; `Some` when it is closer than `current` and its event
    /// is held (or fetched, checked and stored) and not rejected.
    async fn remote_timestamp_event(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        ts: u64,
        direction: Direction,
        current: Option<u64>,
    ) -> Result<Option<Found>> {
        let client = self.federation.reach(server, "timestamp_to_event")?;
        let asked = MilliSecondsSinceUnixEpoch(
            ruma::UInt::new(ts).ok_or_else(|| Error::invalid_param("ts is out of range."))?,
        );
        let request =
            get_event_by_timestamp::v1::Request::new(room_id.to_owned(), asked, direction);
        let answer = tokio::time::timeout(REMOTE_TIMEOUT, client.send(server, request))
            .await
            .map_err(|_| Error::remote_unreachable(server, "timed out"))??;
        if !closer(
            ts,
            direction,
            u64::from(answer.origin_server_ts.get()),
            current,
        ) {
            return Ok(None);
        }
        let event_id = answer.event_id;
        let usable = |pdu: &Pdu| -> Result<bool> {
            Ok(pdu.room_id() == room_id
                && closer(
                    ts,
                    direction,
                    u64::from(pdu.origin_server_ts.get()),
                    current,
                )
                && !matches!(self.rooms.verdict(&pdu.event_id)?, Verdict::Rejected(_)))
        };
        if let Some(pdu) = self.rooms.pdu(&event_id)? {
            return Ok(usable(&pdu)?.then(|| (pdu.event_id.clone(), pdu.origin_server_ts)));
        }
        let version = self.rooms.existing(room_id)?.version;
        let mut budget = FETCH_BUDGET;
        let Some(event) = self
            .fetch_event(server, &event_id, &version, &mut budget)
            .await
        else {
            return Ok(None);
        };
        if event.room_id != room_id {
            return Ok(None);
        }
        let missing_auth = event
            .pdu
            .auth_events
            .iter()
            .map(|id| self.rooms.pdu(id).map(|held| held.is_none()))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .any(|missing| missing);
        if missing_auth {
            self.fetch_auth_chain(server, room_id, &event_id, &version, &mut budget)
                .await;
        }
        let outcome = self.rooms.accept_outliers(vec![event]).await?;
        if !matches!(
            outcome.first(),
            Some(Outcome::Committed(_) | Outcome::AlreadyKnown(_))
        ) {
            tracing::info!(%server, %event_id, "timestamp_to_event: the event could not be stored");
            return Ok(None);
        }
        match self.rooms.pdu(&event_id)? {
            Some(pdu) if usable(&pdu)? => Ok(Some((pdu.event_id.clone(), pdu.origin_server_ts))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closer_answer_is_on_the_asked_side_and_nearer() {
        // Forwards from 100: the first event at or after it.
        assert!(closer(100, Direction::Forward, 150, None));
        assert!(closer(100, Direction::Forward, 100, Some(200)));
        assert!(closer(100, Direction::Forward, 150, Some(200)));
        assert!(!closer(100, Direction::Forward, 250, Some(200)));
        assert!(
            !closer(100, Direction::Forward, 99, None),
            "before the time asked"
        );
        // Backwards from 100: the last event at or before it.
        assert!(closer(100, Direction::Backward, 50, None));
        assert!(closer(100, Direction::Backward, 80, Some(50)));
        assert!(!closer(100, Direction::Backward, 40, Some(50)));
        assert!(
            !closer(100, Direction::Backward, 101, None),
            "after the time asked"
        );
    }
}
