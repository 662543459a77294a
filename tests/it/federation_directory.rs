//! Browsing other servers (issue 12 item 2): the published room directory
//! (`publicRooms?server=`), space hierarchies whose children live on another server, and
//! `timestamp_to_event` before this server joined a room — between two instances of this
//! server and with Synapse, over TLS on 127.0.0.1.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    federation_rooms::{Homeserver, send_text},
    harness::TestServer,
    synapse::Synapse,
};

/// Creates a room as `token` on `server`; returns its id.
async fn create_room(server: &impl Homeserver, token: &str, body: Value) -> String {
    let (status, created) = server
        .call(token, Method::POST, "/createRoom", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["room_id"].as_str().unwrap().to_owned()
}

/// The room ids of a `publicRooms` answer.
fn listed(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .map(|chunk| {
            chunk
                .iter()
                .filter_map(|room| room["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Asks `path` (a `publicRooms` call) until `room_id` is listed (bounded: 30 s; Synapse
/// caches its lists for a while); returns that answer.
async fn until_listed(
    server: &impl Homeserver,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    room_id: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, page) = server.call(token, method.clone(), path, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        if listed(&page).iter().any(|id| id == room_id) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{room_id} never listed by {path} on {}: {page}",
            server.name()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_directory_and_a_space_are_browsed_on_another_server() {
    let a = TestServer::federating_with_env(&[(
        "CONDUIT_ALLOW_PUBLIC_ROOM_DIRECTORY_OVER_FEDERATION",
        "true",
    )]);
    // B keeps the default: its directory is not shared with other servers.
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;

    // A public, published room on A; B's own directory stays empty.
    let club = create_room(
        &a,
        &alice,
        json!({ "visibility": "public", "preset": "public_chat", "name": "The club" }),
    )
    .await;
    let (status, local) = b.client_api(&bob, Method::GET, "/publicRooms", None).await;
    assert_eq!(status, StatusCode::OK, "{local}");
    assert!(listed(&local).is_empty(), "{local}");
    let (status, own) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/publicRooms?server={}", b.server_name),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert!(listed(&own).is_empty(), "our own name stays local: {own}");

    // Bob lists A's directory through B, with GET and with a filtered POST.
    let (status, remote) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/publicRooms?server={}", a.server_name),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{remote}\n{}", b.log());
    assert_eq!(listed(&remote), [club.as_str()], "{remote}");
    assert_eq!(remote["chunk"][0]["name"], "The club");
    assert_eq!(remote["chunk"][0]["num_joined_members"], 1);
    let search = |term: &str| json!({ "filter": { "generic_search_term": term }, "limit": 5 });
    let path = format!("/publicRooms?server={}", a.server_name);
    let (status, found) = b
        .client_api(&bob, Method::POST, &path, Some(search("CLUB")))
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(listed(&found), [club.as_str()], "{found}");
    let (status, none) = b
        .client_api(&bob, Method::POST, &path, Some(search("chess")))
        .await;
    assert_eq!(status, StatusCode::OK, "{none}");
    assert!(listed(&none).is_empty(), "{none}");
    // B does not share its directory: A's users get the refusal, not an empty list.
    let (status, refused) = a
        .client_api(
            &alice,
            Method::GET,
            &format!("/publicRooms?server={}", b.server_name),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}\n{}", a.log());
    assert_eq!(refused["errcode"], "M_FORBIDDEN", "{refused}");
    // A server that cannot be reached is an error, not an empty list.
    let (status, _) = b
        .client_api(&bob, Method::GET, "/publicRooms?server=localhost:1", None)
        .await;
    assert!(
        status.is_server_error() || status.is_client_error(),
        "{status}"
    );

    // A space on A with a public child and a private one, both on A.
    let space = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "name": "Makerspace", "room_alias_name": "makers",
                "creation_content": { "type": "m.space" } }),
    )
    .await;
    let workshop = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "name": "Workshop" }),
    )
    .await;
    let office = create_room(
        &a,
        &alice,
        json!({ "preset": "private_chat", "name": "Office" }),
    )
    .await;
    for child in [&workshop, &office] {
        let (status, body) = a
            .client_api(
                &alice,
                Method::PUT,
                &format!("/rooms/{space}/state/m.space.child/{child}"),
                Some(json!({ "via": [a.server_name.to_string()] })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Bob joins the space (not its children): B walks the children through A.
    let (status, joined) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23makers:{}", a.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, tree) = b
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{space}/hierarchy"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    let rooms = tree["rooms"].as_array().unwrap();
    let ids: Vec<&str> = rooms.iter().filter_map(|r| r["room_id"].as_str()).collect();
    assert_eq!(
        ids,
        [space.as_str(), workshop.as_str()],
        "{tree}\n{}",
        b.log()
    );
    assert_eq!(rooms[0]["room_type"], "m.space");
    assert_eq!(
        rooms[0]["children_state"].as_array().map(Vec::len),
        Some(2),
        "{tree}"
    );
    assert_eq!(rooms[1]["name"], "Workshop");
    // An absent join rule means `public` (spec: the room summary's `join_rule`).
    assert!(
        matches!(rooms[1]["join_rule"].as_str(), None | Some("public")),
        "{tree}"
    );
    assert_eq!(rooms[1]["num_joined_members"], 1);

    // Depth 0: the space alone, and nothing asked of A.
    let (status, shallow) = b
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{space}/hierarchy?max_depth=0"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shallow}");
    assert_eq!(
        shallow["rooms"].as_array().map(Vec::len),
        Some(1),
        "{shallow}"
    );
}

#[tokio::test]
async fn timestamp_to_event_finds_history_from_before_the_join() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "dates" }),
    )
    .await;
    let early = send_text(&a, &alice, &room_id, "e1", "an early message").await;
    let (status, event) = a
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/event/{early}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    let early_ts = event["origin_server_ts"].as_u64().unwrap();

    let (status, joined) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23dates:{}", a.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");

    let at = |dir: &'static str| {
        let (b, bob, room_id) = (&b, bob.clone(), room_id.clone());
        async move {
            b.request(
                Method::GET,
                &format!(
                    "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event?ts={early_ts}&dir={dir}"
                ),
                Some(&bob),
                None,
            )
            .await
        }
    };
    // Forwards: B's oldest event is Bob's join, at the edge of what B holds; A knows a
    // closer one. Backwards: B holds nothing that old at all.
    for dir in ["f", "b"] {
        let (status, found) = at(dir).await;
        assert_eq!(status, StatusCode::OK, "{dir}: {found}\n{}", b.log());
        assert_eq!(found["event_id"], early.as_str(), "{dir}: {found}");
        assert_eq!(found["origin_server_ts"], early_ts, "{dir}: {found}");
    }

    // After everything: neither B nor A has an event, so 404.
    let (status, none) = b
        .request(
            Method::GET,
            &format!(
                "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event?ts={}&dir=f",
                early_ts + 86_400_000
            ),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{none}");
    assert_eq!(none["errcode"], "M_NOT_FOUND");
}

