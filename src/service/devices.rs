//! Devices and their access tokens.
//!
//! Trees:
//! - `userdeviceid_device`: `user_id 0xFF device_id` → [`Device`] (JSON), including the
//!   digest of the device's current access token so it can be revoked with the device.
//! - `tokendigest_userdeviceid`: SHA-256 of an access token → `user_id 0xFF device_id`.
//!   Tokens themselves are never stored: a stolen database yields no usable token.
//! - `userid_devicelistposition`: user → stream position of the last change to their device
//!   list (u64), for `device_lists.changed` in `/sync`.
//! - `userdeviceid_lastseen`: `user_id 0xFF device_id` → [`LastSeen`] (JSON): when and from
//!   where the device last made an authenticated request. Kept apart from the device record,
//!   so a late write can never bring back a deleted device.
//!
//! Last-seen times change on every request, so they are recorded in memory
//! ([`Devices::record_seen`]) and written in one batch per minute by a task that
//! [`crate::server::run`] starts ([`Devices::flush_seen_until`]), and once more at shutdown:
//! never a write per request. Readers see the in-memory value at once.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result, crypto,
    service::users::now_ms,
    storage::{Batch, Db, Table, Tree},
};

const USERDEVICEID_DEVICE: &str = "userdeviceid_device";
const TOKENDIGEST_USERDEVICEID: &str = "tokendigest_userdeviceid";
const USERDEVICEID_LASTSEEN: &str = "userdeviceid_lastseen";
const SEPARATOR: u8 = 0xFF;

/// How often recorded last-seen times are written: at most once per device in this time.
pub const SEEN_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Device {
    pub display_name: Option<String>,
    /// Hex SHA-256 of the device's access token.
    token_digest: String,
    pub created_ts: u64,
}

/// When (milliseconds since the Unix epoch) and from which address a device last made an
/// authenticated request.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct LastSeen {
    pub ts: u64,
    /// Stored as its text form (serde writes an address as a string in JSON).
    pub ip: Option<IpAddr>,
}

/// A last-seen time recorded in memory, and whether it is newer than the stored one.
struct Seen {
    last: LastSeen,
    dirty: bool,
}

pub struct Devices {
    db: Db,
    /// Serialises read-modify-writes of device records, so two logins with the same device
    /// id cannot leave a token the device no longer records (and so would never revoke).
    write_lock: tokio::sync::Mutex<()>,
    devices: Table<Device>,
    tokens: std::sync::Arc<dyn Tree>,
    list_positions: std::sync::Arc<dyn Tree>,
    /// A device's encryption keys go with it.
    keys: std::sync::Arc<super::keys::Keys>,
    last_seen: Table<LastSeen>,
    /// Last-seen times recorded since start, by device. Only requests with a live token
    /// add entries, and entries of removed devices go, so this holds at most one entry
    /// per device with a token.
    seen: Mutex<HashMap<(OwnedUserId, OwnedDeviceId), Seen>>,
}

