//! Incoming transactions (server-server API, "Transactions", `PUT /send/{txnId}`): once per
//! transaction id and origin; EDUs applied, PDUs answered one by one.
//!
//! Trees:
//! - `origintxnid_transaction`: `origin 0xFF txn id` → when it was applied (ms, u64), written
//!   once a transaction is applied; a repeat is answered 200 without applying it again (the
//!   spec: "the same transaction ID … should be treated as the same transaction").
//! - `tsorigintxnid_transaction`: `ms (u64) origin 0xFF txn id` → empty: the same, by age.
//!   Records older than [`KEEP_TRANSACTIONS`] go, a few with each new transaction, so the
//!   records stay bounded by a day's traffic (a sender retries a transaction for minutes
//!   or hours, not days).
//!
//! PDUs are checked and stored one by one ([`super::incoming`]); PDUs for rooms this
//! server is not in are dropped. EDUs applied today: `m.direct_to_device` (send-to-device
//! messages for local users), `m.device_list_update` and `m.signing_key_update` (the
//! user's device list is marked changed for our users who share a room with them),
//! `m.typing` and `m.receipt` ([`super::room_edus`], each dropped when the room's server ACL
//! denies the origin), `m.presence` ([`super::presence`]).

use std::collections::BTreeMap;

use ruma::{
    OwnedDeviceId, OwnedEventId, OwnedUserId, ServerName, api::federation::transactions::edu::Edu,
    serde::Raw, to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};

use super::sender::{MAX_EDUS, MAX_PDUS};
use crate::{Error, Result, service::Services, storage::Batch};

/// How long an applied transaction id is remembered.
pub const KEEP_TRANSACTIONS: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);
/// Old records removed per new transaction at most (more than one, so they never pile up).
const PRUNE_PER_TRANSACTION: usize = 8;

fn txn_key(origin: &ServerName, txn_id: &str) -> Vec<u8> {
    let mut key = origin.as_bytes().to_vec();
    key.push(0xFF);
    key.extend_from_slice(txn_id.as_bytes());
    key
}

