//! Server-side key backups (client-server API, "Server-side key backups"): versions, each
//! with its algorithm and `auth_data`, and the encrypted room keys stored in them. The server
//! never sees a key: `session_data` is opaque; only the fields the replacement rule needs
//! are read.
//!
//! Trees:
//! - `backupversions`: `user 0xFF version (u64)` → [`VersionInfo`]. The newest version
//!   (the last key under the user's prefix) is the current one.
//! - `backupkeys`: `user 0xFF version (u64) 0xFF room 0xFF session` → `KeyBackupData` (JSON).
//!
//! All writes take one lock, so `count` and `etag` stay exact.

use http::StatusCode;
use ruma::{
    RoomId, UserId,
    api::error::{ErrorKind, WrongRoomKeysVersionErrorData},
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::rooms::short::u64_from;
use crate::{
    Error, Result,
    storage::{Batch, Db, Table},
};

const SEPARATOR: u8 = 0xFF;

/// Keys one request may store.
pub const MAX_KEYS_PER_REQUEST: usize = 10_000;

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct VersionInfo {
    /// The whole `{"algorithm", "auth_data"}` object the client sent.
    pub algorithm: JsonValue,
    pub count: u64,
    /// Bumped whenever the stored keys change.
    pub etag: u64,
}

/// One key to store: room, session and the client's `KeyBackupData`.
pub struct SessionKey<'a> {
    pub room_id: &'a RoomId,
    pub session_id: &'a str,
    pub data: JsonValue,
}

/// Which keys a read or a delete covers.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    All,
    Room(&'a RoomId),
    Session(&'a RoomId, &'a str),
}

pub struct Backup {
    db: Db,
    write_lock: tokio::sync::Mutex<()>,
    versions: Table<VersionInfo>,
    keys: Table<JsonValue>,
}

fn user_prefix(user_id: &UserId) -> Vec<u8> {
    let mut key = user_id.as_bytes().to_vec();
    key.push(SEPARATOR);
    key
}