#[tokio::test]
async fn synapse_and_we_list_each_others_public_rooms() {
    let synapse = Synapse::start().await;
    let ours = TestServer::federating_with_env(&[(
        "CONDUIT_ALLOW_PUBLIC_ROOM_DIRECTORY_OVER_FEDERATION",
        "true",
    )]);
    let carol = synapse.register("carol", "battery staple").await;
    let alice = ours.register("alice", "correct horse").await;
    let lounge = create_room(
        &synapse,
        &carol,
        json!({ "visibility": "public", "preset": "public_chat", "name": "Synapse lounge" }),
    )
    .await;
    let hall = create_room(
        &ours,
        &alice,
        json!({ "visibility": "public", "preset": "public_chat", "name": "Our hall" }),
    )
    .await;

    // Ours asks Synapse (GET, then a filtered POST).
    let path = format!("/publicRooms?server={}", synapse.server_name);
    let page = until_listed(&ours, &alice, Method::GET, &path, None, &lounge).await;
    let entry = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|room| room["room_id"] == lounge.as_str())
        .unwrap();
    assert_eq!(entry["name"], "Synapse lounge", "{page}");
    let search = json!({ "filter": { "generic_search_term": "lounge" } });
    until_listed(&ours, &alice, Method::POST, &path, Some(search), &lounge).await;

    // Synapse asks us.
    let path = format!("/publicRooms?server={}", ours.server_name);
    let page = until_listed(&synapse, &carol, Method::GET, &path, None, &hall).await;
    let entry = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|room| room["room_id"] == hall.as_str())
        .unwrap();
    assert_eq!(entry["name"], "Our hall", "{page}\n{}", ours.log());
    let search = json!({ "filter": { "generic_search_term": "hall" } });
    until_listed(&synapse, &carol, Method::POST, &path, Some(search), &hall).await;
}

