//! The outgoing queue (server-server API, "Transactions"): PDUs and EDUs for other servers
//! are queued durably per destination and sent in `PUT /_matrix/federation/v1/send/{txnId}`
//! transactions of at most 50 PDUs and 100 EDUs.
//!
//! Trees:
//! - `servernameseq_outgoing`: `destination 0xFF seq (u64)` → [`Item`] (JSON). `seq` comes
//!   from the store's id counter, so it only grows.
//! - `servername_transaction`: `destination` → [`InFlight`] (JSON): the transaction being
//!   sent: its id and the `seq`s of the items it holds. It is written before the first attempt, so a
//!   retry — after a failure or after a restart — sends the same items under the same id
//!   (the receiver drops a transaction id it has seen), and is removed with its items, in
//!   one batch, once the destination has answered 200. Nothing is lost; nothing is sent
//!   twice under a new id.
//!
//! One task per destination with something to send. A destination that fails is retried
//! after a delay that doubles from [`FIRST_RETRY`] up to [`MAX_RETRY`] (hours: a server that
//! is gone stays cheap); each task waits on its own, so a failing destination slows no
//! other and no client request. Retry state is in memory: after a restart every queue is
//! tried at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, ServerName,
    api::federation::transactions::{edu::Edu, send_transaction_message},
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};
use tokio::sync::Notify;

use super::client::FederationClient;
use crate::{
    Error, Result,
    storage::{Batch, Db, Table, Tree},
};

/// The spec's limits per transaction.
pub const MAX_PDUS: usize = 50;
pub const MAX_EDUS: usize = 100;
/// Delays between attempts for a failing destination.
const FIRST_RETRY: Duration = Duration::from_secs(10);
const MAX_RETRY: Duration = Duration::from_secs(12 * 60 * 60);

/// One queued thing to send.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub enum Item {
    /// A PDU in its federation form.
    Pdu(JsonValue),
    /// An EDU: `{"edu_type": …, "content": …}`.
    Edu(JsonValue),
}

/// The transaction a destination is being sent.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct InFlight {
    txn_id: String,
    /// Exactly the items it holds (their `seq`s): an item queued later, even with a smaller
    /// `seq` (ids are taken before the write lands), never joins a transaction already sent.
    seqs: Vec<u64>,
}

/// Bytes of items one transaction holds at most (beyond the first item, which always goes):
/// a transaction must stay well under what the receiver accepts in one request.
const MAX_TRANSACTION_BYTES: usize = 1 << 20;

pub struct Sender {
    db: Db,
    queue: Arc<dyn Tree>,
    in_flight: Table<InFlight>,
    client: Arc<FederationClient>,
    origin: OwnedServerName,
    /// A wake-up per destination whose task runs. At most one entry per destination with
    /// something queued; removed when its queue is empty.
    running: Mutex<HashMap<OwnedServerName, Task>>,
    me: Weak<Sender>,
}

/// A destination's running task: woken for new items, and (ending a back-off) when the
/// destination is heard from.
#[derive(Clone)]
struct Task {
    items: Arc<Notify>,
    heard_from: Arc<Notify>,
}

fn prefix(destination: &ServerName) -> Vec<u8> {
    let mut key = destination.as_bytes().to_vec();
    key.push(0xFF);
    key
}

impl Sender {
    pub fn new(
        db: &Db,
        client: Arc<FederationClient>,
        origin: OwnedServerName,
    ) -> Result<Arc<Self>> {
        let queue = db.tree("servernameseq_outgoing")?;
        let in_flight = db.table("servername_transaction")?;
        Ok(Arc::new_cyclic(|me| Self {
            db: db.clone(),
            queue,
            in_flight,
            client,
            origin,
            running: Mutex::default(),
            me: me.clone(),
        }))
    }

    /// Starts a task for every destination with something queued (at start).
    pub fn resume(&self) -> Result<()> {
        let mut destinations = Vec::new();
        let mut from = Vec::new();
        // One seek per destination: after a destination's items, jump past its prefix.
        while let Some(entry) = self.queue.iter_from(&from, false).next() {
            let (key, _) = entry?;
            let Some(end) = key.iter().position(|b| *b == 0xFF) else {
                break;
            };
            if let Ok(name) = std::str::from_utf8(&key[..end])
                && let Ok(server) = OwnedServerName::try_from(name)
            {
                destinations.push(server);
            }
            from = key[..end].to_vec();
            from.push(0xFF);
            from.extend_from_slice(&[0xFF; 9]);
        }
        for destination in destinations {
            tracing::info!(%destination, "resuming federation queue");
            self.wake(&destination);
        }
        Ok(())
    }