fn version_key(user_id: &UserId, version: u64) -> Vec<u8> {
    let mut key = user_prefix(user_id);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn scope_prefix(user_id: &UserId, version: u64, scope: Scope<'_>) -> Vec<u8> {
    let mut key = version_key(user_id, version);
    key.push(SEPARATOR);
    match scope {
        Scope::All => {}
        Scope::Room(room_id) => {
            key.extend_from_slice(room_id.as_bytes());
            key.push(SEPARATOR);
        }
        Scope::Session(room_id, session_id) => {
            key.extend_from_slice(room_id.as_bytes());
            key.push(SEPARATOR);
            key.extend_from_slice(session_id.as_bytes());
        }
    }
    key
}

/// A version string from a client; unknown ones are simply not found.
fn parse_version(version: &str) -> Result<u64> {
    version
        .parse()
        .map_err(|_| Error::not_found("Unknown backup version."))
}

/// Checks the fields of a `KeyBackupData` the server reads, and that `session_data` exists.
fn check_key_data(data: &JsonValue) -> Result<()> {
    let ok = data["first_message_index"].is_u64()
        && data["forwarded_count"].is_u64()
        && data["is_verified"].is_boolean()
        && data["session_data"].is_object();
    if ok {
        Ok(())
    } else {
        Err(Error::bad_json(
            "Key backup data needs first_message_index, forwarded_count, is_verified and \
             session_data.",
        ))
    }
}

/// Whether `new` should replace `old` (client-server API, "Server-side key backups",
/// "Storage": the rule for a session the server already has a key for): a
/// verified key beats an unverified one; then the lower `first_message_index` wins; then
/// the lower `forwarded_count`. On a full tie the stored key stays.
pub fn replaces(old: &JsonValue, new: &JsonValue) -> bool {
    let verified = |k: &JsonValue| k["is_verified"].as_bool().unwrap_or(false);
    let index = |k: &JsonValue| k["first_message_index"].as_u64().unwrap_or(u64::MAX);
    let forwarded = |k: &JsonValue| k["forwarded_count"].as_u64().unwrap_or(u64::MAX);
    if verified(old) != verified(new) {
        return verified(new);
    }
    if index(old) != index(new) {
        return index(new) < index(old);
    }
    forwarded(new) < forwarded(old)
}

fn check_algorithm(algorithm: &JsonValue) -> Result<&str> {
    match (
        algorithm["algorithm"].as_str(),
        algorithm["auth_data"].is_object(),
    ) {
        (Some(name), true) => Ok(name),
        _ => Err(Error::bad_json(
            "A backup version needs an algorithm and auth_data.",
        )),
    }
}

impl Backup {
    pub fn new(db: &Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            write_lock: tokio::sync::Mutex::new(()),
            versions: db.table("backupversions")?,
            keys: db.table("backupkeys")?,
        })
    }

    /// Adds to `batch` the removal of all the user's backup versions and keys (account
    /// deactivation).
    pub fn removal_into(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        let prefix = user_prefix(user_id);
        for entry in self.versions.tree().scan_prefix(&prefix) {
            batch.remove(self.versions.tree(), entry?.0);
        }
        for entry in self.keys.tree().scan_prefix(&prefix) {
            batch.remove(self.keys.tree(), entry?.0);
        }
        Ok(())
    }

    /// The current (newest) version and its info.
    pub fn latest(&self, user_id: &UserId) -> Result<Option<(u64, VersionInfo)>> {
        let prefix = user_prefix(user_id);
        let mut upper = prefix.clone();
        upper.extend_from_slice(&u64::MAX.to_be_bytes());
        let Some(entry) = self.versions.tree().iter_from(&upper, true).next() else {
            return Ok(None);
        };
        let (key, value) = entry?;
        if !key.starts_with(&prefix) {
            return Ok(None);
        }
        let version = u64_from(&key[prefix.len()..])
            .ok_or_else(|| Error::internal("bad backup version key"))?;
        let info = serde_json::from_slice(&value).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some((version, info)))
    }

    /// A version by its string; `M_NOT_FOUND` if there is none.
    pub fn version(&self, user_id: &UserId, version: &str) -> Result<(u64, VersionInfo)> {
        let number = parse_version(version)?;
        let info = self
            .versions
            .get(&version_key(user_id, number))?
            .ok_or_else(|| Error::not_found("Unknown backup version."))?;
        Ok((number, info))
    }

    /// `POST /room_keys/version`: a new version, which becomes the current one.
    pub async fn create(&self, user_id: &UserId, algorithm: JsonValue) -> Result<String> {
        check_algorithm(&algorithm)?;
        let _guard = self.write_lock.lock().await;
        let version = self.db.next_id()?;
        let info = VersionInfo {
            algorithm,
            count: 0,
            etag: 0,
        };
        self.versions
            .insert(&version_key(user_id, version), &info)?;
        self.db.persist().await?;
        Ok(version.to_string())
    }

    /// `PUT /room_keys/version/{version}`: new `auth_data`; the algorithm cannot change.
    pub async fn update(
        &self,
        user_id: &UserId,
        version: &str,
        mut algorithm: JsonValue,
    ) -> Result<()> {
        let name = check_algorithm(&algorithm)?.to_owned();
        if let Some(given) = algorithm.get("version")
            && given.as_str() != Some(version)
        {
            return Err(Error::invalid_param(
                "The version in the body does not match.",
            ));
        }
        if let Some(object) = algorithm.as_object_mut() {
            object.remove("version");
        }
        let _guard = self.write_lock.lock().await;
        let (number, mut info) = self.version(user_id, version)?;
        if info.algorithm["algorithm"].as_str() != Some(name.as_str()) {
            return Err(Error::invalid_param(
                "The algorithm of a backup version cannot change.",
            ));
        }
        info.algorithm = algorithm;
        self.versions.insert(&version_key(user_id, number), &info)?;
        self.db.persist().await?;
        Ok(())
    }

    /// `DELETE /room_keys/version/{version}`: the version and all its keys.
    pub async fn delete_version(&self, user_id: &UserId, version: &str) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let (number, _) = self.version(user_id, version)?;
        let mut batch = Batch::new();
        for entry in self
            .keys
            .tree()
            .scan_prefix(&scope_prefix(user_id, number, Scope::All))
        {
            batch.remove(self.keys.tree(), entry?.0);
        }
        batch.remove(self.versions.tree(), version_key(user_id, number));
        self.db.apply(&batch)?;
        self.db.persist().await?;
        Ok(())
    }

    /// `PUT /room_keys/keys…`: stores keys in the current version, keeping the better of two
    /// keys for one session ([`replaces`]). All keys are checked before anything is written.
    /// Returns the new `(etag, count)`.
    pub async fn put(
        &self,
        user_id: &UserId,
        version: &str,
        keys: Vec<SessionKey<'_>>,
    ) -> Result<(String, u64)> {
        if keys.len() > MAX_KEYS_PER_REQUEST {
            return Err(Error::bad_json("Too many keys in one request."));
        }
        for key in &keys {
            check_key_data(&key.data)?;
        }
        let _guard = self.write_lock.lock().await;
        let (number, mut info) = self.current(user_id, version)?;
        let mut batch = Batch::new();
        let mut changed = false;
        for key in keys {
            let storage_key =
                scope_prefix(user_id, number, Scope::Session(key.room_id, key.session_id));
            match self.keys.get(&storage_key)? {
                Some(old) if !replaces(&old, &key.data) => continue,
                Some(_) => {}
                None => info.count += 1,
            }
            changed = true;
            batch.insert_json(&self.keys, storage_key, &key.data);
        }
        if changed {
            info.etag += 1;
            batch.insert_json(&self.versions, version_key(user_id, number), &info);
            self.db.apply(&batch)?;
            self.db.persist().await?;
        }
        Ok((info.etag.to_string(), info.count))
    }

    /// The version keys may be written to: it must exist and be the current one
    /// (`M_WRONG_ROOM_KEYS_VERSION`, 403, naming the current one, otherwise).
    fn current(&self, user_id: &UserId, version: &str) -> Result<(u64, VersionInfo)> {
        let (number, info) = self.version(user_id, version)?;
        match self.latest(user_id)? {
            Some((latest, _)) if latest == number => Ok((number, info)),
            Some((latest, _)) => Err(Error::with_status(
                StatusCode::FORBIDDEN,
                ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(
                    latest.to_string(),
                )),
                "This backup version is not the current one.",
            )),
            None => Err(Error::not_found("Unknown backup version.")),
        }
    }

    /// Stored keys in `scope`, as `(room, session, data)`.
    pub fn get(
        &self,
        user_id: &UserId,
        version: &str,
        scope: Scope<'_>,
    ) -> Result<Vec<(String, String, JsonValue)>> {
        let (number, _) = self.version(user_id, version)?;
        let version_prefix_len = scope_prefix(user_id, number, Scope::All).len();
        let prefix = scope_prefix(user_id, number, scope);
        let mut keys = Vec::new();
        for entry in self.keys.scan_prefix(&prefix) {
            let (key, data) = entry?;
            if let Scope::Session(..) = scope
                && key.len() != prefix.len()
            {
                // Another session whose id merely starts with this one.
                continue;
            }
            let rest = &key[version_prefix_len..];
            let Some(split) = rest.iter().position(|b| *b == SEPARATOR) else {
                continue;
            };
            keys.push((
                String::from_utf8_lossy(&rest[..split]).into_owned(),
                String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
                data,
            ));
        }
        Ok(keys)
    }

    /// `DELETE /room_keys/keys…`: removes the keys in `scope`; returns `(etag, count)`.
    pub async fn delete(
        &self,
        user_id: &UserId,
        version: &str,
        scope: Scope<'_>,
    ) -> Result<(String, u64)> {
        let _guard = self.write_lock.lock().await;
        let (number, mut info) = self.version(user_id, version)?;
        let prefix = scope_prefix(user_id, number, scope);
        let mut batch = Batch::new();
        let mut removed = 0;
        for entry in self.keys.tree().scan_prefix(&prefix) {
            let (key, _) = entry?;
            if matches!(scope, Scope::Session(..)) && key.len() != prefix.len() {
                continue;
            }
            batch.remove(self.keys.tree(), key);
            removed += 1;
        }
        if removed > 0 {
            info.count = info.count.saturating_sub(removed);
            info.etag += 1;
            batch.insert_json(&self.versions, version_key(user_id, number), &info);
            self.db.apply(&batch)?;
            self.db.persist().await?;
        }
        Ok((info.etag.to_string(), info.count))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(verified: bool, index: u64, forwarded: u64) -> JsonValue {
        json!({
            "is_verified": verified, "first_message_index": index,
            "forwarded_count": forwarded, "session_data": {},
        })
    }

    #[tokio::test]
    async fn removal_takes_every_version_and_key_of_the_user_only() {
        let db = Db::memory();
        let backup = Backup::new(&db).unwrap();
        let alice = ruma::user_id!("@alice:example.org");
        let bob = ruma::user_id!("@bob:example.org");
        let room = ruma::room_id!("!room:example.org");
        let algorithm = json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                                "auth_data": {} });
        for user in [alice, bob] {
            let version = backup.create(user, algorithm.clone()).await.unwrap();
            let keys = vec![SessionKey {
                room_id: room,
                session_id: "s1",
                data: key(true, 0, 0),
            }];
            backup.put(user, &version, keys).await.unwrap();
        }
        let mut batch = Batch::new();
        backup.removal_into(&mut batch, alice).unwrap();
        db.apply(&batch).unwrap();
        assert!(backup.latest(alice).unwrap().is_none());
        let (version, info) = backup.latest(bob).unwrap().expect("bob's backup stays");
        assert_eq!(info.count, 1);
        let kept = backup.get(bob, &version.to_string(), Scope::All).unwrap();
        assert!(!kept.is_empty());
    }

    #[test]
    fn the_better_session_key_is_kept() {
        // Verified beats unverified, whatever the indexes.
        assert!(replaces(&key(false, 0, 0), &key(true, 5, 5)));
        assert!(!replaces(&key(true, 5, 5), &key(false, 0, 0)));
        // Then the lower first_message_index.
        assert!(replaces(&key(true, 5, 0), &key(true, 1, 9)));
        assert!(!replaces(&key(true, 1, 9), &key(true, 5, 0)));
        // Then the lower forwarded_count; a tie keeps the stored key.
        assert!(replaces(&key(false, 1, 3), &key(false, 1, 2)));
        assert!(!replaces(&key(false, 1, 2), &key(false, 1, 2)));
    }
}
