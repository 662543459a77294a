//! Test helpers for events built by another server: [`Remote`] (`remote.test` with its own
//! signing key) builds, hashes and signs PDUs the way a remote server would, and
//! [`remote_room`] is a room it created, as [`Verified`] events ready to be accepted.

use std::sync::atomic::{AtomicU64, Ordering};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId,
    UserId,
    serde::Base64,
    signatures::{Ed25519KeyPair, PublicKeyMap, hash_and_sign_event},
};
use serde_json::{Value as JsonValue, json};

use super::verify::{Verified, check_format, check_signatures_and_hash};

/// The first `origin_server_ts` a [`Remote`] gives; each event gets the next millisecond.
const FIRST_TS: u64 = 1_700_000_000_000;

/// Another homeserver, `remote.test`, with one ed25519 signing key (`ed25519:r1`).
pub(crate) struct Remote {
    pub name: &'static str,
    pub key: Ed25519KeyPair,
    /// The next `origin_server_ts`: events get increasing, deterministic times.
    next_ts: AtomicU64,
}

impl Remote {
    pub fn new() -> Self {
        Self::with_key(new_key("r1"))
    }

    /// `remote.test` signing with `key` (an impostor, or a rotated key).
    pub fn with_key(key: Ed25519KeyPair) -> Self {
        Self {
            name: "remote.test",
            key,
            next_ts: AtomicU64::new(FIRST_TS),
        }
    }

    /// Another server, `name`, with a key of its own.
    pub fn named(name: &'static str) -> Self {
        Self {
            name,
            key: new_key("o1"),
            next_ts: AtomicU64::new(FIRST_TS),
        }
    }

    /// A user of this server.
    pub fn user(&self, localpart: &str) -> OwnedUserId {
        OwnedUserId::try_from(format!("@{localpart}:{}", self.name)).expect("a valid user id")
    }

    /// Its public keys, as the keyring would give them.
    pub fn keys(&self) -> PublicKeyMap {
        PublicKeyMap::from([(
            self.name.to_owned(),
            [(
                format!("ed25519:{}", self.key.version()),
                Base64::new(self.key.public_key().to_vec()),
            )]
            .into(),
        )])
    }

    /// A signed event: `depth` = the largest prev depth + 1, the next `origin_server_ts`.
    /// `room` is `None` only for a version-12 create event. The create event among `auths`
    /// is left out where the room version forbids it (v12), so one list serves every
    /// version.
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        &self,
        version: &RoomVersionId,
        room: Option<&RoomId>,
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: JsonValue,
        prevs: &[&Verified],
        auths: &[&Verified],
    ) -> CanonicalJsonObject {
        let rules = version.rules().expect("a known room version");
        let depth = prevs
            .iter()
            .map(|prev| u64::from(prev.pdu.depth))
            .max()
            .unwrap_or(0)
            + 1;
        let auths: Vec<_> = auths
            .iter()
            .filter(|auth| {
                rules.event_format.allow_room_create_in_auth_events
                    || auth.pdu.kind != ruma::events::TimelineEventType::RoomCreate
            })
            .map(|auth| auth.event_id.as_str())
            .collect();
        let prevs: Vec<_> = prevs.iter().map(|prev| prev.event_id.as_str()).collect();
        let mut object = json!({
            "auth_events": auths,
            "content": content,
            "depth": depth,
            "origin_server_ts": self.next_ts.fetch_add(1, Ordering::SeqCst),
            "prev_events": prevs,
            "sender": sender,
            "type": kind,
        });
        if let Some(room) = room {
            object["room_id"] = room.as_str().into();
        }
        if let Some(state_key) = state_key {
            object["state_key"] = state_key.into();
        }
        let object = match CanonicalJsonValue::try_from(object) {
            Ok(CanonicalJsonValue::Object(object)) => object,
            other => panic!("not a canonical JSON object: {other:?}"),
        };
        self.sign(object, version)
    }

    /// Adds the content hash and this server's signature (replacing earlier ones): for tests
    /// that change a field of an event and sign it again.
    pub fn sign(
        &self,
        mut object: CanonicalJsonObject,
        version: &RoomVersionId,
    ) -> CanonicalJsonObject {
        let rules = version.rules().expect("a known room version");
        object.remove("hashes");
        object.remove("signatures");
        hash_and_sign_event(self.name, &self.key, &mut object, &rules.redaction)
            .expect("the event can be signed");
        object
    }

    /// Steps 1 to 3 as a receiving server runs them, with this server's keys.
    pub fn verified(&self, object: &CanonicalJsonObject, version: &RoomVersionId) -> Verified {
        let raw = serde_json::value::to_raw_value(object).expect("JSON");
        let checked = check_format(&raw, version).expect("well-formed");
        check_signatures_and_hash(checked, version, &self.keys()).expect("validly signed")
    }
}

