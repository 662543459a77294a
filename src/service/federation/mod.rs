//! Federation (server-server API): finding other servers ([`resolve`]), server signing
//! keys, ours and theirs ([`keys`]), signed requests to other servers ([`client`]), and
//! this server as the resident server of its rooms for others ([`resident`]: joins, and
//! the reads that fill gaps), and browsing across servers ([`directory`], [`space`],
//! [`timestamp`]).
//!
//! Off unless `allow_federation` is set: then no federation path is served, nothing is sent,
//! and a client request that needs another server is refused with a clear error
//! ([`Federation::reach`]).

pub mod backfill;
pub mod client;
pub mod directory;
pub mod incoming;
pub mod invite;
pub mod join;
pub mod keys;
pub mod knock;
pub mod presence;
pub mod receive;
pub mod resident;
pub mod resolve;
pub mod room_edus;
pub mod sender;
pub mod space;
pub mod timestamp;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedServerName, ServerName};

use crate::{Error, Result, config::Config, service::server_keys::ServerKeys, storage::Db};

pub struct Federation {
    server_name: OwnedServerName,
    enabled: bool,
    /// Outgoing requests; `None` when federation is off.
    client: Option<Arc<client::FederationClient>>,
    /// The outgoing queue; `None` when federation is off.
    sender: Option<Arc<sender::Sender>>,
    /// Our users' presence on its way out, at a bounded rate.
    presence: presence::Outbox,
    /// Turns for requests from each other server being handled at once
    /// ([`Federation::origin_turn`]). Entries of servers with no request in progress are
    /// dropped when the map reaches [`MAX_ORIGINS`].
    origin_turns: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Semaphore>>>,
    /// One lock per origin serialising the applying of its transactions, so a transaction
    /// retried while its first copy is still being applied waits and is then seen as
    /// applied (not applied twice), and a slow transaction (one that fetches missing
    /// events) holds up no other server's. Entries nobody holds are dropped when the map
    /// reaches [`MAX_ORIGINS`].
    receive_locks: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
}

/// Requests from one server handled at once; more are answered `429` at once, so a flood
/// from one server holds at most this many of `max_concurrent_requests`' turns and never
/// waits on them, and clients keep theirs.
pub const TURNS_PER_ORIGIN: usize = 8;
/// Servers with a turn map entry at most (beyond it, idle ones are forgotten).
const MAX_ORIGINS: usize = 10_000;

impl Federation {
    pub fn new(config: &Config, db: &Db, server_keys: Arc<ServerKeys>) -> Result<Self> {
        let (client, sender) = if config.allow_federation {
            let client = Arc::new(client::FederationClient::new(
                config.server_name.clone(),
                server_keys,
                Arc::new(resolve::Resolver::system(
                    config.federation_verify_certificates,
                    config.federation_ip_range_allowlist.clone(),
                )?),
                config.federation_verify_certificates,
                config.federation_ip_range_allowlist.clone(),
            )?);
            let sender = sender::Sender::new(db, Arc::clone(&client), config.server_name.clone())?;
            (Some(client), Some(sender))
        } else {
            (None, None)
        };
        Ok(Self {
            server_name: config.server_name.clone(),
            enabled: config.allow_federation,
            client,
            sender,
            presence: presence::Outbox::default(),
            origin_turns: Mutex::default(),
            receive_locks: Mutex::default(),
        })
    }

