//! The resident server's side of joins and gap filling: join templates, a remote join
//! checked and accepted (public, invite-only, restricted), the answers' state and auth
//! chains, who may read, and the `get_missing_events` and `/backfill` walks (rejected
//! events skipped, hidden events redacted). Remote events come from `remote.test`
//! ([`Remote`]); rooms v10 and v12.

use std::sync::Arc;

use http::StatusCode;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomVersionId, UserId,
    api::error::ErrorKind, events::room::member::MembershipState, server_name,
    signatures::reference_hash, user_id,
};
use serde_json::{Map, Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{JoinAnswer, backfill_walk, missing_events_walk};
use crate::{
    Error,
    service::{
        Services,
        rooms::{
            Rooms,
            accept::{Outcome, Place, StateBefore},
            append::NewEvent,
            check::Verdict,
            create::{CreateRoom, Preset},
            membership::MemberProfile,
            remote_tests::{Remote, remote_room},
        },
    },
    storage::Db,
};

const VERSIONS: [RoomVersionId; 2] = [RoomVersionId::V10, RoomVersionId::V12];
fn remote_server() -> &'static ruma::ServerName {
    server_name!("remote.test")
}

fn services() -> Arc<Services> {
    Services::build(crate::config::tests_support::config(), Db::memory()).unwrap()
}

fn alice() -> &'static UserId {
    user_id!("@alice:example.org")
}

async fn create(
    services: &Services,
    version: &RoomVersionId,
    preset: Preset,
    initial_state: Vec<(String, String, JsonValue)>,
) -> OwnedRoomId {
    services
        .rooms
        .create_room(
            alice(),
            MemberProfile::default(),
            CreateRoom {
                version: version.clone(),
                preset,
                creation_content: Map::new(),
                power_level_content_override: None,
                alias: None,
                initial_state,
                name: Some("Lobby".to_owned()),
                topic: None,
                invite: Vec::new(),
                is_direct: false,
                publish: false,
            },
        )
        .await
        .unwrap()
}

async fn say(services: &Services, room_id: &OwnedRoomId, body: &str) -> OwnedEventId {
    services
        .rooms
        .send(
            room_id,
            alice(),
            NewEvent::message(
                "m.room.message",
                json!({ "msgtype": "m.text", "body": body }),
            ),
            None,
        )
        .await
        .unwrap()
        .event_id
}

#[track_caller]
fn assert_error<T: std::fmt::Debug>(result: crate::Result<T>, status: StatusCode, errcode: &str) {
    match result {
        Err(Error::Matrix {
            status: got,
            kind,
            message,
        }) => {
            assert_eq!(got, status, "{message}");
            assert_eq!(kind.errcode().to_string(), errcode, "{message}");
        }
        other => panic!("expected {status} {errcode}, got {other:?}"),
    }
}

fn object(raw: &RawJsonValue) -> JsonValue {
    serde_json::from_str(raw.get()).unwrap()
}

/// The template signed by `remote` as the joining server would: its `origin`, its
/// signature; returns the event id (the reference hash) and the event.
fn sign_template(
    remote: &Remote,
    mut template: CanonicalJsonObject,
    version: &RoomVersionId,
) -> (OwnedEventId, Box<RawJsonValue>) {
    template.insert(
        "origin".into(),
        CanonicalJsonValue::String(remote.name.to_owned()),
    );
    let signed = remote.sign(template, version);
    let hash = reference_hash(&signed, &version.rules().unwrap()).unwrap();
    let event_id = OwnedEventId::try_from(format!("${hash}")).unwrap();
    (event_id, serde_json::value::to_raw_value(&signed).unwrap())
}

/// `send_join` with `remote`'s keys (and ours) instead of the keyring's network fetch.
async fn send_join(
    services: &Services,
    remote: &Remote,
    room_id: &OwnedRoomId,
    event_id: &OwnedEventId,
    raw: &RawJsonValue,
) -> crate::Result<JoinAnswer> {
    let (version, object) =
        services.check_member_event(remote_server(), room_id, raw, &MembershipState::Join)?;
    let mut keys = remote.keys();
    keys.insert(
        "example.org".to_owned(),
        services.server_keys.public_keys(None),
    );
    let join_id = services
        .accept_member_event(remote_server(), event_id, &version, object, &keys)
        .await?;
    services.join_answer(room_id, &join_id)
}

/// `@bob:remote.test` joins `room_id` through make_join and send_join.
async fn join(
    services: &Services,
    remote: &Remote,
    room_id: &OwnedRoomId,
    version: &RoomVersionId,
) -> (OwnedEventId, JoinAnswer) {
    let bob = remote.user("bob");
    let (_, template) = services
        .make_join(
            remote_server(),
            room_id,
            &bob,
            std::slice::from_ref(version),
        )
        .unwrap();
    let (event_id, raw) = sign_template(remote, template, version);
    let answer = send_join(services, remote, room_id, &event_id, &raw)
        .await
        .unwrap();
    (event_id, answer)
}

