//! Membership changes: join, invite, leave, kick, ban, unban, knock. Each is one
//! `m.room.member` event; whether it is allowed is decided by the room version's
//! authorization rules in `append`, so the rules live in one place.

use ruma::{RoomId, UserId, api::error::ErrorKind, events::room::member::MembershipState};
use serde_json::{Map, Value as JsonValue};

use super::{Rooms, append::NewEvent, pdu::Pdu};
use crate::{Error, Result};

/// A member's display name and avatar, copied into their member events.
#[derive(Clone, Debug, Default)]
pub struct MemberProfile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

impl MemberProfile {
    pub fn content(&self, membership: &str, reason: Option<&str>, is_direct: bool) -> JsonValue {
        let mut content = Map::new();
        content.insert("membership".into(), membership.into());
        if let Some(name) = &self.displayname {
            content.insert("displayname".into(), name.as_str().into());
        }
        if let Some(avatar) = &self.avatar_url {
            content.insert("avatar_url".into(), avatar.as_str().into());
        }
        if let Some(reason) = reason {
            content.insert("reason".into(), reason.into());
        }
        if is_direct {
            content.insert("is_direct".into(), true.into());
        }
        JsonValue::Object(content)
    }
}

impl Rooms {
    fn member_event(target: &UserId, content: JsonValue) -> NewEvent {
        NewEvent::state("m.room.member", target.as_str(), content)
    }

    /// Joins `user_id` to a room on this server (join rules and bans are the auth rules').
    pub async fn join(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        profile: &MemberProfile,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        if self.info(room_id)?.is_none() {
            // Joining rooms on other servers comes with federation.
            return Err(Error::not_found("No known room with this id."));
        }
        self.send(
            room_id,
            user_id,
            Self::member_event(user_id, profile.content("join", reason, false)),
            None,
        )
        .await
    }

    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        target_profile: &MemberProfile,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<Pdu> {
        self.existing(room_id)?;
        if self.membership(room_id, target)? == Some(MembershipState::Join) {
            return Err(Error::forbidden("The user is already in the room."));
        }
        let content = target_profile.content("invite", reason, is_direct);
        self.send(room_id, sender, Self::member_event(target, content), None)
            .await
    }

    /// Leaves (or, with `target` another user, kicks).
    pub async fn leave(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        self.existing(room_id)?;
        let current = self.membership(room_id, target)?;
        if sender == target
            && !matches!(
                current,
                Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
            )
        {
            return Err(Error::forbidden("You are not in this room."));
        }
        if sender != target
            && !matches!(
                current,
                Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
            )
        {
            return Err(Error::forbidden("The user is not in this room."));
        }
        let content = MemberProfile::default().content("leave", reason, false);
        self.send(room_id, sender, Self::member_event(target, content), None)
            .await
    }

    pub async fn ban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        self.existing(room_id)?;
        let content = MemberProfile::default().content("ban", reason, false);
        self.send(room_id, sender, Self::member_event(target, content), None)
            .await
    }

    pub async fn unban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        self.existing(room_id)?;
        if self.membership(room_id, target)? != Some(MembershipState::Ban) {
            return Err(Error::forbidden("The user is not banned."));
        }
        let content = MemberProfile::default().content("leave", reason, false);
        self.send(room_id, sender, Self::member_event(target, content), None)
            .await
    }

    /// Knocks on a room whose join rule allows it (rooms v7+).
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        profile: &MemberProfile,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        let info = self
            .info(room_id)?
            .ok_or_else(|| Error::not_found("No known room with this id."))?;
        let knocking = info
            .version
            .rules()
            .is_some_and(|rules| rules.authorization.knocking);
        if !knocking {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion(
                    ruma::api::error::IncompatibleRoomVersionErrorData::new(info.version.clone()),
                ),
                "This room version does not allow knocking.",
            ));
        }
        self.send(
            room_id,
            user_id,
            Self::member_event(user_id, profile.content("knock", reason, false)),
            None,
        )
        .await
    }

    /// Re-sends `user_id`'s member event with `profile` in every room they are joined to
    /// (a display name or avatar change). A room that refuses is logged and skipped.
    pub async fn update_member_profile(
        &self,
        user_id: &UserId,
        profile: &MemberProfile,
    ) -> Result<()> {
        for (room_id, entry) in self.rooms_of(user_id)? {
            if entry.membership != MembershipState::Join {
                continue;
            }
            let event = Self::member_event(user_id, profile.content("join", None, false));
            if let Err(error) = self.send(&room_id, user_id, event, None).await {
                tracing::warn!(%room_id, %user_id, %error, "could not update a member event");
            }
        }
        Ok(())
    }
}
