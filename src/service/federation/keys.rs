//! Server signing keys: ours as published at `/_matrix/key/v2/server`, and other servers',
//! fetched and cached (server-server API, "Retrieving server keys").
//!
//! [`Keyring`] answers "the verify keys of server S usable for a signature made at T"
//! ([`Keyring::verify_keys`]). It looks in a bounded in-memory cache, then in the
//! `servername_serverkeys` tree, and only then asks the network through a [`KeyFetch`]:
//! first the server itself (`GET /_matrix/key/v2/server`), then each notary in
//! `trusted_servers` (`POST /_matrix/key/v2/query`). Every response is checked before it is
//! kept: the right `server_name`, a valid self-signature by a key it lists, and for notary
//! answers a valid signature of the notary too (its own keys fetched from it directly).
//!
//! It is also a notary ([`Keyring::notary_query`]): it answers `/_matrix/key/v2/query` from
//! the cache, fetches what is missing or too old from the servers themselves, and adds our
//! signature to each response (our own keys are answered directly).
//!
//! Validity (server-server API, "Publishing Keys", and room versions 5+, "Signing key
//! validity period"): a key listed in `verify_keys` is usable until the lesser of the
//! response's `valid_until_ts` and 7 days after we received it; an old verify key until its
//! `expired_ts`. Room versions 1 to 4 ignore validity: callers pass `signed_at: None`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::future::{BoxFuture, join_all};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName,
    OwnedServerSigningKeyId, ServerName, SigningKeyAlgorithm,
    api::federation::discovery::{
        ServerSigningKeys, get_remote_server_keys_batch::v2::QueryCriteria,
    },
    serde::{Base64, Raw},
    signatures::{PublicKeyMap, PublicKeySet, verify_json},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{
    Error, Result,
    service::server_keys::{ServerKeys, raw_object},
    storage::{Db, Table},
};

/// Server name → [`StoredKeys`] JSON: every key we know of that server, and the last
/// verified response it published (re-served as a notary).
const SERVERNAME_SERVERKEYS: &str = "servername_serverkeys";

/// Spec (room versions 5+): a key is not trusted for longer than 7 days after we got it,
/// whatever its `valid_until_ts` says.
pub const MAX_KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Servers whose keys are kept in memory; the rest stay in the tree. About 1 KB each.
const CACHE_SERVERS: usize = 1_000;
/// Keys kept per server (current and old); a response listing more keeps the newest.
const KEYS_PER_SERVER: usize = 64;
/// A server is not asked again within this time after an attempt, whatever the outcome:
/// signatures with made-up key ids must not turn into a request each.
pub const FETCH_COOLDOWN: Duration = Duration::from_secs(30);
/// Largest key response kept (about 100 old keys): the cache holds one per server.
pub const MAX_KEY_RESPONSE: usize = 16 * 1024;
/// Servers one notary query may name.
pub const MAX_QUERY_SERVERS: usize = 100;

/// The network, as the keyring needs it. The real implementation resolves server names and
/// talks HTTPS; tests answer from a table.
pub trait KeyFetch: Send + Sync {
    /// `GET /_matrix/key/v2/server` on `server`: its keys, as it published them.
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<Raw<ServerSigningKeys>>>;

    /// `POST /_matrix/key/v2/query` on `notary`, with the body's `server_keys` criteria.
    fn notary_query<'a>(
        &'a self,
        notary: &'a ServerName,
        criteria: &'a BTreeMap<OwnedServerName, BTreeMap<OwnedServerSigningKeyId, QueryCriteria>>,
    ) -> BoxFuture<'a, Result<Vec<Raw<ServerSigningKeys>>>>;
}

/// One key of a remote server, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StoredKey {
    /// Unpadded base64 of the ed25519 public key.
    key: String,
    /// Usable for signatures made up to this time (ms): the capped `valid_until_ts` of a
    /// verify key, the `expired_ts` of an old one.
    valid_until: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredKeys {
    keys: BTreeMap<String, StoredKey>,
    /// The last verified response, with only the server's own signatures.
    response: Box<RawValue>,
    /// Its `valid_until_ts`, as published.
    valid_until_ts: u64,
}

/// A checked response: its keys and its text with only the origin's signatures.
struct Checked {
    keys: BTreeMap<String, StoredKey>,
    response: Box<RawValue>,
    valid_until_ts: u64,
}

