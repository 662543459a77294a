//! `createRoom`: the events the spec lists, in its order (client-server API, `POST
//! /createRoom`): create, creator's join, power levels, canonical alias, preset events,
//! `initial_state`, name and topic, invites.

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId, UserId, api::error::ErrorKind,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    Rooms,
    append::{Extra, NewEvent},
    membership::MemberProfile,
};
use crate::{Error, Result, crypto};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// Everything `createRoom` may ask for, already parsed.
#[derive(Debug)]
pub struct CreateRoom {
    pub version: RoomVersionId,
    pub preset: Preset,
    pub creation_content: Map<String, JsonValue>,
    pub power_level_content_override: Option<Map<String, JsonValue>>,
    pub alias: Option<OwnedRoomAliasId>,
    /// `(type, state_key, content)` of each `initial_state` event.
    pub initial_state: Vec<(String, String, JsonValue)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub publish: bool,
}

/// The default power levels (the values Synapse and Element expect).
fn default_power_levels(
    version: &RoomVersionId,
    creator: &UserId,
    options: &CreateRoom,
) -> Map<String, JsonValue> {
    let v12 = version
        .rules()
        .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators);
    let mut users = Map::new();
    if !v12 {
        users.insert(creator.to_string(), 100.into());
        if options.preset == Preset::TrustedPrivateChat {
            for invitee in &options.invite {
                users.insert(invitee.to_string(), 100.into());
            }
        }
    }
    let json = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            // Rooms v12: tombstones must need more than state_default (createRoom, step 3).
            "m.room.tombstone": if v12 { 150 } else { 100 },
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if options.preset == Preset::PublicChat { 50 } else { 0 },
        "historical": 100,
        "notifications": { "room": 50 },
    });
    match json {
        JsonValue::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

impl Rooms {
    /// Creates a room; returns its id. `profile` is the creator's name and avatar for the
    /// join event; `profile_of` gives each invitee's.
    pub async fn create_room(
        &self,
        creator: &UserId,
        profile: MemberProfile,
        options: CreateRoom,
    ) -> Result<OwnedRoomId> {
        let rules = options
            .version
            .rules()
            .filter(|_| super::append::supported_room_version(&options.version))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnsupportedRoomVersion,
                    "This room version is not supported.",
                )
            })?;
        if let Some(alias) = &options.alias
            && self.aliases.resolve_local(alias)?.is_some()
        {
            return Err(Error::new(
                ErrorKind::RoomInUse,
                "The room alias is already taken.",
            ));
        }

        // 1. The create event.
        let mut content = options.creation_content.clone();
        content.insert("room_version".into(), options.version.as_str().into());
        if rules.authorization.use_room_create_sender {
            content.remove("creator");
        } else {
            content.insert("creator".into(), creator.as_str().into());
        }
        if rules.authorization.additional_room_creators
            && options.preset == Preset::TrustedPrivateChat
        {
            let mut creators: Vec<JsonValue> = match content.remove("additional_creators") {
                Some(JsonValue::Array(list)) => list,
                _ => Vec::new(),
            };
            for invitee in &options.invite {
                let invitee = JsonValue::from(invitee.as_str());
                if !creators.contains(&invitee) {
                    creators.push(invitee);
                }
            }
            content.insert("additional_creators".into(), creators.into());
        }
        let create = NewEvent::state("m.room.create", "", JsonValue::Object(content));

        let (room_id, _guard) = if rules.authorization.room_create_event_id_as_room_id {
            // Rooms v12: the room id is the create event's id, known only after signing.
            let pdu = self.append_locked(
                None,
                &options.version,
                None,
                creator,
                create,
                Extra::default(),
            )?;
            let room_id = pdu.room_id();
            (room_id.clone(), self.lock(&room_id).await)
        } else {
            let localpart =
                crypto::random_string(18, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");
            let room_id = OwnedRoomId::try_from(format!("!{localpart}:{}", self.server_name))
                .map_err(|_| Error::internal("generated room id is invalid"))?;
            let guard = self.lock(&room_id).await;
            self.append_locked(
                Some(&room_id),
                &options.version,
                None,
                creator,
                create,
                Extra::default(),
            )?;
            (room_id, guard)
        };
        // Take the alias now that the room id is known; the check at the top only catches
        // the common case early.
        if let Some(alias) = &options.alias
            && !self.aliases.claim(alias, &room_id, creator)?
        {
            return Err(Error::new(
                ErrorKind::RoomInUse,
                "The room alias is already taken.",
            ));
        }
        let send = |event: NewEvent| -> Result<()> {
            let info = self.existing(&room_id)?;
            self.append_locked(
                Some(&room_id),
                &options.version,
                Some(info),
                creator,
                event,
                Extra::default(),
            )?;
            Ok(())
        };

        // 2. The creator joins.
        send(NewEvent::state(
            "m.room.member",
            creator.as_str(),
            profile.content("join", None, false),
        ))?;

        // 3. Power levels, with the override merged over the defaults.
        let mut power_levels = default_power_levels(&options.version, creator, &options);
        if let Some(overrides) = &options.power_level_content_override {
            for (key, value) in overrides {
                power_levels.insert(key.clone(), value.clone());
            }
        }
        send(NewEvent::state(
            "m.room.power_levels",
            "",
            JsonValue::Object(power_levels),
        ))?;

        // 4. Canonical alias.
        if let Some(alias) = &options.alias {
            send(NewEvent::state(
                "m.room.canonical_alias",
                "",
                json!({ "alias": alias }),
            ))?;
        }

        // 5. Preset events.
        let (join_rule, guest_access) = match options.preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        send(NewEvent::state(
            "m.room.join_rules",
            "",
            json!({ "join_rule": join_rule }),
        ))?;
        send(NewEvent::state(
            "m.room.history_visibility",
            "",
            json!({ "history_visibility": "shared" }),
        ))?;
        send(NewEvent::state(
            "m.room.guest_access",
            "",
            json!({ "guest_access": guest_access }),
        ))?;

        // 6. initial_state, 7. name and topic.
        for (kind, state_key, content) in &options.initial_state {
            send(NewEvent::state(
                kind.as_str(),
                state_key.as_str(),
                content.clone(),
            ))?;
        }
        if let Some(name) = &options.name {
            send(NewEvent::state("m.room.name", "", json!({ "name": name })))?;
        }
        if let Some(topic) = &options.topic {
            send(NewEvent::state(
                "m.room.topic",
                "",
                json!({ "topic": topic }),
            ))?;
        }

        // 8. Invites (of our users: another server's are sent after, each signed by the
        // invitee's server first, `Services::invite_remote`).
        for invitee in options
            .invite
            .iter()
            .filter(|invitee| invitee.server_name() == self.server_name)
        {
            let content = json!({ "membership": "invite", "is_direct": options.is_direct });
            send(NewEvent::state("m.room.member", invitee.as_str(), content))?;
        }

        drop(_guard);
        if options.publish {
            self.aliases.set_public(&room_id, true).await?;
        }
        self.db.persist().await?;
        Ok(room_id)
    }
}
