//! Services hold the Matrix logic. Each owns its trees and their key layouts, and makes its
//! writes durable (`Db::persist`) before returning, so handlers never touch storage.
//!
//! **Invariant:** no service imports `axum`; errors are [`crate::Error`], which knows the
//! Matrix errcodes but not how a response is written.

pub mod account_data;
pub mod admin;
pub mod backup;
pub mod cross_signing;
pub mod dehydrated;
pub mod devices;
pub mod ephemeral;
pub mod federation;
pub mod filter;
pub mod key_query;
pub mod keys;
pub mod media;
pub mod migrations;
pub mod notify;
pub mod openid;
pub mod presence;
pub mod push;
pub mod pusher;
pub mod rate_limit;
pub mod registration;
pub mod rooms;
pub mod server_keys;
pub mod sliding_sync;
pub mod stream;
pub mod sync;
pub mod to_device;
pub mod turn;
pub mod uiaa;
pub mod users;

use std::{sync::Arc, time::Duration};

use crate::{Result, config::Config, storage::Db};

/// Runs `f` — CPU-bound work such as an event's checks and state resolution, or the
/// notification counts of a large room — without holding up the async worker thread's other
/// tasks. On the server's multi-threaded runtime the worker hands its tasks to the others
/// for the duration (`block_in_place`); that includes a task the caller just woke, which
/// tokio keeps in the waking worker's own slot (e.g. the outgoing federation queue after a
/// send). Elsewhere (single-threaded tests) `f` simply runs.
pub(crate) fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// All services, built once at start and shared (via `Arc`) with every handler.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Db,
    pub users: users::Users,
    pub devices: devices::Devices,
    pub keys: Arc<keys::Keys>,
    pub cross_signing: cross_signing::CrossSigning,
    pub backup: backup::Backup,
    pub dehydrated: dehydrated::Dehydrated,
    pub media: media::Media,
    pub uiaa: uiaa::Uiaa,
    pub registration: registration::Registration,
    pub server_keys: Arc<server_keys::ServerKeys>,
    /// Talking to other servers (off unless `allow_federation`).
    pub federation: federation::Federation,
    /// Other servers' signing keys (fetched, checked, cached), and the notary answers.
    pub keyring: federation::keys::Keyring,
    pub stream: Arc<stream::Stream>,
    pub account_data: Arc<account_data::AccountData>,
    pub ephemeral: ephemeral::Ephemeral,
    pub presence: presence::Presence,
    pub push: push::Push,
    /// OpenID tokens for third parties (widgets, integration managers).
    pub openid: openid::OpenId,
    pub delivery: pusher::Delivery,
    pub to_device: to_device::ToDevice,
    /// Sliding sync connections (in memory).
    pub sliding_sync: sliding_sync::SlidingSync,
    pub rooms: rooms::Rooms,
    /// Member events each device was sent by lazy-loading syncs (memory only, bounded).
    pub sent_members: filter::SentMembers,
    /// Failed password attempts per user: `/login` and the password UIA stage.
    pub password_failures: rate_limit::FailureLimiter,
}

impl Services {
    pub fn build(config: Config, db: Db) -> Result<Arc<Self>> {
        let config = Arc::new(config);
        crate::error::set_admin_contact(config.admin_contact());
        let server_keys = Arc::new(server_keys::ServerKeys::load_or_generate(&db)?);
        let stream = Arc::new(stream::Stream::new(&db)?);
        let account_data = Arc::new(account_data::AccountData::new(&db, Arc::clone(&stream))?);
        let keys = Arc::new(keys::Keys::new(&db)?);
        let federation = federation::Federation::new(&config, &db, Arc::clone(&server_keys))?;
        // Other servers' keys come through the federation client; with federation off
        // nothing is fetched.
        let fetcher: Arc<dyn federation::keys::KeyFetch> = match federation.client() {
            Some(client) => client,
            None => Arc::new(federation::keys::NoFetch),
        };
        let media = media::Media::new(&db, &config, federation.client())?;
        let keyring = federation::keys::Keyring::new(
            &db,
            config.server_name.clone(),
            Arc::clone(&server_keys),
            config.trusted_servers.clone(),
            config.allow_federation,
            fetcher,
        )?;
        Ok(Arc::new(Self {
            keyring,
            rooms: rooms::Rooms::new(
                &db,
                config.server_name.clone(),
                Arc::clone(&server_keys),
                Arc::clone(&stream),
            )?
            .with_outgoing(federation.sender().cloned()),
            account_data: Arc::clone(&account_data),
            delivery: pusher::Delivery::new(account_data)?,
            ephemeral: ephemeral::Ephemeral::new(&db, Arc::clone(&stream))?,
            presence: presence::Presence::default(),
            push: push::Push::new(&db, Arc::clone(&stream))?,
            openid: openid::OpenId::new(&db)?,
            to_device: to_device::ToDevice::new(&db, Arc::clone(&stream))?,
            sliding_sync: sliding_sync::SlidingSync::default(),
            sent_members: filter::SentMembers::default(),
            stream,
            federation,
            server_keys,
            users: users::Users::new(&db, config.server_name.clone())?,
            devices: devices::Devices::new(&db, Arc::clone(&keys))?,
            cross_signing: cross_signing::CrossSigning::new(&db, Arc::clone(&keys))?,
            keys,
            backup: backup::Backup::new(&db)?,
            dehydrated: dehydrated::Dehydrated::new(&db)?,
            media,
            uiaa: uiaa::Uiaa::new(),
            registration: registration::Registration::new(),
            password_failures: rate_limit::FailureLimiter::new(5, Duration::from_secs(60), 10_000),
            config,
            db,
        }))
    }
}

