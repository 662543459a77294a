//! Presence across servers (server-server API, "Presence"; client-server API, "Presence"):
//! `m.presence` EDUs both ways.
//!
//! **Out.** A published change of one of our users' presence (`Services::set_presence`)
//! goes to every other server with a user joined in a room the user is joined in. The spec
//! says servers should rate-limit presence; we send at most one push per user per
//! [`PUSH_INTERVAL`]: the first change goes at once (in the batch that publishes it), later
//! ones within the interval wait in [`Coalescer`] (a newer one replaces a waiting one) and
//! go together when it ends, at most [`MAX_PER_EDU`] users per EDU.
//!
//! **In.** An update is applied only for a user of the sending server who shares a joined
//! room with one of our users (anything else is not ours to hear); then it is stored in
//! [`crate::service::presence::Presence`] (bounded) and reaches our users' `/sync` like a
//! local change. Nothing is sent or applied with `allow_presence = false`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{
    OwnedServerName, OwnedUserId, ServerName, UserId,
    api::federation::transactions::edu::PresenceContent, events::room::member::MembershipState,
};
use serde_json::{Value as JsonValue, json};

use super::sender::{Item, Sender};
use crate::{Result, service::Services};

/// One push per user per this long at most. Ten seconds: a presence change is still seen
/// by the other side within seconds, while a client flipping between states (two devices
/// syncing with different `set_presence`, an idle timer) costs each destination at most six
/// EDUs per user and minute, whatever the client does.
pub const PUSH_INTERVAL: Duration = Duration::from_secs(10);
/// Users per `m.presence` EDU at most, so a flush after a busy interval is split into
/// EDUs of a bounded size (a transaction holds at most 100 EDUs; the queue splits there).
pub const MAX_PER_EDU: usize = 100;
/// Updates applied from one incoming EDU at most (the rest are dropped): each costs a look
/// at the user's rooms.
pub const MAX_INCOMING_PER_EDU: usize = 1_000;

/// A waiting update and where it goes.
struct Pending {
    update: JsonValue,
    servers: BTreeSet<OwnedServerName>,
    due: Instant,
}

/// What [`Coalescer::offer`] decided.
#[derive(Debug, PartialEq)]
pub enum Offer {
    /// Send this update now.
    Now,
    /// It waits; start the flush task if `start_flusher` (none runs yet).
    Later { start_flusher: bool },
}

/// The per-user rate of outgoing presence. Its memory is bounded by the number of local
/// users (only they are offered), and entries older than [`PUSH_INTERVAL`] are forgotten.
#[derive(Default)]
pub struct Coalescer {
    last_sent: HashMap<OwnedUserId, Instant>,
    /// `last_sent` in the order it was written, to forget old entries without a scan.
    sent_order: VecDeque<(Instant, OwnedUserId)>,
    pending: BTreeMap<OwnedUserId, Pending>,
    flusher: bool,
}

impl Coalescer {
    fn mark_sent(&mut self, user: &UserId, now: Instant) {
        self.last_sent.insert(user.to_owned(), now);
        self.sent_order.push_back((now, user.to_owned()));
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.sent_order.front() {
            if now.saturating_duration_since(*at) < PUSH_INTERVAL {
                break;
            }
            let (at, user) = self.sent_order.pop_front().expect("front exists");
            if self.last_sent.get(&user) == Some(&at) {
                self.last_sent.remove(&user);
            }
        }
    }

    /// A change of `user`'s presence to tell `servers`: now, or when the user's interval
    /// ends (replacing an update already waiting).
    pub fn offer(
        &mut self,
        user: &UserId,
        update: JsonValue,
        servers: BTreeSet<OwnedServerName>,
        now: Instant,
    ) -> Offer {
        self.forget_old(now);
        match self.last_sent.get(user) {
            Some(last) if now.saturating_duration_since(*last) < PUSH_INTERVAL => {
                let due = *last + PUSH_INTERVAL;
                self.pending.insert(
                    user.to_owned(),
                    Pending {
                        update,
                        servers,
                        due,
                    },
                );
                let start_flusher = !self.flusher;
                self.flusher = true;
                Offer::Later { start_flusher }
            }
            _ => {
                self.pending.remove(user);
                self.mark_sent(user, now);
                Offer::Now
            }
        }
    }

    /// When the next waiting update is due; `None` (and the flush task ends) when none
    /// waits.
    pub fn next_due(&mut self) -> Option<Instant> {
        let due = self.pending.values().map(|pending| pending.due).min();
        if due.is_none() {
            self.flusher = false;
        }
        due
    }