fn device_key(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    let mut key = Vec::with_capacity(user_id.as_bytes().len() + 1 + device_id.as_bytes().len());
    key.extend_from_slice(user_id.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(device_id.as_bytes());
    key
}

fn user_prefix(user_id: &UserId) -> Vec<u8> {
    let mut prefix = user_id.as_bytes().to_vec();
    prefix.push(SEPARATOR);
    prefix
}

/// A new device id: ten upper-case letters, as Synapse and Conduit make them.
pub fn random_device_id() -> OwnedDeviceId {
    crypto::random_string(10, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ").into()
}

impl Devices {
    pub fn new(db: &Db, keys: std::sync::Arc<super::keys::Keys>) -> Result<Self> {
        Ok(Self {
            keys,
            db: db.clone(),
            write_lock: tokio::sync::Mutex::new(()),
            devices: db.table(USERDEVICEID_DEVICE)?,
            tokens: db.tree(TOKENDIGEST_USERDEVICEID)?,
            list_positions: db.tree("userid_devicelistposition")?,
            last_seen: db.table(USERDEVICEID_LASTSEEN)?,
            seen: Mutex::default(),
        })
    }

    /// Records, in memory only, that the device made an authenticated request now from
    /// `ip` (the peer address; `None` when unknown).
    pub fn record_seen(&self, device: &(OwnedUserId, OwnedDeviceId), ip: Option<IpAddr>) {
        let last = LastSeen {
            ts: now_ms(),
            ip: ip.map(|ip| ip.to_canonical()),
        };
        let mut seen = self.seen.lock().expect("last-seen map");
        match seen.get_mut(device) {
            Some(entry) => {
                entry.last = last;
                entry.dirty = true;
            }
            None => {
                seen.insert(device.clone(), Seen { last, dirty: true });
            }
        }
    }

    /// When and from where the device was last seen: the value in memory, else the
    /// stored one.
    pub fn last_seen(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<LastSeen>> {
        let key = (user_id.to_owned(), device_id.to_owned());
        if let Some(seen) = self.seen.lock().expect("last-seen map").get(&key) {
            return Ok(Some(seen.last.clone()));
        }
        Ok(self.last_seen.get(&device_key(user_id, device_id))?)
    }

    /// Writes every last-seen time recorded since the previous flush, in one batch, for
    /// devices that still exist; entries of devices that are gone are dropped.
    pub async fn flush_seen(&self) -> Result<()> {
        let due: Vec<_> = {
            let mut seen = self.seen.lock().expect("last-seen map");
            seen.iter_mut()
                .filter(|(_, entry)| entry.dirty)
                .map(|(key, entry)| {
                    entry.dirty = false;
                    (key.clone(), entry.last.clone())
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let written = self.write_seen(&due).await;
        {
            let mut seen = self.seen.lock().expect("last-seen map");
            match &written {
                Ok(gone) => {
                    for key in gone {
                        seen.remove(key);
                    }
                }
                Err(_) => {
                    // Try again next time, unless a newer request has replaced the entry.
                    for (key, last) in &due {
                        if let Some(entry) = seen.get_mut(key)
                            && entry.last == *last
                        {
                            entry.dirty = true;
                        }
                    }
                }
            }
        }
        written?;
        self.db.persist().await?;
        Ok(())
    }

    /// Applies one batch with the last-seen rows of the devices in `due` that still exist;
    /// returns the ones that are gone.
    async fn write_seen(
        &self,
        due: &[((OwnedUserId, OwnedDeviceId), LastSeen)],
    ) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>> {
        // Under the write lock, so a device removed through `remove` or `remove_all` is
        // either seen as gone here or removed after this write, its last-seen row with it.
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        let mut gone = Vec::new();
        for ((user_id, device_id), last) in due {
            let key = device_key(user_id, device_id);
            if self.devices.tree().get(&key)?.is_some() {
                batch.insert_json(&self.last_seen, key, last);
            } else {
                gone.push((user_id.clone(), device_id.clone()));
            }
        }
        self.db.apply(&batch)?;
        Ok(gone)
    }

    /// Flushes last-seen times every `interval` until `stop` resolves; a flush under way
    /// then still finishes. The server then calls [`Devices::flush_seen`] once more.
    pub async fn flush_seen_until(&self, interval: Duration, stop: impl Future<Output = ()>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {
                    if let Err(error) = self.flush_seen().await {
                        tracing::warn!(%error, "could not write last-seen times");
                    }
                }
            }
        }
    }

    fn forget_seen<'a>(&self, user_id: &UserId, device_ids: impl Iterator<Item = &'a DeviceId>) {
        let mut seen = self.seen.lock().expect("last-seen map");
        for device_id in device_ids {
            seen.remove(&(user_id.to_owned(), device_id.to_owned()));
        }
    }

    /// Creates the device, or gives an existing one a fresh token (revoking the old one).
    /// `display_name` only names a new device. Returns the device id and the access token.
    pub async fn login(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
    ) -> Result<(OwnedDeviceId, String)> {
        let device_id = device_id.unwrap_or_else(random_device_id);
        let key = device_key(user_id, &device_id);
        let token = crypto::random_token();
        let digest = crypto::token_digest(&token);

        let guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        let device = match self.devices.get(&key)? {
            Some(mut existing) => {
                if let Some(old) = crypto::hex_decode(&existing.token_digest) {
                    batch.remove(&*self.tokens, old);
                }
                existing.token_digest = crypto::hex_encode(&digest);
                existing
            }
            None => {
                // A device id used before starts without the old device's last-seen time.
                batch.remove(self.last_seen.tree(), key.clone());
                Device {
                    display_name,
                    token_digest: crypto::hex_encode(&digest),
                    created_ts: now_ms(),
                }
            }
        };
        batch.insert_json(&self.devices, key.clone(), &device);
        batch.insert(&*self.tokens, digest.to_vec(), key);
        self.db.apply(&batch)?;
        drop(guard);
        self.db.persist().await?;
        Ok((device_id, token))
    }

    /// Creates (or renames) a device that has no access token: a dehydrated device
    /// (MSC3814), which exists only to receive keys while its user has no device online.
    pub async fn create_without_token(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        let key = device_key(user_id, device_id);
        let guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        if let Some(existing) = self.devices.get(&key)?
            && let Some(old) = crypto::hex_decode(&existing.token_digest)
        {
            batch.remove(&*self.tokens, old);
        }
        let device = Device {
            display_name,
            token_digest: String::new(),
            created_ts: now_ms(),
        };
        batch.remove(self.last_seen.tree(), key.clone());
        batch.insert_json(&self.devices, key, &device);
        self.db.apply(&batch)?;
        drop(guard);
        self.db.persist().await?;
        Ok(())
    }

    /// The user and device an access token belongs to, if it is live.
    pub fn authenticate(&self, token: &str) -> Result<Option<(OwnedUserId, OwnedDeviceId)>> {
        let Some(key) = self.tokens.get(&crypto::token_digest(token))? else {
            return Ok(None);
        };
        let split = key.iter().position(|&b| b == SEPARATOR);
        let parsed = split.and_then(|at| {
            let user_id = std::str::from_utf8(&key[..at]).ok()?;
            let device_id = std::str::from_utf8(&key[at + 1..]).ok()?;
            Some((
                OwnedUserId::try_from(user_id).ok()?,
                OwnedDeviceId::from(device_id),
            ))
        });
        parsed
            .map(Some)
            .ok_or_else(|| Error::internal("invalid key in tokendigest_userdeviceid"))
    }

    pub fn get(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<Device>> {
        Ok(self.devices.get(&device_key(user_id, device_id))?)
    }

    /// All of a user's devices, by device id.
    pub fn list(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, Device)>> {
        let prefix = user_prefix(user_id);
        self.devices
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, device) = entry?;
                let device_id = std::str::from_utf8(&key[prefix.len()..])
                    .map_err(|_| Error::internal("invalid device id key"))?;
                Ok((OwnedDeviceId::from(device_id), device))
            })
            .collect()
    }

    pub async fn rename(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        let key = device_key(user_id, device_id);
        {
            let _guard = self.write_lock.lock().await;
            let mut device = self
                .devices
                .get(&key)?
                .ok_or_else(|| Error::not_found("No such device."))?;
            // Spec: "If not given, the display name is unchanged."
            if display_name.is_some() {
                device.display_name = display_name;
            }
            self.devices.insert(&key, &device)?;
        }
        self.db.persist().await?;
        Ok(())
    }

    /// Removes devices and revokes their tokens at once. Unknown ids are skipped.
    pub async fn remove(&self, user_id: &UserId, device_ids: &[OwnedDeviceId]) -> Result<()> {
        let guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        for device_id in device_ids {
            let key = device_key(user_id, device_id);
            if let Some(device) = self.devices.get(&key)? {
                self.remove_into(&mut batch, key, &device)?;
            }
        }
        self.db.apply(&batch)?;
        drop(guard);
        self.forget_seen(user_id, device_ids.iter().map(|id| &**id));
        self.db.persist().await?;
        Ok(())
    }

    /// Removes all of a user's devices except `keep`.
    pub async fn remove_all(&self, user_id: &UserId, keep: Option<&DeviceId>) -> Result<()> {
        let guard = self.write_lock.lock().await;
        let batch = self.removal(user_id, keep)?;
        self.db.apply(&batch)?;
        drop(guard);
        self.db.persist().await?;
        Ok(())
    }

    /// The writes that remove all of a user's devices (except `keep`) and their tokens, for
    /// a caller to apply together with its own change (password, deactivation). Their
    /// last-seen times are forgotten at once; should a flush still write one, the row stays
    /// without a device, where no one reads it, until the device id is used again.
    pub fn removal(&self, user_id: &UserId, keep: Option<&DeviceId>) -> Result<Batch> {
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        for (device_id, device) in self.list(user_id)? {
            if Some(&*device_id) != keep {
                self.remove_into(&mut batch, device_key(user_id, &device_id), &device)?;
                removed.push(device_id);
            }
        }
        self.forget_seen(user_id, removed.iter().map(|id| &**id));
        Ok(batch)
    }

    /// Records (in `batch`) that `user_id`'s device list changed at `position`.
    pub fn mark_list_changed(&self, batch: &mut Batch, user_id: &UserId, position: u64) {
        batch.insert(
            &*self.list_positions,
            user_id.as_bytes().to_vec(),
            position.to_be_bytes().to_vec(),
        );
    }

    /// Position of the last change to the user's device list (0 if none recorded).
    pub fn list_position(&self, user_id: &UserId) -> Result<u64> {
        Ok(self
            .list_positions
            .get(user_id.as_bytes())?
            .and_then(|bytes| bytes.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    fn remove_into(&self, batch: &mut Batch, key: Vec<u8>, device: &Device) -> Result<()> {
        if let Some(digest) = crypto::hex_decode(&device.token_digest) {
            batch.remove(&*self.tokens, digest);
        }
        self.keys.removal_into(batch, &key)?;
        batch.remove(self.last_seen.tree(), key.clone());
        batch.remove(self.devices.tree(), key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{device_id, user_id};

    use super::*;

    fn test_devices() -> Devices {
        let db = Db::memory();
        let keys = std::sync::Arc::new(crate::service::keys::Keys::new(&db).unwrap());
        Devices::new(&db, keys).unwrap()
    }

    #[tokio::test]
    async fn login_authenticate_and_revoke() {
        let devices = test_devices();
        let alice = user_id!("@alice:example.org");
        let (device, token) = devices
            .login(alice, None, Some("Phone".into()))
            .await
            .unwrap();
        assert_eq!(device.as_str().len(), 10);
        assert_eq!(
            devices.authenticate(&token).unwrap(),
            Some((alice.to_owned(), device.clone()))
        );
        assert_eq!(
            devices
                .get(alice, &device)
                .unwrap()
                .unwrap()
                .display_name
                .as_deref(),
            Some("Phone")
        );
        devices
            .remove(alice, std::slice::from_ref(&device))
            .await
            .unwrap();
        assert_eq!(devices.authenticate(&token).unwrap(), None);
        assert!(devices.list(alice).unwrap().is_empty());
    }

    #[tokio::test]
    async fn relogin_with_same_device_replaces_token_and_keeps_name() {
        let devices = test_devices();
        let alice = user_id!("@alice:example.org");
        let id = device_id!("KEEPME").to_owned();
        let (_, first) = devices
            .login(alice, Some(id.clone()), Some("Laptop".into()))
            .await
            .unwrap();
        let (_, second) = devices
            .login(alice, Some(id.clone()), Some("Other".into()))
            .await
            .unwrap();
        assert_eq!(devices.authenticate(&first).unwrap(), None);
        assert!(devices.authenticate(&second).unwrap().is_some());
        assert_eq!(
            devices
                .get(alice, &id)
                .unwrap()
                .unwrap()
                .display_name
                .as_deref(),
            Some("Laptop")
        );
        assert_eq!(devices.list(alice).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn last_seen_is_kept_in_memory_and_written_only_by_a_flush() {
        let devices = test_devices();
        let alice = user_id!("@alice:example.org");
        let (device, _) = devices.login(alice, None, None).await.unwrap();
        let (gone, _) = devices.login(alice, None, None).await.unwrap();
        assert_eq!(devices.last_seen(alice, &device).unwrap(), None);

        let ip = "::ffff:10.0.0.7".parse().ok();
        devices.record_seen(&(alice.to_owned(), device.clone()), ip);
        devices.record_seen(&(alice.to_owned(), gone.clone()), None);
        let seen = devices.last_seen(alice, &device).unwrap().unwrap();
        assert_eq!(
            seen.ip.map(|ip| ip.to_string()).as_deref(),
            Some("10.0.0.7"),
            "IPv4-mapped shown as IPv4"
        );
        assert!(
            devices
                .last_seen
                .tree()
                .get(&device_key(alice, &device))
                .unwrap()
                .is_none(),
            "nothing written per request"
        );

        // A device removed before the flush is not brought back by it.
        devices
            .remove(alice, std::slice::from_ref(&gone))
            .await
            .unwrap();
        devices.record_seen(&(alice.to_owned(), gone.clone()), None);
        devices.flush_seen().await.unwrap();
        assert_eq!(
            devices.last_seen.get(&device_key(alice, &device)).unwrap(),
            Some(seen)
        );
        assert!(devices.get(alice, &gone).unwrap().is_none());
        assert!(
            devices
                .last_seen
                .get(&device_key(alice, &gone))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            devices.seen.lock().unwrap().len(),
            1,
            "the removed device's entry went"
        );

        // Removing a device takes its stored last-seen time with it.
        devices.remove_all(alice, None).await.unwrap();
        assert!(
            devices
                .last_seen
                .get(&device_key(alice, &device))
                .unwrap()
                .is_none()
        );
        assert!(devices.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_flush_task_writes_each_interval_and_stops_when_asked() {
        let devices = std::sync::Arc::new(test_devices());
        let alice = user_id!("@alice:example.org");
        let (device, _) = devices.login(alice, None, None).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let devices = std::sync::Arc::clone(&devices);
            async move {
                let stop = async {
                    let _ = stopped.await;
                };
                devices
                    .flush_seen_until(Duration::from_millis(10), stop)
                    .await;
            }
        });
        let key = device_key(alice, &device);
        for round in 0..2 {
            devices.record_seen(&(alice.to_owned(), device.clone()), None);
            let recorded = devices.last_seen(alice, &device).unwrap();
            // Bounded: the task writes within one interval; give it up to 5 s.
            let mut written = None;
            for _ in 0..500 {
                written = devices.last_seen.get(&key).unwrap();
                if written == recorded {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(written, recorded, "round {round}");
            // Later times differ from the stored one, so round 2 needs a new write.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task stops when asked")
            .unwrap();
    }

    #[tokio::test]
    async fn remove_all_keeps_one_and_other_users_untouched() {
        let devices = test_devices();
        let alice = user_id!("@alice:example.org");
        let alicia = user_id!("@alice:example.orgx");
        let (keep, keep_token) = devices.login(alice, None, None).await.unwrap();
        let (_, gone_token) = devices.login(alice, None, None).await.unwrap();
        let (_, other_token) = devices.login(alicia, None, None).await.unwrap();
        devices.remove_all(alice, Some(&keep)).await.unwrap();
        assert!(devices.authenticate(&keep_token).unwrap().is_some());
        assert!(devices.authenticate(&gone_token).unwrap().is_none());
        assert!(devices.authenticate(&other_token).unwrap().is_some());
    }
}
