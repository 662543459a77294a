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

    /// Whether the sender's device already sent this transaction.
    pub fn was_sent(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        txn_id: &str,
    ) -> Result<bool> {
        Ok(self
            .txns
            .get(&txn_key(sender, sender_device, txn_id))?
            .is_some())
    }

    /// Queues one message for each `(user, device)`; a repeated transaction does nothing.
    /// Returns whether the transaction was new.
    pub async fn send(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        txn_id: &str,
        kind: &str,
        targets: Vec<(OwnedUserId, OwnedDeviceId, JsonValue)>,
    ) -> Result<bool> {
        let txn = txn_key(sender, sender_device, txn_id);
        if self.txns.get(&txn)?.is_some() {
            return Ok(false);
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
        Ok(true)
    }

    /// Deletes what a sync with `since` acknowledges, and returns up to [`MAX_PER_SYNC`]
    /// pending messages from before `before` (the answer's own next token: a message
    /// committed while the answer was built waits for the next one, so it is never handed
    /// out twice) with the position of the first one left behind, if any.
    pub async fn take(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        before: u64,
    ) -> Result<(Vec<JsonValue>, Option<u64>)> {
        let (pending, left_behind) = self
            .take_positioned(user_id, device_id, since, before)
            .await?;
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
        let (pending, _) = self
            .take_positioned(user_id, device_id, from, u64::MAX)
            .await?;
        let next = pending.last().map(|(position, _)| position + 1);
        Ok((pending.into_iter().map(|(_, m)| m).collect(), next))
    }

    async fn take_positioned(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<u64>,
        before: u64,
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
            } else if position >= before {
                break;
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

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn messages_are_handed_out_once_in_order_and_only_up_to_the_answer() {
        let db = Db::memory();
        let stream = Arc::new(Stream::new(&db).unwrap());
        let to_device = ToDevice::new(&db, Arc::clone(&stream)).unwrap();
        let (alice, phone) = (user_id!("@alice:example.org"), device_id!("PHONE"));
        let target = || vec![(alice.to_owned(), phone.to_owned(), json!({}))];
        to_device
            .send(alice, phone, "t1", "m.first", target())
            .await
            .unwrap();
        // An answer built at this point covers positions before `next`...
        let next = stream.position() + 1;
        // ... and a message committed while it is built waits for the next answer.
        to_device
            .send(alice, phone, "t2", "m.second", target())
            .await
            .unwrap();
        let (messages, left_behind) = to_device.take(alice, phone, None, next).await.unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["type"], "m.first");
        assert_eq!(left_behind, None);
        // The next answer, acknowledging the first, gets the second only.
        let later = stream.position() + 1;
        let (messages, _) = to_device
            .take(alice, phone, Some(next), later)
            .await
            .unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["type"], "m.second");
        // A repeated transaction queues nothing.
        to_device
            .send(alice, phone, "t2", "m.second", target())
            .await
            .unwrap();
        let (messages, _) = to_device
            .take(alice, phone, Some(later), u64::MAX)
            .await
            .unwrap();
        assert!(messages.is_empty());
    }
}
