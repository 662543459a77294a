//! The schema upgrades ([`Migration`]s) that [`Db::open_sled`] runs on an older database.
//! Storage knows no Matrix, so the steps are defined here, beside the services whose trees
//! they read. Each step is idempotent: a crash during one runs it again at the next start.
//!
//! [`Db::open_sled`]: crate::storage::Db::open_sled

use crate::storage::{Db, Migration, StorageError, StorageResult};

/// Every upgrade step, in version order; the last one's `to` is
/// [`crate::storage::SCHEMA_VERSION`].
pub static STEPS: &[Migration] = &[
    Migration {
        to: 2,
        name: "room core: outliers, verdicts, backfill positions",
        run: check_timeline_index,
    },
    Migration {
        to: 3,
        name: "forward extremities: one value per room",
        run: extremities_per_room,
    },
];

/// Schema 2's forward extremities: `room id 0xFF event id` → empty.
const EXTREMITY_PER_EVENT: &str = "roomid_extremity";

/// Schema 3 keeps each room's forward extremities as one value
/// (`crate::service::rooms::EXTREMITIES`) instead of one key per event, which a
/// log-structured store (fjall) scans through every removed key. Each room moves in one
/// batch (new value written, old keys removed), so a step cut short moves the rest when it
/// runs again.
fn extremities_per_room(db: &Db) -> StorageResult<()> {
    use crate::service::rooms::{EXTREMITIES, join_extremities};
    let old = db.tree(EXTREMITY_PER_EVENT)?;
    let new = db.tree(EXTREMITIES)?;
    let mut moved = 0u64;
    let mut room: Option<(Vec<u8>, Vec<Vec<u8>>)> = None;
    let mut flush = |room: (Vec<u8>, Vec<Vec<u8>>)| -> StorageResult<()> {
        let (room_id, keys) = room;
        let ids: Vec<ruma::OwnedEventId> = keys
            .iter()
            .map(|key| {
                ruma::OwnedEventId::try_from(
                    String::from_utf8_lossy(&key[room_id.len() + 1..]).into_owned(),
                )
                .map_err(|_| StorageError::Corrupt {
                    tree: EXTREMITY_PER_EVENT,
                    detail: "a key's event id is not valid".into(),
                })
            })
            .collect::<StorageResult<_>>()?;
        let mut batch = crate::storage::Batch::new();
        batch.insert(&*new, room_id, join_extremities(ids.iter().map(|id| &**id)));
        for key in keys {
            batch.remove(&*old, key);
        }
        moved += 1;
        db.apply(&batch)
    };
    for entry in old.iter_from(b"", false) {
        let (key, _) = entry?;
        let split =
            key.iter()
                .position(|byte| *byte == 0xFF)
                .ok_or_else(|| StorageError::Corrupt {
                    tree: EXTREMITY_PER_EVENT,
                    detail: "a key without a room".into(),
                })?;
        match &mut room {
            Some((room_id, keys)) if room_id.as_slice() == &key[..split] => keys.push(key),
            _ => {
                if let Some(done) = room.take() {
                    flush(done)?;
                }
                room = Some((key[..split].to_vec(), vec![key]));
            }
        }
    }
    if let Some(done) = room.take() {
        flush(done)?;
    }
    tracing::info!(rooms = moved, "forward extremities moved");
    Ok(())
}

/// Timeline index of `service::rooms`: event id → pdu id (`short room id ‖ count`).
const EVENTID_PDUID: &str = "eventid_pduid";
/// Timeline of `service::rooms`: pdu id → stored PDU.
const PDUID_PDU: &str = "pduid_pdu";
/// Progress is logged every this many events.
const PROGRESS_EVERY: u64 = 100_000;

/// Schema 2 adds trees and longer keys for backfilled events but rewrites nothing: every
/// schema-1 key keeps its bytes and meaning. What it relies on is checked once, here: every
/// `eventid_pduid` value is a 16-byte pdu id with an event stored under it. A mismatch stops
/// the upgrade with `Corrupt` (the version stays 1) rather than surfacing later as a
/// "missing" event under federation load. One read per stored event.
fn check_timeline_index(db: &Db) -> StorageResult<()> {
    let index = db.tree(EVENTID_PDUID)?;
    let pdus = db.tree(PDUID_PDU)?;
    let mut checked = 0u64;
    for entry in index.iter_from(b"", false) {
        let (event_id, pdu_id) = entry?;
        let event_id = String::from_utf8_lossy(&event_id);
        if pdu_id.len() != 16 {
            return Err(StorageError::Corrupt {
                tree: EVENTID_PDUID,
                detail: format!(
                    "the pdu id of {event_id} is {} bytes long, not 16",
                    pdu_id.len()
                ),
            });
        }
        if pdus.get(&pdu_id)?.is_none() {
            return Err(StorageError::Corrupt {
                tree: PDUID_PDU,
                detail: format!("no event stored under the pdu id of {event_id}"),
            });
        }
        checked += 1;
        if checked.is_multiple_of(PROGRESS_EVERY) {
            tracing::info!(checked, "checking the timeline index");
        }
    }
    tracing::info!(events = checked, "the timeline index is consistent");
    Ok(())
}

#[cfg(test)]
mod tests;