    /// Queues `items` for `destination` durably (they are on disk when this returns) and
    /// wakes its task.
    pub async fn queue(&self, destination: &ServerName, items: Vec<Item>) -> Result<()> {
        self.queue_many(vec![(destination.to_owned(), items)]).await
    }

    /// Queues items for several destinations in one write and one flush.
    pub async fn queue_many(
        &self,
        per_destination: Vec<(OwnedServerName, Vec<Item>)>,
    ) -> Result<()> {
        let mut batch = Batch::new();
        for (destination, items) in &per_destination {
            for item in items {
                self.enqueue(&mut batch, destination, item)?;
            }
        }
        self.db.apply(&batch)?;
        self.db.persist().await?;
        for (destination, _) in &per_destination {
            self.wake(destination);
        }
        Ok(())
    }

    /// Adds `item` for `destination` to `batch` (so it lands with the write that caused it,
    /// e.g. a room event in its commit); call [`Sender::wake`] once the batch is applied.
    pub fn enqueue(&self, batch: &mut Batch, destination: &ServerName, item: &Item) -> Result<()> {
        if destination == self.origin {
            return Err(Error::internal("queueing federation traffic to ourselves"));
        }
        let mut key = prefix(destination);
        key.extend_from_slice(&self.db.next_id()?.to_be_bytes());
        let value = serde_json::to_vec(item).map_err(|e| Error::internal(e.to_string()))?;
        batch.insert(&*self.queue, key, value);
        Ok(())
    }

    /// Starts (or nudges) `destination`'s task.
    pub fn wake(&self, destination: &ServerName) {
        let mut running = self.running.lock().expect("sender tasks");
        if let Some(task) = running.get(destination) {
            task.items.notify_one();
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let task = Task {
            items: Arc::new(Notify::new()),
            heard_from: Arc::new(Notify::new()),
        };
        running.insert(destination.to_owned(), task.clone());
        let destination = destination.to_owned();
        tokio::spawn(async move { me.run(destination, task).await });
    }

    /// `server` just sent us a signed request: it is up. A back-off waiting to retry it
    /// ends now (as Synapse does), so what it missed while down arrives at once.
    pub fn heard_from(&self, server: &ServerName) {
        if let Some(task) = self.running.lock().expect("sender tasks").get(server) {
            task.heard_from.notify_one();
        }
    }

    /// Sends `destination`'s queue until it is empty.
    async fn run(self: Arc<Self>, destination: OwnedServerName, task: Task) {
        let mut delay = FIRST_RETRY;
        loop {
            match self.send_one(&destination).await {
                Ok(true) => delay = FIRST_RETRY,
                Ok(false) => {
                    // Empty: stop, unless something was queued meanwhile (checked under the
                    // lock that `wake` takes, so no item is left without a task).
                    let mut running = self.running.lock().expect("sender tasks");
                    match self.has_items(&destination) {
                        Ok(false) => {
                            running.remove(&destination);
                            return;
                        }
                        Ok(true) => continue,
                        Err(error) => {
                            tracing::error!(%destination, %error, "federation queue unreadable");
                            running.remove(&destination);
                            return;
                        }
                    }
                }
                Err(error) if refused_for_good(&error) => {
                    // The destination read the transaction and refuses it (a 4xx other than
                    // 429): sending it again cannot help, and would hold up everything after
                    // it for ever. Dropped, loudly.
                    tracing::warn!(%destination, %error, "federation transaction refused; dropped");
                    if let Err(error) = self.drop_in_flight(&destination).await {
                        tracing::error!(%destination, %error, "could not drop a refused transaction");
                    }
                }
                Err(error) => {
                    // A 429 says when to come back; otherwise the delay doubles.
                    let wait = retry_after(&error).unwrap_or(delay).min(MAX_RETRY);
                    tracing::warn!(%destination, %error, retry_in = ?wait, "federation transaction failed");
                    // A new item does not cut a back-off short (the destination is down);
                    // hearing from the destination does.
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {
                            delay = (delay * 2).min(MAX_RETRY);
                        }
                        () = task.heard_from.notified() => {
                            tracing::info!(%destination, "destination is back; retrying now");
                            delay = FIRST_RETRY;
                        }
                    }
                }
            }
            // New items while a transaction was out: their wake-up is spent here (the next
            // round reads the queue anyway).
            let _ = tokio::time::timeout(Duration::ZERO, task.items.notified()).await;
        }
    }

