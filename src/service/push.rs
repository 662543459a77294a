//! Notification counts (client-server API, "Push notifications"): each new event is checked
//! against the push rules of every other joined member (ruma's evaluator, the spec's default
//! rule set unless the user changed it); `notify` actions count, `highlight` tweaks count as
//! highlights. A member's counts reset when they send a read receipt in the room or post there.
//! Delivery to push gateways is in `pusher.rs`.
//!
//! Tree `userroomid_notificationcounts`: `user 0xFF room` → [`Counts`] (JSON), written at a
//! stream position so `/sync` sends changed counts. Each notification is also recorded for
//! `GET /notifications`, in the same commit ([`notifications`]).

pub mod notifications;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use futures_util::FutureExt;
use ruma::{
    Int, OwnedUserId, RoomId, UInt, UserId,
    events::{StateEventType, room::member::MembershipState},
    power_levels::NotificationPowerLevels,
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::RoomPowerLevelsRules,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    account_data::AccountData,
    rooms::{Rooms, pair_key, pdu::Pdu},
    stream::Stream,
};
use crate::{
    Result,
    storage::{Db, Table},
};

const PUSH_RULES: &str = "m.push_rules";

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
    pub position: u64,
}

pub struct Push {
    db: Db,
    stream: Arc<Stream>,
    counts: Table<Counts>,
    /// The events each user was notified about, for `GET /notifications`.
    pub notifications: notifications::Notifications,
    /// Parsed rule sets of users who have had events evaluated; dropped when they change.
    rulesets: Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>,
}

fn int(value: &JsonValue) -> Option<Int> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
        .and_then(|v| Int::try_from(v).ok())
}

impl Push {
    pub fn new(db: &Db, stream: Arc<Stream>) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            stream,
            counts: db.table("userroomid_notificationcounts")?,
            notifications: notifications::Notifications::new(db)?,
            rulesets: Mutex::default(),
        })
    }

    /// The user's rule set (the spec's defaults until they change it).
    pub fn ruleset(&self, account_data: &AccountData, user_id: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(rules) = self.rulesets.lock().expect("ruleset cache").get(user_id) {
            return Ok(Arc::clone(rules));
        }
        let rules = match account_data.get(user_id, None, PUSH_RULES)? {
            Some(stored) => serde_json::from_value(stored["global"].clone())
                .unwrap_or_else(|_| Ruleset::server_default(user_id)),
            None => Ruleset::server_default(user_id),
        };
        let rules = Arc::new(rules);
        self.rulesets
            .lock()
            .expect("ruleset cache")
            .insert(user_id.to_owned(), Arc::clone(&rules));
        Ok(rules)
    }

    /// Forgets a cached rule set (after the user changed it).
    pub fn rules_changed(&self, user_id: &UserId) {
        self.rulesets.lock().expect("ruleset cache").remove(user_id);
    }

    pub fn counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<Counts> {
        Ok(self
            .counts
            .get(&pair_key(user_id.as_str(), room_id.as_str()))?
            .unwrap_or_default())
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
        let info = rooms.existing(&room_id)?;
        let state = rooms.current_state(&info)?;
        let members = rooms.members(&room_id)?;
        let joined: Vec<&OwnedUserId> = members
            .iter()
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
        let raw = pdu.to_sync_event(None);
        let count = rooms.count_of(&pdu.event_id)?.unwrap_or(info.last_count);
        let now = super::users::now_ms();

        let mut changes = Vec::new();
        let mut records = Vec::new();
        let mut notified = Vec::new();
        for member in joined {
            if **member == pdu.sender {
                changes.push((member.clone(), None));
                continue;
            }
            let name = rooms
                .state_event(&state, &StateEventType::RoomMember, member.as_str())?
                .and_then(|event| event.content_str("displayname"))
                .unwrap_or_else(|| member.localpart().to_owned());
            let mut context =
                PushConditionRoomCtx::new(room_id.clone(), member_count, member.clone(), name);
            if let Some(power_levels) = &power_levels {
                context = context.with_power_levels(power_levels.clone());
            }
            let rules = self.ruleset(account_data, member)?;
            // The evaluator is async only for lookups we do not use; it completes at once.
            let actions = rules
                .get_actions(&raw, &context)
                .now_or_never()
                .unwrap_or(&[]);
            let notify = actions.iter().any(|action| action.should_notify());
            if notify {
                let highlight = actions.iter().any(|action| action.is_highlight());
                changes.push((member.clone(), Some(highlight)));
                records.push((
                    member.clone(),
                    notifications::Record {
                        room_id: room_id.clone(),
                        event_id: pdu.event_id.clone(),
                        count,
                        actions: actions.to_vec(),
                        highlight,
                        ts: now,
                    },
                ));
                let mut tweaks = serde_json::Map::new();
                for action in actions {
                    if let ruma::push::Action::SetTweak(tweak) = action
                        && let Ok(JsonValue::Object(pair)) = serde_json::to_value(tweak)
                        && let Some(name) = pair.get("set_tweak").and_then(JsonValue::as_str)
                    {
                        let value = pair.get("value").cloned().unwrap_or(JsonValue::Bool(true));
                        tweaks.insert(name.to_owned(), value);
                    }
                }
                notified.push((member.clone(), JsonValue::Object(tweaks)));
            }
        }
        self.apply(&room_id, changes, records).await?;
        Ok(notified)
    }

    /// A member read the room (receipt): their counts go back to zero.
    pub async fn read(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        self.apply(room_id, vec![(user_id.to_owned(), None)], Vec::new())
            .await
    }

    /// `Some(highlight)` adds one notification; `None` resets to zero. `records` are the
    /// notifications to list in `GET /notifications`, written in the same commit.
    async fn apply(
        &self,
        room_id: &RoomId,
        changes: Vec<(OwnedUserId, Option<bool>)>,
        records: Vec<(OwnedUserId, notifications::Record)>,
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
                let mut counts = self.counts.get(&key)?.unwrap_or_default();
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
                batch.insert_json(&self.counts, key, &counts);
            }
            for (user, record) in &records {
                self.notifications.record_into(batch, user, record)?;
            }
            Ok(())
        })?;
        self.stream
            .touch(changes.iter().map(|(user, _)| user.as_ref()), position);
        self.db.persist().await?;
        Ok(())
    }
}