#[tokio::test]
async fn a_join_template_follows_the_room_tip_and_is_not_signed() {
    for version in VERSIONS {
        let services = services();
        let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
        let tip = say(&services, &room_id, "hello").await;
        let bob = user_id!("@bob:remote.test");
        let (room_version, template) = services
            .make_join(
                remote_server(),
                &room_id,
                bob,
                &[RoomVersionId::V9, version.clone()],
            )
            .unwrap();
        assert_eq!(room_version, version);
        let template = serde_json::to_value(&template).unwrap();
        assert_eq!(template["type"], "m.room.member");
        assert_eq!(template["sender"], bob.as_str());
        assert_eq!(template["state_key"], bob.as_str());
        assert_eq!(template["room_id"], room_id.as_str());
        assert_eq!(template["origin"], "example.org");
        assert_eq!(template["content"], json!({ "membership": "join" }));
        assert_eq!(template["prev_events"], json!([tip]));
        let tip_depth = u64::from(services.rooms.pdu(&tip).unwrap().unwrap().depth);
        assert_eq!(template["depth"], tip_depth + 1);
        assert!(template["origin_server_ts"].as_u64().is_some());
        for unsigned in ["hashes", "signatures", "event_id", "unsigned"] {
            assert!(template.get(unsigned).is_none(), "{unsigned}: {template}");
        }
        // Auth events: the create event (not in v12), the power levels, the join rules;
        // bob has no member event yet.
        let info = services.rooms.existing(&room_id).unwrap();
        let state = services.rooms.current_state(&info).unwrap();
        let id_of = |kind: &str| {
            services
                .rooms
                .state_event(&state, &kind.into(), "")
                .unwrap()
                .unwrap()
                .event_id
        };
        let mut expected = vec![id_of("m.room.power_levels"), id_of("m.room.join_rules")];
        if version == RoomVersionId::V10 {
            expected.push(id_of("m.room.create"));
        }
        let mut auth: Vec<OwnedEventId> =
            serde_json::from_value(template["auth_events"].clone()).unwrap();
        auth.sort();
        expected.sort();
        assert_eq!(auth, expected, "{version}");
        // Nothing was stored: the room is as it was.
        assert_eq!(services.rooms.extremities(&room_id).unwrap(), vec![tip]);
    }
}