#[derive(Default)]
struct Cache {
    servers: HashMap<OwnedServerName, Arc<StoredKeys>>,
    order: VecDeque<OwnedServerName>,
    /// When each server was last asked (bounded like `servers`).
    attempts: HashMap<OwnedServerName, Instant>,
}

impl Cache {
    fn put(&mut self, server: &ServerName, keys: Arc<StoredKeys>) {
        if self.servers.insert(server.to_owned(), keys).is_none() {
            self.order.push_back(server.to_owned());
            while self.servers.len() > CACHE_SERVERS {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                self.servers.remove(&oldest);
            }
        }
    }

    fn attempted(&mut self, server: &ServerName) {
        if self.attempts.len() >= CACHE_SERVERS {
            self.attempts.retain(|_, at| at.elapsed() < FETCH_COOLDOWN);
            // Still full: the oldest attempt goes (clearing all would lift every
            // cool-down at once, which a burst of new names could force).
            if self.attempts.len() >= CACHE_SERVERS
                && let Some(oldest) = self
                    .attempts
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(server, _)| server.clone())
            {
                self.attempts.remove(&oldest);
            }
        }
        self.attempts.insert(server.to_owned(), Instant::now());
    }

    fn cooling_down(&self, server: &ServerName) -> bool {
        self.attempts
            .get(server)
            .is_some_and(|at| at.elapsed() < FETCH_COOLDOWN)
    }
}

/// Remote servers' signing keys, and ours for the notary endpoint.
pub struct Keyring {
    server_name: OwnedServerName,
    own: Arc<ServerKeys>,
    trusted_servers: Vec<OwnedServerName>,
    /// Off when federation is off: answers then come from what is stored, never the network.
    fetch_allowed: bool,
    fetcher: Arc<dyn KeyFetch>,
    table: Table<StoredKeys>,
    db: Db,
    cache: Mutex<Cache>,
    /// One fetch per server at a time; the others wait for it and read its result.
    in_flight: InFlightMap,
}

impl Keyring {
    pub fn new(
        db: &Db,
        server_name: OwnedServerName,
        own: Arc<ServerKeys>,
        trusted_servers: Vec<OwnedServerName>,
        fetch_allowed: bool,
        fetcher: Arc<dyn KeyFetch>,
    ) -> Result<Self> {
        Ok(Self {
            server_name,
            own,
            trusted_servers,
            fetch_allowed,
            fetcher,
            table: db.table(SERVERNAME_SERVERKEYS)?,
            db: db.clone(),
            cache: Mutex::default(),
            in_flight: Mutex::default(),
        })
    }

