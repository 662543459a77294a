//! Invites across servers (server-server API, "Inviting to a room", "Leaving Rooms
//! (Rejecting Invites)"):
//!
//! - [`Services::receive_invite`]: `PUT /v2/invite` from another server for one of our
//!   users: checked, signed by us and returned; recorded for the user with the stripped
//!   state the other server sent (`rooms::remote_invite`), so `/sync` and sliding sync show
//!   it as any invite, unless the room is here with a local member (the event then comes
//!   through `/send` like any other).
//! - [`Services::invite_remote`]: one of our users invites another server's user to a room
//!   here: the event is built and authorised, sent to the invitee's server, and stored
//!   (going to the room's other servers) only once it comes back with their signature.
//! - [`Services::reject_remote_invite`]: our user rejects an invite from another server:
//!   `make_leave` / `send_leave` (v2) through the inviting server; when that fails, the
//!   invite is rejected here anyway (as Synapse does) so it leaves the user's sync.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedUserId, RoomId, RoomVersionId,
    ServerName, UserId,
    api::{
        error::{ErrorKind, IncompatibleRoomVersionErrorData},
        federation::membership::{
            RawStrippedState, create_invite, create_leave_event, prepare_leave_event,
        },
    },
    events::{StateEventType, room::member::MembershipState},
    signatures::{PublicKeyMap, verify_json},
};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    service::{
        Services,
        federation::resident::federation_form,
        rooms::{
            append::{NewEvent, supported_room_version},
            pdu::Pdu,
            remote_invite::RemoteInvite,
            verify::{check_format, check_signatures_and_hash, keys_needed},
        },
    },
};

/// State event types sent with an invite (`invite_room_state`) besides the inviter's member
/// event: those of the client-server API's "Stripped state" (as `sync::INVITE_STATE_TYPES`).
const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// Entries of a received `invite_room_state` kept at most (the body limit bounds them too).
const MAX_INVITE_STATE: usize = 64;

fn invalid(reason: impl std::fmt::Display) -> Error {
    Error::invalid_param(format!("Invalid invite event: {reason}"))
}

fn string_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(value)) => Some(value),
        _ => None,
    }
}

/// The checks on a received invite event that need nothing but the event (S2S `PUT
/// /v2/invite`: "Servers MUST apply certain validation…", each answered with
/// `M_INVALID_PARAM`): an `m.room.member` event in `room_id` whose membership is `invite`,
/// sent by a user of `origin`, about a user of `ours`. Returns the invitee.
pub(crate) fn check_invite_fields(
    object: &CanonicalJsonObject,
    origin: &ServerName,
    ours: &ServerName,
    room_id: &RoomId,
) -> Result<OwnedUserId> {
    if string_field(object, "type") != Some("m.room.member") {
        return Err(invalid("not an `m.room.member` event"));
    }
    let membership = match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => match content.get("membership") {
            Some(CanonicalJsonValue::String(membership)) => membership.as_str(),
            _ => "",
        },
        _ => "",
    };
    if membership != "invite" {
        return Err(invalid("the membership is not `invite`"));
    }
    let sender = string_field(object, "sender")
        .and_then(|sender| UserId::parse(sender).ok())
        .ok_or_else(|| invalid("no valid `sender`"))?;
    if sender.server_name() != origin {
        return Err(invalid(format!("the sender is not a user of {origin}")));
    }
    let invitee = string_field(object, "state_key")
        .and_then(|key| UserId::parse(key).ok())
        .ok_or_else(|| invalid("the `state_key` is not a user id"))?;
    if invitee.server_name() != ours {
        return Err(invalid(format!("the invitee is not a user of {ours}")));
    }
    if string_field(object, "room_id") != Some(room_id.as_str()) {
        return Err(invalid("the event is for another room"));
    }
    Ok(invitee)
}