impl Services {
    /// Sends an event into a room and counts it for the members' notifications, then makes
    /// both durable with one flush (issue 13: a flush per write is what an SD card pays
    /// for). A failure to count is logged: the event is stored and must still be
    /// acknowledged.
    pub async fn send_event(
        &self,
        room_id: &ruma::RoomId,
        sender: &ruma::UserId,
        event: rooms::append::NewEvent,
        transaction: Option<rooms::append::Transaction<'_>>,
    ) -> Result<rooms::pdu::Pdu> {
        let pdu = self
            .rooms
            .send_unpersisted(room_id, sender, event, transaction)
            .await?;
        self.count_unpersisted(&pdu).await;
        self.db.persist().await?;
        Ok(pdu)
    }

    /// Notification counts for an event stored by some other path (e.g. an invite), and
    /// pushes to the notified members' push gateways; durable when it returns.
    pub async fn count_notifications(&self, pdu: &rooms::pdu::Pdu) {
        self.count_unpersisted(pdu).await;
        if let Err(error) = self.db.persist().await {
            tracing::warn!(event_id = %pdu.event_id, %error, "could not store notification counts");
        }
    }

    async fn count_unpersisted(&self, pdu: &rooms::pdu::Pdu) {
        match self
            .push
            .event_sent(&self.rooms, &self.account_data, pdu)
            .await
        {
            Ok(notified) => {
                for (user, tweaks) in notified {
                    if let Err(error) = self.push_to_gateways(pdu, &user, tweaks) {
                        tracing::warn!(%user, %error, "could not queue a push notification");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(event_id = %pdu.event_id, %error, "could not update notification counts");
            }
        }
    }

    /// The push gateway notification for `pdu` (push gateway API, `/notify`).
    fn push_to_gateways(
        &self,
        pdu: &rooms::pdu::Pdu,
        user: &ruma::UserId,
        tweaks: serde_json::Value,
    ) -> Result<()> {
        use ruma::events::StateEventType;
        if !self.delivery.has_pushers(user)? {
            return Ok(());
        }
        let room_id = pdu.room_id();
        let counts = self.push.counts(&self.rooms, user, &room_id)?;
        let room_name = self
            .rooms
            .current_state_event(&room_id, &StateEventType::RoomName, "")?
            .and_then(|event| event.content_str("name"));
        let sender_name = self
            .rooms
            .current_state_event(&room_id, &StateEventType::RoomMember, pdu.sender.as_str())?
            .and_then(|event| event.content_str("displayname"));
        let kind = pdu.kind.to_string();
        let urgent = matches!(
            kind.as_str(),
            "m.room.message" | "m.room.encrypted" | "m.call.invite"
        ) || pdu.state_key.as_deref() == Some(user.as_str());
        let notification = serde_json::json!({
            "event_id": pdu.event_id,
            "room_id": room_id,
            "type": kind,
            "sender": pdu.sender,
            "sender_display_name": sender_name,
            "room_name": room_name,
            "content": pdu.content_value(),
            "prio": if urgent { "high" } else { "low" },
            "counts": { "unread": counts.notifications },
            "tweaks": tweaks,
        });
        self.delivery.notify(user, &notification)
    }

    /// Sets a user's presence; a real change is published to everyone sharing a room, and
    /// for one of our users to the other servers in those rooms (`m.presence`, at the rate
    /// of [`federation::presence::Outbox`]; the first push in the batch that publishes it).
    pub fn set_presence(
        &self,
        user_id: &ruma::UserId,
        state: ruma::presence::PresenceState,
        status_msg: Option<Option<String>>,
    ) -> Result<()> {
        if !self.config.allow_presence || !self.presence.set(user_id, state, status_msg) {
            return Ok(());
        }
        let audience = self.room_peers(user_id)?;
        let mut servers: std::collections::BTreeSet<ruma::OwnedServerName> = audience
            .iter()
            .map(|peer| peer.server_name().to_owned())
            .collect();
        servers.remove(&*self.config.server_name);
        let outgoing = match self.federation.sender() {
            Some(sender) if self.users.is_local(user_id) && !servers.is_empty() => self
                .federation
                .presence_outbox()
                .offer(
                    sender,
                    user_id,
                    self.presence_update(user_id),
                    servers.clone(),
                )
                .map(|item| (sender, item)),
            _ => None,
        };
        let (position, ()) = self.stream.commit(|_, batch| {
            if let Some((sender, item)) = &outgoing {
                for server in &servers {
                    sender.enqueue(batch, server, item)?;
                }
            }
            Ok(())
        })?;
        if let Some((sender, _)) = &outgoing {
            for server in &servers {
                sender.wake(server);
            }
        }
        self.presence.published(user_id, position);
        self.stream
            .touch(audience.iter().map(|u| u.as_ref()), position);
        Ok(())
    }

    /// Account data changed from `since` on (all of it without `since`), for `/sync` and
    /// sliding sync. `m.push_rules` is the whole rule set, server defaults included, and an
    /// initial sync always carries it, also when the user never changed a rule (so nothing
    /// is stored): Element and matrix-js-sdk evaluate notifications from it (client-server
    /// API, "Push Rules: Events").
    pub fn account_data_since(
        &self,
        user_id: &ruma::UserId,
        since: Option<u64>,
    ) -> Result<Vec<account_data::Item>> {
        let mut items = self.account_data.changed_since(user_id, since)?;
        // Built from the stored item read here, not from `Push`'s cache: a sync woken by a
        // change could otherwise send the rules from before it at the new position.
        match items
            .iter_mut()
            .find(|item| item.room_id.is_none() && item.kind == push::PUSH_RULES)
        {
            Some(item) => {
                let rules = push::rules_from_stored(user_id, Some(&item.content));
                item.content = push::rules_content(&rules);
            }
            None if since.is_none() => items.push(account_data::Item {
                room_id: None,
                kind: push::PUSH_RULES.to_owned(),
                content: push::rules_content(&ruma::push::Ruleset::server_default(user_id)),
                position: 0,
            }),
            None => {}
        }
        Ok(items)
    }

    /// Global account data of `kind`, as `GET /user/{userId}/account_data/{type}` reads
    /// it: `m.push_rules` is the whole rule set even before the user changed any rule.
    pub fn global_account_data(
        &self,
        user_id: &ruma::UserId,
        kind: &str,
    ) -> Result<Option<serde_json::Value>> {
        if kind == push::PUSH_RULES {
            let rules = self.push.ruleset(&self.account_data, user_id)?;
            return Ok(Some(push::rules_content(&rules)));
        }
        self.account_data.get(user_id, None, kind)
    }

    /// Users sharing a joined room with `user_id`, and the user.
    pub fn room_peers(
        &self,
        user_id: &ruma::UserId,
    ) -> Result<std::collections::BTreeSet<ruma::OwnedUserId>> {
        use ruma::events::room::member::MembershipState;
        let mut peers = std::collections::BTreeSet::new();
        peers.insert(user_id.to_owned());
        for (room_id, entry) in self.rooms.rooms_of(user_id)? {
            if entry.membership == MembershipState::Join {
                for (member, membership) in self.rooms.members(&room_id)? {
                    if membership == MembershipState::Join {
                        peers.insert(member);
                    }
                }
            }
        }
        Ok(peers)
    }

    /// What deactivating `user_id` removes besides the account's password and profile:
    /// every device with its keys and tokens, the cross-signing keys and signatures, the
    /// key backups and the dehydrated device record. Uploaded media stays (it may be in
    /// rooms others are in); `conduit media purge-user` removes it.
    pub fn deactivation_batch(&self, user_id: &ruma::UserId) -> Result<crate::storage::Batch> {
        let mut batch = self.devices.removal(user_id, None)?;
        self.cross_signing.removal_into(&mut batch, user_id)?;
        self.backup.removal_into(&mut batch, user_id)?;
        self.dehydrated.removal_into(&mut batch, user_id);
        Ok(batch)
    }

    /// A device was added or removed: everyone sharing a room hears of it in
    /// `device_lists.changed` (their clients then fetch the new keys).
    ///
    /// For a user of this server, the other servers sharing a room with them get an
    /// `m.device_list_update` EDU (server-server API, "Device Management") in the same
    /// commit. The spec says an update should name the previous one in `prev_id` so the
    /// receiver can apply it as a delta; this one names none, so the receiver refetches the
    /// whole list (`/user/devices`, with the cross-signing keys), which the spec's
    /// resynchronisation allows and Synapse does for an update without `prev_id`: simple
    /// and always right, at one request per change per server.
    pub async fn device_list_changed(&self, user_id: &ruma::UserId) -> Result<()> {
        self.keys_changed(user_id, false).await
    }

    /// The user uploaded cross-signing keys: as [`Services::device_list_changed`], and for
    /// one of our users the other servers sharing a room also get an
    /// `m.signing_key_update` EDU with the master and self-signing keys (server-server
    /// API, "End-to-End Encryption"), queued in the same commit.
    pub async fn signing_keys_changed(&self, user_id: &ruma::UserId) -> Result<()> {
        self.keys_changed(user_id, true).await
    }

    async fn keys_changed(&self, user_id: &ruma::UserId, signing_keys: bool) -> Result<()> {
        let peers = self.room_peers(user_id)?;
        let mut servers: std::collections::BTreeSet<&ruma::ServerName> =
            peers.iter().map(|peer| peer.server_name()).collect();
        servers.remove(&*self.config.server_name);
        let outgoing = match self.federation.sender() {
            Some(sender) if self.users.is_local(user_id) && !servers.is_empty() => {
                // The EDU names a device; with no `prev_id` it only triggers a refetch, so
                // any of the user's devices will do (or a placeholder when none is left).
                let device = self
                    .devices
                    .list(user_id)?
                    .into_iter()
                    .next()
                    .map_or_else(|| "DELETED".to_owned(), |(id, _)| id.to_string());
                let signing = if signing_keys {
                    let mut content = serde_json::json!({ "user_id": user_id });
                    for (field, usage) in [
                        ("master_key", cross_signing::MASTER),
                        ("self_signing_key", cross_signing::SELF_SIGNING),
                    ] {
                        if let Some(key) = self.cross_signing.key(user_id, usage)? {
                            content[field] = key;
                        }
                    }
                    Some(federation::sender::Item::Edu(serde_json::json!({
                        "edu_type": "m.signing_key_update",
                        "content": content,
                    })))
                } else {
                    None
                };
                Some((sender, device, signing))
            }
            _ => None,
        };
        let (position, ()) = self.stream.commit(|position, batch| {
            self.devices.mark_list_changed(batch, user_id, position);
            if let Some((sender, device, signing)) = &outgoing {
                let item = federation::sender::Item::Edu(serde_json::json!({
                    "edu_type": "m.device_list_update",
                    "content": {
                        "user_id": user_id,
                        "device_id": device,
                        "stream_id": position,
                        "prev_id": [],
                        "deleted": false,
                    },
                }));
                for server in &servers {
                    sender.enqueue(batch, server, &item)?;
                    if let Some(signing) = signing {
                        sender.enqueue(batch, server, signing)?;
                    }
                }
            }
            Ok(())
        })?;
        if let Some((sender, ..)) = &outgoing {
            for server in &servers {
                sender.wake(server);
            }
        }
        self.stream
            .touch(peers.iter().map(|u| u.as_ref()), position);
        self.db.persist().await?;
        Ok(())
    }

    /// Another server told us that its user's device list or cross-signing keys changed
    /// (`m.device_list_update`, `m.signing_key_update`): our users sharing a room with them
    /// see them in `device_lists.changed` and fetch the keys again (keys of other servers'
    /// users are always asked for, never cached, so nothing else goes stale).
    pub async fn remote_device_list_changed(&self, user_id: &ruma::UserId) -> Result<()> {
        let (position, ()) = self.stream.commit(|position, batch| {
            self.devices.mark_list_changed(batch, user_id, position);
            Ok(())
        })?;
        let peers = self.room_peers(user_id)?;
        self.stream
            .touch(peers.iter().map(|u| u.as_ref()), position);
        Ok(())
    }
}
