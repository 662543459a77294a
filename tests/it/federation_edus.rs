//! EDUs and room ACLs across servers (issue 12, items 4 and 7): presence both ways (with
//! the outgoing rate: the last of several quick changes wins), a room's `m.room.server_acl`
//! shutting a server out of messages, typing and joins, and remote members' device lists
//! in `/sync` as they join and leave. Two (or three) instances of this server over TLS on
//! 127.0.0.1, and Synapse for presence.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    federation_rooms::{
        Homeserver, send_text, sync_token, sync_until, wait_for_ephemeral, wait_for_message,
    },
    harness::TestServer,
    synapse::Synapse,
};

/// `alice` (on `a`) makes a public room with the alias `#{alias}:a`, and `bob` (on `b`)
/// joins it by that alias. Returns the room id.
async fn shared_room(
    a: &impl Homeserver,
    alice: &str,
    b: &impl Homeserver,
    bob: &str,
    alias: &str,
) -> String {
    let (status, created) = a
        .call(
            alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": alias, "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    let (status, joined) = b
        .call(
            bob,
            Method::POST,
            &format!("/join/%23{alias}:{}", a.name()),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    room_id
}

async fn set_presence(
    server: &impl Homeserver,
    token: &str,
    user_id: &str,
    presence: &str,
    status_msg: &str,
) {
    let (status, body) = server
        .call(
            token,
            Method::PUT,
            &format!("/presence/{user_id}/status"),
            Some(json!({ "presence": presence, "status_msg": status_msg })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The `m.presence` events of `user` in a sync answer.
fn presence_of(sync: &Value, user: &str) -> Vec<Value> {
    sync["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["type"] == "m.presence" && event["sender"] == user)
        .map(|event| event["content"].clone())
        .collect()
}

/// Syncs from `since` until `user`'s presence has `status_msg`; returns every status
/// message of theirs seen on the way (the last one included).
async fn wait_for_status(
    server: &impl Homeserver,
    token: &str,
    since: String,
    user: &str,
    presence: &str,
    status_msg: &str,
) -> Vec<String> {
    let seen = std::sync::Mutex::new(Vec::new());
    sync_until(
        server,
        token,
        Some(since),
        &format!("{user}'s presence {status_msg:?}"),
        |sync| {
            let mut found = None;
            for content in presence_of(sync, user) {
                let message = content["status_msg"].as_str().unwrap_or("").to_owned();
                seen.lock().unwrap().push(message.clone());
                if message == status_msg && content["presence"] == presence {
                    found = Some(());
                }
            }
            found
        },
    )
    .await;
    seen.into_inner().unwrap()
}

async fn get_presence(server: &impl Homeserver, token: &str, user: &str) -> Value {
    let (status, body) = server
        .call(
            token,
            Method::GET,
            &format!("/presence/{user}/status"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Presence changes of a user on one server reach the users of the other server who share
/// a room with them (`/sync` and `GET /presence`), both ways; of several quick changes,
/// the last one arrives and the ones it replaced do not (one push per user per 10 s).
#[tokio::test]
async fn presence_goes_both_ways_between_two_servers() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (a.user_id("alice"), b.user_id("bob"));
    shared_room(&a, &alice, &b, &bob, "porch").await;

    // A → B.
    let since = sync_token(&b, &bob).await;
    let first = Instant::now();
    set_presence(&a, &alice, &alice_id, "online", "at the desk").await;
    wait_for_status(&b, &bob, since, &alice_id, "online", "at the desk").await;
    let seen = get_presence(&b, &bob, &alice_id).await;
    assert_eq!(seen["presence"], "online", "{seen}");
    assert_eq!(seen["status_msg"], "at the desk", "{seen}");

    // Two quick changes: the second replaces the first, which never leaves A.
    let since = sync_token(&b, &bob).await;
    set_presence(&a, &alice, &alice_id, "unavailable", "gone for a minute").await;
    set_presence(&a, &alice, &alice_id, "online", "back").await;
    let within_interval = first.elapsed() < Duration::from_secs(9);
    let seen = wait_for_status(&b, &bob, since, &alice_id, "online", "back").await;
    if within_interval {
        assert!(
            !seen.iter().any(|message| message == "gone for a minute"),
            "a replaced change was sent: {seen:?}"
        );
    }

    // B → A. (Bob's own syncs above set him online; this is a change from that.)
    let since = sync_token(&a, &alice).await;
    set_presence(&b, &bob, &bob_id, "unavailable", "in a meeting").await;
    wait_for_status(&a, &alice, since, &bob_id, "unavailable", "in a meeting").await;
    let seen = get_presence(&a, &alice, &bob_id).await;
    assert_eq!(seen["presence"], "unavailable", "{seen}");
    assert_eq!(seen["status_msg"], "in a meeting", "{seen}");
}

/// Presence between our server and Synapse (whose presence is on by default), both ways.
#[tokio::test]
async fn presence_goes_both_ways_with_synapse() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (ours.user_id("alice"), synapse.user_id("bob"));
    shared_room(&ours, &alice, &synapse, &bob, "garden").await;

    let since = sync_token(&synapse, &bob).await;
    set_presence(&ours, &alice, &alice_id, "online", "watering").await;
    wait_for_status(&synapse, &bob, since, &alice_id, "online", "watering").await;

    let since = sync_token(&ours, &alice).await;
    set_presence(&synapse, &bob, &bob_id, "unavailable", "weeding").await;
    wait_for_status(&ours, &alice, since, &bob_id, "unavailable", "weeding").await;
    let seen = get_presence(&ours, &alice, &bob_id).await;
    assert_eq!(seen["status_msg"], "weeding", "{seen}");
}

async fn set_typing(server: &TestServer, token: &str, room_id: &str, user: &str, on: bool) {
    let (status, body) = server
        .client_api(
            token,
            Method::PUT,
            &format!("/rooms/{room_id}/typing/{user}"),
            Some(json!({ "typing": on, "timeout": 30000 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Once A's room has an `m.room.server_acl` denying B, B's user's new message and typing
/// no longer reach A's users, and a server the ACL denies cannot join through A (403
/// `M_FORBIDDEN` for `make_join`). Whether A has had B's traffic yet is not guessed from
/// time: B's user sends a to-device message (not room-scoped, so not subject to the ACL)
/// after the message and the typing; B's queue sends in order and A applies each
/// transaction's PDUs before its EDUs, so once it arrived A has dealt with both.
#[tokio::test]
async fn a_room_acl_shuts_out_a_denied_server() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (a.user_id("alice"), b.user_id("bob"));
    let (_, whoami) = a.whoami(&alice).await;
    let alice_device = whoami["device_id"].as_str().unwrap().to_owned();
    let room_id = shared_room(&a, &alice, &b, &bob, "acl").await;

    // Before the ACL: B's message and typing reach A.
    send_text(&b, &bob, &room_id, "b1", "before the ACL").await;
    wait_for_message(&a, &alice, &room_id, "before the ACL").await;
    let bob_typing = |event: &Value| {
        event["content"]["user_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == bob_id.as_str()))
    };
    let since = sync_token(&a, &alice).await;
    set_typing(&b, &bob, &room_id, &bob_id, true).await;
    wait_for_ephemeral(&a, &alice, since, &room_id, "m.typing", bob_typing).await;
    let since = sync_token(&a, &alice).await;
    set_typing(&b, &bob, &room_id, &bob_id, false).await;
    wait_for_ephemeral(&a, &alice, since, &room_id, "m.typing", |event| {
        !bob_typing(event)
    })
    .await;

    // Both test servers are `localhost:PORT`, and ACLs match server names without their
    // port (client-server API, `m.room.server_acl`), so this denies B. (It names A's host
    // too, but a server never checks its own events against the ACL.)
    let (status, body) = a
        .client_api(
            &alice,
            Method::PUT,
            &format!("/rooms/{room_id}/state/m.room.server_acl"),
            Some(json!({ "allow": ["*"], "deny": ["localhost"], "allow_ip_literals": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = sync_token(&a, &alice).await;
    send_text(&b, &bob, &room_id, "b2", "after the ACL").await;
    set_typing(&b, &bob, &room_id, &bob_id, true).await;
    let (status, body) = b
        .client_api(
            &bob,
            Method::PUT,
            "/sendToDevice/m.test/control",
            Some(
                json!({ "messages": { alice_id.as_str(): { alice_device.as_str(): { "n": 1 } } } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Alice's syncs until the control message, keeping everything of the room they show.
    let room_news = std::sync::Mutex::new(Vec::new());
    sync_until(
        &a,
        &alice,
        Some(since),
        "the control to-device message",
        |sync| {
            let room = &sync["rooms"]["join"][room_id.as_str()];
            for section in ["timeline", "ephemeral"] {
                room_news.lock().unwrap().extend(
                    room[section]["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
            }
            sync["to_device"]["events"]
                .as_array()?
                .iter()
                .any(|event| event["type"] == "m.test")
                .then_some(())
        },
    )
    .await;
    let room_news = room_news.into_inner().unwrap();
    assert!(
        !room_news
            .iter()
            .any(|event| event["content"]["body"] == "after the ACL"),
        "a message from a denied server: {room_news:?}"
    );
    assert!(
        !room_news
            .iter()
            .any(|event| event["type"] == "m.typing" && bob_typing(event)),
        "typing from a denied server: {room_news:?}"
    );
    let (status, messages) = a
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/messages?dir=b&limit=20"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{messages}");
    let bodies: Vec<&str> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert!(bodies.contains(&"before the ACL"), "{bodies:?}");
    assert!(!bodies.contains(&"after the ACL"), "{bodies:?}");
    // The room carries on for A's own users.
    send_text(&a, &alice, &room_id, "a1", "still here").await;
    wait_for_message(&a, &alice, &room_id, "still here").await;

    // A fresh join from a denied server: B already holds the room (a join there would be
    // built by B itself), so a third server, also `localhost`, asks A with make_join, and
    // A's 403 M_FORBIDDEN comes back to its user.
    let c = TestServer::start_federating();
    let carol = c.register("carol", "hunter two").await;
    let (status, body) = c
        .client_api(
            &carol,
            Method::POST,
            &format!("/join/%23acl:{}", a.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("server ACL"),
        "{body}"
    );
}

/// A remote user who joins a room of ours shows in our user's `device_lists.changed`, and
/// ours in theirs (so both clients fetch the keys); after a kick, each is in the other's
/// `device_lists.left`.
#[tokio::test]
async fn remote_members_device_lists_follow_joins_and_leaves() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (a.user_id("alice"), b.user_id("bob"));
    let alice_since = sync_token(&a, &alice).await;
    let bob_since = sync_token(&b, &bob).await;
    let room_id = shared_room(&a, &alice, &b, &bob, "lists").await;

    let in_list = |list: &'static str, user: String| {
        move |sync: &Value| {
            sync["device_lists"][list]
                .as_array()?
                .iter()
                .any(|id| *id == user)
                .then_some(())
        }
    };
    sync_until(
        &a,
        &alice,
        Some(alice_since),
        "bob in device_lists.changed",
        in_list("changed", bob_id.clone()),
    )
    .await;
    sync_until(
        &b,
        &bob,
        Some(bob_since),
        "alice in device_lists.changed",
        in_list("changed", alice_id.clone()),
    )
    .await;

    let alice_since = sync_token(&a, &alice).await;
    let bob_since = sync_token(&b, &bob).await;
    let (status, body) = a
        .client_api(
            &alice,
            Method::POST,
            &format!("/rooms/{room_id}/kick"),
            Some(json!({ "user_id": bob_id })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sync_until(
        &a,
        &alice,
        Some(alice_since),
        "bob in device_lists.left",
        in_list("left", bob_id.clone()),
    )
    .await;
    sync_until(
        &b,
        &bob,
        Some(bob_since),
        "alice in device_lists.left",
        in_list("left", alice_id.clone()),
    )
    .await;
}

/// Cross-signing keys uploaded by our user reach a Synapse user who shares a room with
/// them (`m.signing_key_update`, with the `m.device_list_update` that makes Synapse fetch
/// the list again): the change shows in `device_lists.changed`, and Synapse's `keys/query`
/// answers with the new master and self-signing keys.
#[tokio::test]
async fn cross_signing_keys_reach_synapse() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let alice_id = ours.user_id("alice");
    shared_room(&ours, &alice, &synapse, &bob, "keys").await;

    let since = sync_token(&synapse, &bob).await;
    let upload = crate::keys::CrossSigningKeys::new().upload_body(&alice_id);
    let (status, body) = ours
        .client_api(
            &alice,
            Method::POST,
            "/keys/device_signing/upload",
            Some(upload.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    sync_until(
        &synapse,
        &bob,
        Some(since),
        "alice's cross-signing keys",
        |sync| {
            sync["device_lists"]["changed"]
                .as_array()?
                .iter()
                .any(|id| *id == alice_id)
                .then_some(())
        },
    )
    .await;
    let (status, keys) = synapse
        .client_api(
            &bob,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { alice_id.as_str(): [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    for (field, answer) in [
        ("master_key", "master_keys"),
        ("self_signing_key", "self_signing_keys"),
    ] {
        assert_eq!(
            keys[answer][alice_id.as_str()]["keys"],
            upload[field]["keys"],
            "{field}: {keys}"
        );
    }
}
