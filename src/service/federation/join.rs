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
    events::StateEventType,
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

/// Room versions we can join (sent as `ver`).
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
        let mut last_error = None;
        for server in servers
            .iter()
            .filter(|server| **server != self.config.server_name)
        {
            match self
                .join_through(server, room_id, user, content.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::info!(%server, %room_id, %error, "remote join failed");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::not_found("No server to join the room through.")))
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
        let rules = version
            .rules()
            .filter(|_| supported_room_version(&version))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnsupportedRoomVersion,
                    format!("The room's version ({version}) is not supported by this server."),
                )
            })?;

        // The template, completed and signed.
        let mut event = template_event(server, &template.event, room_id, user, "join")?;
        let mut content = match CanonicalJsonValue::try_from(content) {
            Ok(CanonicalJsonValue::Object(content)) => content,
            _ => return Err(Error::internal("member content is not an object")),
        };
        // A restricted room's resident names the member who authorises the join.
        if let Some(CanonicalJsonValue::Object(given)) = event.get("content")
            && let Some(via) = given.get("join_authorised_via_users_server")
        {
            content.insert("join_authorised_via_users_server".into(), via.clone());
        }
        event.insert("content".into(), CanonicalJsonValue::Object(content));
        let (event_id, raw) = self.sign_member_event(server, event, &rules)?;

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
        let join_raw = answer.event.unwrap_or(raw);
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

        // The room's auth chain and state, checked and stored as outliers.
        let mut events = Vec::with_capacity(answer.auth_chain.len() + answer.state.len());
        let mut state_ids = Vec::with_capacity(answer.state.len());
        for (raw, in_state) in answer
            .auth_chain
            .iter()
            .map(|raw| (raw, false))
            .chain(answer.state.iter().map(|raw| (raw, true)))
        {
            match self.verify_pdu(raw, &version).await {
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

/// A membership template another server sent (`make_join`, `make_leave`), as canonical
/// JSON, checked to be a member event of `user` about themselves in `room_id`.
pub(super) fn template_event(
    server: &ServerName,
    template: &RawJsonValue,
    room_id: &RoomId,
    user: &UserId,
    what: &str,
) -> Result<CanonicalJsonObject> {
    let event: CanonicalJsonObject = serde_json::from_str(template.get()).map_err(|e| {
        Error::remote(format!(
            "{server} sent a {what} template that is not canonical JSON: {e}"
        ))
    })?;
    let check = |field: &str, expected: &str| match event.get(field) {
        Some(CanonicalJsonValue::String(value)) if value == expected => Ok(()),
        _ => Err(Error::remote(format!(
            "{server} sent a {what} template with another `{field}`"
        ))),
    };
    check("type", "m.room.member")?;
    check("sender", user.as_str())?;
    check("state_key", user.as_str())?;
    check("room_id", room_id.as_str())?;
    Ok(event)
}

impl Services {
    /// A member event of ours from a template (`server`'s, or ours): `origin` and
    /// `origin_server_ts` set, then hashed and signed. Returns its id and the event.
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
