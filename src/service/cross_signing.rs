//! Cross-signing (client-server API, "Cross-signing"): each user's master, self-signing and
//! user-signing keys, and the signatures users upload for devices and master keys.
//!
//! Trees:
//! - `userid_signingkeys`: `user 0xFF usage` (`master`, `self_signing`, `user_signing`) →
//!   the key object as uploaded (JSON).
//! - `keysignatures`: `target user 0xFF target key 0xFF signer user 0xFF signer key id` →
//!   signature (base64 string). The target key is a device id or a master key's public key.
//!   Signatures are kept apart from the signed objects so a device re-uploading its own keys
//!   does not drop them; `keys/query` merges them back.

use std::sync::Arc;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, UserId};
use serde_json::{Value as JsonValue, value::RawValue};

use super::keys::{Keys, verify_signed_by};
use crate::{
    Error, Result,
    storage::{Batch, Db, Table, Tree},
};

const SEPARATOR: u8 = 0xFF;
pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

pub struct CrossSigning {
    db: Db,
    keys: Arc<Keys>,
    write_lock: tokio::sync::Mutex<()>,
    signing_keys: Table<JsonValue>,
    signatures: Arc<dyn Tree>,
}

/// The uploaded keys of one `keys/device_signing/upload`, each still unchecked.
#[derive(Default)]
pub struct SigningKeysUpload<'a> {
    pub master: Option<&'a RawValue>,
    pub self_signing: Option<&'a RawValue>,
    pub user_signing: Option<&'a RawValue>,
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEPARATOR);
        }
        key.extend_from_slice(part);
    }
    key
}

fn string_at<'a>(object: &'a CanonicalJsonObject, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut current = object;
    for name in parents {
        match current.get(*name) {
            Some(CanonicalJsonValue::Object(inner)) => current = inner,
            _ => return None,
        }
    }
    match current.get(*last) {
        Some(CanonicalJsonValue::String(value)) => Some(value),
        _ => None,
    }
}

/// The public key of a cross-signing key object: its only `keys` entry, `ed25519:<key>`
/// naming the key itself (spec "Cross-signing": `CrossSigningKey`).
pub fn public_key(object: &CanonicalJsonObject) -> Result<String> {
    let Some(CanonicalJsonValue::Object(keys)) = object.get("keys") else {
        return Err(Error::bad_json("Cross-signing key lacks keys."));
    };
    let mut entries = keys.iter();
    match (entries.next(), entries.next()) {
        (Some((id, CanonicalJsonValue::String(key))), None)
            if id.strip_prefix("ed25519:") == Some(key.as_str()) =>
        {
            Ok(key.clone())
        }
        _ => Err(Error::invalid_param(
            "A cross-signing key must hold exactly one ed25519 key, named by itself.",
        )),
    }
}

fn parse(raw: &RawValue, what: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Invalid {what}: {e}")))
}

/// Checks a cross-signing key of `usage` for `user_id` and returns its public key.
fn check_key(object: &CanonicalJsonObject, user_id: &UserId, usage: &str) -> Result<String> {
    if string_at(object, &["user_id"]) != Some(user_id.as_str()) {
        return Err(Error::invalid_param(
            "A cross-signing key must name the uploading user.",
        ));
    }
    let usage_ok = matches!(object.get("usage"), Some(CanonicalJsonValue::Array(usages))
        if usages.len() == 1 && usages[0] == CanonicalJsonValue::String(usage.to_owned()));
    if !usage_ok {
        return Err(Error::invalid_param(format!(
            "The {usage} key must have usage [\"{usage}\"]."
        )));
    }
    public_key(object)
}

fn to_json(object: &CanonicalJsonObject) -> Result<JsonValue> {
    serde_json::to_value(object).map_err(|e| Error::internal(e.to_string()))
}

fn to_object(value: JsonValue) -> Result<CanonicalJsonObject> {
    serde_json::from_value(value).map_err(|e| Error::internal(e.to_string()))
}

