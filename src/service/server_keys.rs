//! The server's ed25519 signing key, generated at first start and kept in the `global` tree.
//! Every event this server creates is signed with it (key id `ed25519:<version>`).
//!
//! `conduit keys rotate` ([`ServerKeys::rotate`]) replaces it with a new key; the old one is
//! kept (public half only) as an *old verify key* with the time it stopped being used, so
//! other servers can still check events signed before the rotation (server-server API,
//! "Publishing Keys": `old_verify_keys` are only valid for signing events).

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedServerSigningKeyId, ServerName,
    api::federation::discovery::{OldVerifyKey, ServerSigningKeys, VerifyKey},
    serde::{Base64, Raw},
    signatures::{Ed25519KeyPair, PublicKeySet, sign_json},
};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result, crypto,
    storage::{Batch, Db},
};

const GLOBAL: &str = "global";
const KEY_DER: &[u8] = b"signing_key_pkcs8";
const KEY_VERSION: &[u8] = b"signing_key_version";
/// `old_verify_key` `0xFF` key id → [`StoredOldKey`] JSON: a key this server signed with
/// before a rotation.
const OLD_KEY_PREFIX: &[u8] = b"old_verify_key\xff";

/// How long our published keys are valid (`valid_until_ts` in `/_matrix/key/v2/server`):
/// one day from the request, as Synapse does (its `key_refresh_interval` defaults to `1d`).
/// Long enough that others need not ask often (the spec asks for at least an hour), short
/// enough that a rotation is seen within a day.
pub const PUBLISHED_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// Key versions: the spec allows `[a-zA-Z0-9_]`; ours are six lower-case letters or digits.
const VERSION_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Serialize, Deserialize)]
struct StoredOldKey {
    /// Unpadded base64 of the public key.
    key: String,
    expired_ts: u64,
}

pub struct ServerKeys {
    keypair: Ed25519KeyPair,
    old: BTreeMap<OwnedServerSigningKeyId, OldVerifyKey>,
}

impl ServerKeys {
    /// Loads the key, or makes and stores one on first start.
    pub fn load_or_generate(db: &Db) -> Result<Self> {
        let global = db.tree(GLOBAL)?;
        let (der, version) = match (global.get(KEY_DER)?, global.get(KEY_VERSION)?) {
            (Some(der), Some(version)) => (der, String::from_utf8_lossy(&version).into_owned()),
            _ => {
                let der = Ed25519KeyPair::generate().to_vec();
                let version = crypto::random_string(6, VERSION_ALPHABET);
                global.insert(KEY_DER, &der)?;
                global.insert(KEY_VERSION, version.as_bytes())?;
                db.flush_blocking()?;
                (der, version)
            }
        };
        let keypair = Ed25519KeyPair::from_der(&der, version)
            .map_err(|e| Error::internal(format!("stored signing key is unusable: {e}")))?;
        let mut old = BTreeMap::new();
        for entry in global.scan_prefix(OLD_KEY_PREFIX) {
            let (key, value) = entry?;
            let key_id = String::from_utf8_lossy(&key[OLD_KEY_PREFIX.len()..]).into_owned();
            let key_id = OwnedServerSigningKeyId::try_from(key_id)
                .map_err(|e| Error::internal(format!("stored old key id is unusable: {e}")))?;
            let stored: StoredOldKey = serde_json::from_slice(&value)
                .map_err(|e| Error::internal(format!("stored old key is unusable: {e}")))?;
            let public = Base64::parse(&stored.key)
                .map_err(|e| Error::internal(format!("stored old key is unusable: {e}")))?;
            old.insert(key_id, OldVerifyKey::new(millis(stored.expired_ts), public));
        }
        Ok(Self { keypair, old })
    }

