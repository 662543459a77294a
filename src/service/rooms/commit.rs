//! The one store step: applies a [`Prepared`] event at the next stream position. Only
//! writes happen here (no resolution, no DAG walks), because every other commit on the
//! server — sends in other rooms, receipts, typing, to-device — waits for this one.

use ruma::events::room::member::MembershipState;

use super::{
    MembershipEntry, RoomInfo, Rooms, pair_key, pdu::Pdu, pdu_id, pos::Pos, prefix_key, txn_key,
};
use super::{
    append::Transaction,
    prepare::{LiveUpdate, Prepared},
};
use crate::{Error, Result, service::federation::sender::Item};

/// A stored event as other servers get it.
fn federation_form(stored: &[u8]) -> Result<serde_json::Value> {
    let mut value: serde_json::Value = serde_json::from_slice(stored)
        .map_err(|e| Error::internal(format!("corrupt stored PDU: {e}")))?;
    if let Some(object) = value.as_object_mut() {
        object.remove("unsigned");
        object.remove("event_id");
    }
    Ok(value)
}

impl Rooms {
    /// Stores `prepared` in one batch: the event (in the timeline when it is an accepted
    /// live or backfilled event, else without a place), its verdict and state hashes, and
    /// for a live timeline event the room info, extremities, membership indexes and the
    /// client's transaction; then wakes the room's members (live timeline events only: a
    /// backfilled event is history, no sync shows it as news). Returns the event and its
    /// timeline place when it has one: `Pos::live(position)` for a live event,
    /// `Pos::backfilled(position)` for a backfilled one, so each backfill sorts before
    /// everything already there.
    pub(super) fn commit(
        &self,
        prepared: Prepared,
        transaction: Option<Transaction<'_>>,
    ) -> Result<(Pdu, Option<Pos>)> {
        let Prepared {
            room_id,
            version,
            info,
            short_room_id,
            short_event_id,
            event_id,
            pdu,
            stored,
            state,
            live,
            backfilled,
            reserved,
            verdict,
            destinations,
            batch: prepared_batch,
        } = prepared;
        // What other servers are sent: the event without what is ours alone (`unsigned`)
        // and, in rooms v3+, without `event_id` (it is the reference hash).
        let outgoing = match (&self.outgoing, destinations.is_empty()) {
            (Some(sender), false) => Some((sender, federation_form(&stored)?)),
            _ => None,
        };
        let (count, pos) = self.stream.commit(|count, batch| {
            batch.append(prepared_batch);
            if let Some(value) = verdict.encode() {
                batch.insert(
                    &*self.verdicts,
                    short_event_id.to_be_bytes().to_vec(),
                    value,
                );
            }
            if let Some((before, after)) = state {
                let mut hashes = before.unwrap_or(0).to_be_bytes().to_vec();
                hashes.extend_from_slice(&after.to_be_bytes());
                batch.insert(
                    &*self.statehashes,
                    short_event_id.to_be_bytes().to_vec(),
                    hashes,
                );
            }
            let pos = match (&live, backfilled) {
                (Some(_), _) => Pos::live(count)?,
                (None, true) => Pos::backfilled(reserved.unwrap_or(count))?,
                (None, false) => {
                    batch.insert(&*self.outliers, event_id.as_bytes().to_vec(), stored);
                    return Ok(None);
                }
            };
            // An outlier that now takes its place moves; it is never in both trees. (Looked
            // up first: a removal is a write, and new events never were outliers.)
            if self.outliers.get(event_id.as_bytes())?.is_some() {
                batch.remove(&*self.outliers, event_id.as_bytes().to_vec());
            }
            let id = pdu_id(short_room_id, pos);
            batch.insert(&*self.pdus, id.to_vec(), stored);
            batch.insert(
                &*self.eventid_pduid,
                event_id.as_bytes().to_vec(),
                id.to_vec(),
            );
            self.index_relation(
                batch,
                &room_id,
                pdu.kind.to_string().as_str(),
                &event_id,
                &pdu.content_value(),
                pos,
            )?;
            let Some(live) = &live else {
                return Ok(Some(pos));
            };
            let bump_count = if super::bumps(&pdu.kind) {
                count
            } else {
                info.as_ref().map_or(count, |info| info.bump_count)
            };
            let depth = u64::from(pdu.depth);
            let new_info = RoomInfo {
                version,
                short_room_id,
                state_hash: live.current,
                last_count: count,
                depth: info.as_ref().map_or(depth, |info| info.depth.max(depth)),
                bump_count,
            };
            batch.insert(&*self.info, room_id.as_bytes().to_vec(), new_info.encode());
            if let Some(extremities) = &live.extremities {
                self.write_extremities(batch, &room_id, extremities.iter().map(|id| &**id));
            }
            if let Some(transaction) = &transaction {
                batch.insert(
                    &*self.txn_event,
                    txn_key(&pdu.sender, transaction.device_id, transaction.txn_id),
                    event_id.as_bytes().to_vec(),
                );
                let mut value = prefix_key(transaction.device_id.as_str());
                value.extend_from_slice(transaction.txn_id.as_bytes());
                batch.insert(&*self.event_txn, event_id.as_bytes().to_vec(), value);
            }
            for (user, membership) in &live.memberships {
                self.index_membership(batch, &room_id, user, membership.clone(), count)?;
            }
            if let Some((sender, form)) = &outgoing {
                let item = Item::Pdu(form.clone());
                for destination in &destinations {
                    sender.enqueue(batch, destination, &item)?;
                }
            }
            Ok(Some(pos))
        })?;
        if let Some((sender, _)) = &outgoing {
            for destination in &destinations {
                sender.wake(destination);
            }
        }

        // Wake everyone in the room and every user whose membership just changed. Events
        // without a live timeline place wake nobody: nothing a sync returns changed.
        let Some(LiveUpdate { memberships, .. }) = live else {
            return Ok((pdu, pos));
        };
        let members = self.members(&room_id)?;
        let joined = members
            .iter()
            .filter(|(_, membership)| *membership == MembershipState::Join)
            .map(|(user, _)| user.as_ref());
        self.stream.touch(
            joined.chain(memberships.iter().map(|(user, _)| user.as_ref())),
            count,
        );
        Ok((pdu, pos))
    }

    /// Writes both membership indexes for `user` in `room_id`.
    pub(super) fn index_membership(
        &self,
        batch: &mut crate::storage::Batch,
        room_id: &ruma::RoomId,
        user: &ruma::UserId,
        membership: MembershipState,
        count: u64,
    ) -> Result<()> {
        let key = pair_key(user.as_str(), room_id.as_str());
        // When one of our users became a member (a join after a join is a profile change).
        let joined_since =
            if membership == MembershipState::Join && user.server_name() == self.server_name() {
                match self.user_rooms.get(&key)? {
                    Some(previous) if previous.membership == MembershipState::Join => {
                        previous.joined_since
                    }
                    _ => count,
                }
            } else {
                0
            };
        batch.insert(
            &*self.room_users,
            pair_key(room_id.as_str(), user.as_str()),
            membership.as_str().as_bytes().to_vec(),
        );
        batch.insert_json(
            &self.user_rooms,
            key,
            &MembershipEntry {
                membership,
                count,
                stripped_state: None,
                joined_since,
            },
        );
        Ok(())
    }
}