/// A fresh ed25519 key with key id `ed25519:{version}`.
pub(crate) fn new_key(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).expect("a fresh key")
}

/// A room created on `remote.test` by `@carol:remote.test`: power levels give carol 100 (in
/// v12 she is the creator, with unlimited power, and is not listed) and
/// `@erin:remote.test` 50; the join rule is public; `@dave:remote.test` and erin joined.
pub(crate) struct RemoteRoom {
    pub remote: Remote,
    pub version: RoomVersionId,
    pub room_id: OwnedRoomId,
    pub carol: OwnedUserId,
    pub dave: OwnedUserId,
    pub erin: OwnedUserId,
    pub create: Verified,
    pub carol_join: Verified,
    pub power_levels: Verified,
    pub join_rules: Verified,
    pub dave_join: Verified,
    pub erin_join: Verified,
}

impl RemoteRoom {
    /// Every event, in the order they were sent (each one's prev is the one before).
    pub fn events(&self) -> [&Verified; 6] {
        [
            &self.create,
            &self.carol_join,
            &self.power_levels,
            &self.join_rules,
            &self.dave_join,
            &self.erin_join,
        ]
    }

    /// The newest event (erin's join).
    pub fn tip(&self) -> &Verified {
        &self.erin_join
    }

    /// The auth events a member `user`'s plain message needs (create, power levels, their
    /// join).
    pub fn message_auths<'a>(&'a self, join: &'a Verified) -> [&'a Verified; 3] {
        [&self.create, &self.power_levels, join]
    }
}

/// See [`RemoteRoom`].
pub(crate) fn remote_room(version: RoomVersionId) -> RemoteRoom {
    let remote = Remote::new();
    let carol = remote.user("carol");
    let dave = remote.user("dave");
    let erin = remote.user("erin");
    let v12 = version
        .rules()
        .expect("a known room version")
        .authorization
        .room_create_event_id_as_room_id;
    let verified = |object: CanonicalJsonObject| remote.verified(&object, &version);

    let mut create_content = json!({ "room_version": version.as_str() });
    if !v12 {
        create_content["creator"] = carol.as_str().into();
    }
    // A v12 room id is the create event's id; before, the creating server picks one.
    let given_room_id = (!v12).then(|| {
        OwnedRoomId::try_from(format!("!carols-room:{}", remote.name)).expect("a room id")
    });
    let create = verified(remote.event(
        &version,
        given_room_id.as_deref(),
        &carol,
        "m.room.create",
        Some(""),
        create_content,
        &[],
        &[],
    ));
    let room_id = create.room_id.clone();
    let room = Some(room_id.as_ref());
    let member = |user: &UserId, prev: &Verified, auths: &[&Verified]| {
        verified(remote.event(
            &version,
            room,
            user,
            "m.room.member",
            Some(user.as_str()),
            json!({ "membership": "join" }),
            &[prev],
            auths,
        ))
    };
    let carol_join = member(&carol, &create, &[&create]);
    let mut users = serde_json::Map::new();
    if !v12 {
        users.insert(carol.to_string(), 100.into());
    }
    users.insert(erin.to_string(), 50.into());
    let power_levels = verified(remote.event(
        &version,
        room,
        &carol,
        "m.room.power_levels",
        Some(""),
        json!({
            "users": users,
            "users_default": 0,
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "events": { "m.room.power_levels": 100 },
        }),
        &[&carol_join],
        &[&create, &carol_join],
    ));
    let join_rules = verified(remote.event(
        &version,
        room,
        &carol,
        "m.room.join_rules",
        Some(""),
        json!({ "join_rule": "public" }),
        &[&power_levels],
        &[&create, &power_levels, &carol_join],
    ));
    let dave_join = member(&dave, &join_rules, &[&create, &join_rules, &power_levels]);
    let erin_join = member(&erin, &dave_join, &[&create, &join_rules, &power_levels]);
    RemoteRoom {
        remote,
        version,
        room_id,
        carol,
        dave,
        erin,
        create,
        carol_join,
        power_levels,
        join_rules,
        dave_join,
        erin_join,
    }
}
