//! Joining a room on another server (server-server API, "Joining Rooms"): `make_join` on a
//! server in the room gives an event template; we fill in the member's profile, hash and
//! sign it; `send_join` (v2) gives the room's state and its auth chain before the join.
//! Every event of both is checked (format, signatures, content hash) and stored as an
//! outlier through the room core; the join event itself is then accepted as a live event
//! with that state as the state before it (its prev events stay holes for backfill). The
//! room is then known here: our users' next events in it go to the other servers in it.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    api::{
        error::ErrorKind,
        federation::membership::{create_join_event, prepare_join_event},
    },
    events::{StateEventType, room::member::MembershipState},
    room_version_rules::RoomVersionRules,
    signatures::{hash_and_sign_event, reference_hash},
};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            accept::{Outcome, Place, StateBefore},
            append::supported_room_version,
            check::Verdict,
            verify::{Dropped, Verified},
        },
    },
};

/// Room versions we can join or knock on (sent as `ver`).
pub(super) fn versions() -> Vec<RoomVersionId> {
    use RoomVersionId::*;
    [V3, V4, V5, V6, V7, V8, V9, V10, V11, V12].into()
}

impl Services {
    /// Joins `user` to `room_id`, which this server is not in, through the first of
    /// `servers` that lets it. `content` is the member event's content (membership,
    /// profile, reason).
    pub async fn join_remote(
        &self,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        user: &UserId,
        content: JsonValue,
    ) -> Result<()> {
        self.member_remote(room_id, servers, user, content, MembershipState::Join)
            .await
    }

    /// A join or a knock (`membership`) for `user` in `room_id`, which this server is not
    /// in, through each of `servers` but this one in turn, until one succeeds (the last
    /// error otherwise; 404 when there is no other server to ask). `content` is the member
    /// event's content (membership, profile, reason).
    pub async fn member_remote(
        &self,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        user: &UserId,
        content: JsonValue,
        membership: MembershipState,
    ) -> Result<()> {
        let mut last_error = None;
        for server in servers
            .iter()
            .filter(|server| **server != self.config.server_name)
        {
            let attempt = match membership {
                MembershipState::Knock => {
                    self.knock_through(server, room_id, user, content.clone())
                        .await
                }
                _ => {
                    self.join_through(server, room_id, user, content.clone())
                        .await
                }
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::info!(%server, %room_id, %error, %membership, "remote membership failed");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::not_found("No server to reach the room through.")))
    }

    async fn join_through(
        &self,
        server: &OwnedServerName,
        room_id: &RoomId,
        user: &UserId,
        content: JsonValue,
    ) -> Result<()> {
        let client = self
            .federation
            .reach(server, &format!("joining {room_id}"))?
            .clone();
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = versions();
        let template = client.send(server, request).await?;
        let version = template.room_version.unwrap_or(RoomVersionId::V1);
        let (event_id, raw) =
            self.sign_member_template(server, room_id, user, &version, &template.event, content)?;
        let answer = client
            .send(
                server,
                create_join_event::v2::Request::new(
                    room_id.to_owned(),
                    event_id.clone(),
                    raw.clone(),
                ),
            )
            .await?
            .room_state;
        // A restricted join comes back signed by the resident too.
        let join_raw = match &answer.event {
            Some(returned) => with_signatures_from(&raw, returned).map_err(|reason| {
                Error::remote(format!("{server} returned a bad join event: {reason}"))
            })?,
            None => raw,
        };
        let join = self
            .verify_pdu(&join_raw, &version)
            .await
            .map_err(|Dropped(reason)| {
                Error::remote(format!("{server} returned a bad join event: {reason}"))
            })?;
        if join.event_id != event_id {
            return Err(Error::remote(format!(
                "{server} returned another join event than ours"
            )));
        }

        // The room's auth chain and state, checked and stored as outliers. Each event's
        // JSON is dropped once it is checked: the answer is never held twice.
        let (auth_chain, state) = (answer.auth_chain, answer.state);
        let mut events = Vec::with_capacity(auth_chain.len() + state.len());
        let mut state_ids = Vec::with_capacity(state.len());
        for (raw, in_state) in auth_chain
            .into_iter()
            .map(|raw| (raw, false))
            .chain(state.into_iter().map(|raw| (raw, true)))
        {
            match self.verify_pdu(&raw, &version).await {
                Ok(found) if found.room_id == room_id => {
                    if in_state {
                        state_ids.push(found.event_id.clone());
                    }
                    events.push(found);
                }
                Ok(found) => {
                    tracing::info!(%server, event_id = %found.event_id, "send_join event of another room dropped")
                }
                Err(Dropped(reason)) => tracing::info!(%server, %reason, "send_join event dropped"),
            }
        }
        let mut seen = std::collections::HashSet::new();
        events.retain(|event: &Verified| seen.insert(event.event_id.clone()));
        self.rooms.accept_outliers(events).await?;

        // The state before the join: what was stored and not rejected.
        let state = self.state_map_of(state_ids)?;
        if !state.contains_key(&(StateEventType::RoomCreate, String::new())) {
            return Err(Error::remote(format!(
                "{server} sent a room state without its create event"
            )));
        }
        let outcome = self
            .rooms
            .accept(
                join,
                Place::Live,
                StateBefore {
                    fetched: vec![state],
                },
            )
            .await?;
        match outcome {
            Outcome::Committed(committed) | Outcome::AlreadyKnown(committed)
                if committed.verdict == Verdict::Accepted =>
            {
                Ok(())
            }
            Outcome::Committed(committed) | Outcome::AlreadyKnown(committed) => {
                Err(Error::forbidden(format!(
                    "The join was not accepted here: {:?}",
                    committed.verdict
                )))
            }
            Outcome::Missing { auth, prev } => Err(Error::remote(format!(
                "{server} left out {} auth and {} state events the join needs",
                auth.len(),
                prev.len()
            ))),
        }
    }
}