    fn has_items(&self, destination: &ServerName) -> Result<bool> {
        Ok(self
            .queue
            .scan_prefix(&prefix(destination))
            .next()
            .transpose()?
            .is_some())
    }

    /// Sends one transaction (the one in flight, or a new one); `false` when nothing is
    /// queued.
    async fn send_one(&self, destination: &ServerName) -> Result<bool> {
        let key = destination.as_bytes();
        let in_flight = match self.in_flight.get(key)? {
            Some(in_flight) => in_flight,
            None => {
                let seqs = self.next_batch(destination)?;
                if seqs.is_empty() {
                    return Ok(false);
                }
                let in_flight = InFlight {
                    txn_id: crate::crypto::random_string(
                        16,
                        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                    ),
                    seqs,
                };
                self.in_flight.insert(key, &in_flight)?;
                self.db.persist().await?;
                in_flight
            }
        };
        let items = self.items(destination, &in_flight.seqs)?;
        let mut pdus: Vec<Box<RawJsonValue>> = Vec::new();
        let mut edus: Vec<Raw<Edu>> = Vec::new();
        for (_, item) in &items {
            match item {
                Item::Pdu(pdu) => pdus.push(
                    serde_json::value::to_raw_value(pdu)
                        .map_err(|e| Error::internal(e.to_string()))?,
                ),
                Item::Edu(edu) => edus.push(Raw::from_json(
                    serde_json::value::to_raw_value(edu)
                        .map_err(|e| Error::internal(e.to_string()))?,
                )),
            }
        }
        let mut request = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from(in_flight.txn_id.as_str()),
            self.origin.clone(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        request.pdus = pdus;
        request.edus = edus;
        let response = self.client.send(destination, request).await?;
        for (event_id, result) in &response.pdus {
            if let Err(reason) = result {
                tracing::debug!(%destination, %event_id, %reason, "PDU refused by the destination");
            }
        }
        let mut batch = Batch::new();
        for (key, _) in &items {
            batch.remove(&*self.queue, key.clone());
        }
        batch.remove(self.in_flight.tree(), destination.as_bytes().to_vec());
        self.db.apply(&batch)?;
        self.db.persist().await?;
        Ok(true)
    }

    /// The `seq`s of the items the next transaction holds: the oldest ones, within the
    /// spec's limits (50 PDUs, 100 EDUs) and [`MAX_TRANSACTION_BYTES`].
    fn next_batch(&self, destination: &ServerName) -> Result<Vec<u64>> {
        let prefix = prefix(destination);
        let (mut pdus, mut edus, mut bytes) = (0, 0, 0);
        let mut seqs = Vec::new();
        for entry in self.queue.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let item: Item = serde_json::from_slice(&value)
                .map_err(|e| Error::internal(format!("corrupt federation queue item: {e}")))?;
            if !seqs.is_empty() && bytes + value.len() > MAX_TRANSACTION_BYTES {
                break;
            }
            match item {
                Item::Pdu(_) if pdus == MAX_PDUS => break,
                Item::Edu(_) if edus == MAX_EDUS => break,
                Item::Pdu(_) => pdus += 1,
                Item::Edu(_) => edus += 1,
            }
            bytes += value.len();
            seqs.push(seq_of(&key, prefix.len())?);
        }
        Ok(seqs)
    }

