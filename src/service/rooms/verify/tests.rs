//! Steps 1 to 3 on events built by `remote.test` ([`Remote`]), for room versions 10 and 12.

use std::collections::HashMap;

use ruma::{
    OwnedEventId, RoomVersionId,
    events::StateEventType,
    serde::Base64,
    state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules},
};
use serde_json::json;

use super::*;
use crate::service::rooms::remote_tests::{Remote, RemoteRoom, new_key, remote_room};

const VERSIONS: [RoomVersionId; 2] = [RoomVersionId::V10, RoomVersionId::V12];

fn raw(object: &CanonicalJsonObject) -> Box<RawJsonValue> {
    serde_json::value::to_raw_value(object).unwrap()
}

/// Steps 1 to 3 with `keys`.
fn check(
    object: &CanonicalJsonObject,
    version: &RoomVersionId,
    keys: &PublicKeyMap,
) -> Result<Verified, Dropped> {
    check_signatures_and_hash(check_format(&raw(object), version)?, version, keys)
}

#[track_caller]
fn assert_dropped<T>(result: Result<T, Dropped>, mentions: &str) {
    match result {
        Err(Dropped(reason)) => assert!(
            reason.contains(mentions),
            "dropped, but the reason {reason:?} does not mention {mentions:?}"
        ),
        Ok(_) => panic!("expected Dropped for {mentions:?}"),
    }
}

/// The `origin_server_ts` of an object.
fn ts_of(object: &CanonicalJsonObject) -> MilliSecondsSinceUnixEpoch {
    match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => {
            MilliSecondsSinceUnixEpoch(UInt::try_from(i64::from(*ts)).unwrap())
        }
        other => panic!("no origin_server_ts: {other:?}"),
    }
}

/// A message from dave, after erin's join.
fn message(room: &RemoteRoom, body: &str) -> CanonicalJsonObject {
    room.remote.event(
        &room.version,
        Some(&room.room_id),
        &room.dave,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": body }),
        &[room.tip()],
        &room.message_auths(&room.dave_join),
    )
}

#[test]
fn every_event_of_remote_room_verifies_and_is_authorised() {
    for version in VERSIONS {
        let room = remote_room(version.clone());
        let rules = version.rules().unwrap();
        if version == RoomVersionId::V12 {
            assert_eq!(
                room.room_id,
                room_id_from_create_event_id(&room.create.event_id)
            );
            assert!(!room.create.object.contains_key("room_id"));
        } else {
            assert_eq!(room.room_id.as_str(), "!carols-room:remote.test");
        }
        assert_eq!(room.create.pdu.sender, room.carol);
        assert_eq!(
            room.erin_join.pdu.state_key.as_deref(),
            Some(room.erin.as_str())
        );
        // Linear: each event's state before is the state after the one before it.
        let mut by_id: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut state: HashMap<(StateEventType, String), Pdu> = HashMap::new();
        for (i, event) in room.events().into_iter().enumerate() {
            assert!(!event.redacted_on_receipt);
            assert_eq!(event.room_id, room.room_id);
            assert_eq!(event.pdu.event_id, event.event_id);
            assert_eq!(u64::from(event.pdu.depth), i as u64 + 1);
            assert!(!event.object.contains_key("event_id"));
            // Verifies again from its stored form.
            let again = check(&event.object, &version, &room.remote.keys()).unwrap();
            assert_eq!(again.event_id, event.event_id);

            let pdu = &event.pdu;
            check_state_independent_auth_rules(&rules.authorization, pdu, |id| {
                by_id.get(id).cloned()
            })
            .unwrap_or_else(|e| panic!("{version} event {i}: {e}"));
            check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
                state.get(&(kind.clone(), key.to_owned())).cloned()
            })
            .unwrap_or_else(|e| panic!("{version} event {i}: {e}"));
            by_id.insert(event.event_id.clone(), pdu.clone());
            let key = pdu.state_key.clone().expect("every event is a state event");
            state.insert((pdu.state_event_type(), key), pdu.clone());
        }
        // A message from a member verifies too.
        let message = room.remote.verified(&message(&room, "hello"), &version);
        assert_eq!(u64::from(message.pdu.depth), 7);
        assert_eq!(message.pdu.prev_events, vec![room.tip().event_id.clone()]);
    }
}

