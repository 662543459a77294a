//! Send-to-device messages (client-server API, "Send-to-Device messaging"): queued per
//! device at a stream position, delivered by `/sync` in order, and deleted once the device
//! syncs with a token past them (which acknowledges them).
//!
//! Trees:
//! - `todevice`: `user 0xFF device 0xFF position (u64)` → `{"sender", "type", "content"}`.
//! - `userdevicetxnid_todevice`: `sender 0xFF device 0xFF txn id` → empty (idempotency).

use std::sync::Arc;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Value as JsonValue, json};

use super::{
    rooms::{pair_key, short::u64_from, txn_key},
    stream::Stream,
};
use crate::{
    Error, Result,
    storage::{Batch, Db, Table, Tree},
};

/// At most this many messages per sync response; the rest follow in the next ones.
pub const MAX_PER_SYNC: usize = 100;

pub struct ToDevice {
    db: Db,
    stream: Arc<Stream>,
    queue: Table<JsonValue>,
    txns: Arc<dyn Tree>,
}

fn device_prefix(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    let mut key = pair_key(user_id.as_str(), device_id.as_str());
    key.push(0xFF);
    key
}

impl ToDevice {
    pub fn new(db: &Db, stream: Arc<Stream>) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            stream,
            queue: db.table("todevice")?,
            txns: db.tree("userdevicetxnid_todevice")?,
        })
    }

    /// Queues one message for each `(user, device)`; a repeated transaction does nothing.
    pub async fn send(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        txn_id: &str,
        kind: &str,
        targets: Vec<(OwnedUserId, OwnedDeviceId, JsonValue)>,
    ) -> Result<()> {
        let txn = txn_key(sender, sender_device, txn_id);
        if self.txns.get(&txn)?.is_some() {
            return Ok(());
        }
        let (position, ()) = self.stream.commit(|position, batch: &mut Batch| {
            for (user, device, content) in &targets {
                let mut key = device_prefix(user, device);
                key.extend_from_slice(&position.to_be_bytes());
                batch.insert_json(
                    &self.queue,
                    key,
                    &json!({ "sender": sender, "type": kind, "content": content }),
                );
            }
            batch.insert(&*self.txns, txn.clone(), Vec::new());
            Ok(())
        })?;
        self.stream
            .touch(targets.iter().map(|(user, _, _)| user.as_ref()), position);
        self.db.persist().await?;
        Ok(())
    }

    /// Deletes what a sync with `since` acknowledges, and returns up to [`MAX_PER_SYNC`]
    /// pending messages with the position of the first one left behind, if any.
    pub async fn take(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
    ) -> Result<(Vec<JsonValue>, Option<u64>)> {
        let (pending, left_behind) = self.take_positioned(user_id, device_id, since).await?;
        Ok((pending.into_iter().map(|(_, m)| m).collect(), left_behind))
    }

    /// One page for a dehydrated device (MSC3814 `…/events`): deletes what `from`
    /// acknowledges and returns the next messages with the token of the page after them
    /// (`None` when there were none).
    pub async fn page(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        from: Option<u64>,
    ) -> Result<(Vec<JsonValue>, Option<u64>)> {
        let (pending, _) = self.take_positioned(user_id, device_id, from).await?;
        let next = pending.last().map(|(position, _)| position + 1);
        Ok((pending.into_iter().map(|(_, m)| m).collect(), next))
    }

    pub async fn take_positioned(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
    ) -> Result<(Vec<(u64, JsonValue)>, Option<u64>)> {
        let prefix = device_prefix(user_id, device_id);
        let mut acknowledged = Batch::new();
        let mut pending = Vec::new();
        let mut left_behind = None;
        for entry in self.queue.scan_prefix(&prefix) {
            let (key, message) = entry?;
            let position = u64_from(&key[prefix.len()..])
                .ok_or_else(|| Error::internal("bad to-device key"))?;
            if since.is_some_and(|since| position < since) {
                acknowledged.remove(self.queue.tree(), key);
            } else if pending.len() < MAX_PER_SYNC {
                pending.push((position, message));
            } else {
                left_behind = Some(position);
                break;
            }
        }
        if !acknowledged.is_empty() {
            self.db.apply(&acknowledged)?;
            self.db.persist().await?;
        }
        Ok((pending, left_behind))
    }
}