impl Services {
    /// Applies a transaction from `origin` (its signature already checked) and returns the
    /// per-PDU results.
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawJsonValue>],
        edus: &[Raw<Edu>],
    ) -> Result<BTreeMap<OwnedEventId, std::result::Result<(), String>>> {
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::new(
                ruma::api::error::ErrorKind::TooLarge,
                format!("A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs."),
            ));
        }
        let seen = self.db.tree("origintxnid_transaction")?;
        let key = txn_key(origin, txn_id);
        let mut results = BTreeMap::new();
        let _applying = self.federation.receiving(origin).await;
        if seen.get(&key)?.is_some() {
            return Ok(results);
        }
        // PDUs first, one at a time (S2S "Transactions": each is processed as if it had
        // arrived alone; a rejection never fails the transaction).
        for pdu in pdus {
            if let Some((event_id, result)) = self.receive_pdu(origin, pdu).await? {
                results.insert(event_id, result);
            }
        }
        for edu in edus {
            match edu.deserialize() {
                Ok(Edu::DirectToDevice(content)) => {
                    if content.sender.server_name() != origin {
                        tracing::debug!(%origin, sender = %content.sender, "to-device message from another server's user dropped");
                        continue;
                    }
                    let mut targets: Vec<(OwnedUserId, OwnedDeviceId, JsonValue)> = Vec::new();
                    for (user_id, by_device) in &content.messages {
                        if !self.users.is_local(user_id) {
                            continue;
                        }
                        for (target, raw) in by_device {
                            let Ok(message) = serde_json::from_str::<JsonValue>(raw.json().get())
                            else {
                                continue;
                            };
                            match target {
                                // Only devices that exist: another server cannot fill our
                                // disk with messages nobody will ever fetch.
                                DeviceIdOrAllDevices::DeviceId(device_id) => {
                                    if self.devices.get(user_id, device_id)?.is_some() {
                                        targets.push((user_id.clone(), device_id.clone(), message));
                                    }
                                }
                                DeviceIdOrAllDevices::AllDevices => {
                                    for (device_id, _) in self.devices.list(user_id)? {
                                        targets.push((user_id.clone(), device_id, message.clone()));
                                    }
                                }
                            }
                        }
                    }
                    // Idempotent per sender and message id, whatever the transaction.
                    let origin_device = <&ruma::DeviceId>::from(origin.as_str());
                    self.to_device
                        .send(
                            &content.sender,
                            origin_device,
                            content.message_id.as_str(),
                            &content.ev_type.to_string(),
                            targets,
                        )
                        .await?;
                }
                Ok(Edu::DeviceListUpdate(content)) => {
                    // A server speaks only for its own users.
                    if content.user_id.server_name() == origin {
                        self.remote_device_list_changed(&content.user_id).await?;
                    }
                }
                Ok(Edu::Typing(content)) => self.receive_typing(origin, &content)?,
                Ok(Edu::Receipt(content)) => self.receive_receipts(origin, &content).await?,
                Ok(Edu::Presence(content)) => self.receive_presence(origin, &content)?,
                Ok(Edu::SigningKeyUpdate(content)) => {
                    if content.user_id.server_name() == origin {
                        self.remote_device_list_changed(&content.user_id).await?;
                    }
                }
                Ok(other) => {
                    tracing::debug!(%origin, edu = ?std::mem::discriminant(&other), "EDU dropped: no shared rooms yet");
                }
                Err(error) => {
                    tracing::debug!(%origin, %error, "EDU that does not parse dropped");
                }
            }
        }
        let by_age = self.db.tree("tsorigintxnid_transaction")?;
        let now = crate::service::users::now_ms();
        let mut batch = Batch::new();
        let mut aged = now.to_be_bytes().to_vec();
        aged.extend_from_slice(&key);
        batch.insert(&*seen, key, now.to_be_bytes().to_vec());
        batch.insert(&*by_age, aged, Vec::new());
        let horizon = now.saturating_sub(KEEP_TRANSACTIONS.as_millis() as u64);
        for entry in by_age.iter_from(&[], false).take(PRUNE_PER_TRANSACTION) {
            let (old, _) = entry?;
            let Some(at) = old.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            if u64::from_be_bytes(at) >= horizon {
                break;
            }
            batch.remove(&*seen, old[8..].to_vec());
            batch.remove(&*by_age, old);
        }
        self.db.apply(&batch)?;
        self.db.persist().await?;
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, server_name, user_id};
    use serde_json::json;

    use super::*;

    fn services() -> std::sync::Arc<Services> {
        Services::build(
            crate::config::tests_support::config(),
            crate::storage::Db::memory(),
        )
        .unwrap()
    }

    /// Services with a local user `@bob:example.org` and his device `PHONE`.
    async fn with_bobs_phone() -> std::sync::Arc<Services> {
        let services = services();
        let bob = user_id!("@bob:example.org");
        services.users.create(bob, None, false, None).await.unwrap();
        services
            .devices
            .create_without_token(bob, device_id!("PHONE"), None)
            .await
            .unwrap();
        services
    }

    fn to_device_edu(sender: &str, message_id: &str, n: u64) -> Raw<Edu> {
        let edu = json!({
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": sender, "type": "m.test", "message_id": message_id,
                "messages": { "@bob:example.org": { "PHONE": { "n": n } } },
            },
        });
        Raw::from_json(serde_json::value::to_raw_value(&edu).unwrap())
    }

    async fn delivered(services: &Services) -> Vec<u64> {
        let (messages, _) = services
            .to_device
            .take(
                user_id!("@bob:example.org"),
                device_id!("PHONE"),
                None,
                u64::MAX,
            )
            .await
            .unwrap();
        messages
            .iter()
            .map(|m| m["content"]["n"].as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_transaction_is_applied_once_and_its_edus_checked() {
        let services = with_bobs_phone().await;
        let origin = server_name!("other.example");

        services
            .receive_transaction(
                origin,
                "t1",
                &[],
                &[to_device_edu("@a:other.example", "m1", 1)],
            )
            .await
            .unwrap();
        // The same transaction id again, even with other content: not applied again.
        services
            .receive_transaction(
                origin,
                "t1",
                &[],
                &[to_device_edu("@a:other.example", "m2", 2)],
            )
            .await
            .unwrap();
        // Another origin's transaction of the same id is its own.
        services
            .receive_transaction(
                server_name!("third.example"),
                "t1",
                &[],
                &[to_device_edu("@c:third.example", "m3", 3)],
            )
            .await
            .unwrap();
        // A server speaks only for its own users.
        services
            .receive_transaction(
                origin,
                "t2",
                &[],
                &[to_device_edu("@c:third.example", "m4", 4)],
            )
            .await
            .unwrap();
        assert_eq!(delivered(&services).await, [1, 3]);

        // A PDU for a room this server is not in is dropped: nothing stored, no answer
        // (its id depends on a room version we do not know). PDUs of known rooms are
        // tested in `federation::incoming`.
        let pdu = serde_json::value::to_raw_value(&json!({
            "event_id": "$abc", "type": "m.room.message", "room_id": "!nowhere:other.example",
        }))
        .unwrap();
        let results = services
            .receive_transaction(origin, "t3", &[pdu], &[])
            .await
            .unwrap();
        assert!(results.is_empty());
        assert!(
            services
                .rooms
                .pdu(ruma::event_id!("$abc"))
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_oversized_transaction_is_refused_whole() {
        let services = services();
        let origin = server_name!("other.example");
        let pdu = serde_json::value::to_raw_value(&json!({})).unwrap();
        let pdus = vec![pdu; MAX_PDUS + 1];
        let refused = services
            .receive_transaction(origin, "big", &pdus, &[])
            .await;
        assert!(
            matches!(
                refused,
                Err(Error::Matrix {
                    kind: ruma::api::error::ErrorKind::TooLarge,
                    ..
                })
            ),
            "{refused:?}"
        );
        let edus: Vec<_> = (0..=MAX_EDUS)
            .map(|n| to_device_edu("@a:other.example", &format!("m{n}"), n as u64))
            .collect();
        assert!(
            services
                .receive_transaction(origin, "big2", &[], &edus)
                .await
                .is_err()
        );
        // Nothing of it was recorded: the same id may come again, smaller.
        services
            .receive_transaction(origin, "big2", &[], &edus[..1])
            .await
            .unwrap();
    }

    /// A transaction retried while its first copy is still being applied is applied once.
    #[tokio::test]
    async fn concurrent_copies_of_a_transaction_apply_once() {
        let services = with_bobs_phone().await;
        let origin = server_name!("other.example");
        let first = [to_device_edu("@a:other.example", "m1", 1)];
        let second = [to_device_edu("@a:other.example", "m2", 2)];
        let (a, b) = tokio::join!(
            services.receive_transaction(origin, "t", &[], &first),
            services.receive_transaction(origin, "t", &[], &second),
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(delivered(&services).await.len(), 1);
    }

    /// Transaction ids older than a day are forgotten, a few with each new transaction.
    #[tokio::test]
    async fn old_transaction_ids_are_forgotten() {
        let services = services();
        let seen = services.db.tree("origintxnid_transaction").unwrap();
        let by_age = services.db.tree("tsorigintxnid_transaction").unwrap();
        let origin = server_name!("other.example");
        let day_and_more = KEEP_TRANSACTIONS.as_millis() as u64 + 1_000;
        let old_at = crate::service::users::now_ms() - day_and_more;
        for n in 0..3 {
            let key = txn_key(origin, &format!("old{n}"));
            let mut aged = (old_at + n).to_be_bytes().to_vec();
            aged.extend_from_slice(&key);
            seen.insert(&key, &old_at.to_be_bytes()).unwrap();
            by_age.insert(&aged, &[]).unwrap();
        }
        services
            .receive_transaction(origin, "new", &[], &[])
            .await
            .unwrap();
        assert!(seen.get(&txn_key(origin, "old0")).unwrap().is_none());
        assert!(seen.get(&txn_key(origin, "old2")).unwrap().is_none());
        assert!(seen.get(&txn_key(origin, "new")).unwrap().is_some());
        assert_eq!(
            by_age.iter_from(&[], false).count(),
            1,
            "only the new one's record"
        );
    }
}