#[tokio::test]
async fn make_join_refuses_what_the_spec_refuses() {
    let services = services();
    let version = RoomVersionId::V10;
    let public = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    let private = create(&services, &version, Preset::PrivateChat, Vec::new()).await;
    let bob = user_id!("@bob:remote.test");
    let v10 = [version.clone()];
    // Another server's user.
    assert_error(
        services.make_join(server_name!("other.test"), &public, bob, &v10),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // An unknown room.
    let unknown = OwnedRoomId::try_from("!nowhere:example.org").unwrap();
    assert_error(
        services.make_join(remote_server(), &unknown, bob, &v10),
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // A version the joining server does not support: 400 with the room's version.
    match services.make_join(remote_server(), &public, bob, &[RoomVersionId::V9]) {
        Err(Error::Matrix {
            status,
            kind: ErrorKind::IncompatibleRoomVersion(data),
            ..
        }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(data.room_version, version);
        }
        other => panic!("expected M_INCOMPATIBLE_ROOM_VERSION, got {other:?}"),
    }
    // An invite-only room: refused until bob is invited.
    assert_error(
        services.make_join(remote_server(), &private, bob, &v10),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    services
        .rooms
        .invite(
            &private,
            alice(),
            bob,
            &MemberProfile::default(),
            None,
            false,
        )
        .await
        .unwrap();
    services
        .make_join(remote_server(), &private, bob, &v10)
        .unwrap();
}

#[tokio::test]
async fn a_remote_join_is_accepted_and_answered_with_the_state_before_it() {
    for version in VERSIONS {
        let services = services();
        let remote = Remote::new();
        let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
        say(&services, &room_id, "before bob").await;
        let info = services.rooms.existing(&room_id).unwrap();
        let state_before = services.rooms.current_state(&info).unwrap();
        let (join_id, answer) = join(&services, &remote, &room_id, &version).await;

        let bob = remote.user("bob");
        assert!(services.rooms.is_joined(&room_id, &bob).unwrap());
        assert_eq!(
            services.rooms.extremities(&room_id).unwrap(),
            vec![join_id.clone()]
        );
        assert_eq!(services.rooms.verdict(&join_id).unwrap(), Verdict::Accepted);

        // The state before the join, in federation form: no `event_id`, no `unsigned`.
        let state: Vec<JsonValue> = answer.state.iter().map(|raw| object(raw)).collect();
        assert_eq!(state.len(), state_before.len(), "{version}");
        assert!(state.iter().all(|event| event.get("event_id").is_none()
            && event.get("unsigned").is_none()
            && event["signatures"]["example.org"].is_object()));
        assert!(!state.iter().any(|event| event["state_key"] == bob.as_str()));
        let types: std::collections::BTreeSet<&str> = state
            .iter()
            .map(|event| event["type"].as_str().unwrap())
            .collect();
        for kind in [
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.join_rules",
            "m.room.name",
        ] {
            assert!(types.contains(kind), "{kind} in {types:?}");
        }
        // The auth chain: the join's (create, power levels, join rules, alice's join) and
        // the state's.
        let chain: Vec<JsonValue> = answer.auth_chain.iter().map(|raw| object(raw)).collect();
        // (In v12 the create event is no auth event: it is in `state` only.)
        assert_eq!(
            chain.iter().any(|event| event["type"] == "m.room.create"),
            version == RoomVersionId::V10,
            "{version}"
        );
        assert!(
            chain
                .iter()
                .any(|event| event["type"] == "m.room.power_levels")
        );
        assert!(
            chain.iter().any(
                |event| event["sender"] == alice().as_str() && event["type"] == "m.room.member"
            )
        );
        assert_eq!(
            answer.servers_in_room,
            vec![server_name!("example.org").to_owned()]
        );
        assert_eq!(object(&answer.event)["sender"], bob.as_str());

        // The same join again: the same answer, nothing new stored.
        let raw = services
            .federation_pdus(std::slice::from_ref(&join_id))
            .unwrap()
            .remove(0);
        let again = send_join(&services, &remote, &room_id, &join_id, &raw)
            .await
            .unwrap();
        assert_eq!(again.state.len(), answer.state.len());
        assert_eq!(again.auth_chain.len(), answer.auth_chain.len());
        assert_eq!(services.rooms.extremities(&room_id).unwrap(), vec![join_id]);
    }
}

#[tokio::test]
async fn send_join_refuses_events_that_are_not_the_join_asked_for() {
    let services = services();
    let remote = Remote::new();
    let version = RoomVersionId::V10;
    let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    let bob = remote.user("bob");
    let (_, template) = services
        .make_join(
            remote_server(),
            &room_id,
            &bob,
            std::slice::from_ref(&version),
        )
        .unwrap();
    let (event_id, raw) = sign_template(&remote, template.clone(), &version);
    // Another event id in the path.
    let wrong = OwnedEventId::try_from("$not-the-hash").unwrap();
    assert_error(
        send_join(&services, &remote, &room_id, &wrong, &raw).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // A sender of another server than the one asking.
    assert_error(
        services.check_member_event(
            server_name!("other.test"),
            &room_id,
            &raw,
            &MembershipState::Join,
        ),
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Not a join, and a state key that is not the sender.
    for (field, value) in [
        ("content", json!({ "membership": "leave" })),
        ("state_key", json!("@carol:remote.test")),
        ("type", json!("m.room.message")),
    ] {
        let mut changed = template.clone();
        changed.insert(field.into(), CanonicalJsonValue::try_from(value).unwrap());
        let (id, raw) = sign_template(&remote, changed, &version);
        assert_error(
            send_join(&services, &remote, &room_id, &id, &raw).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    // Signed by another key than remote.test's.
    let impostor = Remote::with_key(crate::service::rooms::remote_tests::new_key("r1"));
    let (id, forged) = sign_template(&impostor, template, &version);
    assert_error(
        send_join(&services, &remote, &room_id, &id, &forged).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // None of it was stored; the real one still works.
    assert!(!services.rooms.is_joined(&room_id, &bob).unwrap());
    send_join(&services, &remote, &room_id, &event_id, &raw)
        .await
        .unwrap();
    assert!(services.rooms.is_joined(&room_id, &bob).unwrap());
}

#[tokio::test]
async fn a_join_the_rules_refuse_is_403_and_not_joined() {
    let services = services();
    let remote = Remote::new();
    let version = RoomVersionId::V10;
    let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    let bob = remote.user("bob");
    let (_, template) = services
        .make_join(
            remote_server(),
            &room_id,
            &bob,
            std::slice::from_ref(&version),
        )
        .unwrap();
    // Alice bans bob between make_join and send_join: the join cites the state before the
    // ban, so it passes there and fails against the current state (soft-failed).
    services
        .rooms
        .ban(&room_id, alice(), &bob, None)
        .await
        .unwrap();
    let (event_id, raw) = sign_template(&remote, template, &version);
    assert_error(
        send_join(&services, &remote, &room_id, &event_id, &raw).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        services.rooms.membership(&room_id, &bob).unwrap(),
        Some(MembershipState::Ban)
    );
}

/// A restricted room (v10) whose allowed room bob joined: the template names alice as the
/// authoriser, and the accepted join carries our signature.
#[tokio::test]
async fn a_restricted_join_is_authorised_and_signed_by_us() {
    let services = services();
    let remote = Remote::new();
    let version = RoomVersionId::V10;
    let space = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    let restricted = create(
        &services,
        &version,
        Preset::PrivateChat,
        vec![(
            "m.room.join_rules".into(),
            String::new(),
            json!({
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": space }],
            }),
        )],
    )
    .await;
    let bob = remote.user("bob");
    let v10 = std::slice::from_ref(&version);
    // Not yet in the allowed room.
    assert_error(
        services.make_join(remote_server(), &restricted, &bob, v10),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    join(&services, &remote, &space, &version).await;
    let (_, template) = services
        .make_join(remote_server(), &restricted, &bob, v10)
        .unwrap();
    assert_eq!(
        serde_json::to_value(&template).unwrap()["content"],
        json!({ "membership": "join", "join_authorised_via_users_server": alice() })
    );
    let (event_id, raw) = sign_template(&remote, template, &version);
    let answer = send_join(&services, &remote, &restricted, &event_id, &raw)
        .await
        .unwrap();
    let event = object(&answer.event);
    assert!(event["signatures"]["example.org"].is_object(), "{event}");
    assert!(event["signatures"]["remote.test"].is_object(), "{event}");
    assert!(services.rooms.is_joined(&restricted, &bob).unwrap());

    // A room allowing only rooms this server does not know: unable to authorise.
    let elsewhere = create(
        &services,
        &version,
        Preset::PrivateChat,
        vec![(
            "m.room.join_rules".into(),
            String::new(),
            json!({
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": "!unknown:remote.test" }],
            }),
        )],
    )
    .await;
    assert_error(
        services.make_join(remote_server(), &elsewhere, &bob, v10),
        StatusCode::BAD_REQUEST,
        "M_UNABLE_TO_AUTHORISE_JOIN",
    );
}

#[tokio::test]
async fn the_read_endpoints_answer_servers_in_the_room_only() {
    for version in VERSIONS {
        let services = services();
        let remote = Remote::new();
        let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
        let hello = say(&services, &room_id, "hello").await;
        let other = server_name!("other.test");
        // Before bob joins, remote.test is not in the room.
        assert_error(
            services.state_at(remote_server(), &room_id, &hello),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        let (join_id, answer) = join(&services, &remote, &room_id, &version).await;

        // /state_ids at the join: the state before it, as in the send_join answer.
        let state = services
            .state_at(remote_server(), &room_id, &join_id)
            .unwrap();
        assert_eq!(state.state.len(), answer.state.len());
        assert!(!state.state.contains(&join_id));
        let chain = services.federation_pdus(&state.auth_chain).unwrap();
        assert!(
            chain
                .iter()
                .any(|raw| object(raw)["type"] == "m.room.power_levels")
        );
        // /event_auth of the join: its auth chain, without the join itself.
        let auth = services
            .event_auth(remote_server(), &room_id, &join_id)
            .unwrap();
        let auth: Vec<JsonValue> = auth.iter().map(|raw| object(raw)).collect();
        assert!(
            auth.iter()
                .any(|event| event["type"] == "m.room.join_rules")
        );
        assert!(
            !auth
                .iter()
                .any(|event| event["sender"] == "@bob:remote.test")
        );
        // /event: federation form.
        let event = object(&services.federation_event(remote_server(), &hello).unwrap());
        assert_eq!(event["content"]["body"], "hello");
        assert!(event.get("event_id").is_none() && event.get("unsigned").is_none());

        // A server with nobody in the room: 403 everywhere.
        assert_error(
            services.federation_event(other, &hello),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        assert_error(
            services.state_at(other, &room_id, &join_id),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        assert_error(
            services.event_auth(other, &room_id, &join_id),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        assert_error(
            services.missing_events(other, &room_id, &[], std::slice::from_ref(&join_id), 10, 0),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        assert_error(
            services.backfill(other, &room_id, std::slice::from_ref(&join_id), 10),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        // Unknown events and rooms: 404.
        let unknown = OwnedEventId::try_from("$unknown").unwrap();
        assert_error(
            services.federation_event(remote_server(), &unknown),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
        assert_error(
            services.state_at(remote_server(), &room_id, &unknown),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
        let nowhere = OwnedRoomId::try_from("!nowhere:example.org").unwrap();
        assert_error(
            services.backfill(remote_server(), &nowhere, std::slice::from_ref(&hello), 10),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
}

/// With `history_visibility: joined`, events from before remote.test's user joined are
/// served redacted; those after, whole.
#[tokio::test]
async fn events_a_server_may_not_see_are_served_redacted() {
    let services = services();
    let remote = Remote::new();
    let version = RoomVersionId::V10;
    let room_id = create(
        &services,
        &version,
        Preset::PublicChat,
        vec![(
            "m.room.history_visibility".into(),
            String::new(),
            json!({ "history_visibility": "joined" }),
        )],
    )
    .await;
    let secret = say(&services, &room_id, "before bob").await;
    let (join_id, _) = join(&services, &remote, &room_id, &version).await;
    let after = say(&services, &room_id, "after bob").await;

    let event = object(&services.federation_event(remote_server(), &secret).unwrap());
    assert_eq!(event["content"], json!({}), "{event}");
    let pdus = services
        .backfill(remote_server(), &room_id, std::slice::from_ref(&after), 3)
        .unwrap();
    let bodies: Vec<JsonValue> = pdus
        .iter()
        .map(|raw| object(raw)["content"]["body"].clone())
        .collect();
    assert_eq!(
        bodies,
        vec![json!("after bob"), JsonValue::Null, JsonValue::Null]
    );
    let ids: Vec<OwnedEventId> =
        backfill_walk(&services.rooms, &room_id, std::slice::from_ref(&after), 3).unwrap();
    assert_eq!(ids, vec![after, join_id, secret]);
}

fn messages_rooms() -> Rooms {
    let db = Db::memory();
    let keys = Arc::new(crate::service::server_keys::ServerKeys::load_or_generate(&db).unwrap());
    let stream = Arc::new(crate::service::stream::Stream::new(&db).unwrap());
    Rooms::new(&db, server_name!("example.org").to_owned(), keys, stream).unwrap()
}

#[tokio::test]
async fn missing_events_and_backfill_walk_the_prev_events() {
    let services = services();
    let room_id = create(
        &services,
        &RoomVersionId::V10,
        Preset::PublicChat,
        Vec::new(),
    )
    .await;
    let mut messages = Vec::new();
    for i in 0..30 {
        messages.push(say(&services, &room_id, &format!("m{i}")).await);
    }
    let rooms = &services.rooms;
    let depth = |id: &OwnedEventId| u64::from(rooms.pdu(id).unwrap().unwrap().depth);

    // Between m20 (held by the asker) and m29 (its newest): m21..m28, oldest first; the
    // latest event itself is not returned.
    let found = missing_events_walk(
        rooms,
        &room_id,
        &[messages[20].clone()],
        &[messages[29].clone()],
        10,
        0,
    )
    .unwrap();
    let ids: Vec<_> = found.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, messages[21..29].to_vec());
    // A limit keeps the newest ones, still oldest first.
    let found = missing_events_walk(rooms, &room_id, &[], &[messages[29].clone()], 3, 0).unwrap();
    let ids: Vec<_> = found.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, messages[26..29].to_vec());
    // min_depth stops the walk.
    let found = missing_events_walk(
        rooms,
        &room_id,
        &[],
        &[messages[29].clone()],
        20,
        depth(&messages[25]),
    )
    .unwrap();
    let ids: Vec<_> = found.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, messages[25..29].to_vec());
    // The limit is capped.
    let found =
        missing_events_walk(rooms, &room_id, &[], &[messages[29].clone()], 1_000, 0).unwrap();
    assert!(found.len() <= super::MAX_WALK_LIMIT);
    assert_eq!(
        found.first().map(|(_, depth)| *depth),
        Some(1),
        "down to the create event"
    );

    // Backfill from m29: m29 itself first, then older, newest first.
    let ids = backfill_walk(rooms, &room_id, &[messages[29].clone()], 4).unwrap();
    let expected: Vec<_> = messages[26..30].iter().rev().cloned().collect();
    assert_eq!(ids, expected);
    // From two events: the union, deepest first, no duplicates.
    let ids = backfill_walk(
        rooms,
        &room_id,
        &[messages[10].clone(), messages[12].clone()],
        4,
    )
    .unwrap();
    let expected: Vec<_> = messages[9..13].iter().rev().cloned().collect();
    assert_eq!(ids, expected);
    // Events of another room, and unknown events, are not walked.
    let other = create(
        &services,
        &RoomVersionId::V10,
        Preset::PublicChat,
        Vec::new(),
    )
    .await;
    assert!(
        backfill_walk(rooms, &other, &[messages[29].clone()], 10)
            .unwrap()
            .is_empty()
    );
    let unknown = OwnedEventId::try_from("$unknown").unwrap();
    assert!(
        backfill_walk(rooms, &room_id, &[unknown], 10)
            .unwrap()
            .is_empty()
    );
}

/// A rejected event is never returned by the walks, but the events before it still are.
#[tokio::test]
async fn the_walks_skip_rejected_events() {
    for version in VERSIONS {
        let rooms = messages_rooms();
        let room = remote_room(version.clone());
        for event in room.events() {
            rooms
                .accept(event.clone(), Place::Live, StateBefore::default())
                .await
                .unwrap();
        }
        // Dave (power 0) raises himself to 100: rejected. Carol's message cites it.
        let mut users = serde_json::Map::new();
        users.insert(room.dave.to_string(), 100.into());
        let power = room.remote.verified(
            &room.remote.event(
                &version,
                Some(&room.room_id),
                &room.dave,
                "m.room.power_levels",
                Some(""),
                json!({ "users": users }),
                &[room.tip()],
                &[&room.create, &room.power_levels, &room.dave_join],
            ),
            &version,
        );
        let rejected = match rooms
            .accept(power.clone(), Place::Live, StateBefore::default())
            .await
            .unwrap()
        {
            Outcome::Committed(committed) => committed,
            other => panic!("{other:?}"),
        };
        assert!(matches!(rejected.verdict, Verdict::Rejected(_)));
        let message = room.remote.verified(
            &room.remote.event(
                &version,
                Some(&room.room_id),
                &room.carol,
                "m.room.message",
                None,
                json!({ "msgtype": "m.text", "body": "after" }),
                &[&power],
                &room.message_auths(&room.carol_join),
            ),
            &version,
        );
        rooms
            .accept(message.clone(), Place::Live, StateBefore::default())
            .await
            .unwrap();

        let ids = backfill_walk(
            &rooms,
            &room.room_id,
            std::slice::from_ref(&message.event_id),
            3,
        )
        .unwrap();
        assert_eq!(
            ids,
            vec![
                message.event_id.clone(),
                room.erin_join.event_id.clone(),
                room.dave_join.event_id.clone()
            ],
            "{version}"
        );
        let found = missing_events_walk(
            &rooms,
            &room.room_id,
            std::slice::from_ref(&room.dave_join.event_id),
            std::slice::from_ref(&message.event_id),
            10,
            0,
        )
        .unwrap();
        let ids: Vec<_> = found.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![room.erin_join.event_id.clone()], "{version}");
    }
}

/// A server the room's ACL denies gets 403 from make_join and every read, even with a user
/// in the room.
#[tokio::test]
async fn a_server_the_acl_denies_is_refused() {
    let services = services();
    let remote = Remote::new();
    let version = RoomVersionId::V10;
    let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    let (join_id, _) = join(&services, &remote, &room_id, &version).await;
    services
        .state_at(remote_server(), &room_id, &join_id)
        .unwrap();
    services
        .rooms
        .send(
            &room_id,
            alice(),
            NewEvent::state(
                "m.room.server_acl",
                "",
                json!({ "allow": ["*"], "deny": ["remote.test"], "allow_ip_literals": false }),
            ),
            None,
        )
        .await
        .unwrap();
    let carol = remote.user("carol");
    assert_error(
        services.make_join(
            remote_server(),
            &room_id,
            &carol,
            std::slice::from_ref(&version),
        ),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        services.state_at(remote_server(), &room_id, &join_id),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        services.backfill(
            remote_server(),
            &room_id,
            std::slice::from_ref(&join_id),
            10,
        ),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        services.federation_event(remote_server(), &join_id),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

/// `send_knock` with `remote`'s keys instead of the keyring's network fetch.
async fn send_knock(
    services: &Services,
    remote: &Remote,
    room_id: &OwnedRoomId,
    event_id: &OwnedEventId,
    raw: &RawJsonValue,
) -> crate::Result<Vec<Box<RawJsonValue>>> {
    let (version, object) =
        services.check_member_event(remote_server(), room_id, raw, &MembershipState::Knock)?;
    services
        .accept_member_event(remote_server(), event_id, &version, object, &remote.keys())
        .await?;
    services.knock_room_state(room_id)
}

fn knock_rule(rule: &str) -> Vec<(String, String, JsonValue)> {
    vec![(
        "m.room.join_rules".into(),
        String::new(),
        json!({ "join_rule": rule }),
    )]
}

#[tokio::test]
async fn a_remote_knock_is_accepted_and_answered_with_the_stripped_state() {
    for version in VERSIONS {
        let services = services();
        let remote = Remote::new();
        let room_id = create(
            &services,
            &version,
            Preset::PrivateChat,
            knock_rule("knock"),
        )
        .await;
        let bob = remote.user("bob");
        let (got, template) = services
            .make_knock(
                remote_server(),
                &room_id,
                &bob,
                std::slice::from_ref(&version),
            )
            .unwrap();
        assert_eq!(got, version);
        let template_json = serde_json::to_value(&template).unwrap();
        assert_eq!(template_json["content"], json!({ "membership": "knock" }));
        assert_eq!(template_json["origin"], "example.org");
        assert!(template_json.get("signatures").is_none());
        let (event_id, raw) = sign_template(&remote, template, &version);
        let state = send_knock(&services, &remote, &room_id, &event_id, &raw)
            .await
            .unwrap();
        // Full events (Matrix 1.16), the create event among them, no ids or unsigned.
        let kinds: Vec<String> = state
            .iter()
            .map(|event| object(event)["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds[0], "m.room.create", "{kinds:?}");
        assert!(kinds.contains(&"m.room.join_rules".to_owned()), "{kinds:?}");
        assert!(kinds.contains(&"m.room.name".to_owned()), "{kinds:?}");
        for event in &state {
            let event = object(event);
            assert!(event["signatures"]["example.org"].is_object(), "{event}");
            assert!(event.get("event_id").is_none() && event.get("unsigned").is_none());
        }
        assert_eq!(
            services.rooms.membership(&room_id, &bob).unwrap(),
            Some(MembershipState::Knock)
        );
        // A repeat is answered the same way.
        let again = send_knock(&services, &remote, &room_id, &event_id, &raw)
            .await
            .unwrap();
        assert_eq!(again.len(), state.len());
    }
}

#[tokio::test]
async fn make_knock_and_send_knock_refuse_what_the_spec_refuses() {
    let services = services();
    let remote = Remote::new();
    let version = RoomVersionId::V10;
    let v10 = std::slice::from_ref(&version);
    let bob = remote.user("bob");
    let knockable = create(
        &services,
        &version,
        Preset::PrivateChat,
        knock_rule("knock"),
    )
    .await;
    // Another server's user; a version the knocking server does not support.
    assert_error(
        services.make_knock(server_name!("other.test"), &knockable, &bob, v10),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        services.make_knock(remote_server(), &knockable, &bob, &[RoomVersionId::V9]),
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
    );
    // Rooms whose rules do not let anyone knock: invite-only, public, and a version
    // without knocking (v6) even with a `knock` rule.
    let private = create(&services, &version, Preset::PrivateChat, Vec::new()).await;
    let public = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    for room_id in [&private, &public] {
        assert_error(
            services.make_knock(remote_server(), room_id, &bob, v10),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    let v6 = RoomVersionId::V6;
    let old = create(&services, &v6, Preset::PrivateChat, knock_rule("knock")).await;
    assert_error(
        services.make_knock(remote_server(), &old, &bob, std::slice::from_ref(&v6)),
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // send_knock: a join (or anything but a knock) is 400, as is a knock signed by
    // another key; neither is stored.
    let (_, template) = services
        .make_knock(remote_server(), &knockable, &bob, v10)
        .unwrap();
    let mut join = template.clone();
    join.insert(
        "content".into(),
        CanonicalJsonValue::try_from(json!({ "membership": "join" })).unwrap(),
    );
    let (id, raw) = sign_template(&remote, join, &version);
    assert_error(
        send_knock(&services, &remote, &knockable, &id, &raw).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let impostor = Remote::with_key(crate::service::rooms::remote_tests::new_key("r1"));
    let (id, forged) = sign_template(&impostor, template.clone(), &version);
    assert_error(
        send_knock(&services, &remote, &knockable, &id, &forged).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_eq!(services.rooms.membership(&knockable, &bob).unwrap(), None);
    // A knock by a member the room banned meanwhile: 403, not stored as a knock.
    services
        .rooms
        .ban(&knockable, alice(), &bob, None)
        .await
        .unwrap();
    let (id, raw) = sign_template(&remote, template, &version);
    assert_error(
        send_knock(&services, &remote, &knockable, &id, &raw).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        services.rooms.membership(&knockable, &bob).unwrap(),
        Some(MembershipState::Ban)
    );
}

/// A knock made through another server is kept with its stripped state in the user's
/// membership entry, only for a room not held here.
#[tokio::test]
async fn an_outside_membership_is_kept_only_for_rooms_not_held() {
    let services = services();
    let bob = user_id!("@bob:example.org");
    let stripped: Vec<ruma::serde::Raw<ruma::events::AnyStrippedStateEvent>> = vec![
        ruma::serde::Raw::new(&json!({
            "type": "m.room.name", "state_key": "", "sender": "@carol:remote.test",
            "content": { "name": "Elsewhere" },
        }))
        .unwrap()
        .cast_unchecked(),
    ];
    let held = create(
        &services,
        &RoomVersionId::V10,
        Preset::PublicChat,
        Vec::new(),
    )
    .await;
    assert!(
        !services
            .rooms
            .set_outside_membership(&held, bob, MembershipState::Knock, stripped.clone())
            .await
            .unwrap()
    );
    assert!(
        services
            .rooms
            .membership_entry(&held, bob)
            .unwrap()
            .is_none()
    );

    let elsewhere = OwnedRoomId::try_from("!elsewhere:remote.test").unwrap();
    let before = services.stream.position();
    assert!(
        services
            .rooms
            .set_outside_membership(&elsewhere, bob, MembershipState::Knock, stripped)
            .await
            .unwrap()
    );
    let entry = services
        .rooms
        .membership_entry(&elsewhere, bob)
        .unwrap()
        .unwrap();
    assert_eq!(entry.membership, MembershipState::Knock);
    assert!(entry.count > before);
    let state = entry.stripped_state.unwrap();
    assert_eq!(
        state[0].get_field::<String>("type").unwrap().as_deref(),
        Some("m.room.name")
    );
    // Only the user's index: the room's member index is for rooms held here.
    assert_eq!(services.rooms.membership(&elsewhere, bob).unwrap(), None);
    assert!(services.stream.changed_for(bob, entry.count));
    // Still knocking: not to be forgotten.
    assert!(services.rooms.forget(&elsewhere, bob).await.is_err());
}

/// EDUs from a server in the room: typing and presence are applied (presence because its
/// user shares a room with ours) until the room's ACL denies the server; then its typing
/// and receipts for that room are ignored (S2S "Server Access Control Lists").
#[tokio::test]
async fn edus_of_a_server_the_acl_denies_are_ignored() {
    use ruma::api::federation::transactions::edu::{
        PresenceContent, ReceiptContent, TypingContent,
    };
    let services = services();
    let remote = Remote::new();
    let version = RoomVersionId::V10;
    let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    let (join_id, _) = join(&services, &remote, &room_id, &version).await;
    let bob = remote.user("bob");
    let typing = |on: bool| -> TypingContent {
        serde_json::from_value(json!({ "room_id": room_id, "user_id": bob, "typing": on })).unwrap()
    };
    let typing_users = || -> Vec<JsonValue> {
        services
            .ephemeral
            .typing_event(&room_id, None)
            .and_then(|event| event["content"]["user_ids"].as_array().cloned())
            .unwrap_or_default()
    };
    services
        .receive_typing(remote_server(), &typing(true))
        .unwrap();
    assert_eq!(typing_users(), [json!(bob)]);
    services
        .receive_typing(remote_server(), &typing(false))
        .unwrap();
    assert!(typing_users().is_empty());

    // Bob shares a room with alice: his presence is taken.
    let presence: PresenceContent = serde_json::from_value(json!({ "push": [{
        "user_id": bob, "presence": "unavailable", "last_active_ago": 60_000,
        "status_msg": "lunch",
    }] }))
    .unwrap();
    services
        .receive_presence(remote_server(), &presence)
        .unwrap();
    let entry = services.presence.get(&bob);
    assert_eq!(entry.state, ruma::presence::PresenceState::Unavailable);
    assert_eq!(entry.status_msg.as_deref(), Some("lunch"));
    assert!(entry.position > 0);
    // The same again is no news.
    services
        .receive_presence(remote_server(), &presence)
        .unwrap();
    assert_eq!(services.presence.get(&bob).position, entry.position);

    services
        .rooms
        .send(
            &room_id,
            alice(),
            NewEvent::state(
                "m.room.server_acl",
                "",
                json!({ "allow": ["*"], "deny": ["remote.test"], "allow_ip_literals": false }),
            ),
            None,
        )
        .await
        .unwrap();
    services
        .receive_typing(remote_server(), &typing(true))
        .unwrap();
    assert!(typing_users().is_empty(), "typing from a denied server");
    let receipt: ReceiptContent = serde_json::from_value(json!({ room_id.as_str(): {
        "m.read": { bob.as_str(): { "data": { "ts": 1 }, "event_ids": [join_id] } },
    } }))
    .unwrap();
    services
        .receive_receipts(remote_server(), &receipt)
        .await
        .unwrap();
    assert!(
        services
            .ephemeral
            .read_receipt_events(&room_id, &bob)
            .unwrap()
            .is_empty(),
        "a receipt from a denied server"
    );
}

/// `send_leave` with `remote`'s keys instead of the keyring's network fetch.
async fn send_leave(
    services: &Services,
    remote: &Remote,
    room_id: &OwnedRoomId,
    event_id: &OwnedEventId,
    raw: &RawJsonValue,
) -> crate::Result<OwnedEventId> {
    let (version, object) =
        services.check_member_event(remote_server(), room_id, raw, &MembershipState::Leave)?;
    services
        .accept_member_event(remote_server(), event_id, &version, object, &remote.keys())
        .await
}

#[tokio::test]
async fn a_remote_user_rejects_an_invite_with_make_leave_and_send_leave() {
    for version in VERSIONS {
        let services = services();
        let remote = Remote::new();
        let bob = remote.user("bob");
        let room_id = create(&services, &version, Preset::PrivateChat, Vec::new()).await;
        // Not in the room: nothing to leave.
        assert_error(
            services.make_leave(remote_server(), &room_id, &bob),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        services
            .rooms
            .invite(
                &room_id,
                alice(),
                &bob,
                &MemberProfile::default(),
                None,
                false,
            )
            .await
            .unwrap();
        // Another server's user; an unknown room.
        assert_error(
            services.make_leave(server_name!("other.test"), &room_id, &bob),
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        let unknown = OwnedRoomId::try_from("!nowhere:example.org").unwrap();
        assert_error(
            services.make_leave(remote_server(), &unknown, &bob),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );

        let (template_version, template) = services
            .make_leave(remote_server(), &room_id, &bob)
            .unwrap();
        assert_eq!(template_version, version);
        assert_eq!(
            template["content"],
            CanonicalJsonValue::try_from(json!({ "membership": "leave" })).unwrap()
        );

        // A join sent to send_leave, and a leave of someone else, are refused.
        let mut join = template.clone();
        join.insert(
            "content".into(),
            json!({ "membership": "join" }).try_into().unwrap(),
        );
        let (join_id, raw) = sign_template(&remote, join, &version);
        assert_error(
            send_leave(&services, &remote, &room_id, &join_id, &raw).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
        let mut other = template.clone();
        other.insert(
            "state_key".into(),
            CanonicalJsonValue::String(remote.user("carol").to_string()),
        );
        let (other_id, raw) = sign_template(&remote, other, &version);
        assert_error(
            send_leave(&services, &remote, &room_id, &other_id, &raw).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
        assert_eq!(
            services.rooms.membership(&room_id, &bob).unwrap(),
            Some(MembershipState::Invite)
        );

        // The leave itself: accepted, Bob's invite is gone.
        let (leave_id, raw) = sign_template(&remote, template, &version);
        let accepted = send_leave(&services, &remote, &room_id, &leave_id, &raw)
            .await
            .unwrap();
        assert_eq!(accepted, leave_id);
        assert_eq!(
            services.rooms.membership(&room_id, &bob).unwrap(),
            Some(MembershipState::Leave)
        );
    }
}

/// A member event `remote`'s user `localpart` sends through `make_join` / `send_join` (or
/// `make_leave` / `send_leave` for `leave`), with `remote`'s keys.
async fn member_through(
    services: &Services,
    remote: &Remote,
    localpart: &str,
    room_id: &OwnedRoomId,
    version: &RoomVersionId,
    membership: MembershipState,
) -> OwnedEventId {
    let origin = <&ruma::ServerName>::try_from(remote.name).unwrap();
    let user = remote.user(localpart);
    let (_, template) = match membership {
        MembershipState::Leave => services.make_leave(origin, room_id, &user),
        _ => services.make_join(origin, room_id, &user, std::slice::from_ref(version)),
    }
    .unwrap();
    let (event_id, raw) = sign_template(remote, template, version);
    let (version, object) = services
        .check_member_event(origin, room_id, &raw, &membership)
        .unwrap();
    services
        .accept_member_event(origin, &event_id, &version, object, &remote.keys())
        .await
        .unwrap()
}

/// The resident server sends a join (or leave) another server's user made through it on to
/// the room's other servers (S2S "Joining Rooms": "then sends the event to the other
/// servers in the room"), queued with the event, never back to its origin.
#[tokio::test]
async fn remote_members_events_are_sent_on_to_the_rooms_other_servers() {
    let mut config = crate::config::tests_support::config();
    config.allow_federation = true;
    let services = Services::build(config, Db::memory()).unwrap();
    let sender = services.federation.sender().unwrap().clone();
    let version = RoomVersionId::V10;
    let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    // A user of another server is in the room (a loopback port nobody listens on: its
    // queue keeps what it is given).
    let other = Remote::named("localhost:1");
    let other_server = server_name!("localhost:1");
    member_through(
        &services,
        &other,
        "olive",
        &room_id,
        &version,
        MembershipState::Join,
    )
    .await;
    // Olive's own join is not sent back to her server: nobody else is in the room.
    assert_eq!(sender.pending(other_server).unwrap(), 0);

    // Bob of remote.test joins through us: his join goes to localhost:1, not to him.
    let remote = Remote::new();
    let bob = remote.user("bob");
    member_through(
        &services,
        &remote,
        "bob",
        &room_id,
        &version,
        MembershipState::Join,
    )
    .await;
    assert_eq!(sender.pending(other_server).unwrap(), 1);
    assert_eq!(sender.pending(remote_server()).unwrap(), 0);
    assert!(services.rooms.is_joined(&room_id, &bob).unwrap());

    // His leave too.
    member_through(
        &services,
        &remote,
        "bob",
        &room_id,
        &version,
        MembershipState::Leave,
    )
    .await;
    assert_eq!(sender.pending(other_server).unwrap(), 2);
    assert_eq!(sender.pending(remote_server()).unwrap(), 0);
    assert_eq!(
        services.rooms.membership(&room_id, &bob).unwrap(),
        Some(MembershipState::Leave)
    );
}

/// Notification counts are kept for our own members only: a message in a room with a member
/// of another server counts nothing for that member (their server counts for them), though
/// its default rules would notify (a one-to-one room).
#[tokio::test]
async fn notification_counts_are_kept_for_our_members_only() {
    let services = services();
    let version = RoomVersionId::V10;
    let room_id = create(&services, &version, Preset::PublicChat, Vec::new()).await;
    let remote = Remote::new();
    join(&services, &remote, &room_id, &version).await;
    let bob = remote.user("bob");
    assert_eq!(
        services.rooms.membership(&room_id, &bob).unwrap(),
        Some(MembershipState::Join)
    );
    let message = services
        .send_event(
            &room_id,
            alice(),
            NewEvent::message(
                "m.room.message",
                json!({ "msgtype": "m.text", "body": "hello bob" }),
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(message.sender, alice());
    let counts = services
        .push
        .counts(&services.rooms, &bob, &room_id)
        .unwrap();
    assert_eq!((counts.notifications, counts.highlights), (0, 0));
}
