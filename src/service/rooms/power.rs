//! Power levels as the client-facing checks need them (the auth rules have their own, in
//! ruma's state-res): a user's level, and the level an action needs.

use ruma::{RoomId, UserId, events::StateEventType};
use serde_json::Value as JsonValue;

use super::{Rooms, state::StateSet};
use crate::Result;

/// Room creators in room version 12 have unlimited power (rooms v12, "Client considerations").
pub const CREATOR_POWER: i64 = i64::MAX;

fn int(value: &JsonValue) -> Option<i64> {
    // Room versions before 10 allow stringy integers ("floaty"/"stringy" power levels).
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

impl Rooms {
    /// `user_id`'s power level in `state`.
    pub fn power_level(&self, room_id: &RoomId, state: &StateSet, user_id: &UserId) -> Result<i64> {
        let info = self.existing(room_id)?;
        let create = self.state_event(state, &StateEventType::RoomCreate, "")?;
        let privileged_creators = info
            .version
            .rules()
            .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators);
        if privileged_creators && let Some(create) = &create {
            let additional = create.content_value()["additional_creators"].clone();
            let listed = additional
                .as_array()
                .is_some_and(|list| list.iter().any(|u| u == user_id.as_str()));
            if create.sender == user_id || listed {
                return Ok(CREATOR_POWER);
            }
        }
        match self.state_event(state, &StateEventType::RoomPowerLevels, "")? {
            Some(levels) => {
                let content = levels.content_value();
                Ok(content["users"]
                    .get(user_id.as_str())
                    .and_then(int)
                    .or_else(|| int(&content["users_default"]))
                    .unwrap_or(0))
            }
            // Without power levels the creator has 100 and everyone else 0.
            None => Ok(if create.is_some_and(|create| create.sender == user_id) {
                100
            } else {
                0
            }),
        }
    }

    /// The level `key` (e.g. `redact`, `kick`) needs in `state`, or `default` if unset.
    pub fn required_level(&self, state: &StateSet, key: &str, default: i64) -> Result<i64> {
        Ok(
            match self.state_event(state, &StateEventType::RoomPowerLevels, "")? {
                Some(levels) => int(&levels.content_value()[key]).unwrap_or(default),
                None => default,
            },
        )
    }
}