    /// The waiting updates due at `now`, grouped into EDUs per destination; each is
    /// marked sent.
    pub fn take_due(&mut self, now: Instant) -> Vec<(OwnedServerName, Vec<Item>)> {
        let due: Vec<OwnedUserId> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.due <= now)
            .map(|(user, _)| user.clone())
            .collect();
        let mut per_server: BTreeMap<OwnedServerName, Vec<JsonValue>> = BTreeMap::new();
        for user in due {
            let pending = self.pending.remove(&user).expect("listed above");
            self.mark_sent(&user, now);
            for server in pending.servers {
                per_server
                    .entry(server)
                    .or_default()
                    .push(pending.update.clone());
            }
        }
        per_server
            .into_iter()
            .map(|(server, updates)| {
                let items = updates
                    .chunks(MAX_PER_EDU)
                    .map(|push| Item::Edu(presence_edu(push)))
                    .collect();
                (server, items)
            })
            .collect()
    }
}

fn presence_edu(push: &[JsonValue]) -> JsonValue {
    json!({ "edu_type": "m.presence", "content": { "push": push } })
}

/// The outgoing side: the [`Coalescer`] and its flush task.
#[derive(Default)]
pub struct Outbox {
    coalescer: Arc<Mutex<Coalescer>>,
}

impl Outbox {
    /// Offers `user`'s presence `update` for `servers`: returns the EDU to queue now, if it
    /// goes now; otherwise it waits and a flush task (started here if none runs) sends it.
    pub fn offer(
        &self,
        sender: &Arc<Sender>,
        user: &UserId,
        update: JsonValue,
        servers: BTreeSet<OwnedServerName>,
    ) -> Option<Item> {
        let edu = presence_edu(std::slice::from_ref(&update));
        let offer = self.coalescer.lock().expect("presence outbox").offer(
            user,
            update,
            servers,
            Instant::now(),
        );
        match offer {
            Offer::Now => Some(Item::Edu(edu)),
            Offer::Later { start_flusher } => {
                if start_flusher {
                    self.start_flusher(Arc::clone(sender));
                }
                None
            }
        }
    }

    fn start_flusher(&self, sender: Arc<Sender>) {
        let coalescer = Arc::clone(&self.coalescer);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a synchronous caller in a unit test): nothing can wait.
            coalescer.lock().expect("presence outbox").flusher = false;
            return;
        };
        runtime.spawn(async move {
            loop {
                let next = coalescer.lock().expect("presence outbox").next_due();
                let Some(next) = next else { return };
                tokio::time::sleep_until(next.into()).await;
                let due = coalescer
                    .lock()
                    .expect("presence outbox")
                    .take_due(Instant::now());
                if !due.is_empty()
                    && let Err(error) = sender.queue_many(due).await
                {
                    tracing::warn!(%error, "could not queue presence updates");
                }
            }
        });
    }
}

impl Services {
    /// The `m.presence` update for one of our users, as it stands.
    pub(crate) fn presence_update(&self, user_id: &UserId) -> JsonValue {
        let entry = self.presence.get(user_id);
        let mut update = json!({
            "user_id": user_id,
            "presence": entry.state,
            "last_active_ago": entry.last_active.elapsed().as_millis() as u64,
            "currently_active": entry.currently_active(),
        });
        if let Some(status) = entry.status_msg {
            update["status_msg"] = status.into();
        }
        update
    }

