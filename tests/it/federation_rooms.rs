//! Rooms across servers (issue 11 item 6, with the joins of issue 12): two instances of
//! this server, over TLS on 127.0.0.1, share a room. A user of one joins the other's room
//! by alias (make_join / send_join), and messages go both ways through the outgoing queue
//! and `/send`, checked and stored by the receiving room core.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{harness::TestServer, synapse::Synapse};

/// A homeserver a test talks to as a client: ours or Synapse.
pub(crate) trait Homeserver {
    fn name(&self) -> String;
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value);
}

impl Homeserver for TestServer {
    fn name(&self) -> String {
        self.server_name.to_string()
    }
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.client_api(token, method, path, body).await
    }
}

impl Homeserver for Synapse {
    fn name(&self) -> String {
        self.server_name.to_string()
    }
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.client_api(token, method, path, body).await
    }
}

/// Syncs as `token` on `server` from `since` (an initial sync first when `None`) until
/// `found` picks something out of an answer, and returns it (bounded: 30 s).
pub(crate) async fn sync_until<T>(
    server: &impl Homeserver,
    token: &str,
    mut since: Option<String>,
    what: &str,
    found: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = match &since {
            Some(since) => format!("/sync?timeout=2000&since={since}"),
            None => "/sync?timeout=0".to_owned(),
        };
        let (status, sync) = server.call(token, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        if let Some(found) = found(&sync) {
            return found;
        }
        since = sync["next_batch"].as_str().map(str::to_owned);
        assert!(
            Instant::now() < deadline,
            "{what} did not reach {}",
            server.name()
        );
    }
}

/// Waits for an `m.room.message` with `body` in `room_id`'s timeline; returns the event.
pub(crate) async fn wait_for_message(
    server: &impl Homeserver,
    token: &str,
    room_id: &str,
    body: &str,
) -> Value {
    sync_until(
        server,
        token,
        None,
        &format!("{body:?} in {room_id}"),
        |sync| {
            sync["rooms"]["join"][room_id]["timeline"]["events"]
                .as_array()?
                .iter()
                .find(|event| event["type"] == "m.room.message" && event["content"]["body"] == body)
                .cloned()
        },
    )
    .await
}

pub(crate) async fn send_text(
    server: &impl Homeserver,
    token: &str,
    room_id: &str,
    txn: &str,
    body: &str,
) -> String {
    let (status, sent) = server
        .call(
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

/// A Synapse user joins a room here by alias; then they and our user talk both ways.
#[tokio::test]
async fn a_synapse_user_and_ours_talk_in_a_room_here() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let (status, created) = ours
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "shack", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    let (status, joined) = synapse
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23shack:{}", ours.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.log());

    let from_synapse = send_text(&synapse, &bob, &room_id, "s1", "73 from Synapse").await;
    let seen = wait_for_message(&ours, &alice, &room_id, "73 from Synapse").await;
    assert_eq!(seen["event_id"], from_synapse.as_str());
    assert_eq!(seen["sender"], synapse.user_id("bob").as_str());

    let from_ours = send_text(&ours, &alice, &room_id, "o1", "73 from conduit").await;
    let seen = wait_for_message(&synapse, &bob, &room_id, "73 from conduit").await;
    assert_eq!(seen["event_id"], from_ours.as_str(), "{}", synapse.log());
}

/// Our user joins a room on Synapse (version 12, Synapse's default) by alias, and the two
/// talk both ways.
#[tokio::test]
async fn our_user_joins_a_synapse_room_and_they_talk() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let (status, created) = synapse
        .client_api(
            &bob,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "net", "preset": "public_chat", "name": "Net" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    let (status, state) = synapse
        .client_api(&bob, Method::GET, &format!("/rooms/{room_id}/state"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let version = state
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.room.create")
        .map(|event| event["content"]["room_version"].clone());
    assert_eq!(version, Some(json!("12")), "Synapse's default room version");
    send_text(&synapse, &bob, &room_id, "s0", "before alice came").await;

    let (status, joined) = ours
        .client_api(
            &alice,
            Method::POST,
            &format!("/join/%23net:{}", synapse.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{joined}\nours:\n{}\nsynapse:\n{}",
        ours.log(),
        synapse.log()
    );
    assert_eq!(joined["room_id"], room_id.as_str());
    let (status, name) = ours
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/state/m.room.name"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name["name"], "Net");
    // Synapse counts her in.
    let (status, members) = synapse
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room_id}/joined_members"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(
        members["joined"][ours.user_id("alice").as_str()].is_object(),
        "{members}"
    );

    let from_ours = send_text(&ours, &alice, &room_id, "o1", "hello Synapse").await;
    let seen = wait_for_message(&synapse, &bob, &room_id, "hello Synapse").await;
    assert_eq!(seen["event_id"], from_ours.as_str(), "{}", synapse.log());

    let from_synapse = send_text(&synapse, &bob, &room_id, "s1", "hello conduit").await;
    let seen = wait_for_message(&ours, &alice, &room_id, "hello conduit").await;
    assert_eq!(seen["event_id"], from_synapse.as_str(), "{}", ours.log());
}

/// A gap: B missed two of A's events (taken out of A's outgoing queue while both were
/// down) and then receives the third, whose prev event it lacks. B fills the gap from A
/// with `get_missing_events` and shows all three, in order.
#[tokio::test]
async fn a_gap_is_filled_with_get_missing_events() {
    let mut a = TestServer::start_federating();
    let mut b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (status, created) = a
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "gap", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    let (status, joined) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23gap:{}", a.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");

    b.stop();
    let mut sent = Vec::new();
    for n in 1..=3 {
        sent.push(send_text(&a, &alice, &room_id, &format!("g{n}"), &format!("gap {n}")).await);
    }
    a.stop();
    // Out of A's queue for B: the transaction in flight and the first two events.
    {
        let db = conduit::storage::Db::open(
            a.data_dir(),
            None,
            8 << 20,
            conduit::service::migrations::STEPS,
        )
        .unwrap();
        let mut prefix = b.server_name.as_bytes().to_vec();
        prefix.push(0xFF);
        let queue = db.tree("servernameseq_outgoing").unwrap();
        let queued: Vec<(Vec<u8>, Value)> = queue
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry.unwrap();
                (key, serde_json::from_slice(&value).unwrap())
            })
            .collect();
        let bodies: Vec<&str> = queued
            .iter()
            .map(|(_, item)| item["Pdu"]["content"]["body"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(bodies, ["gap 1", "gap 2", "gap 3"], "{queued:?}");
        for (key, _) in &queued[..2] {
            queue.remove(key).unwrap();
        }
        db.tree("servername_transaction")
            .unwrap()
            .remove(b.server_name.as_bytes())
            .unwrap();
        db.flush_blocking().unwrap();
    }
    b.restart();
    a.restart();

    let seen = wait_for_message(&b, &bob, &room_id, "gap 3").await;
    assert_eq!(seen["event_id"], sent[2].as_str(), "{}", b.log());
    let (status, page) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room_id}/messages?dir=b&limit=10"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    // Newest first; arrival order here: the two fetched ones before the third.
    assert_eq!(
        ids,
        [sent[2].as_str(), sent[1].as_str(), sent[0].as_str()],
        "{page}"
    );
}

