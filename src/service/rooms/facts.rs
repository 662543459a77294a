//! The facts about a room that directories and summaries show (public rooms, spaces), read
//! from its current state in one place.

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, RoomId, RoomVersionId,
    events::{StateEventType, room::member::MembershipState},
};

use super::Rooms;
use crate::Result;

pub struct RoomFacts {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub canonical_alias: Option<OwnedRoomAliasId>,
    pub avatar_url: Option<String>,
    /// `m.room.create`'s `type` (e.g. `m.space`).
    pub room_type: Option<String>,
    pub join_rule: Option<String>,
    pub world_readable: bool,
    pub guest_can_join: bool,
    pub joined_members: u64,
}

impl Rooms {
    pub fn facts(&self, room_id: &RoomId) -> Result<RoomFacts> {
        let info = self.existing(room_id)?;
        let state = self.current_state(&info)?;
        let field = |kind: StateEventType, key: &str| -> Result<Option<String>> {
            Ok(self
                .state_event(&state, &kind, "")?
                .and_then(|event| event.content_str(key)))
        };
        let joined = self
            .members(room_id)?
            .into_iter()
            .filter(|(_, m)| *m == MembershipState::Join)
            .count();
        Ok(RoomFacts {
            room_id: room_id.to_owned(),
            version: info.version.clone(),
            name: field(StateEventType::RoomName, "name")?,
            topic: field(StateEventType::RoomTopic, "topic")?,
            canonical_alias: field(StateEventType::RoomCanonicalAlias, "alias")?
                .and_then(|a| a.try_into().ok()),
            avatar_url: field(StateEventType::RoomAvatar, "url")?,
            room_type: field(StateEventType::RoomCreate, "type")?,
            join_rule: field(StateEventType::RoomJoinRules, "join_rule")?,
            world_readable: field(StateEventType::RoomHistoryVisibility, "history_visibility")?
                .as_deref()
                == Some("world_readable"),
            guest_can_join: field(StateEventType::RoomGuestAccess, "guest_access")?.as_deref()
                == Some("can_join"),
            joined_members: joined as u64,
        })
    }
}
