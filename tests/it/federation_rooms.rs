//! Rooms across servers (issue 11 item 6, with the joins of issue 12): two instances of
//! this server, over TLS on 127.0.0.1, share a room. A user of one joins the other's room
//! by alias (make_join / send_join), and messages go both ways through the outgoing queue
//! and `/send`, checked and stored by the receiving room core.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::TestServer;

/// Syncs as `token` on `server` until an `m.room.message` with `body` shows in `room_id`'s
/// timeline (bounded: 30 s), returning the event.
async fn wait_for_message(server: &TestServer, token: &str, room_id: &str, body: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(since) => format!("/sync?timeout=2000&since={since}"),
            None => "/sync?timeout=0".to_owned(),
        };
        let (status, sync) = server.client_api(token, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        for section in ["join", "invite"] {
            if let Some(events) = sync["rooms"][section][room_id]["timeline"]["events"].as_array()
                && let Some(found) = events.iter().find(|event| {
                    event["type"] == "m.room.message" && event["content"]["body"] == body
                })
            {
                return found.clone();
            }
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(
            Instant::now() < deadline,
            "{body:?} did not arrive in {room_id} on {}",
            server.server_name
        );
    }
}

async fn send_text(
    server: &TestServer,
    token: &str,
    room_id: &str,
    txn: &str,
    body: &str,
) -> String {
    let (status, sent) = server
        .client_api(
            token,
            Method::PUT,
            &format!("/rooms/{room_id}/send/m.room.message/{txn}"),
            Some(json!({ "msgtype": "m.text", "body": body })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_servers_share_a_room_and_messages_go_both_ways() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (a.user_id("alice"), b.user_id("bob"));

    let (status, created) = a
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "club", "preset": "public_chat", "name": "The club" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    send_text(&a, &alice, &room_id, "a0", "before bob came").await;

    // Bob joins A's room by its alias: B asks A for the alias, then joins through A.
    let alias = format!("%23club:{}", a.server_name);
    let (status, joined) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/{alias}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], room_id);

    // Both servers agree that Bob is in, and B knows the room's state.
    let (status, members) = a
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/joined_members"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&bob_id).is_some(), "{members}");
    let (status, name) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room_id}/state/m.room.name"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name["name"], "The club");
    let (status, members) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room_id}/joined_members"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"].get(&alice_id).is_some(), "{members}");

    // B → A.
    let from_b = send_text(&b, &bob, &room_id, "b1", "hello from B").await;
    let seen = wait_for_message(&a, &alice, &room_id, "hello from B").await;
    assert_eq!(seen["event_id"], from_b.as_str());
    assert_eq!(seen["sender"], bob_id.as_str());

    // A → B.
    let from_a = send_text(&a, &alice, &room_id, "a1", "hello from A").await;
    let seen = wait_for_message(&b, &bob, &room_id, "hello from A").await;
    assert_eq!(seen["event_id"], from_a.as_str());
    assert_eq!(seen["sender"], alice_id.as_str());

    // A state change on A reaches B's state.
    let (status, body) = a
        .client_api(
            &alice,
            Method::PUT,
            &format!("/rooms/{room_id}/state/m.room.topic"),
            Some(json!({ "topic": "Field day on Saturday" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send_text(&a, &alice, &room_id, "a2", "topic set").await;
    wait_for_message(&b, &bob, &room_id, "topic set").await;
    let (status, topic) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room_id}/state/m.room.topic"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{topic}");
    assert_eq!(topic["topic"], "Field day on Saturday");
}