    /// A turn for one request from `origin` (its signature checked), held while the request
    /// is handled; `429 M_LIMIT_EXCEEDED` when it already has [`TURNS_PER_ORIGIN`] in
    /// progress (server-server API: a server may rate-limit others; they retry).
    pub fn origin_turn(&self, origin: &ServerName) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let turns = {
            let mut map = self.origin_turns.lock().expect("origin turns");
            if map.len() >= MAX_ORIGINS && !map.contains_key(origin) {
                map.retain(|_, turns| turns.available_permits() < TURNS_PER_ORIGIN);
            }
            Arc::clone(
                map.entry(origin.to_owned())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(TURNS_PER_ORIGIN))),
            )
        };
        turns
            .try_acquire_owned()
            .map_err(|_| Error::limit_exceeded(Duration::from_secs(1)))
    }

    /// Waits for `origin`'s turn to apply a transaction (see `receive_locks`).
    pub async fn receiving(&self, origin: &ServerName) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.receive_locks.lock().expect("receive locks");
            if map.len() >= MAX_ORIGINS && !map.contains_key(origin) {
                map.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            Arc::clone(map.entry(origin.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    /// Starts sending what was queued before a restart. Call once, inside the runtime.
    pub fn resume(&self) -> Result<()> {
        match &self.sender {
            Some(sender) => sender.resume(),
            None => Ok(()),
        }
    }

    /// The outgoing client, when federation is on.
    pub fn client(&self) -> Option<Arc<client::FederationClient>> {
        self.client.clone()
    }

    /// The outgoing queue, when federation is on.
    pub fn sender(&self) -> Option<&Arc<sender::Sender>> {
        self.sender.as_ref()
    }

    pub fn presence_outbox(&self) -> &presence::Outbox {
        &self.presence
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The client for a request that needs `server` (another server) for `what` (e.g.
    /// "inviting @bob:example.org"): with federation off, `403 M_FORBIDDEN` naming the
    /// server, as Synapse answers a destination it may not federate with.
    pub fn reach(&self, server: &ServerName, what: &str) -> Result<&Arc<client::FederationClient>> {
        if server == self.server_name {
            return Err(Error::internal(format!("{what}: {server} is this server")));
        }
        self.client.as_ref().ok_or_else(|| {
            Error::forbidden(format!(
                "Federation is off on this server, so {what} cannot reach {server}."
            ))
        })
    }

    /// For what federation cannot do yet (joining and inviting across servers come with
    /// rooms across servers): `403 M_FORBIDDEN` saying so, after the same check as
    /// [`Self::reach`].
    pub fn not_yet(&self, server: &ServerName, what: &str) -> Error {
        match self.reach(server, what) {
            Err(error) => error,
            Ok(_) => Error::forbidden(format!(
                "{what} on {server} is not possible yet: this server cannot share rooms with \
                 other servers yet."
            )),
        }
    }
}

impl Federation {
    /// A remote user's profile (`GET /_matrix/federation/v1/query/profile`), all of it or
    /// one field.
    pub async fn profile(
        &self,
        user_id: &ruma::UserId,
        field: Option<&str>,
    ) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
        use ruma::api::federation::query::get_profile_information::v1 as query;
        let server = user_id.server_name();
        let client = self.reach(server, &format!("the profile of {user_id}"))?;
        let mut request = query::Request::new(user_id.to_owned());
        request.field = field.map(ruma::profile::ProfileFieldName::from);
        let response = client.send(server, request).await?;
        Ok(response.into_iter().collect())
    }

    /// The room a remote alias points at, and servers in it
    /// (`GET /_matrix/federation/v1/query/directory`).
    pub async fn alias(
        &self,
        alias: &ruma::RoomAliasId,
    ) -> Result<(ruma::OwnedRoomId, Vec<OwnedServerName>)> {
        use ruma::api::federation::query::get_room_information::v1 as query;
        let server = alias.server_name();
        let client = self.reach(server, &format!("the alias {alias}"))?;
        let response = client
            .send(server, query::Request::new(alias.to_owned()))
            .await?;
        Ok((response.room_id, response.servers))
    }
}

#[cfg(test)]
mod tests {
    use ruma::server_name;

    use super::*;

    #[test]
    fn one_server_gets_a_bounded_number_of_turns_and_others_keep_theirs() {
        let config = crate::config::tests_support::config();
        let db = Db::memory();
        let keys = Arc::new(ServerKeys::load_or_generate(&db).unwrap());
        let federation = Federation::new(&config, &db, keys).unwrap();
        let flood = server_name!("flood.example");
        let turns: Vec<_> = (0..TURNS_PER_ORIGIN)
            .map(|_| federation.origin_turn(flood).unwrap())
            .collect();
        assert!(
            matches!(
                federation.origin_turn(flood),
                Err(Error::Matrix {
                    kind: ruma::api::error::ErrorKind::LimitExceeded(_),
                    ..
                })
            ),
            "one more is 429"
        );
        assert!(federation.origin_turn(server_name!("calm.example")).is_ok());
        drop(turns);
        assert!(federation.origin_turn(flood).is_ok(), "turns come back");
    }
}
