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
//! Counts are not rewritten for every member on every message (issue 13: in a room of 20
//! that was 1.9 KB written per message, most of what a send wrote). Two trees:
//! - `roomidpos_notifyseq`: `room 0xFF position` → the room's *sequence*, a number that
//!   grows by one for each event that counts for most of the room's members; one small
//!   entry per such event, at the position of its counting.
//! - `userroomid_notificationcounts`: `user 0xFF room` → [`Record`]: where the member's
//!   counting starts (the position of their last read, or their join), and their
//!   exceptions since: events the room's sequence counted that they were not notified of,
//!   events it did not count that they were, and their highlights.
//!
//! A member's notification count is the room's sequence now, less the sequence at their
//! start, plus their exceptions ([`Push::counts`]). A message everyone but the sender is
//! notified of writes the sequence entry and the sender's reset: two entries, whatever the
//! room's size. Records written before issue 13 (plain counts) still read.
//!
//! `GET /notifications` is worked out when asked, from the timelines ([`notifications`]):
//! nothing more is written per send.

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
use serde::Deserialize;
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

/// A member's unread counts in a room, as `/sync` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
    /// The stream position of the last change, so an incremental `/sync` sends them.
    pub position: u64,
}

/// What is stored for a member of a room: where their counting starts and their
/// exceptions to the room's sequence since (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Record {
    /// The position their counting starts from: the room's sequence at this position is
    /// their zero.
    since: u64,
    /// Notifications the room's sequence does not tell: +1 for each event they were
    /// notified of that it did not count, -1 for each it counted that they were not.
    adjust: i64,
    highlights: u64,
    /// The position this record last changed.
    position: u64,
}

/// How the stored counts of an earlier build read.
#[derive(Deserialize)]
struct OldCounts {
    notifications: u64,
    highlights: u64,
    position: u64,
}

impl Record {
    /// 32 bytes: four big-endian 64-bit numbers.
    fn encode(&self) -> [u8; 32] {
        let mut bytes = [0; 32];
        bytes[..8].copy_from_slice(&self.since.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.adjust.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.highlights.to_be_bytes());
        bytes[24..].copy_from_slice(&self.position.to_be_bytes());
        bytes
    }

    /// The stored form, or plain counts as earlier builds wrote them (24 bytes, or JSON
    /// before that): those counted everything up to their `position`, before any room
    /// had a sequence.
    fn decode(bytes: &[u8]) -> Result<Self> {
        let number = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or_default()
        };
        let old = match bytes.len() {
            32 => {
                return Ok(Self {
                    since: number(0),
                    adjust: number(8) as i64,
                    highlights: number(16),
                    position: number(24),
                });
            }
            24 => OldCounts {
                notifications: number(0),
                highlights: number(8),
                position: number(16),
            },
            _ => serde_json::from_slice(bytes)
                .map_err(|e| crate::Error::internal(format!("bad notification counts: {e}")))?,
        };
        Ok(Self {
            since: old.position,
            adjust: i64::try_from(old.notifications).unwrap_or(i64::MAX),
            highlights: old.highlights,
            position: old.position,
        })
    }

    /// Counting starts again at `position`.
    fn reset(position: u64) -> Self {
        Self {
            since: position,
            adjust: 0,
            highlights: 0,
            position,
        }
    }
}

/// How one event counts for one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// They sent it: their counts go back to zero.
    Sender,
    /// Their rules do not notify them of it.
    Quiet,
    /// They are notified; `true` when it is also a highlight.
    Notified(bool),
}

/// `room 0xFF position`: a key of `roomidpos_notifyseq`.
fn sequence_key(room_id: &RoomId, position: u64) -> Vec<u8> {
    let mut key = super::rooms::prefix_key(room_id.as_str());
    key.extend_from_slice(&position.to_be_bytes());
    key
}

