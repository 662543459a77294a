//! End-to-end encryption keys of devices (client-server API, "End-to-End Encryption", "Key
//! management API"): device identity keys, one-time keys and fallback keys.
//!
//! Trees:
//! - `userdeviceid_devicekeys`: `user 0xFF device` → the device's signed identity keys (JSON).
//! - `onetimekeys`: `user 0xFF device 0xFF algorithm:key_id` → one-time key (JSON). The
//!   algorithm leads the last part so a prefix scan counts or claims one algorithm's keys.
//! - `fallbackkeys`: `user 0xFF device 0xFF algorithm` → [`FallbackKey`].
//!
//! Every write goes through one lock, so two concurrent claims can never take the same
//! one-time key (the read of the first key and its removal happen under it).

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, DeviceId, OneTimeKeyAlgorithm, UInt, UserId,
    serde::Base64,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, value::RawValue};

use crate::{
    Error, Result,
    storage::{Batch, Db, Table},
};

const SEPARATOR: u8 = 0xFF;

/// One-time or fallback keys one upload may carry.
const MAX_KEYS_PER_UPLOAD: usize = 1_000;

/// One-time keys a device may hold per algorithm; clients keep about 50.
const MAX_ONE_TIME_KEYS: usize = 1_000;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FallbackKey {
    pub key_id: String,
    pub key: JsonValue,
    /// Set once the key has been handed out by a claim.
    pub used: bool,
}

/// One claimed key.
pub struct Claimed {
    pub key_id: String,
    pub key: JsonValue,
}

pub struct Keys {
    db: Db,
    write_lock: tokio::sync::Mutex<()>,
    device_keys: Table<JsonValue>,
    one_time: Table<JsonValue>,
    fallback: Table<FallbackKey>,
}

fn device_key(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    let mut key = user_id.as_bytes().to_vec();
    key.push(SEPARATOR);
    key.extend_from_slice(device_id.as_bytes());
    key
}

fn device_prefix(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
    let mut key = device_key(user_id, device_id);
    key.push(SEPARATOR);
    key
}

/// Splits `algorithm:key_id`; both parts must be non-empty.
fn split_key_id(key_id: &str) -> Result<(&str, &str)> {
    match key_id.split_once(':') {
        Some((algorithm, id)) if !algorithm.is_empty() && !id.is_empty() => Ok((algorithm, id)),
        _ => Err(Error::bad_json(format!("Invalid key id: {key_id}"))),
    }
}

fn parse_object(raw: &RawValue, what: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Invalid {what}: {e}")))
}

/// The `unsigned` object added to a device's keys in `keys/query` (spec "Key management
/// API": `UnsignedDeviceInfo`). `device_display_name` is a string when present: a device
/// without a name leaves it out, as Synapse does, rather than sending `null`. A `null`
/// here makes matrix-nio (whose store keeps the name in a NOT NULL column) silently drop
/// the device, so its bots could never encrypt to it.
pub fn unsigned_device_info(display_name: Option<&str>) -> JsonValue {
    let mut unsigned = serde_json::Map::new();
    if let Some(name) = display_name {
        unsigned.insert("device_display_name".to_owned(), name.into());
    }
    JsonValue::Object(unsigned)
}

/// Checks that `object` carries a valid signature by `entity`'s key `key_id` (the only
/// signature considered; others, e.g. by cross-signing keys, are left for their own checks).
pub fn verify_signed_by(
    object: &CanonicalJsonObject,
    entity: &str,
    key_id: &str,
    public_key: &str,
) -> Result<()> {
    let signature = object
        .get("signatures")
        .and_then(|s| match s {
            CanonicalJsonValue::Object(s) => s.get(entity),
            _ => None,
        })
        .and_then(|s| match s {
            CanonicalJsonValue::Object(s) => s.get(key_id),
            _ => None,
        })
        .cloned()
        .ok_or_else(|| Error::invalid_param(format!("Missing signature by {key_id}.")))?;
    let public_key = Base64::parse(public_key)
        .map_err(|_| Error::invalid_param(format!("Invalid public key {key_id}.")))?;
    let mut only = object.clone();
    let mut by_key = CanonicalJsonObject::new();
    by_key.insert(key_id.to_owned(), signature);
    let mut signatures = CanonicalJsonObject::new();
    signatures.insert(entity.to_owned(), CanonicalJsonValue::Object(by_key));
    only.insert(
        "signatures".to_owned(),
        CanonicalJsonValue::Object(signatures),
    );
    let mut keys = BTreeMap::new();
    keys.insert(key_id.to_owned(), public_key);
    let mut map = BTreeMap::new();
    map.insert(entity.to_owned(), keys);
    ruma::signatures::verify_json(&map, &only)
        .map_err(|e| Error::invalid_param(format!("Invalid signature by {key_id}: {e}")))
}