/// The `next_batch` of an initial sync.
pub(crate) async fn sync_token(server: &impl Homeserver, token: &str) -> String {
    let (status, sync) = server
        .call(token, Method::GET, "/sync?timeout=0", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    sync["next_batch"].as_str().unwrap().to_owned()
}

/// Waits, from `since`, for `user` in `device_lists.changed`.
async fn wait_for_device_change(server: &impl Homeserver, token: &str, since: String, user: &str) {
    sync_until(
        server,
        token,
        Some(since),
        &format!("{user}'s device change"),
        |sync| {
            sync["device_lists"]["changed"]
                .as_array()?
                .iter()
                .any(|id| id == user)
                .then_some(())
        },
    )
    .await
}

/// Logs `name` in on a new device and uploads its device keys, as a client does.
async fn new_device(server: &impl Homeserver, user_id: &str, password: &str) {
    let name = user_id[1..].split(':').next().unwrap();
    let (status, body) = server
        .call(
            "",
            Method::POST,
            "/login",
            Some(json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": name },
                "password": password,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (token, device) = (
        body["access_token"].as_str().unwrap(),
        body["device_id"].as_str().unwrap(),
    );
    let (status, body) = server
        .call(
            token,
            Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": crate::keys::signed_device_keys(user_id, device) })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A new device of a user on one server shows in `device_lists.changed` for the users of
/// the other server who share a room with them (`m.device_list_update`), both ways, with
/// a real Synapse on the other side.
#[tokio::test]
async fn device_list_changes_reach_the_other_server() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (ours.user_id("alice"), synapse.user_id("bob"));
    let (status, created) = ours
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "keys", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (status, joined) = synapse
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23keys:{}", ours.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");

    // Ours → Synapse.
    let since = sync_token(&synapse, &bob).await;
    new_device(&ours, &alice_id, "correct horse").await;
    wait_for_device_change(&synapse, &bob, since, &alice_id).await;
    let (status, keys) = synapse
        .client_api(
            &bob,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { alice_id.as_str(): [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(
        keys["device_keys"][alice_id.as_str()]
            .as_object()
            .map(|devices| devices.len()),
        Some(1),
        "Synapse knows alice's new device: {keys}"
    );

    // Synapse → ours.
    let since = sync_token(&ours, &alice).await;
    new_device(&synapse, &bob_id, "battery staple").await;
    wait_for_device_change(&ours, &alice, since, &bob_id).await;
}

/// Waits, from `since`, for an ephemeral event of `kind` in `room_id` that `wanted`
/// accepts.
pub(crate) async fn wait_for_ephemeral(
    server: &impl Homeserver,
    token: &str,
    since: String,
    room_id: &str,
    kind: &str,
    wanted: impl Fn(&Value) -> bool,
) {
    sync_until(
        server,
        token,
        Some(since),
        &format!("{kind} in {room_id}"),
        |sync| {
            sync["rooms"]["join"][room_id]["ephemeral"]["events"]
                .as_array()?
                .iter()
                .any(|event| event["type"] == kind && wanted(event))
                .then_some(())
        },
    )
    .await
}

/// Typing notices and read receipts go both ways between our server and Synapse.
#[tokio::test]
async fn typing_and_receipts_cross_to_synapse_and_back() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let bob = synapse.register("bob", "battery staple").await;
    typing_and_receipts_cross(&ours, &synapse, &bob, synapse.user_id("bob")).await;
}

/// The same between two instances of our server.
#[tokio::test]
async fn typing_and_receipts_cross_between_two_of_our_servers() {
    let ours = TestServer::start_federating();
    let other = TestServer::start_federating();
    let bob = other.register("bob", "battery staple").await;
    typing_and_receipts_cross(&ours, &other, &bob, other.user_id("bob")).await;
}

/// Alice (on `ours`) and Bob (on `other`, logged in as `bob`) share a room on `ours`; each
/// one's typing notice and read receipt reach the other.
async fn typing_and_receipts_cross(
    ours: &TestServer,
    other: &impl Homeserver,
    bob: &str,
    bob_id: String,
) {
    let alice = ours.register("alice", "correct horse").await;
    let alice_id = ours.user_id("alice");
    let (status, created) = ours
        .call(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "desk", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    let (status, joined) = other
        .call(
            bob,
            Method::POST,
            &format!("/join/%23desk:{}", ours.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let from_alice = send_text(ours, &alice, &room_id, "o1", "anyone there?").await;
    wait_for_message(other, bob, &room_id, "anyone there?").await;
    let from_bob = send_text(other, bob, &room_id, "s1", "here").await;
    wait_for_message(ours, &alice, &room_id, "here").await;

    // Typing: Bob on the other server → Alice here, and back.
    let since = sync_token(ours, &alice).await;
    let (status, body) = other
        .call(
            bob,
            Method::PUT,
            &format!("/rooms/{room_id}/typing/{bob_id}"),
            Some(json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bob_typing = |event: &Value| {
        event["content"]["user_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == bob_id.as_str()))
    };
    wait_for_ephemeral(ours, &alice, since, &room_id, "m.typing", bob_typing).await;
    let since = sync_token(other, bob).await;
    let (status, body) = ours
        .call(
            &alice,
            Method::PUT,
            &format!("/rooms/{room_id}/typing/{alice_id}"),
            Some(json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice_typing = |event: &Value| {
        event["content"]["user_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == alice_id.as_str()))
    };
    wait_for_ephemeral(other, bob, since, &room_id, "m.typing", alice_typing).await;

    // Receipts: Alice read Bob's message; Bob read Alice's.
    let since = sync_token(other, bob).await;
    let (status, body) = ours
        .call(
            &alice,
            Method::POST,
            &format!("/rooms/{room_id}/receipt/m.read/{from_bob}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let read_by = |event_id: String, user: String| {
        move |event: &Value| event["content"][&event_id]["m.read"][&user].is_object()
    };
    wait_for_ephemeral(
        other,
        bob,
        since,
        &room_id,
        "m.receipt",
        read_by(from_bob.clone(), alice_id.clone()),
    )
    .await;
    let since = sync_token(ours, &alice).await;
    let (status, body) = other
        .call(
            bob,
            Method::POST,
            &format!("/rooms/{room_id}/receipt/m.read/{from_alice}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_ephemeral(
        ours,
        &alice,
        since,
        &room_id,
        "m.receipt",
        read_by(from_alice.clone(), bob_id.clone()),
    )
    .await;
}

/// The bodies of the messages of a backwards `/messages` page, newest first.
async fn history(server: &impl Homeserver, token: &str, room_id: &str) -> Vec<String> {
    let (status, page) = server
        .call(
            token,
            Method::GET,
            &format!("/rooms/{room_id}/messages?dir=b&limit=30"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// A user who joins a room on another server pages back past the join: the history comes
/// from that server (`/backfill`), in order, from our own second instance and from Synapse.
#[tokio::test]
async fn history_from_before_the_join_is_backfilled() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (status, created) = a
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "old", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        send_text(&a, &alice, &room_id, &format!("o{n}"), &format!("old {n}")).await;
    }
    let (status, joined) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23old:{}", a.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(
        history(&b, &bob, &room_id).await,
        ["old 5", "old 4", "old 3", "old 2", "old 1"],
        "{}",
        b.log()
    );

    // From Synapse.
    let synapse = Synapse::start().await;
    let carol = synapse.register("carol", "battery staple").await;
    let (status, created) = synapse
        .client_api(
            &carol,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "log", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        send_text(
            &synapse,
            &carol,
            &room_id,
            &format!("s{n}"),
            &format!("entry {n}"),
        )
        .await;
    }
    let (status, joined) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23log:{}", synapse.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(
        history(&b, &bob, &room_id).await,
        ["entry 3", "entry 2", "entry 1"],
        "{}",
        b.log()
    );
}
