//! Room upgrades (client-server API, "Room Upgrades", server behaviour): a replacement room
//! whose create event names its predecessor, the transferable state copied over, local
//! aliases moved, a tombstone in the old room, and the old room closed for posting.

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, api::error::ErrorKind,
    events::StateEventType,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    Rooms,
    append::NewEvent,
    create::{CreateRoom, Preset},
    membership::MemberProfile,
    power::CREATOR_POWER,
};
use crate::{Error, Result};

/// State copied to the replacement room (the spec's recommended list, minus power levels
/// and join rules, which createRoom sets from what we pass it).
const TRANSFERRED: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
];

impl Rooms {
    /// Upgrades `room_id` to `version` on behalf of `sender`; returns the new room's id.
    pub async fn upgrade(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        profile: MemberProfile,
        version: RoomVersionId,
        additional_creators: Vec<OwnedUserId>,
    ) -> Result<OwnedRoomId> {
        let info = self.existing(room_id)?;
        let state = self.current_state(&info)?;
        // 1. Only someone who may send the tombstone may upgrade.
        let level = self.power_level(room_id, &state, sender)?;
        let needed = match self.state_event(&state, &StateEventType::RoomPowerLevels, "")? {
            Some(levels) => {
                let content = levels.content_value();
                content["events"]["m.room.tombstone"]
                    .as_i64()
                    .or_else(|| content["state_default"].as_i64())
                    .unwrap_or(50)
            }
            None => 0,
        };
        if level < needed {
            return Err(Error::forbidden("You may not upgrade this room."));
        }
        if self
            .state_event(&state, &StateEventType::RoomTombstone, "")?
            .is_some()
        {
            return Err(Error::bad_request(
                ErrorKind::Unknown,
                "This room has already been upgraded.",
            ));
        }

        // 2. The new create event: predecessor, version, and the old room's type.
        let old_create = self
            .state_event(&state, &StateEventType::RoomCreate, "")?
            .ok_or_else(|| Error::internal("room without create event"))?;
        let new_v12 = version
            .rules()
            .is_some_and(|rules| rules.authorization.room_create_event_id_as_room_id);
        let last_event = self
            .events_before(&info, super::pos::Pos::MAX, 1)?
            .into_iter()
            .next()
            .map(|(_, pdu)| pdu.event_id);
        let mut predecessor = Map::new();
        predecessor.insert("room_id".into(), room_id.as_str().into());
        if !new_v12 && let Some(last_event) = &last_event {
            predecessor.insert("event_id".into(), last_event.as_str().into());
        }
        let mut creation_content = Map::new();
        creation_content.insert("predecessor".into(), JsonValue::Object(predecessor));
        let old_content = old_create.content_value();
        for key in ["type", "m.federate"] {
            if let Some(value) = old_content.get(key) {
                creation_content.insert(key.into(), value.clone());
            }
        }
        if !additional_creators.is_empty() {
            creation_content.insert("additional_creators".into(), json!(additional_creators));
        }

        // 3. Transferable state, join rule and power levels.
        let mut initial_state = Vec::new();
        for kind in TRANSFERRED {
            if let Some(event) = self.state_event(&state, &StateEventType::from(*kind), "")? {
                initial_state.push(((*kind).to_owned(), String::new(), event.content_value()));
            }
        }
        let join_rule = self
            .state_event(&state, &StateEventType::RoomJoinRules, "")?
            .and_then(|event| event.content_str("join_rule"))
            .unwrap_or_else(|| "invite".to_owned());
        let mut power_levels =
            match self.state_event(&state, &StateEventType::RoomPowerLevels, "")? {
                Some(event) => match event.content_value() {
                    JsonValue::Object(map) => map,
                    _ => Map::new(),
                },
                None => Map::new(),
            };
        // Creators of a v12 room must not be listed; elsewhere the upgrader keeps full power.
        if let Some(JsonValue::Object(users)) = power_levels.get_mut("users") {
            if new_v12 {
                users.remove(sender.as_str());
                for creator in &additional_creators {
                    users.remove(creator.as_str());
                }
            } else {
                let kept = if level == CREATOR_POWER {
                    100
                } else {
                    level.max(100)
                };
                users.insert(sender.as_str().into(), kept.into());
            }
        } else if !new_v12 {
            power_levels.insert("users".into(), json!({ sender.as_str(): 100 }));
        }
        let options = CreateRoom {
            version,
            preset: if join_rule == "public" {
                Preset::PublicChat
            } else {
                Preset::PrivateChat
            },
            creation_content,
            power_level_content_override: Some(power_levels),
            alias: None,
            initial_state,
            name: None,
            topic: None,
            invite: Vec::new(),
            is_direct: false,
            publish: self.aliases.is_public(room_id)?,
        };
        let new_room = self.create_room(sender, profile, options).await?;
        if join_rule != "public" && join_rule != "invite" {
            // Restricted and knock rules name rooms and versions; keep them as they were.
            let event = self.state_event(&state, &StateEventType::RoomJoinRules, "")?;
            if let Some(event) = event {
                let copied = self
                    .send(
                        &new_room,
                        sender,
                        NewEvent::state("m.room.join_rules", "", event.content_value()),
                        None,
                    )
                    .await;
                match copied {
                    // The rule may not hold in the new room (the auth rules refuse it): the
                    // room keeps its default rule. Anything else (storage) is an error.
                    Ok(_) | Err(Error::Matrix { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }

        // 4. Local aliases follow the room.
        for alias in self.aliases.aliases_of(room_id)? {
            if let Some((_, creator)) = self.aliases.creator(&alias)? {
                self.aliases.remove(&alias, room_id).await?;
                self.aliases.create(&alias, &new_room, &creator).await?;
            }
        }
        if let Some(canonical) =
            self.state_event(&state, &StateEventType::RoomCanonicalAlias, "")?
        {
            self.send(
                &new_room,
                sender,
                NewEvent::state("m.room.canonical_alias", "", canonical.content_value()),
                None,
            )
            .await?;
        }
        if self.aliases.is_public(room_id)? {
            self.aliases.set_public(room_id, false).await?;
        }

        // 5. The tombstone, 6. the old room closed for posting and inviting.
        let tombstone =
            json!({ "body": "This room has been replaced", "replacement_room": new_room });
        self.send(
            room_id,
            sender,
            NewEvent::state("m.room.tombstone", "", tombstone),
            None,
        )
        .await?;
        let state = self.current_state(&self.existing(room_id)?)?;
        if let Some(levels) = self.state_event(&state, &StateEventType::RoomPowerLevels, "")? {
            let mut content = levels.content_value();
            let users_default = content["users_default"].as_i64().unwrap_or(0);
            let closed = (users_default + 1).max(50);
            content["events_default"] = closed.into();
            content["invite"] = closed.into();
            self.send(
                room_id,
                sender,
                NewEvent::state("m.room.power_levels", "", content),
                None,
            )
            .await?;
        }
        Ok(new_room)
    }
}