    /// Makes a new signing key and keeps the current one as an old verify key that expired
    /// now. Durable before it returns; the running server (which must be stopped: the CLI
    /// cannot open a database in use) signs with the new key from its next start.
    pub fn rotate(db: &Db) -> Result<Self> {
        let current = Self::load_or_generate(db)?;
        let global = db.tree(GLOBAL)?;
        let version = loop {
            let version = crypto::random_string(6, VERSION_ALPHABET);
            let key_id = format!("ed25519:{version}");
            if key_id != current.key_id() && !current.old.keys().any(|old| old.as_str() == key_id) {
                break version;
            }
        };
        let der = Ed25519KeyPair::generate().to_vec();
        let stored = StoredOldKey {
            key: Base64::<ruma::serde::base64::Standard, _>::new(
                current.keypair.public_key().to_vec(),
            )
            .encode(),
            expired_ts: MilliSecondsSinceUnixEpoch::now().get().into(),
        };
        let mut batch = Batch::new();
        let mut old_key = OLD_KEY_PREFIX.to_vec();
        old_key.extend_from_slice(current.key_id().as_bytes());
        batch.insert(
            &*global,
            old_key,
            serde_json::to_vec(&stored).expect("serialising a stored key"),
        );
        batch.insert(&*global, KEY_DER, der);
        batch.insert(&*global, KEY_VERSION, version.into_bytes());
        db.apply(&batch)?;
        db.flush_blocking()?;
        Self::load_or_generate(db)
    }

    pub fn keypair(&self) -> &Ed25519KeyPair {
        &self.keypair
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }

    /// The keys we signed with before, with the time each stopped being used.
    pub fn old_verify_keys(&self) -> &BTreeMap<OwnedServerSigningKeyId, OldVerifyKey> {
        &self.old
    }

    /// Our public keys usable for a signature made at `signed_at`: the current key always,
    /// old keys only for signatures made up to their expiry (all of them when `signed_at`
    /// is `None`, as room versions 1 to 4 ignore key validity).
    pub fn public_keys(&self, signed_at: Option<MilliSecondsSinceUnixEpoch>) -> PublicKeySet {
        let mut keys = PublicKeySet::new();
        keys.insert(
            self.key_id(),
            Base64::new(self.keypair.public_key().to_vec()),
        );
        for (key_id, old) in &self.old {
            if signed_at.is_none_or(|ts| ts <= old.expired_ts) {
                keys.insert(key_id.to_string(), old.key.clone());
            }
        }
        keys
    }

    /// Adds our signature to `object` (appendices, "Signing JSON").
    pub fn sign_json(
        &self,
        server_name: &ServerName,
        object: &mut CanonicalJsonObject,
    ) -> Result<()> {
        sign_json(server_name.as_str(), &self.keypair, object)
            .map_err(|e| Error::internal(format!("cannot sign JSON: {e}")))
    }

    /// What `GET /_matrix/key/v2/server` answers at `now`: our current key, the old ones,
    /// valid for [`PUBLISHED_VALIDITY`], signed by the current key.
    pub fn published(
        &self,
        server_name: &ServerName,
        now: MilliSecondsSinceUnixEpoch,
    ) -> Result<Raw<ServerSigningKeys>> {
        let valid_until = u64::from(now.get()) + PUBLISHED_VALIDITY.as_millis() as u64;
        let mut keys = ServerSigningKeys::new(server_name.to_owned(), millis(valid_until));
        let key_id = OwnedServerSigningKeyId::try_from(self.key_id())
            .map_err(|e| Error::internal(format!("our key id is invalid: {e}")))?;
        keys.verify_keys.insert(
            key_id,
            VerifyKey::new(Base64::new(self.keypair.public_key().to_vec())),
        );
        keys.old_verify_keys = self.old.clone();
        let mut object = ruma::canonical_json::to_canonical_value(&keys)
            .ok()
            .and_then(|value| match value {
                ruma::CanonicalJsonValue::Object(object) => Some(object),
                _ => None,
            })
            .ok_or_else(|| Error::internal("server keys are not a JSON object"))?;
        // `signatures` is empty here; it is filled by signing.
        object.remove("signatures");
        self.sign_json(server_name, &mut object)?;
        raw_object(&object)
    }
}

/// A millisecond timestamp, saturating at the largest one ruma represents.
pub fn millis(ms: u64) -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(ms))
}

