//! Joins for other servers' users (server-server API, "Joining Rooms", "Restricted
//! rooms"): `make_join` and `send_join` (v2).

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, OwnedUserId,
    RoomId, RoomVersionId, ServerName, UserId,
    api::error::{ErrorKind, IncompatibleRoomVersionErrorData},
    events::{
        StateEventType,
        room::{
            join_rules::{AllowRule, JoinRule, RoomJoinRulesEventContent},
            member::MembershipState,
        },
    },
    signatures::PublicKeyMap,
};
use serde_json::{json, value::RawValue as RawJsonValue};

use super::federation_form;
use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            Rooms,
            accept::Outcome,
            check::Verdict,
            state::StateSet,
            verify::{Verified, check_format, check_signatures_and_hash, keys_needed},
        },
    },
};

/// What `send_join` answers (server-server API, `PUT /v2/send_join`).
#[derive(Debug)]
pub struct JoinAnswer {
    /// The join event as stored (with our signature on a restricted join).
    pub event: Box<RawJsonValue>,
    /// The state before the join, in federation form.
    pub state: Vec<Box<RawJsonValue>>,
    /// The auth chains of the join and of every event of `state`.
    pub auth_chain: Vec<Box<RawJsonValue>>,
    /// The servers with a joined member before the join.
    pub servers_in_room: Vec<OwnedServerName>,
}

fn invalid(reason: impl std::fmt::Display) -> Error {
    Error::invalid_param(format!("Invalid member event: {reason}"))
}

/// The servers with a member of `membership` in `state` (any of `memberships`).
fn member_servers(
    rooms: &Rooms,
    state: &StateSet,
    memberships: &[MembershipState],
) -> Result<BTreeSet<OwnedServerName>> {
    let mut servers = BTreeSet::new();
    for (short_key, short_event) in state.iter() {
        let (kind, state_key) = rooms.short.state_key(*short_key)?;
        if kind != StateEventType::RoomMember {
            continue;
        }
        let Ok(user) = <&UserId>::try_from(state_key.as_str()) else {
            continue;
        };
        if servers.contains(user.server_name()) {
            continue;
        }
        let event_id = rooms.short.event_id(*short_event)?;
        let pdu = rooms
            .pdu(&event_id)?
            .ok_or_else(|| Error::internal(format!("state event {event_id} is not stored")))?;
        let membership = MembershipState::from(pdu.content_str("membership").unwrap_or_default());
        if memberships.contains(&membership) {
            servers.insert(user.server_name().to_owned());
        }
    }
    Ok(servers)
}

/// The content field `join_authorised_via_users_server`, when it names a user.
fn authorising_user(object: &CanonicalJsonObject) -> Option<OwnedUserId> {
    match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => {
            match content.get("join_authorised_via_users_server") {
                Some(CanonicalJsonValue::String(user)) => OwnedUserId::try_from(user.as_str()).ok(),
                _ => None,
            }
        }
        _ => None,
    }
}

fn string_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(value)) => Some(value),
        _ => None,
    }
}

impl Services {
    /// The room's current join rule (absent: `invite`, rooms "m.room.join_rules").
    fn join_rule(&self, room_id: &RoomId) -> Result<JoinRule> {
        Ok(self
            .rooms
            .current_state_event(room_id, &StateEventType::RoomJoinRules, "")?
            .and_then(|pdu| {
                serde_json::from_str::<RoomJoinRulesEventContent>(pdu.content.get()).ok()
            })
            .map_or(JoinRule::Invite, |content| content.join_rule))
    }