pub struct Push {
    db: Db,
    stream: Arc<Stream>,
    counts: Arc<dyn Tree>,
    /// `roomidpos_notifyseq`: each room's sequence, by position.
    sequences: Arc<dyn Tree>,
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
            sequences: db.tree("roomidpos_notifyseq")?,
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

    /// The user's unread counts in the room: the room's sequence since their counting
    /// started, with their exceptions.
    pub fn counts(&self, rooms: &Rooms, user_id: &UserId, room_id: &RoomId) -> Result<Counts> {
        let record = self.record(rooms, user_id, room_id)?;
        let (now, changed) = self.sequence_at(room_id, u64::MAX)?;
        let (start, _) = self.sequence_at(room_id, record.since)?;
        let counted = now.saturating_sub(start);
        let notifications = i64::try_from(counted)
            .unwrap_or(i64::MAX)
            .saturating_add(record.adjust)
            .max(0) as u64;
        Ok(Counts {
            notifications,
            highlights: record.highlights,
            position: if counted > 0 {
                record.position.max(changed)
            } else {
                record.position
            },
        })
    }

    /// The member's record; one from before their latest join counts from the join.
    fn record(&self, rooms: &Rooms, user_id: &UserId, room_id: &RoomId) -> Result<Record> {
        let stored = self
            .counts
            .get(&pair_key(user_id.as_str(), room_id.as_str()))?
            .map(|bytes| Record::decode(&bytes))
            .transpose()?
            .unwrap_or_default();
        let joined_since = rooms
            .membership_entry(room_id, user_id)?
            .map_or(0, |entry| entry.joined_since);
        if joined_since > stored.since {
            return Ok(Record {
                position: stored.position,
                ..Record::reset(joined_since)
            });
        }
        Ok(stored)
    }