#[test]
fn content_hash_mismatch_is_stored_redacted() {
    for version in VERSIONS {
        let room = remote_room(version.clone());
        let mut object = message(&room, "the original");
        let original = room.remote.verified(&object, &version);
        let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content") else {
            panic!("content is an object");
        };
        content.insert(
            "body".to_owned(),
            CanonicalJsonValue::String("altered after signing".to_owned()),
        );
        // The signatures cover the redacted form, which does not include a message's
        // content: still valid, but the content hash no longer matches.
        let verified = check(&object, &version, &room.remote.keys()).unwrap();
        assert!(verified.redacted_on_receipt);
        assert_eq!(verified.event_id, original.event_id);
        assert_eq!(
            verified.object.get("content"),
            Some(&CanonicalJsonValue::Object(CanonicalJsonObject::new()))
        );
        assert_eq!(verified.pdu.content.get(), "{}");
        // What stays is what the signatures cover; it verifies as a redacted copy again.
        assert!(verified.object.contains_key("hashes"));
        let again = check(&verified.object, &version, &room.remote.keys()).unwrap();
        assert_eq!(again.event_id, original.event_id);
        assert!(!original.redacted_on_receipt);
    }
}

#[test]
fn bad_signature_is_dropped() {
    for version in VERSIONS {
        let room = remote_room(version.clone());
        let keys = room.remote.keys();

        // A field the signatures cover, changed after signing.
        let mut object = message(&room, "hi");
        object.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(42u32.into()),
        );
        assert_dropped(check(&object, &version, &keys), "signature");

        // Signed by another key under the same key id.
        let impostor = Remote::with_key(new_key("r1"));
        let forged = impostor.sign(message(&room, "hi"), &version);
        assert_dropped(check(&forged, &version, &keys), "signature");

        // A garbled signature.
        let mut object = message(&room, "hi");
        let signatures = object.get_mut("signatures").unwrap();
        let CanonicalJsonValue::Object(by_server) = signatures else {
            panic!("signatures is an object");
        };
        by_server.insert(
            "remote.test".to_owned(),
            CanonicalJsonValue::Object(
                [(
                    "ed25519:r1".to_owned(),
                    CanonicalJsonValue::String("AAAA".to_owned()),
                )]
                .into(),
            ),
        );
        assert_dropped(check(&object, &version, &keys), "signature");

        // Not signed at all.
        let mut object = message(&room, "hi");
        object.remove("signatures");
        assert!(check(&object, &version, &keys).is_err());
    }
}

#[test]
fn missing_key_is_dropped() {
    for version in VERSIONS {
        let room = remote_room(version.clone());
        let object = message(&room, "hi");

        assert_dropped(
            check(&object, &version, &PublicKeyMap::new()),
            "remote.test",
        );
        // A key of the server, but not the one it signed with.
        let other = new_key("r2");
        let wrong_id = PublicKeyMap::from([(
            "remote.test".to_owned(),
            [(
                "ed25519:r2".to_owned(),
                Base64::new(other.public_key().to_vec()),
            )]
            .into(),
        )]);
        assert_dropped(check(&object, &version, &wrong_id), "remote.test");

        // A restricted join needs the authorising server's signature too (rooms v8+).
        let join = room.remote.event(
            &version,
            Some(&room.room_id),
            &room.remote.user("frank"),
            "m.room.member",
            Some("@frank:remote.test"),
            json!({
                "membership": "join",
                "join_authorised_via_users_server": "@olga:other.test",
            }),
            &[room.tip()],
            &[&room.create, &room.join_rules, &room.power_levels],
        );
        let checked = check_format(&raw(&join), &version).unwrap();
        let needed = keys_needed(&checked, &version).unwrap();
        assert_eq!(
            needed
                .servers
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["other.test", "remote.test"]
        );
        assert_eq!(
            needed.signed_at,
            Some(ts_of(&join)),
            "rooms v5+ check key validity at the event's time"
        );
        assert_dropped(
            check_signatures_and_hash(checked.clone(), &version, &room.remote.keys()),
            "other.test",
        );
        // With other.test's keys in the map but no signature of it on the event.
        let mut keys = room.remote.keys();
        keys.insert(
            "other.test".to_owned(),
            [(
                "ed25519:o1".to_owned(),
                Base64::new(other.public_key().to_vec()),
            )]
            .into(),
        );
        assert_dropped(
            check_signatures_and_hash(checked, &version, &keys),
            "other.test",
        );
    }
}

