//! Notification counts (client-server API, "Push notifications"): each new event is checked
//! against the push rules of every other joined member (ruma's evaluator, the spec's default
//! rule set unless the user changed it); `notify` actions count, `highlight` tweaks count as
//! highlights. A member's counts reset when they send a read receipt in the room or post there.
//! Delivery to push gateways is in `pusher.rs`.
//!
//! The rules themselves are the `m.push_rules` global account data (`{"global": ruleset}`),
//! kept by [`Push::change_rules`]: it is stored only once the user changes a rule, and is
//! read merged with this version's server-default rules ([`load_rules`]), so rules the
//! server adds later appear and rules it drops disappear, keeping the user's `enabled` and
//! `actions` of the rest.
//!
//! Tree `userroomid_notificationcounts`: `user 0xFF room` → [`Counts`] (24 bytes: three
//! big-endian u64s; values written before issue 13 are JSON and still read), written at a
//! stream position so `/sync` sends changed counts. `GET /notifications` is worked out when
//! asked, from the timelines ([`notifications`]): nothing more is written per send.

pub mod notifications;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use futures_util::FutureExt;
use ruma::{
    Int, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    events::{AnySyncTimelineEvent, StateEventType, room::member::MembershipState},
    power_levels::NotificationPowerLevels,
    push::{
        Action, InsertPushRuleError, NewPushRule, PushConditionPowerLevelsCtx,
        PushConditionRoomCtx, Ruleset,
    },
    room_version_rules::RoomPowerLevelsRules,
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    account_data::AccountData,
    rooms::{Rooms, pair_key, pdu::Pdu, state::StateSet},
    stream::Stream,
};
use crate::{
    Result,
    storage::{Db, Tree},
};

/// The global account-data type holding the user's push rules.
pub const PUSH_RULES: &str = "m.push_rules";

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
    pub position: u64,
}

impl Counts {
    /// Written for every member on every message, so kept small: 24 bytes, where the
    /// JSON it replaced took about 50.
    fn encode(&self) -> [u8; 24] {
        let mut bytes = [0; 24];
        bytes[..8].copy_from_slice(&self.notifications.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.highlights.to_be_bytes());
        bytes[16..].copy_from_slice(&self.position.to_be_bytes());
        bytes
    }

    /// The stored form: 24 bytes, or JSON as written before.
    fn decode(bytes: &[u8]) -> Result<Self> {
        if let Ok(fixed) = <[u8; 24]>::try_from(bytes) {
            let number =
                |at: usize| u64::from_be_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
            return Ok(Self {
                notifications: number(0),
                highlights: number(8),
                position: number(16),
            });
        }
        serde_json::from_slice(bytes)
            .map_err(|e| crate::Error::internal(format!("bad notification counts: {e}")))
    }
}

pub struct Push {
    db: Db,
    stream: Arc<Stream>,
    counts: Arc<dyn Tree>,
    /// Parsed rule sets of users who have had events evaluated (at most one per local
    /// user); replaced when they change.
    rulesets: Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>,
    /// Serialises rule changes (read, change, store), so two at once lose neither.
    change_lock: tokio::sync::Mutex<()>,
}

/// The user's rule set as stored, merged with the server-default rules of this version.
/// Without stored rules, the server defaults.
pub fn load_rules(account_data: &AccountData, user_id: &UserId) -> Result<Ruleset> {
    let stored = account_data.get(user_id, None, PUSH_RULES)?;
    Ok(rules_from_stored(user_id, stored.as_ref()))
}

/// The rule set of stored `m.push_rules` content (`None`: nothing stored), merged with the
/// server-default rules of this version.
pub fn rules_from_stored(user_id: &UserId, stored: Option<&JsonValue>) -> Ruleset {
    let defaults = Ruleset::server_default(user_id);
    let Some(stored) = stored else {
        return defaults;
    };
    match serde_json::from_value::<Ruleset>(stored["global"].clone()) {
        Ok(mut rules) => {
            rules.update_with_server_default(defaults);
            rules
        }
        Err(error) => {
            tracing::warn!(%user_id, %error, "stored push rules are invalid; using the defaults");
            defaults
        }
    }
}