/// The rules of a room `version` we can join or knock on: 400 `M_UNSUPPORTED_ROOM_VERSION`
/// for another (versions 1 and 2, unknown ones; client-server API "Joining rooms").
pub(super) fn member_rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version
        .rules()
        .filter(|_| supported_room_version(version))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("The room's version ({version}) is not supported by this server."),
            )
        })
}

impl Services {
    /// The member event from `server`'s template (`make_join`, `make_knock`, `make_leave`) for `user`
    /// in `room_id`, completed with `content` (a resident's
    /// `join_authorised_via_users_server` kept), our `origin` and time, hashed and signed;
    /// with its event id. 502 for a template that is not for this user's member event.
    pub(super) fn sign_member_template(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        version: &RoomVersionId,
        template: &RawJsonValue,
        content: JsonValue,
    ) -> Result<(OwnedEventId, Box<RawJsonValue>)> {
        let rules = member_rules(version)?;
        let mut event: CanonicalJsonObject = serde_json::from_str(template.get()).map_err(|e| {
            Error::remote(format!(
                "{server} sent a member event template that is not canonical JSON: {e}"
            ))
        })?;
        let check = |field: &str, expected: &str| match event.get(field) {
            Some(CanonicalJsonValue::String(value)) if value == expected => Ok(()),
            _ => Err(Error::remote(format!(
                "{server} sent a member event template with another `{field}`"
            ))),
        };
        check("type", "m.room.member")?;
        check("sender", user.as_str())?;
        check("state_key", user.as_str())?;
        check("room_id", room_id.as_str())?;
        let mut content = match CanonicalJsonValue::try_from(content) {
            Ok(CanonicalJsonValue::Object(content)) => content,
            _ => return Err(Error::internal("member content is not an object")),
        };
        // A restricted room's resident names the member who authorises the join.
        if content.get("membership") == Some(&CanonicalJsonValue::String("join".into()))
            && let Some(CanonicalJsonValue::Object(given)) = event.get("content")
            && let Some(via) = given.get("join_authorised_via_users_server")
        {
            content.insert("join_authorised_via_users_server".into(), via.clone());
        }
        event.insert("content".into(), CanonicalJsonValue::Object(content));
        self.sign_member_event(server, event, &rules)
    }

