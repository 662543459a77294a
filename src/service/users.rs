//! Accounts and profiles.
//!
//! Trees:
//! - `userid_account`: user id → [`Account`] (JSON). Deactivated accounts stay, so their
//!   names can never be registered again.
//! - `userid_profile`: user id → profile fields (JSON object: `displayname`, `avatar_url`,
//!   and any other field clients set, spec v1.16 "Profiles").

use std::collections::BTreeMap;

use ruma::{OwnedServerName, OwnedUserId, UserId, api::error::ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use tokio::sync::Mutex;

use crate::{
    Error, Result, crypto,
    storage::{Batch, Db, Table},
};

const USERID_ACCOUNT: &str = "userid_account";
const USERID_PROFILE: &str = "userid_profile";

/// The largest profile, in bytes of JSON (spec: "Profiles", 64 KiB limit).
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;

pub type Profile = BTreeMap<String, JsonValue>;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Account {
    /// argon2id PHC string; `None` when the account cannot log in with a password.
    pub password_hash: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub deactivated: bool,
    /// Milliseconds since the Unix epoch.
    pub created_ts: u64,
}

/// The result of checking a password.
#[derive(Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    Valid,
    Invalid,
    NoSuchUser,
    Deactivated,
}

pub struct Users {
    db: Db,
    server_name: OwnedServerName,
    accounts: Table<Account>,
    profiles: Table<Profile>,
    /// Serialises every read-modify-write of accounts and profiles: "does it exist?" +
    /// "insert" must not interleave (the first account, which becomes admin, must be exactly
    /// one), and a password change must not write back an account a deactivation just
    /// changed. Account writes are rare, so one lock is enough. It is released before
    /// `persist`, which covers every write made before it is called.
    write_lock: Mutex<()>,
    /// A hash of a random password, checked when a login names an unknown user so that the
    /// answer takes as long as for a real one (no timing oracle for account existence).
    dummy_hash: std::sync::OnceLock<String>,
    hash_slots: tokio::sync::Semaphore,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

/// Password hashes computed at once; more wait (see [`Users::run_argon2`]).
const MAX_CONCURRENT_HASHES: usize = 2;
const HASH_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Users {
    pub fn new(db: &Db, server_name: OwnedServerName) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            server_name,
            accounts: db.table(USERID_ACCOUNT)?,
            profiles: db.table(USERID_PROFILE)?,
            write_lock: Mutex::new(()),
            dummy_hash: std::sync::OnceLock::new(),
            hash_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_HASHES),
        })
    }

    pub fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    pub fn account(&self, user_id: &UserId) -> Result<Option<Account>> {
        Ok(self.accounts.get(user_id.as_bytes())?)
    }

    /// Whether the name is taken, by an active or a deactivated account.
    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.accounts.tree().get(user_id.as_bytes())?.is_some())
    }

    /// Creates an account. The first account ever created is an admin whatever `admin` says.
    /// Returns whether the new account is an admin.
    pub async fn create(
        &self,
        user_id: &UserId,
        password: Option<String>,
        admin: bool,
        displayname: Option<String>,
    ) -> Result<bool> {
        let password_hash = match password {
            Some(password) => Some(self.hash_password(password).await?),
            None => None,
        };
        let guard = self.write_lock.lock().await;
        if self.exists(user_id)? {
            return Err(Error::new(
                ErrorKind::UserInUse,
                "The desired user ID is already taken.",
            ));
        }
        let first = self
            .accounts
            .tree()
            .iter_from(b"", false)
            .next()
            .transpose()?
            .is_none();
        let admin = admin || first;
        let account = Account {
            password_hash,
            admin,
            deactivated: false,
            created_ts: now_ms(),
        };
        let mut batch = Batch::new();
        batch.insert_json(&self.accounts, user_id.as_bytes(), &account);
        // New accounts start with their localpart as display name, as Synapse and Conduit do.
        let mut profile = Profile::new();
        let displayname = displayname.unwrap_or_else(|| user_id.localpart().to_owned());
        profile.insert("displayname".to_owned(), JsonValue::String(displayname));
        batch.insert_json(&self.profiles, user_id.as_bytes(), &profile);
        self.db.apply(&batch)?;
        drop(guard);
        self.db.persist().await?;
        Ok(admin)
    }

    /// Checks a password. CPU-heavy work runs off the async threads.
    /// Runs argon2 work off the async threads, at most [`MAX_CONCURRENT_HASHES`] at once:
    /// each run needs about 19 MiB, so unbounded parallel logins could exhaust a Pi's memory.
    /// A request that waits longer than [`HASH_QUEUE_WAIT`] gets 429.
    async fn run_argon2<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let permit = tokio::time::timeout(HASH_QUEUE_WAIT, self.hash_slots.acquire())
            .await
            .map_err(|_| Error::limit_exceeded(std::time::Duration::from_secs(1)))?
            .map_err(|_| Error::internal("hash semaphore closed"))?;
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::internal(format!("password hashing task failed: {e}")));
        drop(permit);
        result
    }

    async fn hash_password(&self, password: String) -> Result<String> {
        self.run_argon2(move || crypto::hash_password(&password))
            .await
    }

    /// Checks a password. Unknown, deactivated and password-less accounts are checked
    /// against a dummy hash, so every answer takes as long (no timing oracle).
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<PasswordCheck> {
        let account = self.account(user_id)?;
        let stored = account
            .as_ref()
            .filter(|a| !a.deactivated)
            .and_then(|a| a.password_hash.clone());
        let dummy = self.dummy_hash.get().cloned();
        let password = password.to_owned();
        let (valid, made_dummy) = self
            .run_argon2(move || match stored {
                Some(hash) => (crypto::verify_password(&password, &hash), None),
                None => {
                    let dummy =
                        dummy.unwrap_or_else(|| crypto::hash_password(&crypto::random_token()));
                    crypto::verify_password(&password, &dummy);
                    (false, Some(dummy))
                }
            })
            .await?;
        if let Some(dummy) = made_dummy {
            let _ = self.dummy_hash.set(dummy);
        }
        Ok(match account {
            None => PasswordCheck::NoSuchUser,
            Some(account) if account.deactivated => PasswordCheck::Deactivated,
            Some(_) if valid => PasswordCheck::Valid,
            Some(_) => PasswordCheck::Invalid,
        })
    }

    /// Sets a new password, applying `extra` (e.g. revoking other devices) in the same
    /// atomic batch, so a crash cannot keep sessions the user meant to end.
    pub async fn set_password(
        &self,
        user_id: &UserId,
        password: String,
        mut extra: Batch,
    ) -> Result<()> {
        let hash = self.hash_password(password).await?;
        {
            let _guard = self.write_lock.lock().await;
            let mut account = self.active_account(user_id)?;
            account.password_hash = Some(hash);
            extra.insert_json(&self.accounts, user_id.as_bytes(), &account);
            self.db.apply(&extra)?;
        }
        self.db.persist().await?;
        Ok(())
    }

    /// Makes the account an admin or not (Synapse's admin API).
    pub async fn set_admin(&self, user_id: &UserId, admin: bool) -> Result<()> {
        {
            let _guard = self.write_lock.lock().await;
            let mut account = self
                .account(user_id)?
                .ok_or_else(|| Error::not_found("No such user."))?;
            account.admin = admin;
            let mut batch = Batch::new();
            batch.insert_json(&self.accounts, user_id.as_bytes(), &account);
            self.db.apply(&batch)?;
        }
        self.db.persist().await?;
        Ok(())
    }

    /// Opens a deactivated account again with a new password (Synapse's admin API; a
    /// deactivated account has none).
    pub async fn reactivate(&self, user_id: &UserId, password: String) -> Result<()> {
        let hash = self.hash_password(password).await?;
        {
            let _guard = self.write_lock.lock().await;
            let mut account = self
                .account(user_id)?
                .ok_or_else(|| Error::not_found("No such user."))?;
            account.deactivated = false;
            account.password_hash = Some(hash);
            let mut batch = Batch::new();
            batch.insert_json(&self.accounts, user_id.as_bytes(), &account);
            self.db.apply(&batch)?;
        }
        self.db.persist().await?;
        Ok(())
    }

    /// Marks the account deactivated and removes its password, applying `extra` (the
    /// removal of every device and token) in the same atomic batch.
    pub async fn deactivate(
        &self,
        user_id: &UserId,
        erase_profile: bool,
        extra: Batch,
    ) -> Result<()> {
        {
            let _guard = self.write_lock.lock().await;
            let mut account = self.active_account(user_id)?;
            account.deactivated = true;
            account.password_hash = None;
            let mut batch = extra;
            batch.insert_json(&self.accounts, user_id.as_bytes(), &account);
            if erase_profile {
                batch.remove(self.profiles.tree(), user_id.as_bytes());
            }
            self.db.apply(&batch)?;
        }
        self.db.persist().await?;
        Ok(())
    }

    /// Every account, in user-id order.
    pub fn list(&self) -> Result<Vec<(OwnedUserId, Account)>> {
        self.accounts
            .scan_prefix(b"")
            .map(|entry| {
                let (key, account) = entry?;
                let user_id = String::from_utf8(key)
                    .ok()
                    .and_then(|s| OwnedUserId::try_from(s).ok())
                    .ok_or_else(|| Error::internal("invalid user id key in userid_account"))?;
                Ok((user_id, account))
            })
            .collect()
    }

    fn active_account(&self, user_id: &UserId) -> Result<Account> {
        match self.account(user_id)? {
            Some(account) if !account.deactivated => Ok(account),
            Some(_) => Err(Error::new(
                ErrorKind::UserDeactivated,
                "This account is deactivated.",
            )),
            None => Err(Error::not_found("No such user.")),
        }
    }

    /// The whole profile; `None` when there is no such (active) user.
    pub fn profile(&self, user_id: &UserId) -> Result<Option<Profile>> {
        match self.account(user_id)? {
            Some(account) if !account.deactivated => Ok(Some(
                self.profiles.get(user_id.as_bytes())?.unwrap_or_default(),
            )),
            _ => Ok(None),
        }
    }

    /// The stored profile whether or not the account is active (for server admins);
    /// empty when there is none.
    pub fn stored_profile(&self, user_id: &UserId) -> Result<Profile> {
        Ok(self.profiles.get(user_id.as_bytes())?.unwrap_or_default())
    }

    /// Sets (`Some`) or removes (`None`) one profile field.
    pub async fn set_profile_field(
        &self,
        user_id: &UserId,
        field: &str,
        value: Option<JsonValue>,
    ) -> Result<()> {
        if field.len() > 255 {
            return Err(Error::custom(
                "M_KEY_TOO_LARGE",
                "Profile keys are at most 255 bytes.",
            ));
        }
        let guard = self.write_lock.lock().await;
        let mut profile = self
            .profile(user_id)?
            .ok_or_else(|| Error::not_found("No such user."))?;
        match value {
            Some(value) => {
                profile.insert(field.to_owned(), value);
            }
            None => {
                profile.remove(field);
            }
        }
        let size = serde_json::to_vec(&profile)
            .map(|bytes| bytes.len())
            .unwrap_or(usize::MAX);
        if size > MAX_PROFILE_BYTES {
            return Err(Error::custom(
                "M_PROFILE_TOO_LARGE",
                "The profile would exceed 64 KiB.",
            ));
        }
        self.profiles.insert(user_id.as_bytes(), &profile)?;
        drop(guard);
        self.db.persist().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{server_name, user_id};

    use super::*;

    fn users() -> Users {
        Users::new(&Db::memory(), server_name!("example.org").to_owned()).unwrap()
    }

    #[tokio::test]
    async fn first_account_is_admin_and_names_are_unique() {
        let users = users();
        assert!(
            users
                .create(user_id!("@a:example.org"), Some("pw".into()), false, None)
                .await
                .unwrap()
        );
        assert!(
            !users
                .create(user_id!("@b:example.org"), Some("pw".into()), false, None)
                .await
                .unwrap()
        );
        let error = users
            .create(user_id!("@a:example.org"), None, false, None)
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            Error::Matrix {
                kind: ErrorKind::UserInUse,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn passwords_check_and_change() {
        let users = users();
        let alice = user_id!("@alice:example.org");
        users
            .create(alice, Some("one".into()), false, None)
            .await
            .unwrap();
        assert_eq!(
            users.check_password(alice, "one").await.unwrap(),
            PasswordCheck::Valid
        );
        assert_eq!(
            users.check_password(alice, "two").await.unwrap(),
            PasswordCheck::Invalid
        );
        users
            .set_password(alice, "two".into(), Batch::new())
            .await
            .unwrap();
        assert_eq!(
            users.check_password(alice, "two").await.unwrap(),
            PasswordCheck::Valid
        );
        let nobody = user_id!("@nobody:example.org");
        assert_eq!(
            users.check_password(nobody, "x").await.unwrap(),
            PasswordCheck::NoSuchUser
        );
    }

    #[tokio::test]
    async fn deactivation_is_final_and_keeps_the_name() {
        let users = users();
        let alice = user_id!("@alice:example.org");
        users
            .create(alice, Some("pw".into()), false, None)
            .await
            .unwrap();
        users.deactivate(alice, true, Batch::new()).await.unwrap();
        assert_eq!(
            users.check_password(alice, "pw").await.unwrap(),
            PasswordCheck::Deactivated
        );
        assert!(users.exists(alice).unwrap());
        assert!(users.profile(alice).unwrap().is_none());
        assert!(
            users
                .create(alice, Some("pw".into()), false, None)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn profile_fields_and_size_limit() {
        let users = users();
        let alice = user_id!("@alice:example.org");
        users.create(alice, None, false, None).await.unwrap();
        assert_eq!(
            users.profile(alice).unwrap().unwrap()["displayname"],
            "alice"
        );
        users
            .set_profile_field(alice, "displayname", Some("Alice".into()))
            .await
            .unwrap();
        users
            .set_profile_field(alice, "m.tz", Some("Europe/Berlin".into()))
            .await
            .unwrap();
        let profile = users.profile(alice).unwrap().unwrap();
        assert_eq!(profile["displayname"], "Alice");
        assert_eq!(profile["m.tz"], "Europe/Berlin");
        let huge = "x".repeat(MAX_PROFILE_BYTES);
        assert!(
            users
                .set_profile_field(alice, "big", Some(huge.into()))
                .await
                .is_err()
        );
        assert!(!users.profile(alice).unwrap().unwrap().contains_key("big"));
        users.set_profile_field(alice, "m.tz", None).await.unwrap();
        assert!(!users.profile(alice).unwrap().unwrap().contains_key("m.tz"));
    }
}