/// The ids of a client `/hierarchy` answer's rooms, asked as `token` on `server` until they
/// are `expected` (bounded: 30 s; Synapse caches remote summaries briefly).
async fn until_hierarchy(
    server: &impl Homeserver,
    request: impl AsyncFn() -> (StatusCode, Value),
    expected: &[&str],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, tree) = request().await;
        assert_eq!(status, StatusCode::OK, "{tree}");
        let ids: Vec<&str> = tree["rooms"]
            .as_array()
            .map(|rooms| rooms.iter().filter_map(|r| r["room_id"].as_str()).collect())
            .unwrap_or_default();
        if ids == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hierarchy on {} is {ids:?}, not {expected:?}: {tree}",
            server.name()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A space on each side with a public child on the same side: the other side's user joins
/// the space only, and their server's `/hierarchy` shows the child through federation.
#[tokio::test]
async fn spaces_are_walked_between_synapse_and_us() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let carol = synapse.register("carol", "battery staple").await;
    let alice = ours.register("alice", "correct horse").await;
    let space_body = |alias: &str| {
        json!({ "preset": "public_chat", "room_alias_name": alias,
                "creation_content": { "type": "m.space" } })
    };
    let child_body = json!({ "preset": "public_chat", "name": "Child" });

    // A space and its child on Synapse; alice (ours) joins the space.
    let s_space = create_room(&synapse, &carol, space_body("sspace")).await;
    let s_child = create_room(&synapse, &carol, child_body.clone()).await;
    let (status, body) = synapse
        .client_api(
            &carol,
            Method::PUT,
            &format!("/rooms/{s_space}/state/m.space.child/{s_child}"),
            Some(json!({ "via": [synapse.server_name.to_string()] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, joined) = ours
        .client_api(
            &alice,
            Method::POST,
            &format!("/join/%23sspace:{}", synapse.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let path = format!("/_matrix/client/v1/rooms/{s_space}/hierarchy");
    until_hierarchy(
        &ours,
        async || ours.request(Method::GET, &path, Some(&alice), None).await,
        &[s_space.as_str(), s_child.as_str()],
    )
    .await;

    // A space and its child here; carol (Synapse) joins the space.
    let o_space = create_room(&ours, &alice, space_body("ospace")).await;
    let o_child = create_room(&ours, &alice, child_body).await;
    let (status, body) = ours
        .client_api(
            &alice,
            Method::PUT,
            &format!("/rooms/{o_space}/state/m.space.child/{o_child}"),
            Some(json!({ "via": [ours.server_name.to_string()] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, joined) = synapse
        .client_api(
            &carol,
            Method::POST,
            &format!("/join/%23ospace:{}", ours.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let path = format!("/_matrix/client/v1/rooms/{o_space}/hierarchy");
    until_hierarchy(
        &synapse,
        async || {
            synapse
                .request(Method::GET, &path, Some(&carol), None)
                .await
        },
        &[o_space.as_str(), o_child.as_str()],
    )
    .await;
}