    /// A member event of ours (from `server`'s template, or made here: a rejection of a
    /// remote invite): `origin` and `origin_server_ts` set, then hashed and signed with the
    /// room version's `rules`. Returns its id and the event.
    pub(super) fn sign_member_event(
        &self,
        server: &ServerName,
        mut event: CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<(OwnedEventId, Box<RawJsonValue>)> {
        event.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(
                ruma::Int::try_from(u64::from(MilliSecondsSinceUnixEpoch::now().get()))
                    .unwrap_or_default(),
            ),
        );
        event.insert(
            "origin".into(),
            CanonicalJsonValue::String(self.config.server_name.to_string()),
        );
        for unsigned_field in ["event_id", "hashes", "signatures", "unsigned"] {
            event.remove(unsigned_field);
        }
        hash_and_sign_event(
            self.config.server_name.as_str(),
            self.server_keys.keypair(),
            &mut event,
            &rules.redaction,
        )
        .map_err(|e| {
            Error::remote(format!(
                "the member event from {server}'s template cannot be signed: {e}"
            ))
        })?;
        let hash = reference_hash(&event, rules)
            .map_err(|e| Error::internal(format!("member event id: {e}")))?;
        let event_id = OwnedEventId::try_from(format!("${hash}"))
            .map_err(|_| Error::internal("reference hash is not an event id"))?;
        let raw =
            serde_json::value::to_raw_value(&event).map_err(|e| Error::internal(e.to_string()))?;
        Ok((event_id, raw))
    }
}

/// `ours` with the signatures of `returned` added: `returned` must be `ours` exactly but for
/// its `signatures` (and `unsigned`), so a resident can add its signature to our join (a
/// restricted join, S2S "Restricted rooms") and change nothing else; our own signature
/// stays ours.
fn with_signatures_from(
    ours: &RawJsonValue,
    returned: &RawJsonValue,
) -> std::result::Result<Box<RawJsonValue>, String> {
    let parse = |raw: &RawJsonValue| {
        serde_json::from_str::<CanonicalJsonObject>(raw.get())
            .map_err(|e| format!("not canonical JSON: {e}"))
    };
    let mut ours = parse(ours)?;
    let mut returned = parse(returned)?;
    returned.remove("unsigned");
    let their_signatures = match returned.remove("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => signatures,
        _ => return Err("no `signatures`".to_owned()),
    };
    let Some(CanonicalJsonValue::Object(signatures)) = ours.remove("signatures") else {
        return Err("our event has no signatures".to_owned());
    };
    if returned != ours {
        return Err("it is not the join we sent".to_owned());
    }
    let mut merged = their_signatures;
    // Ours as we made them, whatever the answer says.
    merged.extend(signatures);
    ours.insert("signatures".into(), CanonicalJsonValue::Object(merged));
    serde_json::value::to_raw_value(&ours).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, value::to_raw_value};

    use super::with_signatures_from;

    #[test]
    fn a_returned_join_only_adds_signatures() {
        let ours = to_raw_value(&json!({
            "type": "m.room.member",
            "content": { "membership": "join", "join_authorised_via_users_server": "@a:r.test" },
            "signatures": { "us.test": { "ed25519:1": "ours" } },
        }))
        .unwrap();
        // The resident's signature added (and ours left alone, whatever it claims).
        let signed = to_raw_value(&json!({
            "type": "m.room.member",
            "content": { "membership": "join", "join_authorised_via_users_server": "@a:r.test" },
            "signatures": {
                "us.test": { "ed25519:1": "replaced" },
                "r.test": { "ed25519:2": "theirs" },
            },
            "unsigned": { "age": 1 },
        }))
        .unwrap();
        let merged: serde_json::Value =
            serde_json::from_str(with_signatures_from(&ours, &signed).unwrap().get()).unwrap();
        assert_eq!(
            merged["signatures"],
            json!({ "us.test": { "ed25519:1": "ours" }, "r.test": { "ed25519:2": "theirs" } })
        );
        assert!(merged.get("unsigned").is_none());
        // Anything else changed: refused.
        let changed = to_raw_value(&json!({
            "type": "m.room.member",
            "content": { "membership": "join", "join_authorised_via_users_server": "@b:r.test" },
            "signatures": { "r.test": { "ed25519:2": "theirs" } },
        }))
        .unwrap();
        assert!(with_signatures_from(&ours, &changed).is_err());
        let unsigned = to_raw_value(&json!({ "type": "m.room.member" })).unwrap();
        assert!(with_signatures_from(&ours, &unsigned).is_err());
    }
}
