//! What other servers may browse here: `hierarchy` (only rooms the asking server could
//! peek or join; the others named as inaccessible, a hidden space 404) and
//! `timestamp_to_event` (servers in the room only).

use std::sync::Arc;

use http::StatusCode;
use ruma::{
    CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomVersionId, ServerName, UserId,
    api::Direction, server_name, signatures::reference_hash, user_id,
};
use serde_json::{Map, Value as JsonValue, json};

use crate::{
    Error,
    service::{
        Services,
        rooms::{
            append::NewEvent,
            create::{CreateRoom, Preset},
            membership::MemberProfile,
            remote_tests::Remote,
        },
    },
    storage::Db,
};

fn services() -> Arc<Services> {
    Services::build(crate::config::tests_support::config(), Db::memory()).unwrap()
}

fn alice() -> &'static UserId {
    user_id!("@alice:example.org")
}

fn remote_server() -> &'static ServerName {
    server_name!("remote.test")
}

async fn create(
    services: &Services,
    preset: Preset,
    space: bool,
    initial_state: Vec<(String, String, JsonValue)>,
) -> OwnedRoomId {
    let mut creation_content = Map::new();
    if space {
        creation_content.insert("type".into(), json!("m.space"));
    }
    services
        .rooms
        .create_room(
            alice(),
            MemberProfile::default(),
            CreateRoom {
                version: RoomVersionId::V12,
                preset,
                creation_content,
                power_level_content_override: None,
                alias: None,
                initial_state,
                name: None,
                topic: None,
                invite: Vec::new(),
                is_direct: false,
                publish: false,
            },
        )
        .await
        .unwrap()
}

async fn state(
    services: &Services,
    room_id: &OwnedRoomId,
    kind: &str,
    key: &str,
    content: JsonValue,
) {
    services
        .rooms
        .send(room_id, alice(), NewEvent::state(kind, key, content), None)
        .await
        .unwrap();
}

/// `@bob:remote.test` joins `room_id` (make_join, then the signed event as send_join takes it).
async fn remote_join(services: &Services, remote: &Remote, room_id: &OwnedRoomId) {
    let version = RoomVersionId::V12;
    let (_, mut template) = services
        .make_join(
            remote_server(),
            room_id,
            &remote.user("bob"),
            std::slice::from_ref(&version),
        )
        .unwrap();
    template.insert(
        "origin".into(),
        CanonicalJsonValue::String(remote.name.to_owned()),
    );
    let signed = remote.sign(template, &version);
    let hash = reference_hash(&signed, &version.rules().unwrap()).unwrap();
    let event_id = OwnedEventId::try_from(format!("${hash}")).unwrap();
    let raw = serde_json::value::to_raw_value(&signed).unwrap();
    let (version, object) = services
        .check_member_event(
            remote_server(),
            room_id,
            &raw,
            &ruma::events::room::member::MembershipState::Join,
        )
        .unwrap();
    let mut keys = remote.keys();
    keys.insert(
        "example.org".to_owned(),
        services.server_keys.public_keys(None),
    );
    services
        .accept_member_event(remote_server(), &event_id, &version, object, &keys)
        .await
        .unwrap();
}

fn status_of<T: std::fmt::Debug>(result: crate::Result<T>) -> StatusCode {
    match result {
        Err(Error::Matrix { status, .. }) => status,
        other => panic!("expected a Matrix error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_sees_the_children_it_could_peek_or_join() {
    let services = services();
    let remote = Remote::new();
    let space = create(&services, Preset::PublicChat, true, Vec::new()).await;
    let open = create(&services, Preset::PublicChat, false, Vec::new()).await;
    let closed = create(&services, Preset::PrivateChat, false, Vec::new()).await;
    let readable = create(
        &services,
        Preset::PrivateChat,
        false,
        vec![(
            "m.room.history_visibility".into(),
            String::new(),
            json!({ "history_visibility": "world_readable" }),
        )],
    )
    .await;
    // Restricted to members of `open`: visible once remote.test has a user there.
    let restricted = create(
        &services,
        Preset::PrivateChat,
        false,
        vec![(
            "m.room.join_rules".into(),
            String::new(),
            json!({ "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": open }] }),
        )],
    )
    .await;
    let unknown = OwnedRoomId::try_from("!elsewhere:other.test").unwrap();
    for child in [&open, &closed, &readable, &restricted, &unknown] {
        state(
            &services,
            &space,
            "m.space.child",
            child.as_str(),
            json!({ "via": ["example.org"] }),
        )
        .await;
    }
    // A removed child (no `via`) is not a child.
    state(
        &services,
        &space,
        "m.space.child",
        "!gone:example.org",
        json!({}),
    )
    .await;

    let answer = services
        .federation_hierarchy(remote_server(), &space, false)
        .unwrap();
    assert_eq!(answer.room.summary.room_id, space);
    assert_eq!(answer.room.children_state.len(), 5);
    let mut children: Vec<_> = answer.children.iter().map(|c| c.room_id.clone()).collect();
    children.sort();
    let mut expected = vec![open.clone(), readable.clone()];
    expected.sort();
    assert_eq!(children, expected, "the unknown room is left out");
    let mut inaccessible = answer.inaccessible_children.clone();
    inaccessible.sort();
    let mut expected = vec![closed.clone(), restricted.clone()];
    expected.sort();
    assert_eq!(inaccessible, expected);

    // The closed room itself: 404 to a server with no one in it.
    assert_eq!(
        status_of(services.federation_hierarchy(remote_server(), &closed, false)),
        StatusCode::NOT_FOUND
    );

    // Once bob of remote.test is in `open`, the restricted room is visible to his server,
    // not to another.
    remote_join(&services, &remote, &open).await;
    let answer = services
        .federation_hierarchy(remote_server(), &space, false)
        .unwrap();
    assert!(answer.children.iter().any(|c| c.room_id == restricted));
    let other = services
        .federation_hierarchy(server_name!("other.test"), &space, false)
        .unwrap();
    assert!(other.inaccessible_children.contains(&restricted));
}

#[tokio::test]
async fn timestamp_to_event_answers_servers_in_the_room_only() {
    let services = services();
    let remote = Remote::new();
    let room_id = create(&services, Preset::PublicChat, false, Vec::new()).await;
    assert_eq!(
        status_of(services.federation_timestamp_to_event(
            remote_server(),
            &room_id,
            0,
            Direction::Forward
        )),
        StatusCode::FORBIDDEN
    );
    remote_join(&services, &remote, &room_id).await;
    let (event_id, _) = services
        .federation_timestamp_to_event(remote_server(), &room_id, 0, Direction::Forward)
        .unwrap();
    let first = services.rooms.first_event(&room_id).unwrap().unwrap().1;
    assert_eq!(event_id, first.event_id, "the create event comes first");
    assert_eq!(
        status_of(services.federation_timestamp_to_event(
            remote_server(),
            &room_id,
            0,
            Direction::Backward
        )),
        StatusCode::NOT_FOUND
    );
}