    /// The keys among `key_ids` of `server` that are usable for a signature made at
    /// `signed_at` (`None`: any known key, for room versions 1 to 4), fetching them when
    /// one is unknown or not valid then. Keys that cannot be found are simply missing from
    /// the answer (the signature check then fails); the spec's `M_UNAUTHORIZED` is the
    /// caller's to give. Our own server's keys come from [`ServerKeys`].
    pub async fn verify_keys(
        &self,
        server: &ServerName,
        key_ids: &[OwnedServerSigningKeyId],
        signed_at: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<PublicKeySet> {
        if server == self.server_name {
            let mut keys = self.own.public_keys(signed_at);
            keys.retain(|id, _| key_ids.iter().any(|k| k.as_str() == id));
            return Ok(keys);
        }
        let wanted = key_ids
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let usable = |stored: Option<&StoredKeys>| usable_keys(stored, key_ids, signed_at);
        let known = self.stored(server)?;
        let found = usable(known.as_deref());
        if found.len() == wanted {
            return Ok(found);
        }
        let minimum = signed_at.unwrap_or_else(MilliSecondsSinceUnixEpoch::now);
        let fetched = self
            .fetch(server, key_ids, minimum, true, |stored| {
                usable(Some(stored)).len() == wanted
            })
            .await?;
        Ok(usable(fetched.as_deref()))
    }

    /// The public keys for checking `object`'s signatures by each of `servers` (those whose
    /// signatures a rule requires: see `ruma::signatures::required_server_signatures_to_verify_event`),
    /// looked up by the key ids the signatures name.
    pub async fn public_key_map(
        &self,
        object: &CanonicalJsonObject,
        servers: impl IntoIterator<Item = &ServerName>,
        signed_at: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<PublicKeyMap> {
        let mut map = PublicKeyMap::new();
        for server in servers {
            let key_ids = signature_key_ids(object, server);
            let keys = self.verify_keys(server, &key_ids, signed_at).await?;
            map.insert(server.to_string(), keys);
        }
        Ok(map)
    }

    /// `/_matrix/key/v2/query` as a notary: for each server, its last response we hold, if
    /// fresh enough for the criteria (valid until the latest `minimum_valid_until_ts`, now
    /// when none is given, and listing every key id asked for), else fetched from the server
    /// itself; stale answers are still returned when the server cannot be reached (the spec
    /// asks notaries to keep serving them). Each carries our signature.
    pub async fn notary_query(
        &self,
        criteria: &BTreeMap<OwnedServerName, BTreeMap<OwnedServerSigningKeyId, QueryCriteria>>,
    ) -> Result<Vec<Raw<ServerSigningKeys>>> {
        if criteria.len() > MAX_QUERY_SERVERS {
            return Err(Error::invalid_param(format!(
                "At most {MAX_QUERY_SERVERS} servers per key query."
            )));
        }
        let answers = join_all(criteria.iter().map(|(server, wanted)| {
            let minimum = wanted
                .values()
                .filter_map(|c| c.minimum_valid_until_ts)
                .max();
            let key_ids: Vec<_> = wanted.keys().cloned().collect();
            async move { self.notary_answer(server, &key_ids, minimum).await }
        }))
        .await;
        let mut out = Vec::new();
        for answer in answers {
            if let Some(raw) = answer? {
                out.push(raw);
            }
        }
        Ok(out)
    }

    /// `GET /_matrix/key/v2/query/{serverName}`: [`Self::notary_query`] for one server and
    /// all its keys.
    pub async fn notary_query_server(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<Vec<Raw<ServerSigningKeys>>> {
        Ok(self
            .notary_answer(server, &[], minimum_valid_until_ts)
            .await?
            .into_iter()
            .collect())
    }

    /// One server's answer for the notary endpoints, signed by us; `None` when we have
    /// nothing for it.
    async fn notary_answer(
        &self,
        server: &ServerName,
        key_ids: &[OwnedServerSigningKeyId],
        minimum: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<Option<Raw<ServerSigningKeys>>> {
        let now = MilliSecondsSinceUnixEpoch::now();
        if server == self.server_name {
            return self.own.published(&self.server_name, now).map(Some);
        }
        // Spec: without `minimum_valid_until_ts` the notary uses the current time.
        let minimum = minimum.unwrap_or(now);
        let fresh = |stored: &StoredKeys| {
            stored.valid_until_ts >= u64::from(minimum.get())
                && key_ids
                    .iter()
                    .all(|id| stored.keys.contains_key(id.as_str()))
        };
        let mut stored = self.stored(server)?;
        if !stored.as_deref().is_some_and(fresh) {
            // A notary asks the servers themselves, never other notaries.
            match self.fetch(server, key_ids, minimum, false, fresh).await {
                Ok(Some(newer)) => stored = Some(newer),
                Ok(None) => {}
                Err(error) => tracing::warn!(%server, %error, "key query: no keys"),
            }
        }
        let Some(stored) = stored else {
            return Ok(None);
        };
        let mut object: CanonicalJsonObject = serde_json::from_str(stored.response.get())
            .map_err(|e| Error::internal(format!("stored key response: {e}")))?;
        self.own.sign_json(&self.server_name, &mut object)?;
        raw_object(&object).map(Some)
    }

    /// What we hold for `server`: memory first, then the tree (and into memory).
    fn stored(&self, server: &ServerName) -> Result<Option<Arc<StoredKeys>>> {
        if let Some(found) = self.cache.lock().expect("key cache").servers.get(server) {
            return Ok(Some(Arc::clone(found)));
        }
        let Some(stored) = self.table.get(server.as_bytes())? else {
            return Ok(None);
        };
        let stored = Arc::new(stored);
        self.cache
            .lock()
            .expect("key cache")
            .put(server, Arc::clone(&stored));
        Ok(Some(stored))
    }

    /// Fetches `server`'s keys (directly, then through the notaries when `via_notaries`)
    /// until `enough` is satisfied, keeping every checked answer. One fetch per server at a
    /// time, none within [`FETCH_COOLDOWN`] of the last, none when federation is off.
    /// Returns what is held afterwards.
    async fn fetch(
        &self,
        server: &ServerName,
        key_ids: &[OwnedServerSigningKeyId],
        minimum: MilliSecondsSinceUnixEpoch,
        via_notaries: bool,
        enough: impl Fn(&StoredKeys) -> bool,
    ) -> Result<Option<Arc<StoredKeys>>> {
        if !self.fetch_allowed {
            return self.stored(server);
        }
        let gate = InFlight::enter(&self.in_flight, server);
        let _turn = gate.gate.lock().await;
        // Whoever fetched while we waited may have found it.
        let stored = self.stored(server)?;
        if stored.as_deref().is_some_and(&enough)
            || self.cache.lock().expect("key cache").cooling_down(server)
        {
            return Ok(stored);
        }
        self.cache.lock().expect("key cache").attempted(server);
        self.fetch_now(server, key_ids, minimum, via_notaries, &enough)
            .await
    }

    async fn fetch_now(
        &self,
        server: &ServerName,
        key_ids: &[OwnedServerSigningKeyId],
        minimum: MilliSecondsSinceUnixEpoch,
        via_notaries: bool,
        enough: &impl Fn(&StoredKeys) -> bool,
    ) -> Result<Option<Arc<StoredKeys>>> {
        match self.fetcher.server_keys(server).await {
            Ok(raw) => match check_response(server, &raw, None) {
                Ok(checked) => {
                    let stored = self.keep(server, checked).await?;
                    if enough(&stored) || !via_notaries {
                        return Ok(Some(stored));
                    }
                }
                Err(error) => tracing::warn!(%server, %error, "refused the server's keys"),
            },
            Err(error) => tracing::info!(%server, %error, "could not fetch the server's keys"),
        }
        if via_notaries {
            let criteria = BTreeMap::from([(
                server.to_owned(),
                key_ids
                    .iter()
                    .map(|id| {
                        let mut criteria = QueryCriteria::new();
                        criteria.minimum_valid_until_ts = Some(minimum);
                        (id.clone(), criteria)
                    })
                    .collect(),
            )]);
            for notary in &self.trusted_servers {
                if notary == server || *notary == self.server_name {
                    continue;
                }
                match self.ask_notary(notary, server, &criteria).await {
                    Ok(Some(stored)) if enough(&stored) => return Ok(Some(stored)),
                    Ok(_) => {}
                    Err(error) => tracing::info!(%server, %notary, %error, "notary gave no keys"),
                }
            }
        }
        self.stored(server)
    }

    /// Asks `notary` for `server`'s keys; keeps each answer that both the notary and the
    /// server signed.
    async fn ask_notary(
        &self,
        notary: &ServerName,
        server: &ServerName,
        criteria: &BTreeMap<OwnedServerName, BTreeMap<OwnedServerSigningKeyId, QueryCriteria>>,
    ) -> Result<Option<Arc<StoredKeys>>> {
        let notary_keys = self.notary_keys(notary).await?;
        if notary_keys.is_empty() {
            return Err(Error::forbidden(format!(
                "no keys known for notary {notary}"
            )));
        }
        let mut kept = None;
        for raw in self.fetcher.notary_query(notary, criteria).await? {
            match check_response(server, &raw, Some((notary, &notary_keys))) {
                Ok(checked) => kept = Some(self.keep(server, checked).await?),
                Err(error) => tracing::warn!(%server, %notary, %error, "refused a notary's answer"),
            }
        }
        Ok(kept)
    }

    /// A notary's own current keys, from the notary itself (never through another notary).
    ///
    /// Fetched without taking the notary's turn in `in_flight`: the caller holds another
    /// server's turn, and two lookups that each wait for the other's notary would wait
    /// forever. At worst two requests for the same keys go out at once.
    async fn notary_keys(&self, notary: &ServerName) -> Result<PublicKeySet> {
        let now = MilliSecondsSinceUnixEpoch::now();
        let current = |stored: &StoredKeys| {
            stored
                .keys
                .values()
                .any(|key| key.valid_until >= u64::from(now.get()))
        };
        let mut stored = self.stored(notary)?;
        let may_fetch = || {
            let mut cache = self.cache.lock().expect("key cache");
            if cache.cooling_down(notary) {
                return false;
            }
            cache.attempted(notary);
            true
        };
        if !stored.as_deref().is_some_and(current) && may_fetch() {
            match self.fetcher.server_keys(notary).await {
                Ok(raw) => match check_response(notary, &raw, None) {
                    Ok(checked) => stored = Some(self.keep(notary, checked).await?),
                    Err(error) => tracing::warn!(%notary, %error, "refused the notary's keys"),
                },
                Err(error) => tracing::info!(%notary, %error, "could not fetch the notary's keys"),
            }
        }
        Ok(stored
            .map(|stored| {
                stored
                    .keys
                    .iter()
                    .filter(|(_, key)| key.valid_until >= u64::from(now.get()))
                    .filter_map(|(id, key)| Some((id.clone(), Base64::parse(&key.key).ok()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Merges a checked response into what we hold for `server`, durably.
    async fn keep(&self, server: &ServerName, checked: Checked) -> Result<Arc<StoredKeys>> {
        let previous = self.stored(server)?;
        let mut keys = previous
            .as_ref()
            .map(|p| p.keys.clone())
            .unwrap_or_default();
        for (id, new) in checked.keys {
            match keys.get_mut(&id) {
                Some(old) if old.key == new.key => {
                    old.valid_until = old.valid_until.max(new.valid_until)
                }
                _ => {
                    keys.insert(id, new);
                }
            }
        }
        while keys.len() > KEYS_PER_SERVER {
            let Some(oldest) = keys
                .iter()
                .min_by_key(|(_, key)| key.valid_until)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            keys.remove(&oldest);
        }
        // The newer publication is the one a notary serves.
        let (response, valid_until_ts) = match &previous {
            Some(p) if p.valid_until_ts > checked.valid_until_ts => {
                (p.response.clone(), p.valid_until_ts)
            }
            _ => (checked.response, checked.valid_until_ts),
        };
        let stored = Arc::new(StoredKeys {
            keys,
            response,
            valid_until_ts,
        });
        self.table.insert(server.as_bytes(), &stored)?;
        self.db.persist().await?;
        self.cache
            .lock()
            .expect("key cache")
            .put(server, Arc::clone(&stored));
        Ok(stored)
    }
}

type InFlightMap = Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>;

/// A turn at fetching one server's keys. Its entry in the map goes with the last waiter,
/// also when a fetch is abandoned (its request cancelled), so the map holds only servers
/// being fetched right now.
struct InFlight<'a> {
    map: &'a InFlightMap,
    server: OwnedServerName,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> InFlight<'a> {
    fn enter(map: &'a InFlightMap, server: &ServerName) -> Self {
        let gate = Arc::clone(
            map.lock()
                .expect("key fetches")
                .entry(server.to_owned())
                .or_default(),
        );
        Self {
            map,
            server: server.to_owned(),
            gate,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("key fetches");
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(&self.gate) == 2 {
            map.remove(&self.server);
        }
    }
}

/// The keys among `key_ids` usable for a signature made at `signed_at`.
fn usable_keys(
    stored: Option<&StoredKeys>,
    key_ids: &[OwnedServerSigningKeyId],
    signed_at: Option<MilliSecondsSinceUnixEpoch>,
) -> PublicKeySet {
    let Some(stored) = stored else {
        return PublicKeySet::new();
    };
    key_ids
        .iter()
        .filter_map(|id| {
            let key = stored.keys.get(id.as_str())?;
            if signed_at.is_some_and(|at| u64::from(at.get()) > key.valid_until) {
                return None;
            }
            Some((id.to_string(), Base64::parse(&key.key).ok()?))
        })
        .collect()
}

/// The key ids of `server`'s signatures on `object`.
pub fn signature_key_ids(
    object: &CanonicalJsonObject,
    server: &ServerName,
) -> Vec<OwnedServerSigningKeyId> {
    match object.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(by_key)) => by_key
                .keys()
                .filter_map(|id| OwnedServerSigningKeyId::try_from(id.as_str()).ok())
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// `object` with only `entity`'s signatures, for checking that one entity's.
fn signed_only_by(object: &CanonicalJsonObject, entity: &str) -> Option<CanonicalJsonObject> {
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return None;
    };
    let own = signatures.get(entity)?.clone();
    let mut copy = object.clone();
    copy.insert(
        "signatures".to_owned(),
        CanonicalJsonValue::Object(BTreeMap::from([(entity.to_owned(), own)])),
    );
    Some(copy)
}

/// Checks one key response for `server` (server-server API, "Retrieving server keys"): a
/// JSON object naming `server`, with ed25519 keys of the right length, signed by `server`
/// with a key it lists in `verify_keys` (every such signature must verify), and, for an
/// answer from a notary, signed by the notary with one of `notary`'s keys.
fn check_response(
    server: &ServerName,
    raw: &Raw<ServerSigningKeys>,
    notary: Option<(&ServerName, &PublicKeySet)>,
) -> Result<Checked> {
    let refuse = |why: String| Error::forbidden(format!("keys of {server}: {why}"));
    if raw.json().get().len() > MAX_KEY_RESPONSE {
        return Err(refuse("the response is too large".to_owned()));
    }
    let object: CanonicalJsonObject = serde_json::from_str(raw.json().get())
        .map_err(|e| refuse(format!("not canonical JSON: {e}")))?;
    let parsed: ServerSigningKeys = raw
        .deserialize()
        .map_err(|e| refuse(format!("malformed: {e}")))?;
    if parsed.server_name != server {
        return Err(refuse(format!(
            "the response is for {}",
            parsed.server_name
        )));
    }
    if let Some((notary, notary_keys)) = notary {
        let only_notary = signed_only_by(&object, notary.as_str())
            .ok_or_else(|| refuse(format!("not signed by the notary {notary}")))?;
        let map = PublicKeyMap::from([(notary.to_string(), notary_keys.clone())]);
        verify_json(&map, &only_notary)
            .map_err(|e| refuse(format!("bad signature of the notary {notary}: {e}")))?;
    }
    let now = u64::from(MilliSecondsSinceUnixEpoch::now().get());
    let cap = now + MAX_KEY_VALIDITY.as_millis() as u64;
    let valid_until_ts = u64::from(parsed.valid_until_ts.get());
    let mut verify_keys = PublicKeySet::new();
    let mut keys = BTreeMap::new();
    for (id, key) in &parsed.verify_keys {
        if id.algorithm() != SigningKeyAlgorithm::Ed25519 {
            continue;
        }
        if key.key.as_bytes().len() != 32 {
            return Err(refuse(format!("{id} is not an ed25519 key")));
        }
        verify_keys.insert(id.to_string(), key.key.clone());
        keys.insert(
            id.to_string(),
            StoredKey {
                key: key.key.encode(),
                valid_until: valid_until_ts.min(cap),
            },
        );
    }
    if verify_keys.is_empty() {
        return Err(refuse("no ed25519 verify key".to_owned()));
    }
    let only_origin = signed_only_by(&object, server.as_str())
        .ok_or_else(|| refuse("not signed by the server itself".to_owned()))?;
    let map = PublicKeyMap::from([(server.to_string(), verify_keys)]);
    verify_json(&map, &only_origin)
        .map_err(|e| refuse(format!("not signed by the keys it lists: {e}")))?;
    for (id, old) in &parsed.old_verify_keys {
        if id.algorithm() != SigningKeyAlgorithm::Ed25519
            || old.key.as_bytes().len() != 32
            || keys.contains_key(id.as_str())
        {
            continue;
        }
        keys.insert(
            id.to_string(),
            StoredKey {
                key: old.key.encode(),
                valid_until: u64::from(old.expired_ts.get()),
            },
        );
    }
    let response = serde_json::value::to_raw_value(&only_origin)
        .map_err(|e| Error::internal(format!("JSON: {e}")))?;
    Ok(Checked {
        keys,
        response,
        valid_until_ts,
    })
}

/// The [`KeyFetch`] of a server with federation off: nothing is fetched (the keyring does
/// not even ask, `fetch_allowed` being false); every fetch is an error.
pub struct NoFetch;

impl KeyFetch for NoFetch {
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<Raw<ServerSigningKeys>>> {
        Box::pin(async move {
            Err(Error::forbidden(format!(
                "Federation is off: no keys are fetched from {server}."
            )))
        })
    }

    fn notary_query<'a>(
        &'a self,
        notary: &'a ServerName,
        _criteria: &'a BTreeMap<OwnedServerName, BTreeMap<OwnedServerSigningKeyId, QueryCriteria>>,
    ) -> BoxFuture<'a, Result<Vec<Raw<ServerSigningKeys>>>> {
        Box::pin(async move {
            Err(Error::forbidden(format!(
                "Federation is off: {notary} is not asked for keys."
            )))
        })
    }
}

#[cfg(test)]
mod tests;