/// Checks uploaded device keys (spec: "Device keys"): they name this user and device, carry
/// the device's ed25519 key, and are signed by it.
fn check_device_keys(
    object: &CanonicalJsonObject,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Result<()> {
    let field = |name: &str| match object.get(name) {
        Some(CanonicalJsonValue::String(value)) => Ok(value.as_str()),
        _ => Err(Error::bad_json(format!(
            "device_keys.{name} must be a string."
        ))),
    };
    if field("user_id")? != user_id.as_str() || field("device_id")? != device_id.as_str() {
        return Err(Error::invalid_param(
            "device_keys must name the uploading user and device.",
        ));
    }
    if !matches!(object.get("algorithms"), Some(CanonicalJsonValue::Array(_))) {
        return Err(Error::bad_json("device_keys.algorithms must be an array."));
    }
    let Some(CanonicalJsonValue::Object(keys)) = object.get("keys") else {
        return Err(Error::bad_json("device_keys.keys must be an object."));
    };
    let key_id = format!("ed25519:{device_id}");
    let Some(CanonicalJsonValue::String(ed25519)) = keys.get(&key_id) else {
        return Err(Error::invalid_param(format!(
            "device_keys.keys lacks {key_id}."
        )));
    };
    verify_signed_by(object, user_id.as_str(), &key_id, ed25519)
}

impl Keys {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            write_lock: tokio::sync::Mutex::new(()),
            device_keys: db.table("userdeviceid_devicekeys")?,
            one_time: db.table("onetimekeys")?,
            fallback: db.table("fallbackkeys")?,
        })
    }

    /// Validates an upload without storing it (for a caller that must know the keys are
    /// good before changing anything else, such as a dehydrated device's creation).
    pub fn check_upload(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_keys: &RawValue,
        one_time_keys: &[(&str, &RawValue)],
        fallback_keys: &[(&str, &RawValue)],
    ) -> Result<()> {
        if one_time_keys.len() > MAX_KEYS_PER_UPLOAD || fallback_keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::bad_json("Too many keys in one upload."));
        }
        check_device_keys(
            &parse_object(device_keys, "device_keys")?,
            user_id,
            device_id,
        )?;
        for (key_id, raw) in one_time_keys.iter().chain(fallback_keys) {
            split_key_id(key_id)?;
            serde_json::from_str::<JsonValue>(raw.get())
                .map_err(|e| Error::bad_json(format!("Invalid key: {e}")))?;
        }
        Ok(())
    }

    /// `keys/upload`. Validates everything before writing anything, then stores it in one
    /// batch. Returns whether the device keys are new or changed (the device list changed).
    pub async fn upload(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_keys: Option<&RawValue>,
        one_time_keys: &[(&str, &RawValue)],
        fallback_keys: &[(&str, &RawValue)],
    ) -> Result<bool> {
        if one_time_keys.len() > MAX_KEYS_PER_UPLOAD || fallback_keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::bad_json("Too many keys in one upload."));
        }
        let device_keys = device_keys
            .map(|raw| {
                let object = parse_object(raw, "device_keys")?;
                check_device_keys(&object, user_id, device_id)?;
                Ok::<_, Error>(object)
            })
            .transpose()?;
        let prefix = device_prefix(user_id, device_id);
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        let mut changed = false;
        if let Some(object) = device_keys {
            let value =
                serde_json::to_value(&object).map_err(|e| Error::internal(e.to_string()))?;
            let key = device_key(user_id, device_id);
            if self.device_keys.get(&key)?.as_ref() != Some(&value) {
                batch.insert_json(&self.device_keys, key, &value);
                changed = true;
            }
        }
        let mut added: BTreeMap<&str, usize> = BTreeMap::new();
        for (key_id, raw) in one_time_keys {
            let (algorithm, _) = split_key_id(key_id)?;
            let value: JsonValue = serde_json::from_str(raw.get())
                .map_err(|e| Error::bad_json(format!("Invalid one-time key: {e}")))?;
            let mut key = prefix.clone();
            key.extend_from_slice(key_id.as_bytes());
            match self.one_time.get(&key)? {
                // Re-uploading the same key (a retried request) is fine; another key under
                // the same id is a client bug the spec's servers reject.
                Some(existing) if existing == value => continue,
                Some(_) => {
                    return Err(Error::invalid_param(format!(
                        "One-time key {key_id} already exists with other content."
                    )));
                }
                None => {}
            }
            *added.entry(algorithm).or_default() += 1;
            batch.insert_json(&self.one_time, key, &value);
        }
        for (algorithm, count) in added {
            if self.count(&prefix, algorithm)? + count > MAX_ONE_TIME_KEYS {
                return Err(Error::invalid_param(format!(
                    "A device may hold at most {MAX_ONE_TIME_KEYS} {algorithm} one-time keys."
                )));
            }
        }
        for (key_id, raw) in fallback_keys {
            let (algorithm, _) = split_key_id(key_id)?;
            let value: JsonValue = serde_json::from_str(raw.get())
                .map_err(|e| Error::bad_json(format!("Invalid fallback key: {e}")))?;
            let mut key = prefix.clone();
            key.extend_from_slice(algorithm.as_bytes());
            let same = self
                .fallback
                .get(&key)?
                .is_some_and(|old| old.key_id == *key_id && old.key == value);
            if !same {
                let fallback = FallbackKey {
                    key_id: (*key_id).to_owned(),
                    key: value,
                    used: false,
                };
                batch.insert_json(&self.fallback, key, &fallback);
            }
        }
        if !batch.is_empty() {
            self.db.apply(&batch)?;
            self.db.persist().await?;
        }
        Ok(changed)
    }

    /// The device's identity keys as uploaded.
    pub fn device_keys(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<JsonValue>> {
        Ok(self.device_keys.get(&device_key(user_id, device_id))?)
    }

    fn count(&self, prefix: &[u8], algorithm: &str) -> Result<usize> {
        let mut scan = prefix.to_vec();
        scan.extend_from_slice(algorithm.as_bytes());
        scan.push(b':');
        let mut count = 0;
        for entry in self.one_time.tree().scan_prefix(&scan) {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// Unclaimed one-time keys per algorithm (`one_time_key_counts`,
    /// `device_one_time_keys_count`). At most [`MAX_ONE_TIME_KEYS`] per algorithm exist.
    pub fn counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let prefix = device_prefix(user_id, device_id);
        // signed_curve25519 is always reported, 0 included, as Synapse does: clients take
        // a missing count as "unknown" rather than "empty" and may not top keys up.
        let mut counts =
            BTreeMap::from([(OneTimeKeyAlgorithm::SignedCurve25519, UInt::from(0u32))]);
        for entry in self.one_time.tree().scan_prefix(&prefix) {
            let (key, _) = entry?;
            let key_id = String::from_utf8_lossy(&key[prefix.len()..]);
            if let Some((algorithm, _)) = key_id.split_once(':') {
                let count = counts.entry(algorithm.into()).or_default();
                *count = count.saturating_add(UInt::from(1u32));
            }
        }
        Ok(counts)
    }

    /// Algorithms whose fallback key has not been claimed (`device_unused_fallback_key_types`).
    pub fn unused_fallback_types(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<OneTimeKeyAlgorithm>> {
        let prefix = device_prefix(user_id, device_id);
        let mut types = Vec::new();
        for entry in self.fallback.scan_prefix(&prefix) {
            let (key, fallback) = entry?;
            if !fallback.used {
                types.push(
                    String::from_utf8_lossy(&key[prefix.len()..])
                        .as_ref()
                        .into(),
                );
            }
        }
        Ok(types)
    }

    /// `keys/claim` for one device: removes and returns one one-time key of `algorithm`, or
    /// else the device's fallback key for it (marked used, kept: spec "Fallback keys").
    pub async fn claim(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<Claimed>> {
        let prefix = device_prefix(user_id, device_id);
        let mut scan = prefix.clone();
        scan.extend_from_slice(algorithm.as_bytes());
        scan.push(b':');
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        let claimed = if let Some(entry) = self.one_time.scan_prefix(&scan).next() {
            let (key, value) = entry?;
            batch.remove(self.one_time.tree(), key.clone());
            Some(Claimed {
                key_id: String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                key: value,
            })
        } else {
            let mut key = prefix;
            key.extend_from_slice(algorithm.as_bytes());
            match self.fallback.get(&key)? {
                Some(mut fallback) => {
                    let claimed = Claimed {
                        key_id: fallback.key_id.clone(),
                        key: fallback.key.clone(),
                    };
                    if !fallback.used {
                        fallback.used = true;
                        batch.insert_json(&self.fallback, key, &fallback);
                    }
                    Some(claimed)
                }
                None => None,
            }
        };
        if !batch.is_empty() {
            self.db.apply(&batch)?;
            self.db.persist().await?;
        }
        Ok(claimed)
    }

    /// Adds to `batch` the removal of everything stored for a device (`device` is the
    /// `user 0xFF device` key), so a deleted device's keys are never handed out, even if a
    /// later login reuses its id.
    pub fn removal_into(&self, batch: &mut Batch, device: &[u8]) -> Result<()> {
        batch.remove(self.device_keys.tree(), device.to_vec());
        let mut prefix = device.to_vec();
        prefix.push(SEPARATOR);
        for tree in [self.one_time.tree(), self.fallback.tree()] {
            for entry in tree.scan_prefix(&prefix) {
                batch.remove(tree, entry?.0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{
        device_id,
        serde::base64::Standard,
        signatures::{Ed25519KeyPair, sign_json},
        user_id,
    };
    use serde_json::json;

    use super::*;

    fn signed(user: &str, device: &str) -> CanonicalJsonObject {
        let pair = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), device.to_owned())
            .expect("key pair");
        let public = Base64::<Standard>::new(pair.public_key().to_vec()).encode();
        let mut object: CanonicalJsonObject = serde_json::from_value(json!({
            "user_id": user, "device_id": device, "algorithms": [],
            "keys": { format!("ed25519:{device}"): public },
        }))
        .expect("object");
        sign_json(user, &pair, &mut object).expect("sign");
        object
    }

    #[test]
    fn a_device_without_a_name_has_no_display_name_field() {
        assert_eq!(unsigned_device_info(None), json!({}));
        assert_eq!(
            unsigned_device_info(Some("Phone")),
            json!({ "device_display_name": "Phone" })
        );
    }

    #[test]
    fn device_keys_must_be_signed_by_the_device_and_name_it() {
        let alice = user_id!("@alice:example.org");
        let device = device_id!("PHONE");
        let object = signed(alice.as_str(), "PHONE");
        check_device_keys(&object, alice, device).expect("valid");
        // Another device's keys, or another user's, are refused even if well signed.
        assert!(check_device_keys(&object, alice, device_id!("LAPTOP")).is_err());
        assert!(check_device_keys(&object, user_id!("@bob:example.org"), device).is_err());
        // Any change after signing breaks the signature.
        let mut forged = object.clone();
        forged.insert(
            "algorithms".into(),
            CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(
                "m.megolm.v1.aes-sha2".into(),
            )]),
        );
        assert!(check_device_keys(&forged, alice, device).is_err());
        // A signature by a key the object does not carry is not the device's.
        let mut stranger = signed(alice.as_str(), "PHONE");
        stranger.insert("keys".into(), object["keys"].clone());
        assert!(check_device_keys(&stranger, alice, device).is_err());
    }

    #[tokio::test]
    async fn one_time_keys_are_claimed_once_then_the_fallback_key() {
        let keys = Keys::new(&Db::memory()).unwrap();
        let alice = user_id!("@alice:example.org");
        let device = device_id!("PHONE");
        let key = serde_json::value::to_raw_value(&json!({ "key": "k" })).unwrap();
        let fallback = serde_json::value::to_raw_value(&json!({ "key": "f" })).unwrap();
        keys.upload(
            alice,
            device,
            None,
            &[("signed_curve25519:A", &key), ("signed_curve25519:B", &key)],
            &[("signed_curve25519:F", &fallback)],
        )
        .await
        .unwrap();
        let counts = keys.counts(alice, device).unwrap();
        assert_eq!(
            counts[&OneTimeKeyAlgorithm::SignedCurve25519],
            UInt::from(2u32)
        );
        let mut ids = Vec::new();
        for _ in 0..4 {
            let claimed = keys
                .claim(alice, device, "signed_curve25519")
                .await
                .unwrap();
            ids.push(claimed.expect("a key").key_id);
        }
        assert_eq!(
            ids,
            [
                "signed_curve25519:A",
                "signed_curve25519:B",
                "signed_curve25519:F",
                "signed_curve25519:F"
            ]
        );
        assert!(
            keys.unused_fallback_types(alice, device)
                .unwrap()
                .is_empty()
        );
        assert!(
            keys.claim(alice, device, "curve25519")
                .await
                .unwrap()
                .is_none()
        );
        // A different key under a claimed-and-reused id is accepted; under a held id, not.
        let other = serde_json::value::to_raw_value(&json!({ "key": "other" })).unwrap();
        keys.upload(alice, device, None, &[("signed_curve25519:C", &key)], &[])
            .await
            .unwrap();
        assert!(
            keys.upload(alice, device, None, &[("signed_curve25519:C", &other)], &[])
                .await
                .is_err()
        );
    }
}