/// Adds a user-defined rule, or replaces one of the same kind and id (which keeps whether
/// it is enabled, and its place unless `after` or `before` names a new one).
///
/// ruma's `Ruleset::insert` moves an existing rule one place too far when it goes down
/// the list (and panics when it should become the last), so a rule being moved is taken
/// out first and put back as new.
pub fn insert_rule(
    rules: &mut Ruleset,
    rule: NewPushRule,
    after: Option<&str>,
    before: Option<&str>,
) -> std::result::Result<(), InsertPushRuleError> {
    let kind = rule.kind();
    let rule_id = rule.rule_id().to_owned();
    let moved = (after.is_some() || before.is_some())
        && !rule_id.starts_with('.')
        && rules.get(kind.clone(), &rule_id).is_some();
    if !moved {
        return rules.insert(rule, after, before);
    }
    let enabled = rules
        .get(kind.clone(), &rule_id)
        .is_some_and(|existing| existing.enabled());
    // A user-defined rule that exists: removing it cannot fail.
    let _ = rules.remove(kind.clone(), &rule_id);
    rules.insert(rule, after, before)?;
    let _ = rules.set_enabled(kind, &rule_id, enabled);
    Ok(())
}

/// The content of the `m.push_rules` account data for a rule set.
pub fn rules_content(rules: &Ruleset) -> JsonValue {
    serde_json::json!({ "global": rules })
}

/// What the push rules' conditions read from a room: its current state, joined members
/// and power levels. Made once per event (or per room of a `/notifications` page) and
/// used for every member.
pub struct RoomContext {
    pub room_id: OwnedRoomId,
    pub state: StateSet,
    pub joined: Vec<OwnedUserId>,
    member_count: UInt,
    power_levels: Option<PushConditionPowerLevelsCtx>,
}