    /// The room's sequence at `position` (the last entry at or before it; 0 before the
    /// first), and the position of that entry.
    fn sequence_at(&self, room_id: &RoomId, position: u64) -> Result<(u64, u64)> {
        let prefix = super::rooms::prefix_key(room_id.as_str());
        let Some(entry) = self
            .sequences
            .iter_from(&sequence_key(room_id, position), true)
            .next()
        else {
            return Ok((0, 0));
        };
        let (key, value) = entry?;
        let Some(at) = key.strip_prefix(prefix.as_slice()) else {
            return Ok((0, 0));
        };
        let number = |bytes: &[u8]| {
            <[u8; 8]>::try_from(bytes)
                .map(u64::from_be_bytes)
                .map_err(|_| crate::Error::internal("bad notification sequence entry"))
        };
        Ok((number(&value)?, number(at)?))
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
        let (outcomes, notified) = crate::service::off_worker(|| -> Result<_> {
            let room = RoomContext::current(rooms, &room_id)?;
            let mut outcomes = Vec::new();
            let mut notified = Vec::new();
            // Only our users have push rules and counts here; other servers' members are
            // counted in `member_count` but notified by their own servers.
            for member in room
                .joined
                .iter()
                .filter(|member| member.server_name() == rooms.server_name())
            {
                if *member == pdu.sender {
                    outcomes.push((member.clone(), Outcome::Sender));
                    continue;
                }
                let actions = self.actions(rooms, account_data, &room, member, &raw)?;
                if actions.iter().any(Action::should_notify) {
                    let highlight = actions.iter().any(Action::is_highlight);
                    outcomes.push((member.clone(), Outcome::Notified(highlight)));
                    notified.push((member.clone(), tweaks(&actions)));
                } else {
                    outcomes.push((member.clone(), Outcome::Quiet));
                }
            }
            Ok((outcomes, notified))
        })?;
        // Made durable by the caller, together with the event (one flush per send).
        self.count_unpersisted(rooms, &room_id, &outcomes)?;
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
    pub async fn read(&self, rooms: &Rooms, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let counts = self.counts(rooms, user_id, room_id)?;
        if counts.notifications == 0 && counts.highlights == 0 {
            return Ok(());
        }
        let key = pair_key(user_id.as_str(), room_id.as_str());
        let (position, ()) = self.stream.commit(|position, batch| {
            batch.insert(
                &*self.counts,
                key,
                Record::reset(position).encode().to_vec(),
            );
            Ok(())
        })?;
        self.stream.touch([user_id], position);
        self.db.persist().await?;
        Ok(())
    }

    /// Writes what `outcomes` (one per local member) change. When most members are
    /// notified, the room's sequence counts the event for everyone, and only the others
    /// get a record written; otherwise only those notified do. Not yet durable.
    fn count_unpersisted(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        outcomes: &[(OwnedUserId, Outcome)],
    ) -> Result<()> {
        let others = outcomes
            .iter()
            .filter(|(_, outcome)| *outcome != Outcome::Sender)
            .count();
        let notified = outcomes
            .iter()
            .filter(|(_, outcome)| matches!(outcome, Outcome::Notified(_)))
            .count();
        let for_everyone = notified * 2 > others;
        let (position, touched) = self.stream.commit(|position, batch| {
            if for_everyone {
                let (sequence, _) = self.sequence_at(room_id, u64::MAX)?;
                batch.insert(
                    &*self.sequences,
                    sequence_key(room_id, position),
                    (sequence + 1).to_be_bytes().to_vec(),
                );
            }
            let mut touched = Vec::new();
            for (user, outcome) in outcomes {
                let (adjust, highlight) = match (outcome, for_everyone) {
                    (Outcome::Sender, _) => {
                        // When the sequence counts this event, the sender's count would be
                        // at least 1: reset without reading it.
                        let unread = for_everyone || {
                            let counts = self.counts(rooms, user, room_id)?;
                            counts.notifications > 0 || counts.highlights > 0
                        };
                        if unread {
                            batch.insert(
                                &*self.counts,
                                pair_key(user.as_str(), room_id.as_str()),
                                Record::reset(position).encode().to_vec(),
                            );
                            touched.push(user.as_ref());
                        }
                        continue;
                    }
                    (Outcome::Quiet, true) => (-1, false),
                    (Outcome::Quiet, false) => continue,
                    (Outcome::Notified(highlight), true) => (0, *highlight),
                    (Outcome::Notified(highlight), false) => (1, *highlight),
                };
                touched.push(user.as_ref());
                if adjust == 0 && !highlight {
                    // Counted by the room's sequence: nothing to write.
                    continue;
                }
                let mut record = self.record(rooms, user, room_id)?;
                record.adjust += adjust;
                record.highlights += u64::from(highlight);
                record.position = position;
                batch.insert(
                    &*self.counts,
                    pair_key(user.as_str(), room_id.as_str()),
                    record.encode().to_vec(),
                );
            }
            Ok(touched)
        })?;
        self.stream.touch(touched, position);
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
    fn records_are_32_bytes_and_counts_of_earlier_builds_still_read() {
        let record = Record {
            since: 9,
            adjust: -2,
            highlights: 1,
            position: u64::MAX - 7,
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        // Earlier builds stored plain counts: they count from their own position.
        let counted = Record {
            since: u64::MAX - 7,
            adjust: 3,
            highlights: 1,
            position: u64::MAX - 7,
        };
        let mut old = [0u8; 24];
        old[..8].copy_from_slice(&3u64.to_be_bytes());
        old[8..16].copy_from_slice(&1u64.to_be_bytes());
        old[16..].copy_from_slice(&(u64::MAX - 7).to_be_bytes());
        assert_eq!(Record::decode(&old).unwrap(), counted);
        let json = br#"{"notifications":3,"highlights":1,"position":18446744073709551608}"#;
        assert_eq!(Record::decode(json).unwrap(), counted);
        assert!(Record::decode(b"{not json").is_err());
        assert!(Record::decode(&[0; 23]).is_err());
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
