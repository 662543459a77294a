//! Answers to device-key queries and one-time-key claims, for local users and across
//! servers: the client's `/keys/query` and `/keys/claim` (client-server API, "Key management
//! API") ask this server for its users and the users' servers for the rest
//! (`/_matrix/federation/v1/user/keys/query` and `/claim`); the federation handlers answer
//! the same questions for other servers from [`Services::local_keys`] and
//! [`Services::claim_local`].

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::join_all;
use ruma::{
    OwnedDeviceId, OwnedOneTimeKeyId, OwnedServerName, OwnedUserId, UserId,
    api::federation::keys::{claim_keys, get_keys},
    encryption::{CrossSigningKey, DeviceKeys, OneTimeKey},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::{
    Services,
    cross_signing::{MASTER, SELF_SIGNING, USER_SIGNING, public_key},
    keys::unsigned_device_info,
};
use crate::{Error, Result};

/// How long a query waits for other servers when the client names no `timeout`.
const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// One user's keys, as a query answers them.
#[derive(Default)]
pub struct UserKeys {
    pub devices: BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>,
    pub master: Option<Raw<CrossSigningKey>>,
    pub self_signing: Option<Raw<CrossSigningKey>>,
    /// Only for the user themselves.
    pub user_signing: Option<Raw<CrossSigningKey>>,
}

/// A query's keys for many users, from here and from other servers.
#[derive(Default)]
pub struct KeysAnswer {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>>,
    pub master_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub self_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    pub user_signing_keys: BTreeMap<OwnedUserId, Raw<CrossSigningKey>>,
    /// Servers that could not be asked, with why (the spec's `failures`).
    pub failures: BTreeMap<String, JsonValue>,
}

pub type ClaimedKeys = BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>>;

/// One-time keys claimed for many users, and the servers that could not be asked.
#[derive(Default)]
pub struct ClaimAnswer {
    pub one_time_keys: BTreeMap<OwnedUserId, ClaimedKeys>,
    pub failures: BTreeMap<String, JsonValue>,
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    serde_json::value::to_raw_value(value)
        .map(Raw::from_json)
        .map_err(|e| Error::internal(e.to_string()))
}

/// The `failures` entry for a server that could not be asked.
fn failure(error: &Error) -> JsonValue {
    match error {
        Error::Matrix {
            status, message, ..
        } => json!({ "status": status.as_u16(), "message": message }),
        _ => json!({ "status": 503, "message": "The server could not be reached." }),
    }
}

/// Users grouped by their server, this server's own apart.
fn by_server<V: Clone>(
    services: &Services,
    wanted: &BTreeMap<OwnedUserId, V>,
) -> (
    BTreeMap<OwnedUserId, V>,
    BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>>,
) {
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, V>> = BTreeMap::new();
    for (user, value) in wanted {
        if services.users.is_local(user) {
            local.insert(user.clone(), value.clone());
        } else {
            remote
                .entry(user.server_name().to_owned())
                .or_default()
                .insert(user.clone(), value.clone());
        }
    }
    (local, remote)
}

impl Services {
    /// A local user's device keys (those in `wanted`, or all), with the signatures `viewer`
    /// may see, and their cross-signing keys (the user-signing key for themselves only).
    /// Devices' display names go to local viewers only: like Synapse (its
    /// `allow_device_name_lookup_over_federation` is off by default), other servers do not
    /// learn what people call their devices.
    pub fn local_keys(
        &self,
        user_id: &UserId,
        wanted: &[OwnedDeviceId],
        viewer: &UserId,
        with_names: bool,
    ) -> Result<UserKeys> {
        let mut answer = UserKeys::default();
        for (device_id, device) in self.devices.list(user_id)? {
            if !wanted.is_empty() && !wanted.contains(&device_id) {
                continue;
            }
            let Some(mut keys) = self.keys.device_keys(user_id, &device_id)? else {
                continue;
            };
            if let Some(object) = keys.as_object_mut() {
                object.insert(
                    "unsigned".to_owned(),
                    unsigned_device_info(device.display_name.as_deref().filter(|_| with_names)),
                );
            }
            self.cross_signing
                .merge_signatures(&mut keys, user_id, device_id.as_str(), viewer)?;
            answer.devices.insert(device_id, raw(&keys)?);
        }
        if let Some(mut master) = self.cross_signing.key(user_id, MASTER)? {
            let object = serde_json::from_value(master.clone())
                .map_err(|e| Error::internal(e.to_string()))?;
            let key_id = public_key(&object)?;
            self.cross_signing
                .merge_signatures(&mut master, user_id, &key_id, viewer)?;
            answer.master = Some(raw(&master)?);
        }
        if let Some(key) = self.cross_signing.key(user_id, SELF_SIGNING)? {
            answer.self_signing = Some(raw(&key)?);
        }
        if user_id == viewer
            && let Some(key) = self.cross_signing.key(user_id, USER_SIGNING)?
        {
            answer.user_signing = Some(raw(&key)?);
        }
        Ok(answer)
    }

    /// Claims one one-time key (or the fallback key) per device of a local user.
    pub async fn claim_local(
        &self,
        user_id: &UserId,
        devices: &BTreeMap<OwnedDeviceId, ruma::OneTimeKeyAlgorithm>,
    ) -> Result<ClaimedKeys> {
        let mut claimed_for_user = BTreeMap::new();
        for (device_id, algorithm) in devices {
            if let Some(claimed) = self
                .keys
                .claim(user_id, device_id, algorithm.as_str())
                .await?
            {
                let key_id = claimed
                    .key_id
                    .as_str()
                    .try_into()
                    .map_err(|_| Error::internal("stored one-time key id is invalid"))?;
                claimed_for_user.insert(
                    device_id.clone(),
                    BTreeMap::from([(key_id, raw(&claimed.key)?)]),
                );
            }
        }
        Ok(claimed_for_user)
    }

    /// The keys of `wanted` users for `viewer` (a local user): ours from the store, the
    /// others' from their servers, all servers asked at once and waited for at most
    /// `timeout`. A server that fails is listed in `failures` and its users left out.
    pub async fn query_keys(
        &self,
        viewer: &UserId,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
        timeout: Option<Duration>,
    ) -> Result<KeysAnswer> {
        let (local, remote) = by_server(self, wanted);
        let mut answer = KeysAnswer::default();
        for (user_id, devices) in &local {
            let keys = self.local_keys(user_id, devices, viewer, true)?;
            answer.device_keys.insert(user_id.clone(), keys.devices);
            if let Some(key) = keys.master {
                answer.master_keys.insert(user_id.clone(), key);
            }
            if let Some(key) = keys.self_signing {
                answer.self_signing_keys.insert(user_id.clone(), key);
            }
            if let Some(key) = keys.user_signing {
                answer.user_signing_keys.insert(user_id.clone(), key);
            }
        }
        let timeout = timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT);
        let asks = remote.into_iter().map(|(server, users)| async move {
            let result = async {
                let client = self.federation.reach(&server, "a key query")?;
                let request = get_keys::v1::Request::new(users.clone());
                tokio::time::timeout(timeout, client.send(&server, request))
                    .await
                    .map_err(|_| Error::internal(format!("{server} did not answer in time")))?
            }
            .await;
            (server, users, result)
        });
        for (server, users, result) in join_all(asks).await {
            match result {
                Ok(response) => {
                    // Only what was asked of this server: a server speaks for its own users.
                    let asked = |user: &OwnedUserId| users.contains_key(user);
                    answer.device_keys.extend(
                        response
                            .device_keys
                            .into_iter()
                            .filter(|(user, _)| asked(user)),
                    );
                    answer.master_keys.extend(
                        response
                            .master_keys
                            .into_iter()
                            .filter(|(user, _)| asked(user)),
                    );
                    answer.self_signing_keys.extend(
                        response
                            .self_signing_keys
                            .into_iter()
                            .filter(|(user, _)| asked(user)),
                    );
                }
                Err(error) => {
                    tracing::debug!(%server, %error, "key query failed");
                    answer.failures.insert(server.to_string(), failure(&error));
                }
            }
        }
        Ok(answer)
    }

    /// One-time keys for the devices in `wanted`: ours claimed here, the others' from their
    /// servers, as [`Self::query_keys`] does.
    pub async fn claim_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, ruma::OneTimeKeyAlgorithm>>,
        timeout: Option<Duration>,
    ) -> Result<ClaimAnswer> {
        let (local, remote) = by_server(self, wanted);
        let mut answer = ClaimAnswer::default();
        for (user_id, devices) in &local {
            let claimed = self.claim_local(user_id, devices).await?;
            if !claimed.is_empty() {
                answer.one_time_keys.insert(user_id.clone(), claimed);
            }
        }
        let timeout = timeout.unwrap_or(DEFAULT_REMOTE_TIMEOUT);
        let asks = remote.into_iter().map(|(server, users)| async move {
            let result = async {
                let client = self.federation.reach(&server, "a key claim")?;
                let request = claim_keys::v1::Request::new(users.clone());
                tokio::time::timeout(timeout, client.send(&server, request))
                    .await
                    .map_err(|_| Error::internal(format!("{server} did not answer in time")))?
            }
            .await;
            (server, users, result)
        });
        for (server, users, result) in join_all(asks).await {
            match result {
                Ok(response) => answer.one_time_keys.extend(
                    response
                        .one_time_keys
                        .into_iter()
                        .filter(|(user, _)| users.contains_key(user)),
                ),
                Err(error) => {
                    tracing::debug!(%server, %error, "key claim failed");
                    answer.failures.insert(server.to_string(), failure(&error));
                }
            }
        }
        Ok(answer)
    }
}