/// A received `invite_room_state` as the stripped events clients get (`type`, `state_key`,
/// `content`, `sender`). Entries are full PDUs since Matrix 1.16 (older servers send
/// stripped events; both are read). Each must name a state event of `room_id` (when it has
/// a `room_id`); from room version 12 on the create event must be there (S2S `PUT
/// /v2/invite`: servers SHOULD check it in those versions, MAY in older ones; older ones
/// with a bad entry lose the entry, as the spec asks servers to warn rather than fail
/// while Synapse and others migrate). The entries' signatures are not checked: they only
/// describe the room to the invitee until they join, which verifies everything.
pub(crate) fn stripped_invite_state(
    entries: &[RawStrippedState],
    room_id: &RoomId,
    version: &RoomVersionId,
) -> Result<Vec<JsonValue>> {
    let strict = !matches!(
        version,
        RoomVersionId::V1
            | RoomVersionId::V2
            | RoomVersionId::V3
            | RoomVersionId::V4
            | RoomVersionId::V5
            | RoomVersionId::V6
            | RoomVersionId::V7
            | RoomVersionId::V8
            | RoomVersionId::V9
            | RoomVersionId::V10
            | RoomVersionId::V11
    );
    let mut stripped = Vec::new();
    let mut has_create = false;
    for entry in entries.iter().take(MAX_INVITE_STATE) {
        #[allow(deprecated)] // older servers still send stripped events
        let raw: &RawJsonValue = match entry {
            RawStrippedState::Pdu(raw) => raw,
            RawStrippedState::Stripped(raw) => raw.json(),
            _ => {
                tracing::warn!(%room_id, "unknown `invite_room_state` entry ignored");
                continue;
            }
        };
        let event: JsonValue = serde_json::from_str(raw.get()).unwrap_or_default();
        let kind = event["type"].as_str();
        let state_key = event["state_key"].as_str();
        let other_room = event["room_id"]
            .as_str()
            .is_some_and(|id| id != room_id.as_str());
        let (Some(kind), Some(state_key), Some(sender), true, false) = (
            kind,
            state_key,
            event["sender"].as_str(),
            event["content"].is_object(),
            other_room,
        ) else {
            if strict {
                return Err(invalid(
                    "an `invite_room_state` entry is not a state event of the room",
                ));
            }
            tracing::warn!(%room_id, "invalid `invite_room_state` entry ignored");
            continue;
        };
        has_create |= kind == "m.room.create";
        stripped.push(serde_json::json!({
            "type": kind,
            "state_key": state_key,
            "content": event["content"],
            "sender": sender,
        }));
    }
    if strict && !has_create {
        return Err(Error::new(
            ErrorKind::MissingParam,
            "`invite_room_state` has no `m.room.create` event.",
        ));
    }
    Ok(stripped)
}