    /// Whether `user_id` (another server's) is joined in a room where one of our users is
    /// joined too.
    fn shares_room_with_ours(&self, user_id: &UserId) -> Result<bool> {
        for (room_id, entry) in self.rooms.rooms_of(user_id)? {
            if entry.membership != MembershipState::Join {
                continue;
            }
            for (member, membership) in self.rooms.members(&room_id)? {
                if membership == MembershipState::Join && self.users.is_local(&member) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// An `m.presence` EDU from `origin`.
    pub(crate) fn receive_presence(
        &self,
        origin: &ServerName,
        content: &PresenceContent,
    ) -> Result<()> {
        if !self.config.allow_presence {
            return Ok(());
        }
        if content.push.len() > MAX_INCOMING_PER_EDU {
            tracing::debug!(%origin, updates = content.push.len(), "presence updates beyond the limit dropped");
        }
        for update in content.push.iter().take(MAX_INCOMING_PER_EDU) {
            let user_id = &update.user_id;
            // A server speaks only for its own users, and we hear only of those who share
            // a room with ours.
            if user_id.server_name() != origin
                || self.users.is_local(user_id)
                || !self.shares_room_with_ours(user_id)?
            {
                tracing::debug!(%origin, %user_id, "presence update dropped");
                continue;
            }
            let ago = Duration::from_millis(u64::from(update.last_active_ago))
                .min(Duration::from_secs(365 * 24 * 3600));
            let last_active = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            if !self.presence.set_remote(
                user_id,
                update.presence.clone(),
                update.status_msg.clone(),
                last_active,
                update.currently_active,
            ) {
                continue;
            }
            let (position, ()) = self.stream.commit(|_, _| Ok(()))?;
            self.presence.published(user_id, position);
            // Only our users sync; touching others would only grow the notifier's map.
            let peers = self.room_peers(user_id)?;
            self.stream.touch(
                peers
                    .iter()
                    .filter(|peer| self.users.is_local(peer))
                    .map(|u| u.as_ref()),
                position,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{server_name, user_id};

    use super::*;

    fn servers(names: &[&str]) -> BTreeSet<OwnedServerName> {
        names
            .iter()
            .map(|name| OwnedServerName::try_from(*name).unwrap())
            .collect()
    }

    fn update(n: u64) -> JsonValue {
        json!({ "user_id": "@alice:here", "presence": "online", "n": n })
    }

    fn pushed(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .flat_map(|item| match item {
                Item::Edu(edu) => edu["content"]["push"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u["n"].as_u64().unwrap())
                    .collect::<Vec<_>>(),
                Item::Pdu(_) => panic!("a PDU"),
            })
            .collect()
    }

    #[test]
    fn one_push_per_user_per_interval_and_the_last_change_wins() {
        let mut coalescer = Coalescer::default();
        let alice = user_id!("@alice:here");
        let start = Instant::now();
        let to = servers(&["one.example", "two.example"]);
        // The first change goes at once.
        assert_eq!(
            coalescer.offer(alice, update(1), to.clone(), start),
            Offer::Now
        );
        // Two more within the interval wait; the newer replaces the older; one flush task.
        let second = start + Duration::from_secs(2);
        assert_eq!(
            coalescer.offer(alice, update(2), to.clone(), second),
            Offer::Later {
                start_flusher: true
            }
        );
        assert_eq!(
            coalescer.offer(alice, update(3), to.clone(), second),
            Offer::Later {
                start_flusher: false
            }
        );
        assert_eq!(coalescer.next_due(), Some(start + PUSH_INTERVAL));
        assert!(
            coalescer
                .take_due(start + Duration::from_secs(9))
                .is_empty()
        );
        let due = coalescer.take_due(start + PUSH_INTERVAL);
        assert_eq!(due.len(), 2, "one entry per destination");
        for (_, items) in &due {
            assert_eq!(pushed(items), [3]);
        }
        // Nothing waits: the task ends.
        assert_eq!(coalescer.next_due(), None);
        assert!(!coalescer.flusher);
        // The flush counted as a push: the next change within its interval waits too.
        let after = start + PUSH_INTERVAL + Duration::from_secs(1);
        assert_eq!(
            coalescer.offer(alice, update(4), to.clone(), after),
            Offer::Later {
                start_flusher: true
            }
        );
        // Long after, a change goes at once again, and old entries are forgotten.
        coalescer.take_due(start + PUSH_INTERVAL * 2);
        let later = start + PUSH_INTERVAL * 5;
        assert_eq!(coalescer.offer(alice, update(5), to, later), Offer::Now);
        assert_eq!(coalescer.sent_order.len(), 1);
        assert_eq!(coalescer.last_sent.len(), 1);
    }

    #[test]
    fn other_users_are_not_held_up_and_batches_are_bounded() {
        let mut coalescer = Coalescer::default();
        let start = Instant::now();
        let to = servers(&["one.example"]);
        let users: Vec<OwnedUserId> = (0..250)
            .map(|n| OwnedUserId::try_from(format!("@u{n}:here")).unwrap())
            .collect();
        for (n, user) in users.iter().enumerate() {
            assert_eq!(
                coalescer.offer(user, update(n as u64), to.clone(), start),
                Offer::Now
            );
        }
        for (n, user) in users.iter().enumerate() {
            coalescer.offer(user, update(1000 + n as u64), to.clone(), start);
        }
        let due = coalescer.take_due(start + PUSH_INTERVAL);
        assert_eq!(due.len(), 1);
        let (server, items) = &due[0];
        assert_eq!(server, server_name!("one.example"));
        // 250 users in EDUs of at most 100.
        assert_eq!(items.len(), 3);
        assert_eq!(pushed(items).len(), 250);
    }

    fn services() -> Arc<Services> {
        Services::build(
            crate::config::tests_support::config(),
            crate::storage::Db::memory(),
        )
        .unwrap()
    }

    fn incoming(user: &str, presence: &str) -> PresenceContent {
        serde_json::from_value(json!({ "push": [{
            "user_id": user, "presence": presence, "last_active_ago": 5000,
            "currently_active": true, "status_msg": "out",
        }] }))
        .unwrap()
    }

    #[tokio::test]
    async fn incoming_presence_only_for_the_origins_users_who_share_a_room() {
        let services = services();
        let origin = server_name!("other.example");
        // Nobody here shares a room with them: dropped.
        services
            .receive_presence(origin, &incoming("@bob:other.example", "online"))
            .unwrap();
        assert!(services.presence.changed_since(None).is_empty());
        // Another server's user, or one of ours: dropped.
        services
            .receive_presence(origin, &incoming("@carol:third.example", "online"))
            .unwrap();
        let local = format!("@alice:{}", services.config.server_name);
        services
            .receive_presence(origin, &incoming(&local, "online"))
            .unwrap();
        assert!(services.presence.changed_since(None).is_empty());
    }
}