    /// The queued items with these `seq`s (with their keys), in order.
    fn items(&self, destination: &ServerName, seqs: &[u64]) -> Result<Vec<(Vec<u8>, Item)>> {
        let mut items = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let mut key = prefix(destination);
            key.extend_from_slice(&seq.to_be_bytes());
            // Gone only if the transaction was already settled: nothing to resend.
            let Some(value) = self.queue.get(&key)? else {
                continue;
            };
            let item = serde_json::from_slice(&value)
                .map_err(|e| Error::internal(format!("corrupt federation queue item: {e}")))?;
            items.push((key, item));
        }
        Ok(items)
    }

    /// Removes the transaction in flight and its items.
    async fn drop_in_flight(&self, destination: &ServerName) -> Result<()> {
        let Some(in_flight) = self.in_flight.get(destination.as_bytes())? else {
            return Ok(());
        };
        let mut batch = Batch::new();
        for (key, _) in self.items(destination, &in_flight.seqs)? {
            batch.remove(&*self.queue, key);
        }
        batch.remove(self.in_flight.tree(), destination.as_bytes().to_vec());
        self.db.apply(&batch)?;
        self.db.persist().await?;
        Ok(())
    }

    /// Items waiting for `destination` (for metrics and tests).
    pub fn pending(&self, destination: &ServerName) -> Result<usize> {
        let mut count = 0;
        for entry in self.queue.scan_prefix(&prefix(destination)) {
            entry?;
            count += 1;
        }
        Ok(count)
    }
}

/// The delay a `429` asks for.
fn retry_after(error: &Error) -> Option<Duration> {
    match error {
        Error::Matrix {
            kind: ruma::api::error::ErrorKind::LimitExceeded(data),
            ..
        } => match data.retry_after {
            Some(ruma::api::error::RetryAfter::Delay(delay)) => Some(delay),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the destination refused the transaction itself (a 4xx other than 429), so that
/// sending it again cannot succeed. A `502` means it was not reached; its 5xx and 401 are
/// reported as `502` too (`client::remote_error`).
fn refused_for_good(error: &Error) -> bool {
    match error {
        Error::Matrix { status, .. } => status.is_client_error() && status.as_u16() != 429,
        _ => false,
    }
}

fn seq_of(key: &[u8], prefix_len: usize) -> Result<u64> {
    key.get(prefix_len..)
        .and_then(|seq| <[u8; 8]>::try_from(seq).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("corrupt federation queue key"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::service::{federation::resolve::Resolver, server_keys::ServerKeys};

    fn sender(db: &Db) -> Arc<Sender> {
        let loopback = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let client = FederationClient::new(
            ruma::server_name!("origin.test").to_owned(),
            Arc::new(ServerKeys::load_or_generate(db).unwrap()),
            Arc::new(Resolver::system(false, loopback.clone()).unwrap()),
            false,
            loopback,
        )
        .unwrap();
        Sender::new(
            db,
            Arc::new(client),
            ruma::server_name!("origin.test").to_owned(),
        )
        .unwrap()
    }

    fn edu(size: usize) -> Item {
        Item::Edu(json!({ "edu_type": "m.test", "content": { "pad": "x".repeat(size) } }))
    }

    /// Transactions stay within the spec's counts and a byte budget, and hold exactly the
    /// items chosen (the destination is a loopback port nobody listens on: its task fails
    /// and backs off, and never takes the items away).
    #[tokio::test]
    async fn transactions_are_bounded_by_count_and_size() {
        let db = Db::memory();
        let sender = sender(&db);
        let small = ruma::server_name!("localhost:1");
        sender
            .queue(small, (0..MAX_EDUS + 20).map(|_| edu(10)).collect())
            .await
            .unwrap();
        assert_eq!(sender.next_batch(small).unwrap().len(), MAX_EDUS);
        assert_eq!(sender.pending(small).unwrap(), MAX_EDUS + 20);

        let large = ruma::server_name!("localhost:2");
        sender
            .queue(large, (0..3).map(|_| edu(600 << 10)).collect())
            .await
            .unwrap();
        let batch = sender.next_batch(large).unwrap();
        assert_eq!(batch.len(), 1, "the second would pass the byte budget");
        let items = sender.items(large, &batch).unwrap();
        assert_eq!(items.len(), 1);
        assert!(
            sender.items(large, &[u64::MAX]).unwrap().is_empty(),
            "only the seqs named"
        );
    }

    #[test]
    fn only_a_definitive_refusal_drops_a_transaction() {
        use ruma::api::error::ErrorKind;
        let refused = Error::with_status(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            "x",
        );
        assert!(refused_for_good(&refused));
        assert!(!refused_for_good(&Error::limit_exceeded(
            Duration::from_secs(1)
        )));
        assert!(!refused_for_good(&Error::remote_unreachable(
            ruma::server_name!("other.example"),
            "down"
        )));
        assert!(!refused_for_good(&Error::internal("x")));
    }
}