impl Services {
    /// `PUT /v2/invite/{roomId}/{eventId}` from `origin`: see the module. Returns the event
    /// with our signature added.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        version: &RoomVersionId,
        raw: &RawJsonValue,
        invite_room_state: &[RawStrippedState],
    ) -> Result<Box<RawJsonValue>> {
        if !supported_room_version(version) {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(
                    version.clone(),
                )),
                format!("This server does not support rooms of version {version}."),
            ));
        }
        let object = check_format(raw, version).map_err(invalid)?;
        let invitee = check_invite_fields(&object, origin, &self.config.server_name, room_id)?;
        if self.rooms.info(room_id)?.is_some() {
            self.check_server_acl(origin, room_id)?;
        }
        match self.users.account(&invitee)? {
            None => return Err(Error::not_found(format!("{invitee} does not exist."))),
            Some(account) if account.deactivated => {
                return Err(Error::forbidden(format!("{invitee} is deactivated.")));
            }
            Some(_) => {}
        }
        if self.rooms.is_joined(room_id, &invitee)? {
            return Err(Error::forbidden(format!(
                "{invitee} is already in the room."
            )));
        }
        let stripped = stripped_invite_state(invite_room_state, room_id, version)?;

        // The sender's server signature and the content hash (rooms v3+: the id is the
        // reference hash, so it is checked against the path).
        let needed = keys_needed(&object, version).map_err(invalid)?;
        let servers: Vec<&ServerName> = needed.servers.iter().map(|server| &**server).collect();
        let keys = self
            .keyring
            .public_key_map(&object, servers, needed.signed_at)
            .await?;
        let verified = check_signatures_and_hash(object, version, &keys).map_err(invalid)?;
        if verified.redacted_on_receipt {
            return Err(invalid("its content hash does not match"));
        }
        if verified.event_id.as_str() != event_id.as_str() {
            return Err(invalid(format!(
                "its id is {}, not {event_id}",
                verified.event_id
            )));
        }
        let mut signed = verified.object;
        self.sign_event(&mut signed, version)?;

        // A room here with a member of ours: the invite comes through `/send` too, and is
        // then a room event like any other.
        let local_member = self
            .rooms
            .members(room_id)?
            .iter()
            .any(|(user, membership)| {
                *membership == MembershipState::Join && self.users.is_local(user)
            });
        if !local_member {
            let mut stored = signed.clone();
            stored.insert(
                "event_id".into(),
                CanonicalJsonValue::String(event_id.to_string()),
            );
            let invite: Pdu = serde_json::to_value(&stored)
                .and_then(serde_json::from_value)
                .map_err(invalid)?;
            self.rooms
                .record_remote_invite(RemoteInvite {
                    version: version.clone(),
                    invite,
                    stripped,
                    leave: None,
                })
                .await?;
            tracing::info!(%origin, %room_id, %invitee, "invite from another server recorded");
        }
        serde_json::value::to_raw_value(&signed).map_err(|e| Error::internal(e.to_string()))
    }

    /// `sender` invites `target`, another server's user, to `room_id`, a room here: see the
    /// module. `content` is the member event's content. Returns the stored invite.
    pub async fn invite_remote(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: JsonValue,
    ) -> Result<Pdu> {
        let server = target.server_name();
        let client = self
            .federation
            .reach(server, &format!("inviting {target}"))?
            .clone();
        if self.rooms.is_joined(room_id, target)? {
            return Err(Error::forbidden("The user is already in the room."));
        }
        let pending = self
            .rooms
            .build_pending(
                room_id,
                sender,
                NewEvent::state("m.room.member", target.as_str(), content),
            )
            .await?;
        let version = pending.version().clone();
        let ours = pending.federation_form();
        let raw = serde_json::value::to_raw_value(&ours)
            .map_err(|e| Error::internal(format!("invite serialisation: {e}")))?;
        let request = create_invite::v2::Request::new(
            room_id.to_owned(),
            pending.event_id().to_owned(),
            version.clone(),
            raw,
            self.invite_room_state(room_id, sender)?,
        );
        // S2S `PUT /v2/invite`: a 400 `M_MISSING_PARAM` or `M_INVALID_PARAM` is about our
        // request, not the client's, so the client gets a 5xx; other errors pass on.
        let answer = client
            .send(server, request)
            .await
            .map_err(|error| match error {
                Error::Matrix {
                    kind: ErrorKind::InvalidParam | ErrorKind::MissingParam,
                    message,
                    ..
                } => Error::remote(message),
                other => other,
            })?;

        // The same event, with a valid signature of theirs added.
        let returned = check_format(&answer.event, &version).map_err(|reason| {
            Error::remote(format!("{server} returned a bad invite event: {reason}"))
        })?;
        let without_signatures = |object: &CanonicalJsonObject| {
            let mut object = object.clone();
            object.remove("signatures");
            object
        };
        if without_signatures(&returned) != without_signatures(&ours) {
            return Err(Error::remote(format!(
                "{server} returned another event than the invite"
            )));
        }
        let signature = match returned.get("signatures") {
            Some(CanonicalJsonValue::Object(signatures)) => signatures.get(server.as_str()),
            _ => None,
        }
        .cloned()
        .ok_or_else(|| Error::remote(format!("{server} did not sign the invite")))?;
        self.check_invitee_signature(&returned, server, &version)
            .await?;
        self.rooms.commit_pending(pending, server, signature).await
    }

    /// `server`'s signature on `event` (over its redacted form, S2S "Signing events").
    async fn check_invitee_signature(
        &self,
        event: &CanonicalJsonObject,
        server: &ServerName,
        version: &RoomVersionId,
    ) -> Result<()> {
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal("room of an unknown version"))?;
        let signed_at = keys_needed(event, version)
            .map_err(|reason| Error::remote(format!("{server} returned a bad invite: {reason}")))?
            .signed_at;
        let mut keys: PublicKeyMap = self
            .keyring
            .public_key_map(event, [server], signed_at)
            .await?;
        // ruma checks every signature the event carries: ours too.
        keys.insert(
            self.config.server_name.to_string(),
            self.server_keys.public_keys(None),
        );
        let redacted = ruma::canonical_json::redact(event.clone(), &rules.redaction, None)
            .map_err(|e| Error::remote(format!("{server} returned a bad invite: {e}")))?;
        verify_json(&keys, &redacted).map_err(|e| {
            Error::remote(format!(
                "{server}'s signature on the invite does not verify: {e}"
            ))
        })
    }

    /// `invite_room_state` for an invite by `sender` to `room_id`: the state events of the
    /// stripped state and the inviter's member event, as PDUs (Matrix 1.16).
    fn invite_room_state(
        &self,
        room_id: &RoomId,
        sender: &UserId,
    ) -> Result<Vec<RawStrippedState>> {
        let kinds = INVITE_STATE_TYPES
            .iter()
            .map(|kind| (StateEventType::from(*kind), ""))
            .chain([(StateEventType::RoomMember, sender.as_str())]);
        let mut state = Vec::new();
        for (kind, state_key) in kinds {
            if let Some(pdu) = self.rooms.current_state_event(room_id, &kind, state_key)?
                && let Some(stored) = self.rooms.pdu_json(&pdu.event_id)?
            {
                state.push(RawStrippedState::Pdu(federation_form(stored)?));
            }
        }
        Ok(state)
    }

    /// `user` rejects their pending invite from another server to `room_id`: see the
    /// module. 403 when there is no such invite.
    pub async fn reject_remote_invite(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let invite = self
            .rooms
            .pending_remote_invite(room_id, user)?
            .ok_or_else(|| Error::forbidden("You are not invited to this room."))?;
        let server = invite.sender().server_name().to_owned();
        let leave = match self
            .leave_through(&server, room_id, user, reason, &invite.version)
            .await
        {
            Ok(leave) => leave,
            Err(error) => {
                tracing::info!(%server, %room_id, %error, "remote rejection failed; rejected here only");
                self.local_rejection(&invite, user, reason)?
            }
        };
        self.rooms
            .record_remote_rejection(room_id, user, leave)
            .await
    }

    /// `make_leave` and `send_leave` (v2) through `server`; the leave as sent.
    pub(super) async fn leave_through(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
        version: &RoomVersionId,
    ) -> Result<Pdu> {
        let client = self
            .federation
            .reach(server, &format!("leaving {room_id}"))?
            .clone();
        let template = client
            .send(
                server,
                prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned()),
            )
            .await?;
        let version = template.room_version.unwrap_or_else(|| version.clone());
        let (event_id, raw) = self.sign_member_template(
            server,
            room_id,
            user,
            &version,
            &template.event,
            leave_content(reason).into(),
        )?;
        client
            .send(
                server,
                create_leave_event::v2::Request::new(
                    room_id.to_owned(),
                    event_id.clone(),
                    raw.clone(),
                ),
            )
            .await?;
        stored_pdu(&raw, &event_id)
    }

    /// The rejection made here alone: a leave signed by us after the invite (its only prev
    /// and auth event), as Synapse makes one when the inviting server cannot be reached.
    fn local_rejection(
        &self,
        invite: &RemoteInvite,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<Pdu> {
        let rules = invite
            .version
            .rules()
            .ok_or_else(|| Error::internal("remote invite of an unknown version"))?;
        let id = CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(
            invite.invite.event_id.to_string(),
        )]);
        let depth = ruma::Int::try_from(u64::from(invite.invite.depth).saturating_add(1))
            .unwrap_or(ruma::Int::MAX);
        let mut event = CanonicalJsonObject::new();
        for (field, value) in [
            ("type", CanonicalJsonValue::String("m.room.member".into())),
            (
                "room_id",
                CanonicalJsonValue::String(invite.invite.room_id().to_string()),
            ),
            ("sender", CanonicalJsonValue::String(user.to_string())),
            ("state_key", CanonicalJsonValue::String(user.to_string())),
            ("content", leave_content(reason)),
            ("prev_events", id.clone()),
            ("auth_events", id),
            ("depth", CanonicalJsonValue::Integer(depth)),
        ] {
            event.insert(field.into(), value);
        }
        let (event_id, raw) =
            self.sign_member_event(&self.config.server_name.clone(), event, &rules)?;
        stored_pdu(&raw, &event_id)
    }
}

fn leave_content(reason: Option<&str>) -> CanonicalJsonValue {
    let mut content = CanonicalJsonObject::new();
    content.insert(
        "membership".into(),
        CanonicalJsonValue::String("leave".into()),
    );
    if let Some(reason) = reason {
        content.insert("reason".into(), CanonicalJsonValue::String(reason.into()));
    }
    CanonicalJsonValue::Object(content)
}

/// A signed event of ours as stored (with `event_id`).
fn stored_pdu(raw: &RawJsonValue, event_id: &EventId) -> Result<Pdu> {
    let mut value: JsonValue =
        serde_json::from_str(raw.get()).map_err(|e| Error::internal(e.to_string()))?;
    value["event_id"] = event_id.as_str().into();
    serde_json::from_value(value).map_err(|e| Error::internal(format!("member event: {e}")))
}

#[cfg(test)]
mod tests;