#[test]
fn unknown_format_is_dropped() {
    for version in VERSIONS {
        let room = remote_room(version.clone());
        let keys = room.remote.keys();
        let good = message(&room, "hi");
        check(&good, &version, &keys).unwrap();

        for field in [
            "sender",
            "type",
            "depth",
            "prev_events",
            "auth_events",
            "room_id",
            "content",
            "origin_server_ts",
        ] {
            let mut object = good.clone();
            object.remove(field);
            assert!(
                check_format(&raw(&object), &version).is_err(),
                "{version}: accepted without {field}"
            );
        }
        let with = |field: &str, value: serde_json::Value| {
            let mut object = good.clone();
            object.insert(field.to_owned(), value.try_into().unwrap());
            check_format(&raw(&object), &version)
        };
        // More than 20 prev events (rooms v1+, "Event format").
        let prevs: Vec<String> = (0..21).map(|i| format!("$event{i}")).collect();
        assert!(with("prev_events", json!(prevs)).is_err());
        assert!(with("prev_events", json!(prevs[..20])).is_ok());
        // More than 10 auth events.
        let auths: Vec<String> = (0..11).map(|i| format!("$auth{i}")).collect();
        assert!(with("auth_events", json!(auths)).is_err());
        // Wrong types and bad ids.
        assert!(with("depth", json!(-1)).is_err());
        assert!(with("depth", json!("7")).is_err());
        assert!(with("content", json!("text")).is_err());
        assert!(with("sender", json!("carol")).is_err());
        assert!(with("prev_events", json!(["not an event id"])).is_err());
        assert!(with("state_key", json!(7)).is_err());
        // Too long: a state key over 255 bytes, an event over 65,536.
        assert!(with("state_key", json!("k".repeat(256))).is_err());
        let mut huge = good.clone();
        let Some(CanonicalJsonValue::Object(content)) = huge.get_mut("content") else {
            panic!("content is an object");
        };
        content.insert(
            "padding".to_owned(),
            CanonicalJsonValue::String("x".repeat(70_000)),
        );
        assert_dropped(check_format(&raw(&huge), &version), "larger");
        // Not canonical JSON: a float.
        let float = RawJsonValue::from_string(serde_json::to_string(&good).unwrap().replacen(
            "\"depth\":7",
            "\"depth\":7.5",
            1,
        ))
        .unwrap();
        assert!(float.get().contains("7.5"));
        assert_dropped(check_format(&float, &version), "canonical");
        // Not an object.
        let array = RawJsonValue::from_string("[1]".to_owned()).unwrap();
        assert!(check_format(&array, &version).is_err());
    }

    // Room versions this server does not handle.
    let room = remote_room(RoomVersionId::V10);
    let object = message(&room, "hi");
    for version in [
        RoomVersionId::V1,
        RoomVersionId::V2,
        RoomVersionId::try_from("org.example.unknown").unwrap(),
    ] {
        assert_dropped(
            check_format(&raw(&object), &version),
            "unsupported room version",
        );
        assert!(check_signatures_and_hash(object.clone(), &version, &room.remote.keys()).is_err());
    }
}

#[test]
fn event_id_key_is_stripped() {
    for version in VERSIONS {
        let room = remote_room(version.clone());
        let object = message(&room, "hi");
        let expected = room.remote.verified(&object, &version).event_id;

        let mut sent = object.clone();
        sent.insert(
            "event_id".to_owned(),
            CanonicalJsonValue::String("$chosen-by-the-sender".to_owned()),
        );
        sent.insert(
            "unsigned".to_owned(),
            json!({ "age": 5, "prev_content": { "forged": true } })
                .try_into()
                .unwrap(),
        );
        let checked = check_format(&raw(&sent), &version).unwrap();
        assert_eq!(checked, object);
        let verified = check_signatures_and_hash(checked, &version, &room.remote.keys()).unwrap();
        assert_eq!(verified.event_id, expected);
        assert!(!verified.redacted_on_receipt);
        assert!(verified.pdu.unsigned.is_none());
    }
}