impl CrossSigning {
    pub fn new(db: &Db, keys: Arc<Keys>) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            keys,
            write_lock: tokio::sync::Mutex::new(()),
            signing_keys: db.table("userid_signingkeys")?,
            signatures: db.tree("keysignatures")?,
        })
    }

    /// Adds to `batch` the removal of the user's cross-signing keys and of every signature
    /// on them or on their devices (account deactivation).
    pub fn removal_into(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        let prefix = join(&[user_id.as_bytes(), b""]);
        for entry in self.signing_keys.tree().scan_prefix(&prefix) {
            batch.remove(self.signing_keys.tree(), entry?.0);
        }
        for entry in self.signatures.scan_prefix(&prefix) {
            batch.remove(&*self.signatures, entry?.0);
        }
        Ok(())
    }

    /// The user's key of `usage`, as uploaded (without signatures others added).
    pub fn key(&self, user_id: &UserId, usage: &str) -> Result<Option<JsonValue>> {
        Ok(self
            .signing_keys
            .get(&join(&[user_id.as_bytes(), usage.as_bytes()]))?)
    }

    pub fn has_master(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.key(user_id, MASTER)?.is_some())
    }

    /// Whether the upload repeats the stored master key, and any subkeys it carries are the
    /// stored ones too; then no UIA is needed (spec: `POST /keys/device_signing/upload`,
    /// v1.11: "the request contains no new keys"). An upload without a master key does not
    /// qualify.
    pub fn is_unchanged(&self, user_id: &UserId, upload: &SigningKeysUpload<'_>) -> Result<bool> {
        if upload.master.is_none() {
            return Ok(false);
        }
        for (usage, raw) in [
            (MASTER, upload.master),
            (SELF_SIGNING, upload.self_signing),
            (USER_SIGNING, upload.user_signing),
        ] {
            if let Some(raw) = raw {
                let uploaded = to_json(&parse(raw, usage)?)?;
                if self.key(user_id, usage)?.as_ref() != Some(&uploaded) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// `keys/device_signing/upload` (after UIA): checks every key, then stores them in one
    /// batch. The self-signing and user-signing keys must be signed by the master key (the
    /// new one, or else the stored one). A new master key drops the old subkeys it does not
    /// come with, since they were signed by the old master.
    pub async fn upload(&self, user_id: &UserId, upload: &SigningKeysUpload<'_>) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let master = match upload.master {
            Some(raw) => {
                let object = parse(raw, "master_key")?;
                let key = check_key(&object, user_id, MASTER)?;
                Some((object, key))
            }
            None => None,
        };
        let master_key = match &master {
            Some((_, key)) => key.clone(),
            None => match self.key(user_id, MASTER)? {
                Some(stored) => public_key(&to_object(stored)?)?,
                None if upload.self_signing.is_none() && upload.user_signing.is_none() => {
                    return Ok(());
                }
                None => {
                    return Err(Error::invalid_param(
                        "Upload a master key before its subkeys.",
                    ));
                }
            },
        };
        let mut batch = Batch::new();
        for (usage, raw) in [
            (SELF_SIGNING, upload.self_signing),
            (USER_SIGNING, upload.user_signing),
        ] {
            let storage_key = join(&[user_id.as_bytes(), usage.as_bytes()]);
            match raw {
                Some(raw) => {
                    let object = parse(raw, usage)?;
                    check_key(&object, user_id, usage)?;
                    let master_id = format!("ed25519:{master_key}");
                    verify_signed_by(&object, user_id.as_str(), &master_id, &master_key)?;
                    batch.insert_json(&self.signing_keys, storage_key, &to_json(&object)?);
                }
                None if master.is_some() => batch.remove(self.signing_keys.tree(), storage_key),
                None => {}
            }
        }
        if let Some((object, _)) = &master {
            batch.insert_json(
                &self.signing_keys,
                join(&[user_id.as_bytes(), MASTER.as_bytes()]),
                &to_json(object)?,
            );
        }
        self.db.apply(&batch)?;
        Ok(self.db.persist().await?)
    }

    /// `keys/signatures/upload` for one signed object: `signer` signed `target`'s key
    /// `key_id` (a device id or a master public key). Allowed, as in the spec:
    /// - one's own device, signed by one's self-signing key;
    /// - one's own master key, signed by one of one's devices;
    /// - another user's master key, signed by one's user-signing key.
    ///
    /// The signature is verified over the stored key (so it covers what others will be
    /// served), then stored.
    pub async fn add_signature(
        &self,
        signer: &UserId,
        target: &UserId,
        key_id: &str,
        signed: &RawValue,
    ) -> Result<()> {
        let uploaded = parse(signed, "signed key")?;
        let own_master = self.key(target, MASTER)?.map(to_object).transpose()?;
        let target_is_master = match &own_master {
            Some(master) => public_key(master)? == key_id,
            None => false,
        };
        let (stored, signing_key_id, signing_key) = if target_is_master && target == signer {
            // A device vouching for its user's master key.
            let Some(CanonicalJsonValue::Object(by_signer)) =
                uploaded.get("signatures").and_then(|s| match s {
                    CanonicalJsonValue::Object(s) => s.get(signer.as_str()),
                    _ => None,
                })
            else {
                return Err(Error::invalid_param("No signature by the uploader."));
            };
            let mut found = None;
            for id in by_signer.keys() {
                let Some(device) = id.strip_prefix("ed25519:") else {
                    continue;
                };
                let Some(keys) = self.keys.device_keys(signer, device.into())? else {
                    continue;
                };
                if let Some(key) = keys["keys"][id.as_str()].as_str() {
                    found = Some((id.clone(), key.to_owned()));
                    break;
                }
            }
            let (id, key) =
                found.ok_or_else(|| Error::invalid_param("Not signed by a known device."))?;
            (own_master.expect("checked above"), id, key)
        } else if target_is_master {
            let usk = self
                .key(signer, USER_SIGNING)?
                .ok_or_else(|| Error::invalid_param("You have no user-signing key."))?;
            let key = public_key(&to_object(usk)?)?;
            (
                own_master.expect("checked above"),
                format!("ed25519:{key}"),
                key,
            )
        } else if target == signer {
            let device_keys = self
                .keys
                .device_keys(target, key_id.into())?
                .ok_or_else(|| Error::invalid_param(format!("Unknown device {key_id}.")))?;
            let ssk = self
                .key(signer, SELF_SIGNING)?
                .ok_or_else(|| Error::invalid_param("You have no self-signing key."))?;
            let key = public_key(&to_object(ssk)?)?;
            (to_object(device_keys)?, format!("ed25519:{key}"), key)
        } else {
            return Err(Error::invalid_param(
                "Only another user's master key can be signed.",
            ));
        };
        let signature = string_at(
            &uploaded,
            &["signatures", signer.as_str(), signing_key_id.as_str()],
        )
        .ok_or_else(|| Error::invalid_param(format!("No signature by {signing_key_id}.")))?
        .to_owned();
        let mut check = stored;
        check.remove("unsigned");
        let mut by_key = CanonicalJsonObject::new();
        by_key.insert(
            signing_key_id.clone(),
            CanonicalJsonValue::String(signature.clone()),
        );
        let mut signatures = CanonicalJsonObject::new();
        signatures.insert(signer.to_string(), CanonicalJsonValue::Object(by_key));
        check.insert("signatures".into(), CanonicalJsonValue::Object(signatures));
        verify_signed_by(&check, signer.as_str(), &signing_key_id, &signing_key)?;

        let _guard = self.write_lock.lock().await;
        let key = join(&[
            target.as_bytes(),
            key_id.as_bytes(),
            signer.as_bytes(),
            signing_key_id.as_bytes(),
        ]);
        self.signatures.insert(&key, signature.as_bytes())?;
        Ok(self.db.persist().await?)
    }

    /// Adds the stored signatures on `target`'s key `key_id` to `object`, keeping those by
    /// the target user and by `viewer` (a user-signing signature is the signer's business).
    pub fn merge_signatures(
        &self,
        object: &mut JsonValue,
        target: &UserId,
        key_id: &str,
        viewer: &UserId,
    ) -> Result<()> {
        let prefix = join(&[target.as_bytes(), key_id.as_bytes(), b""]);
        for entry in self.signatures.scan_prefix(&prefix) {
            let (key, signature) = entry?;
            let rest = &key[prefix.len()..];
            let Some(split) = rest.iter().position(|b| *b == SEPARATOR) else {
                continue;
            };
            let signer = String::from_utf8_lossy(&rest[..split]);
            let signer_key = String::from_utf8_lossy(&rest[split + 1..]);
            if signer != target.as_str() && signer != viewer.as_str() {
                continue;
            }
            if let Some(object) = object.as_object_mut() {
                let signatures = object
                    .entry("signatures")
                    .or_insert_with(|| JsonValue::Object(Default::default()));
                if let Some(signatures) = signatures.as_object_mut() {
                    let by_signer = signatures
                        .entry(signer.into_owned())
                        .or_insert_with(|| JsonValue::Object(Default::default()));
                    if let Some(by_signer) = by_signer.as_object_mut() {
                        by_signer.insert(
                            signer_key.into_owned(),
                            JsonValue::String(String::from_utf8_lossy(&signature).into_owned()),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