    /// For a join under a `restricted` or `knock_restricted` rule by a user who is neither
    /// invited nor joined (client-server API, "Restricted rooms"; S2S "Restricted rooms"):
    /// a local member who may invite, to name in `join_authorised_via_users_server`, when
    /// the user is joined to one of the allowed rooms as far as this server knows. `None`
    /// when no authorisation is needed. 400 `M_UNABLE_TO_AUTHORISE_JOIN` when this server
    /// knows none of the allowed rooms, 403 when the user is in none of them, 400
    /// `M_UNABLE_TO_GRANT_JOIN` when no local member may invite.
    fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let allow = match self.join_rule(room_id)? {
            JoinRule::Restricted(restricted) | JoinRule::KnockRestricted(restricted) => {
                restricted.allow
            }
            _ => return Ok(None),
        };
        if matches!(
            self.rooms.membership(room_id, user_id)?,
            Some(MembershipState::Invite | MembershipState::Join)
        ) {
            return Ok(None);
        }
        let mut known_any = false;
        let mut satisfied = false;
        for rule in &allow {
            if let AllowRule::RoomMembership(membership) = rule
                && self.rooms.info(&membership.room_id)?.is_some()
            {
                known_any = true;
                if self.rooms.is_joined(&membership.room_id, user_id)? {
                    satisfied = true;
                    break;
                }
            }
        }
        if !known_any {
            return Err(Error::bad_request(
                ErrorKind::UnableToAuthorizeJoin,
                "This server knows none of the rooms whose members may join.",
            ));
        }
        if !satisfied {
            return Err(Error::forbidden(
                "You are not a member of a room whose members may join this one.",
            ));
        }
        let info = self.rooms.existing(room_id)?;
        let state = self.rooms.current_state(&info)?;
        let needed = self.rooms.required_level(&state, "invite", 0)?;
        for (member, membership) in self.rooms.members(room_id)? {
            if membership == MembershipState::Join
                && self.users.is_local(&member)
                && self.rooms.power_level(room_id, &state, &member)? >= needed
            {
                return Ok(Some(member));
            }
        }
        Err(Error::bad_request(
            ErrorKind::UnableToGrantJoin,
            "No member of this server may invite you; try another server in the room.",
        ))
    }

    /// `make_join` and `make_knock`'s checks before the template: `user_id` is a user of
    /// `origin` (403), the room is here (404), the ACL allows `origin` (403), the room's
    /// version is among `supported` (400 `M_INCOMPATIBLE_ROOM_VERSION`).
    pub(super) fn check_member_request(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<()> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden(format!(
                "{user_id} is not a user of {origin}."
            )));
        }
        let info = self.rooms.existing(room_id)?;
        self.check_server_acl(origin, room_id)?;
        if !supported.contains(&info.version) {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(
                    info.version.clone(),
                )),
                format!(
                    "The room's version is {}, which your server does not support.",
                    info.version
                ),
            ));
        }
        Ok(())
    }

    /// `GET /make_join/{roomId}/{userId}`: the join template for `user_id` of `origin`, if
    /// the room is here, its version among `supported` and the join allowed (see
    /// [`Rooms::member_template`]).
    pub fn make_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        self.check_member_request(origin, room_id, user_id, supported)?;
        let mut content = json!({ "membership": "join" });
        if let Some(authoriser) = self.restricted_join_authoriser(room_id, user_id)? {
            content["join_authorised_via_users_server"] = authoriser.as_str().into();
        }
        self.rooms.member_template(room_id, user_id, content)
    }

    /// `PUT /v2/send_join/{roomId}/{eventId}`: `raw`, a join event of a user of `origin`
    /// signed by `origin`, is checked (format, the fields of a join, signatures, content
    /// hash, its id), signed by us too when it names one of our users as the authoriser of
    /// a restricted join, and accepted into the room as a live event. Only an accepted join
    /// is answered; a repeat of an accepted one gets the same answer.
    pub async fn send_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
    ) -> Result<JoinAnswer> {
        let join_id = self
            .send_member_event(origin, room_id, event_id, raw, &MembershipState::Join)
            .await?;
        self.join_answer(room_id, &join_id)
    }

    /// `send_join` and `send_knock` up to the answer: [`Self::check_member_event`], the
    /// keys through the keyring, [`Self::accept_member_event`]. Returns the event's id.
    pub(super) async fn send_member_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawJsonValue,
        membership: &MembershipState,
    ) -> Result<OwnedEventId> {
        let (version, object) = self.check_member_event(origin, room_id, raw, membership)?;
        let keys = self.keys_for_member_event(&object, &version).await?;
        self.accept_member_event(origin, event_id, &version, object, &keys)
            .await
    }

    /// The public keys `object`'s signatures need, through the keyring.
    async fn keys_for_member_event(
        &self,
        object: &CanonicalJsonObject,
        version: &RoomVersionId,
    ) -> Result<PublicKeyMap> {
        let needed = keys_needed(object, version).map_err(invalid)?;
        // Collected first: a closure over the servers held across the await would not be
        // `Send` for every lifetime (rustc's higher-ranked inference).
        let servers: Vec<&ServerName> = needed.servers.iter().map(|server| &**server).collect();
        self.keyring
            .public_key_map(object, servers, needed.signed_at)
            .await
    }

    /// `send_join` and `send_knock`'s checks before signatures (S2S "Joining Rooms",
    /// "Knocking upon a room": 400 `M_INVALID_PARAM` otherwise): the format, an
    /// `m.room.member` event of `membership` by a user of `origin` (the state key) in
    /// `room_id`; for a join, our signature added when one of our users authorises a
    /// restricted join. Returns the room version and the event.
    pub(super) fn check_member_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        raw: &RawJsonValue,
        expected: &MembershipState,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let info = self.rooms.existing(room_id)?;
        self.check_server_acl(origin, room_id)?;
        let version = info.version.clone();
        let mut object = check_format(raw, &version).map_err(invalid)?;
        if string_field(&object, "type") != Some("m.room.member") {
            return Err(invalid("not an `m.room.member` event"));
        }
        let sender = string_field(&object, "sender")
            .and_then(|sender| OwnedUserId::try_from(sender).ok())
            .ok_or_else(|| invalid("no valid `sender`"))?;
        if sender.server_name() != origin {
            return Err(invalid(format!("the sender is not a user of {origin}")));
        }
        if string_field(&object, "state_key") != Some(sender.as_str()) {
            return Err(invalid("the `state_key` is not the sender"));
        }
        if string_field(&object, "room_id") != Some(room_id.as_str()) {
            return Err(invalid("the event is for another room"));
        }
        let membership = match object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => match content.get("membership") {
                Some(CanonicalJsonValue::String(membership)) => membership.as_str(),
                _ => "",
            },
            _ => "",
        };
        if membership != expected.as_str() {
            return Err(invalid(format!("the membership is not `{expected}`")));
        }
        // A restricted join one of our users authorises: the conditions again (they may
        // have changed since make_join), then our signature, which the room version's
        // rules require (S2S "Restricted rooms"; rooms v8 "Authorization rules").
        if *expected == MembershipState::Join
            && let Some(authoriser) = authorising_user(&object)
            && authoriser.server_name() == self.config.server_name
        {
            self.restricted_join_authoriser(room_id, &sender)?;
            self.sign_event(&mut object, &version)?;
        }
        Ok((version, object))
    }

    /// `send_join`, `send_knock` and `send_leave`'s last steps: signatures and content hash
    /// with `keys`, the event id against the path, then the room core (a live event, sent on
    /// to the room's other servers but `origin`: [`Rooms::accept_relayed`]); only an
    /// accepted event passes (soft-failed and rejected are 403, missing events 400).
    pub(super) async fn accept_member_event(
        &self,
        origin: &ServerName,
        event_id: &EventId,
        version: &RoomVersionId,
        object: CanonicalJsonObject,
        keys: &PublicKeyMap,
    ) -> Result<OwnedEventId> {
        let verified: Verified =
            check_signatures_and_hash(object, version, keys).map_err(invalid)?;
        if verified.event_id.as_str() != event_id.as_str() {
            return Err(invalid(format!(
                "its id is {}, not {event_id}",
                verified.event_id
            )));
        }
        let member_id = verified.event_id.clone();
        match self.rooms.accept_relayed(verified, origin).await? {
            Outcome::Committed(committed) | Outcome::AlreadyKnown(committed) => {
                match committed.verdict {
                    Verdict::Accepted if committed.position.is_some() => Ok(member_id),
                    Verdict::Accepted => Err(Error::forbidden(
                        "The event is known here only without its place in the room.",
                    )),
                    Verdict::SoftFailed => Err(Error::forbidden(
                        "The event is not allowed by the room's current state.",
                    )),
                    Verdict::Rejected(reason) => Err(Error::forbidden(format!(
                        "The event is not allowed: {reason}"
                    ))),
                }
            }
            Outcome::Missing { auth, prev } => {
                let names: Vec<_> = auth.iter().chain(&prev).map(|id| id.as_str()).collect();
                Err(Error::invalid_param(format!(
                    "The event cites events this server does not hold: {}.",
                    names.join(", ")
                )))
            }
        }
    }

    /// Adds our signature to an event (over its redacted form, as every event signature:
    /// S2S "Signing events"), leaving its hashes and the other signatures as they are.
    pub(in crate::service::federation) fn sign_event(
        &self,
        object: &mut CanonicalJsonObject,
        version: &RoomVersionId,
    ) -> Result<()> {
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal("room of an unknown version"))?;
        let mut redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
            .map_err(|e| invalid(format!("cannot be redacted: {e}")))?;
        redacted.remove("signatures");
        self.server_keys
            .sign_json(&self.config.server_name, &mut redacted)?;
        let ours = match redacted.remove("signatures") {
            Some(CanonicalJsonValue::Object(mut signatures)) => {
                signatures.remove(self.config.server_name.as_str())
            }
            _ => None,
        }
        .ok_or_else(|| Error::internal("signing added no signature"))?;
        let signatures = object
            .entry("signatures".to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        match signatures {
            CanonicalJsonValue::Object(signatures) => {
                signatures.insert(self.config.server_name.to_string(), ours);
                Ok(())
            }
            _ => Err(invalid("`signatures` is not an object")),
        }
    }

    /// The answer to an accepted join: the state before it, the auth chains, the servers.
    pub(super) fn join_answer(&self, room_id: &RoomId, join_id: &EventId) -> Result<JoinAnswer> {
        let (before, _) = self
            .rooms
            .state_hashes(join_id)?
            .ok_or_else(|| Error::internal(format!("accepted join {join_id} has no state")))?;
        let state = match before {
            Some(hash) => self.rooms.state.load(hash)?,
            None => Default::default(),
        };
        let state_ids: Vec<OwnedEventId> = state
            .values()
            .map(|short| self.rooms.short.event_id(*short))
            .collect::<Result<_>>()?;
        let chain = self
            .rooms
            .auth_chain_ids(state_ids.iter().map(|id| &**id).chain([join_id]))?;
        let servers_in_room = member_servers(&self.rooms, &state, &[MembershipState::Join])?;
        let event = self
            .rooms
            .pdu_json(join_id)?
            .ok_or_else(|| Error::internal(format!("accepted join {join_id} is not stored")))?;
        tracing::info!(room = %room_id, join = %join_id, "remote join accepted");
        Ok(JoinAnswer {
            event: federation_form(event)?,
            state: self.federation_pdus(&state_ids)?,
            auth_chain: self.federation_pdus(&chain)?,
            servers_in_room: servers_in_room.into_iter().collect(),
        })
    }
}