/// A JSON object as a typed raw value.
pub fn raw_object<T>(object: &CanonicalJsonObject) -> Result<Raw<T>> {
    let json = serde_json::to_string(object).map_err(|e| Error::internal(format!("JSON: {e}")))?;
    Raw::from_json_string(json).map_err(|e| Error::internal(format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use ruma::{server_name, signatures::verify_json};

    use super::*;

    #[test]
    fn key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let db = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
            ServerKeys::load_or_generate(&db).unwrap().key_id()
        };
        let db = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
        let again = ServerKeys::load_or_generate(&db).unwrap();
        assert_eq!(again.key_id(), first);
        assert!(first.starts_with("ed25519:"));
        assert!(again.old_verify_keys().is_empty());
    }

    fn published_object(keys: &ServerKeys) -> CanonicalJsonObject {
        let raw = keys
            .published(
                server_name!("example.org"),
                MilliSecondsSinceUnixEpoch::now(),
            )
            .unwrap();
        serde_json::from_str(raw.json().get()).unwrap()
    }

    #[test]
    fn published_keys_are_signed_and_valid_for_a_day() {
        let keys = ServerKeys::load_or_generate(&Db::memory()).unwrap();
        let now = MilliSecondsSinceUnixEpoch::now();
        let raw = keys.published(server_name!("example.org"), now).unwrap();
        let parsed = raw.deserialize().unwrap();
        assert_eq!(parsed.server_name, "example.org");
        assert_eq!(
            u64::from(parsed.valid_until_ts.get()) - u64::from(now.get()),
            PUBLISHED_VALIDITY.as_millis() as u64
        );
        assert_eq!(parsed.verify_keys.len(), 1);
        let key_id = keys.key_id();
        assert_eq!(
            parsed.verify_keys[key_id.as_str()].key.as_bytes(),
            keys.keypair().public_key()
        );
        let object = published_object(&keys);
        let mut map = BTreeMap::new();
        map.insert("example.org".to_owned(), keys.public_keys(None));
        verify_json(&map, &object).unwrap();
    }

    #[test]
    fn rotation_keeps_the_old_key_as_old_verify_key_and_signs_with_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
        let before = ServerKeys::load_or_generate(&db).unwrap();
        let started = MilliSecondsSinceUnixEpoch::now();
        let after = ServerKeys::rotate(&db).unwrap();
        assert_ne!(after.key_id(), before.key_id());
        assert_ne!(after.keypair().public_key(), before.keypair().public_key());

        let old = &after.old_verify_keys()[before.key_id().as_str()];
        assert_eq!(old.key.as_bytes(), before.keypair().public_key());
        assert!(old.expired_ts >= started);

        // Persisted: a restart (reopening the database) sees the same.
        drop(db);
        let db = Db::open_sled(dir.path(), 8 << 20, &[]).unwrap();
        let reloaded = ServerKeys::load_or_generate(&db).unwrap();
        assert_eq!(reloaded.key_id(), after.key_id());
        assert_eq!(reloaded.old_verify_keys().len(), 1);

        // Published: the new key verifies, the old one is listed with its expiry.
        let parsed = reloaded
            .published(
                server_name!("example.org"),
                MilliSecondsSinceUnixEpoch::now(),
            )
            .unwrap()
            .deserialize()
            .unwrap();
        assert!(parsed.verify_keys.contains_key(after.key_id().as_str()));
        assert!(!parsed.verify_keys.contains_key(before.key_id().as_str()));
        assert_eq!(
            parsed.old_verify_keys[before.key_id().as_str()].expired_ts,
            old.expired_ts
        );
        let object = published_object(&reloaded);
        let signatures = object["signatures"].clone();
        let ruma::CanonicalJsonValue::Object(signatures) = signatures else {
            panic!("signatures is an object");
        };
        let ruma::CanonicalJsonValue::Object(ours) = &signatures["example.org"] else {
            panic!("our signatures are an object");
        };
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            vec![&after.key_id()],
            "signed by the new key only"
        );
        let mut only_new = BTreeMap::new();
        only_new.insert(
            "example.org".to_owned(),
            reloaded.public_keys(Some(MilliSecondsSinceUnixEpoch::now())),
        );
        verify_json(&only_new, &object).unwrap();

        // The old key verifies what it signed before it expired, not after.
        assert!(
            reloaded
                .public_keys(Some(started))
                .contains_key(&before.key_id())
        );
        let later = millis(u64::from(old.expired_ts.get()) + 1);
        assert!(
            !reloaded
                .public_keys(Some(later))
                .contains_key(&before.key_id())
        );

        // A second rotation keeps both old keys.
        let third = ServerKeys::rotate(&db).unwrap();
        assert_eq!(third.old_verify_keys().len(), 2);
        assert!(
            third
                .old_verify_keys()
                .contains_key(after.key_id().as_str())
        );
    }
}