impl RoomContext {
    /// The room as it is now.
    pub fn current(rooms: &Rooms, room_id: &RoomId) -> Result<Self> {
        let info = rooms.existing(room_id)?;
        let state = rooms.current_state(&info)?;
        let joined: Vec<OwnedUserId> = rooms
            .members(room_id)?
            .into_iter()
            .filter(|(_, m)| *m == MembershipState::Join)
            .map(|(user, _)| user)
            .collect();
        let member_count = UInt::new(joined.len() as u64).unwrap_or_default();
        let power_levels = match rooms.state_event(&state, &StateEventType::RoomPowerLevels, "")? {
            Some(levels) => {
                let content = levels.content_value();
                let users: BTreeMap<OwnedUserId, Int> = content["users"]
                    .as_object()
                    .map(|users| {
                        users
                            .iter()
                            .filter_map(|(user, level)| {
                                Some((OwnedUserId::try_from(user.as_str()).ok()?, int(level)?))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let notifications: NotificationPowerLevels =
                    serde_json::from_value(content["notifications"].clone()).unwrap_or_default();
                let creators = rooms
                    .state_event(&state, &StateEventType::RoomCreate, "")?
                    .map(|create| {
                        let mut creators = vec![create.sender.clone()];
                        if let Some(extra) =
                            create.content_value()["additional_creators"].as_array()
                        {
                            creators.extend(
                                extra
                                    .iter()
                                    .filter_map(|u| u.as_str())
                                    .filter_map(|u| OwnedUserId::try_from(u).ok()),
                            );
                        }
                        creators
                    })
                    .unwrap_or_default();
                let rules = info
                    .version
                    .rules()
                    .map(|rules| RoomPowerLevelsRules::new(&rules.authorization, creators));
                rules.map(|rules| {
                    PushConditionPowerLevelsCtx::new(
                        users,
                        int(&content["users_default"]).unwrap_or_default(),
                        notifications,
                        rules,
                    )
                })
            }
            None => None,
        };
        Ok(Self {
            room_id: room_id.to_owned(),
            state,
            joined,
            member_count,
            power_levels,
        })
    }
}

/// The tweaks among `actions` as an object (`{"sound": "default", "highlight": true}`),
/// as push gateways receive them.
fn tweaks(actions: &[Action]) -> JsonValue {
    let mut tweaks = serde_json::Map::new();
    for action in actions {
        if let Action::SetTweak(tweak) = action
            && let Ok(JsonValue::Object(pair)) = serde_json::to_value(tweak)
            && let Some(name) = pair.get("set_tweak").and_then(JsonValue::as_str)
        {
            let value = pair.get("value").cloned().unwrap_or(JsonValue::Bool(true));
            tweaks.insert(name.to_owned(), value);
        }
    }
    JsonValue::Object(tweaks)
}

/// Empties `useridseq_notification`, where earlier builds of this release recorded each
/// notification on send (see [`notifications`] for why they no longer do). One batch, once:
/// on later starts the tree is empty and this is one lookup.
fn forget_notification_records(db: &Db) -> Result<()> {
    let records = db.tree("useridseq_notification")?;
    if records.iter_from(b"", false).next().is_none() {
        return Ok(());
    }
    let mut batch = crate::storage::Batch::new();
    for entry in records.iter_from(b"", false) {
        let (key, _) = entry?;
        batch.remove(&*records, key);
    }
    db.apply(&batch)?;
    db.flush_blocking()?;
    Ok(())
}

fn int(value: &JsonValue) -> Option<Int> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
        .and_then(|v| Int::try_from(v).ok())
}

impl Push {
    pub fn new(db: &Db, stream: Arc<Stream>) -> Result<Self> {
        forget_notification_records(db)?;
        Ok(Self {
            db: db.clone(),
            stream,
            counts: db.tree("userroomid_notificationcounts")?,
            rulesets: Mutex::default(),
            change_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The user's rule set (the spec's defaults until they change it).
    pub fn ruleset(&self, account_data: &AccountData, user_id: &UserId) -> Result<Arc<Ruleset>> {
        // Loaded under the cache lock, so a load that raced a change cannot put the old
        // rules back after `change_rules` stored the new ones.
        let mut cache = self.rulesets.lock().expect("ruleset cache");
        if let Some(rules) = cache.get(user_id) {
            return Ok(Arc::clone(rules));
        }
        let rules = Arc::new(load_rules(account_data, user_id)?);
        cache.insert(user_id.to_owned(), Arc::clone(&rules));
        Ok(rules)
    }

    /// Applies `change` to the user's rule set and stores the result as `m.push_rules`
    /// account data, at a new stream position (so `/sync` sends it and long-polls wake).
    /// Nothing is stored when `change` fails.
    pub async fn change_rules<T>(
        &self,
        account_data: &AccountData,
        user_id: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<T>,
    ) -> Result<T> {
        let _guard = self.change_lock.lock().await;
        let mut rules = load_rules(account_data, user_id)?;
        let outcome = change(&mut rules)?;
        let stored = account_data
            .set(user_id, None, PUSH_RULES, rules_content(&rules))
            .await;
        // Even a failed store may have been applied; the next read loads what is there.
        self.rulesets.lock().expect("ruleset cache").remove(user_id);
        stored.map(|()| outcome)
    }

    pub fn counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<Counts> {
        self.stored_counts(&pair_key(user_id.as_str(), room_id.as_str()))
    }

    fn stored_counts(&self, key: &[u8]) -> Result<Counts> {
        self.counts
            .get(key)?
            .map(|bytes| Counts::decode(&bytes))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Counts a new event for the room's other joined members and resets the sender's counts.
    /// Returns the members to notify, with the tweaks their rules set (sound, highlight).
    pub async fn event_sent(
        &self,
        rooms: &Rooms,
        account_data: &AccountData,
        pdu: &Pdu,
    ) -> Result<Vec<(OwnedUserId, JsonValue)>> {
        let room_id = pdu.room_id();
        let raw = pdu.to_sync_event(None);

        // Every local member's push rules: in a large room this takes a while (about 30 µs a
        // member), so it runs off the async worker.
        let (changes, notified) = crate::service::off_worker(|| -> Result<_> {
            let room = RoomContext::current(rooms, &room_id)?;
            let mut changes = Vec::new();
            let mut notified = Vec::new();
            // Only our users have push rules and counts here; other servers' members are
            // counted in `member_count` but notified by their own servers.
            for member in room
                .joined
                .iter()
                .filter(|member| member.server_name() == rooms.server_name())
            {
                if *member == pdu.sender {
                    changes.push((member.clone(), None));
                    continue;
                }
                let actions = self.actions(rooms, account_data, &room, member, &raw)?;
                if actions.iter().any(Action::should_notify) {
                    let highlight = actions.iter().any(Action::is_highlight);
                    changes.push((member.clone(), Some(highlight)));
                    notified.push((member.clone(), tweaks(&actions)));
                }
            }
            Ok((changes, notified))
        })?;
        // Made durable by the caller, together with the event (one flush per send).
        self.apply_unpersisted(&room_id, changes).await?;
        Ok(notified)
    }

    /// The actions `user_id`'s push rules give `event` in the room (the spec's "Push
    /// Rules"), with the room as `room` describes it.
    pub fn actions(
        &self,
        rooms: &Rooms,
        account_data: &AccountData,
        room: &RoomContext,
        user_id: &UserId,
        event: &Raw<AnySyncTimelineEvent>,
    ) -> Result<Vec<Action>> {
        let name = rooms
            .state_event(&room.state, &StateEventType::RoomMember, user_id.as_str())?
            .and_then(|event| event.content_str("displayname"))
            .unwrap_or_else(|| user_id.localpart().to_owned());
        let mut context = PushConditionRoomCtx::new(
            room.room_id.clone(),
            room.member_count,
            user_id.to_owned(),
            name,
        );
        if let Some(power_levels) = &room.power_levels {
            context = context.with_power_levels(power_levels.clone());
        }
        let rules = self.ruleset(account_data, user_id)?;
        // The evaluator is async only for lookups we do not use; it completes at once.
        Ok(rules
            .get_actions(event, &context)
            .now_or_never()
            .unwrap_or(&[])
            .to_vec())
    }

    /// A member read the room (receipt): their counts go back to zero.
    pub async fn read(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        self.apply(room_id, vec![(user_id.to_owned(), None)]).await
    }

    /// [`Push::apply_unpersisted`], made durable.
    async fn apply(
        &self,
        room_id: &RoomId,
        changes: Vec<(OwnedUserId, Option<bool>)>,
    ) -> Result<()> {
        self.apply_unpersisted(room_id, changes).await?;
        self.db.persist().await?;
        Ok(())
    }

    /// `Some(highlight)` adds one notification; `None` resets to zero. Not yet durable.
    async fn apply_unpersisted(
        &self,
        room_id: &RoomId,
        changes: Vec<(OwnedUserId, Option<bool>)>,
    ) -> Result<()> {
        let changes: Vec<_> = changes
            .into_iter()
            .filter(|(user, change)| {
                change.is_some()
                    || self
                        .counts(user, room_id)
                        .is_ok_and(|c| c.notifications > 0 || c.highlights > 0)
            })
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        let (position, ()) = self.stream.commit(|position, batch| {
            for (user, change) in &changes {
                let key = pair_key(user.as_str(), room_id.as_str());
                let mut counts = self.stored_counts(&key)?;
                match change {
                    Some(highlight) => {
                        counts.notifications += 1;
                        counts.highlights += u64::from(*highlight);
                    }
                    None => {
                        counts.notifications = 0;
                        counts.highlights = 0;
                    }
                }
                counts.position = position;
                batch.insert(&*self.counts, key, counts.encode().to_vec());
            }
            Ok(())
        })?;
        self.stream
            .touch(changes.iter().map(|(user, _)| user.as_ref()), position);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ruma::{
        push::{Action, NewPatternedPushRule, RuleKind},
        user_id,
    };

    use super::*;

    #[test]
    fn counts_are_stored_in_24_bytes_and_old_json_still_reads() {
        let counts = Counts {
            notifications: 3,
            highlights: 1,
            position: u64::MAX - 7,
        };
        assert_eq!(Counts::decode(&counts.encode()).unwrap(), counts);
        let old = br#"{"notifications":3,"highlights":1,"position":18446744073709551608}"#;
        assert_eq!(Counts::decode(old).unwrap(), counts);
        assert!(Counts::decode(b"{not json").is_err());
        assert!(Counts::decode(&[0; 23]).is_err());
    }

    fn content_rule(id: &str) -> NewPushRule {
        NewPushRule::Content(NewPatternedPushRule::new(
            id.to_owned(),
            id.to_owned(),
            vec![Action::Notify],
        ))
    }

    fn content_ids(rules: &Ruleset) -> Vec<&str> {
        rules
            .content
            .iter()
            .map(|rule| rule.rule_id.as_str())
            .collect()
    }

    #[test]
    fn rules_move_to_the_place_asked_for_and_stay_disabled() {
        let mut rules = Ruleset::server_default(user_id!("@a:example.org"));
        for id in ["c", "b", "a"] {
            insert_rule(&mut rules, content_rule(id), None, None).unwrap();
        }
        assert_eq!(content_ids(&rules), ["a", "b", "c"]);
        rules.set_enabled(RuleKind::Content, "a", false).unwrap();
        insert_rule(&mut rules, content_rule("a"), Some("b"), None).unwrap();
        assert_eq!(content_ids(&rules), ["b", "a", "c"]);
        insert_rule(&mut rules, content_rule("b"), Some("c"), None).unwrap();
        assert_eq!(content_ids(&rules), ["a", "c", "b"], "to the end");
        insert_rule(&mut rules, content_rule("a"), None, Some("b")).unwrap();
        assert_eq!(content_ids(&rules), ["c", "a", "b"]);
        insert_rule(&mut rules, content_rule("b"), None, Some("c")).unwrap();
        assert_eq!(content_ids(&rules), ["b", "c", "a"]);
        assert!(
            !rules.get(RuleKind::Content, "a").unwrap().enabled(),
            "moving keeps a rule disabled"
        );
        // Replacing without a place keeps the place; an unknown neighbour changes nothing.
        insert_rule(&mut rules, content_rule("c"), None, None).unwrap();
        assert_eq!(content_ids(&rules), ["b", "c", "a"]);
        let mut failed = rules.clone();
        assert!(insert_rule(&mut failed, content_rule("c"), Some("zz"), None).is_err());
        assert!(insert_rule(&mut failed, content_rule(".m.c"), Some("a"), None).is_err());
    }

    #[tokio::test]
    async fn stored_rules_follow_the_server_defaults_and_keep_the_users_changes() {
        let db = Db::memory();
        let stream = Arc::new(Stream::new(&db).unwrap());
        let account_data = AccountData::new(&db, stream).unwrap();
        let user = user_id!("@a:example.org");
        let mut old = Ruleset::server_default(user);
        old.set_enabled(RuleKind::Override, ".m.rule.master", true)
            .unwrap();
        old.set_actions(RuleKind::Underride, ".m.rule.message", vec![])
            .unwrap();
        // A default this version no longer has, and one it added since.
        let mut gone = old.override_.get(".m.rule.tombstone").unwrap().clone();
        gone.rule_id = ".m.rule.retired".to_owned();
        old.override_.insert(gone);
        old.override_.shift_remove(".m.rule.reaction");
        insert_rule(&mut old, content_rule("mine"), None, None).unwrap();
        account_data
            .set(user, None, PUSH_RULES, rules_content(&old))
            .await
            .unwrap();

        let rules = load_rules(&account_data, user).unwrap();
        assert!(
            rules
                .get(RuleKind::Override, ".m.rule.master")
                .unwrap()
                .enabled()
        );
        assert!(
            rules
                .get(RuleKind::Underride, ".m.rule.message")
                .unwrap()
                .actions()
                .is_empty()
        );
        assert!(rules.get(RuleKind::Override, ".m.rule.retired").is_none());
        assert!(rules.get(RuleKind::Override, ".m.rule.reaction").is_some());
        assert!(rules.get(RuleKind::Content, "mine").is_some());
        assert_eq!(
            rules.override_.first().unwrap().rule_id,
            ".m.rule.master",
            "master stays first"
        );
    }
}
