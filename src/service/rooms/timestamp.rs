//! Jumping to a date (client-server API, `GET /rooms/{roomId}/timestamp_to_event`): the event
//! closest to a timestamp in one direction.
//!
//! There is no index by timestamp. Events are appended in timeline order with the server's
//! clock, so `origin_server_ts` grows with the timeline position (backfilled history sorts
//! before, with older timestamps), and a binary search over the position range finds the
//! boundary in at most 64 seeks of one event each. (If the clock ever went
//! backwards, the answer is an event near the asked time rather than the exact closest one.)

use ruma::{RoomId, api::Direction};

use super::{RoomInfo, Rooms, pdu::Pdu, pos::Pos, visibility::Visibility};
use crate::Result;

/// Events the user may not see that are skipped, at most, before giving up (404).
const MAX_SKIPPED: usize = 1_000;
/// Events read at a time while skipping.
const CHUNK: usize = 32;

impl Rooms {
    /// Forwards: the first event at or after `ts` (ms); backwards: the last one at or
    /// before it. Only events `visibility` lets its user see count; `None` if there is none.
    pub fn event_at_timestamp(
        &self,
        room_id: &RoomId,
        ts: u64,
        direction: Direction,
        visibility: &mut Visibility<'_>,
    ) -> Result<Option<(Pos, Pdu)>> {
        self.event_at_timestamp_where(room_id, ts, direction, |pos, pdu| {
            visibility.can_see(pos, pdu)
        })
    }

    /// [`Self::event_at_timestamp`] with any test of which events count (another server's
    /// `timestamp_to_event` counts every timeline event).
    pub fn event_at_timestamp_where(
        &self,
        room_id: &RoomId,
        ts: u64,
        direction: Direction,
        mut counts: impl FnMut(Pos, &Pdu) -> Result<bool>,
    ) -> Result<Option<(Pos, Pdu)>> {
        let info = self.existing(room_id)?;
        let forward = direction == Direction::Forward;
        // Forwards from the first event with a timestamp >= ts; backwards from just before
        // the first one with a timestamp > ts.
        let mut position = self.first_pos_reaching(&info, ts, !forward)?;
        let mut examined = 0;
        while examined < MAX_SKIPPED {
            let chunk = if forward {
                self.events_from(&info, position, CHUNK)?
            } else {
                self.events_before(&info, position, CHUNK)?
            };
            let Some((last, _)) = chunk.last() else {
                return Ok(None);
            };
            position = if forward { last.next() } else { *last };
            for (pos, pdu) in chunk {
                if counts(pos, &pdu)? {
                    return Ok(Some((pos, pdu)));
                }
                examined += 1;
            }
        }
        Ok(None)
    }

    /// The first event of the room's timeline (backfilled ones included), if any.
    pub fn first_event(&self, room_id: &RoomId) -> Result<Option<(Pos, Pdu)>> {
        let info = self.existing(room_id)?;
        Ok(self.events_from(&info, Pos::MIN, 1)?.into_iter().next())
    }

    /// The smallest position `p` such that the first event at or after `p` has a timestamp
    /// `>= ts` (or `> ts` when `strict`), searched from the room's first event on (backfilled
    /// ones included); just after `last_count` if no event has.
    fn first_pos_reaching(&self, info: &RoomInfo, ts: u64, strict: bool) -> Result<Pos> {
        let mut high = Pos::live(info.last_count)?.next();
        // Nothing lies below the room's first event: start there rather than at `Pos::MIN`.
        let mut low = match self.events_from(info, Pos::MIN, 1)?.first() {
            Some((first, _)) => (*first).min(high),
            None => return Ok(high),
        };
        while low < high {
            let mid = low.midpoint(high);
            match self.events_from(info, mid, 1)?.into_iter().next() {
                None => high = mid,
                Some((pos, pdu)) => {
                    let event_ts = u64::from(pdu.origin_server_ts.get());
                    let reaches = if strict {
                        event_ts > ts
                    } else {
                        event_ts >= ts
                    };
                    if reaches {
                        high = mid;
                    } else {
                        // Every position up to this event's leads to it: skip them.
                        low = pos.next();
                    }
                }
            }
        }
        Ok(low)
    }
}
