//! Simplified sliding sync (MSC4186) driven by matrix-sdk's sliding sync API, the code Element
//! X runs: lists sorted by recency, scrolling, live messages, typing, receipts and invites,
//! and an encrypted room whose keys travel through the to-device and e2ee extensions. Raw
//! HTTP for the protocol's details and errors (`pos`, long-polling, filters, required state).

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::future::ready;
use matrix_sdk::{
    Client, Room, RoomState,
    encryption::EncryptionSettings,
    ruma::{
        OwnedRoomId, RoomId,
        api::client::{room::create_room, sync::sync_events::v5 as http},
        events::{
            InitialStateEvent, StateEventType,
            receipt::SyncReceiptEvent,
            room::{
                encryption::RoomEncryptionEventContent,
                message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
            typing::SyncTypingEvent,
        },
        uint, user_id,
    },
    sliding_sync::{SlidingSync, SlidingSyncList, SlidingSyncMode},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

const PASSWORD: &str = "pw pw pw";
const SLIDING_SYNC: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn logged_in(server: &TestServer, name: &str, encryption: bool) -> Client {
    let mut builder = Client::builder().homeserver_url(&server.url);
    if encryption {
        builder = builder.with_encryption_settings(EncryptionSettings::default());
    }
    let client = builder.build().await.expect("client");
    client
        .matrix_auth()
        .login_username(name, PASSWORD)
        .send()
        .await
        .expect("login");
    client
}

/// Messages the client's event handlers saw, as (room, body), decrypted where encrypted.
fn collect_messages(client: &Client) -> Arc<Mutex<Vec<(OwnedRoomId, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, room: Room| {
        let sink = Arc::clone(&sink);
        async move {
            sink.lock()
                .unwrap()
                .push((room.room_id().to_owned(), event.content.body().to_owned()));
        }
    });
    seen
}

/// A sliding sync with one selective list `all` over `range`, Element X's kind of required
/// state, and every extension.
async fn sliding_sync(client: &Client, range: std::ops::RangeInclusive<u32>) -> SlidingSync {
    client
        .sliding_sync("main")
        .unwrap()
        .with_all_extensions()
        .poll_timeout(Duration::from_secs(2))
        .add_list(
            SlidingSyncList::builder("all")
                .sync_mode(SlidingSyncMode::new_selective().add_range(range))
                .timeline_limit(1)
                .required_state(vec![
                    (StateEventType::RoomName, String::new()),
                    (StateEventType::RoomEncryption, String::new()),
                    (StateEventType::RoomMember, "$LAZY".to_owned()),
                    (StateEventType::RoomMember, "$ME".to_owned()),
                ]),
        )
        .build()
        .await
        .expect("sliding sync")
}

async fn set_range(sync: &SlidingSync, range: std::ops::RangeInclusive<u32>) {
    sync.on_list("all", |list| {
        list.set_sync_mode(SlidingSyncMode::new_selective().add_range(range.clone()));
        ready(())
    })
    .await
    .expect("list exists");
}

async fn list_count(sync: &SlidingSync) -> Option<u32> {
    sync.on_list("all", |list| ready(list.maximum_number_of_rooms()))
        .await
        .flatten()
}

/// Runs `sync_once` (at most 20 times) until `done` holds.
async fn sync_until(sync: &SlidingSync, what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..20 {
        if done() {
            return;
        }
        sync.sync_once().await.expect("sliding sync request");
    }
    assert!(done(), "never happened: {what}");
}

async fn create_room(server: &TestServer, token: &str, body: Value) -> OwnedRoomId {
    let (status, json) = server
        .client_api(token, Method::POST, "/createRoom", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    OwnedRoomId::try_from(json["room_id"].as_str().unwrap()).unwrap()
}

async fn send_text(server: &TestServer, token: &str, room: &RoomId, txn: &str, body: &str) {
    let (status, json) = server
        .client_api(
            token,
            Method::PUT,
            &format!("/rooms/{room}/send/m.room.message/{txn}"),
            Some(json!({ "msgtype": "m.text", "body": body })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

#[tokio::test]
async fn a_hundred_rooms_sorted_by_recency_scrolled_and_updated_live() {
    let server = TestServer::start();
    let token = server.register("alice", PASSWORD).await;
    let bob_token = server.register("bob", PASSWORD).await;
    let carol_token = server.register("carol", PASSWORD).await;
    // Room n gets its last message after room n-1: room 99 is the most recent.
    let mut rooms = Vec::new();
    for n in 0..100 {
        let room = create_room(&server, &token, json!({ "name": format!("room {n}") })).await;
        send_text(
            &server,
            &token,
            &room,
            &format!("t{n}"),
            &format!("hello {n}"),
        )
        .await;
        rooms.push(room);
    }

    let alice = logged_in(&server, "alice", false).await;
    let messages = collect_messages(&alice);
    let sync = sliding_sync(&alice, 0..=19).await;
    let summary = sync.sync_once().await.expect("first response");
    assert_eq!(list_count(&sync).await, Some(100));
    let newest: BTreeSet<OwnedRoomId> = rooms[80..].iter().cloned().collect();
    let received: BTreeSet<OwnedRoomId> = summary.rooms.iter().cloned().collect();
    assert_eq!(
        received, newest,
        "the first window holds the 20 most recent rooms"
    );
    let room_99 = alice.get_room(&rooms[99]).expect("room 99 known");
    assert_eq!(room_99.name().as_deref(), Some("room 99"));
    let stamp = |room: &OwnedRoomId| {
        alice
            .get_room(room)
            .and_then(|r| r.recency_stamp())
            .map(u64::from)
    };
    assert!(
        stamp(&rooms[99]) > stamp(&rooms[98]),
        "bump stamps follow activity"
    );
    assert!(
        messages
            .lock()
            .unwrap()
            .contains(&(rooms[99].clone(), "hello 99".to_owned())),
        "timeline_limit 1 brings each room's last message"
    );

    // Scrolling: the next 20.
    set_range(&sync, 20..=39).await;
    let summary = sync.sync_once().await.expect("scrolled");
    let received: BTreeSet<OwnedRoomId> = summary.rooms.iter().cloned().collect();
    let expected: BTreeSet<OwnedRoomId> = rooms[60..80].iter().cloned().collect();
    assert_eq!(received, expected);

    // Opening a room outside the window (a subscription, as Element X does when a room is
    // opened) brings it with the longer timeline asked for.
    let mut settings = http::request::RoomSubscription::default();
    settings.timeline_limit = uint!(10);
    settings.required_state = vec![(StateEventType::RoomTopic, String::new())];
    sync.subscribe_to_rooms(&[&rooms[5]], Some(settings), false);
    let summary = sync.sync_once().await.expect("subscribed");
    assert!(summary.rooms.contains(&rooms[5]), "{:?}", summary.rooms);
    assert!(
        messages
            .lock()
            .unwrap()
            .contains(&(rooms[5].clone(), "hello 5".to_owned()))
    );
    sync.unsubscribe_to_rooms(&[&rooms[5]], false);

    // Back to the top; a new message in the oldest room brings it there, live.
    set_range(&sync, 0..=19).await;
    sync.sync_once().await.expect("back to the top");
    send_text(&server, &token, &rooms[0], "late", "room 0 wakes up").await;
    let wanted = (rooms[0].clone(), "room 0 wakes up".to_owned());
    sync_until(&sync, "the new message arrives", || {
        messages.lock().unwrap().contains(&wanted)
    })
    .await;
    assert!(
        stamp(&rooms[0]) > stamp(&rooms[99]),
        "room 0 is now the most recent"
    );

    // Typing and a read receipt from bob, live.
    let room = &rooms[99];
    let (status, _) = server
        .client_api(
            &token,
            Method::POST,
            &format!("/rooms/{room}/invite"),
            Some(json!({ "user_id": "@bob:localhost" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .client_api(
            &bob_token,
            Method::POST,
            &format!("/join/{room}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let typing: Arc<Mutex<Vec<String>>> = Arc::default();
    let receipts: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let typing = Arc::clone(&typing);
        alice.add_event_handler(move |event: SyncTypingEvent| {
            typing
                .lock()
                .unwrap()
                .extend(event.content.user_ids.iter().map(|u| u.to_string()));
            ready(())
        });
        let receipts = Arc::clone(&receipts);
        alice.add_event_handler(move |event: SyncReceiptEvent| {
            let text = serde_json::to_string(&event.content).unwrap();
            receipts.lock().unwrap().push(text);
            ready(())
        });
    }
    let (status, _) = server
        .client_api(
            &bob_token,
            Method::PUT,
            &format!("/rooms/{room}/typing/@bob:localhost"),
            Some(json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    sync_until(&sync, "bob's typing arrives", || {
        typing.lock().unwrap().iter().any(|u| u == "@bob:localhost")
    })
    .await;
    let (_, messages_page) = server
        .client_api(
            &bob_token,
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=1"),
            None,
        )
        .await;
    let last_event = messages_page["chunk"][0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = server
        .client_api(
            &bob_token,
            Method::POST,
            &format!("/rooms/{room}/receipt/m.read/{last_event}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    sync_until(&sync, "bob's read receipt arrives", || {
        receipts
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(&last_event) && r.contains("@bob:localhost"))
    })
    .await;

    // An invite from carol appears, as an invite.
    let invited = create_room(
        &server,
        &carol_token,
        json!({ "name": "carol's room", "invite": ["@alice:localhost"] }),
    )
    .await;
    sync_until(&sync, "the invite arrives", || {
        alice
            .get_room(&invited)
            .is_some_and(|room| room.state() == RoomState::Invited)
    })
    .await;
    assert_eq!(list_count(&sync).await, Some(101));
}

#[tokio::test]
async fn an_encrypted_room_over_sliding_sync() {
    let server = TestServer::start();
    server.register("alice", PASSWORD).await;
    server.register("bob", PASSWORD).await;
    let alice = logged_in(&server, "alice", true).await;
    let bob = logged_in(&server, "bob", true).await;
    let bob_messages = collect_messages(&bob);
    let alice_messages = collect_messages(&alice);
    let alice_sync = sliding_sync(&alice, 0..=19).await;
    let bob_sync = sliding_sync(&bob, 0..=19).await;
    alice_sync.sync_once().await.expect("alice syncs");
    bob_sync.sync_once().await.expect("bob syncs");

    let mut request = create_room::v3::Request::new();
    request.invite = vec![user_id!("@bob:localhost").to_owned()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.create_room(request).await.expect("createRoom");
    let room_id = room.room_id().to_owned();
    sync_until(&bob_sync, "bob sees the invite", || {
        bob.get_room(&room_id)
            .is_some_and(|room| room.state() == RoomState::Invited)
    })
    .await;
    bob.join_room_by_id(&room_id).await.expect("bob joins");
    sync_until(&alice_sync, "alice sees bob join", || {
        alice
            .get_room(&room_id)
            .is_some_and(|room| room.joined_members_count() == 2)
    })
    .await;
    bob_sync.sync_once().await.expect("bob syncs the room");

    // alice -> bob: the room key reaches bob through the to-device extension.
    room.send(RoomMessageEventContent::text_plain(
        "The key is under the mat",
    ))
    .await
    .expect("alice sends");
    let wanted = (room_id.clone(), "The key is under the mat".to_owned());
    sync_until(&bob_sync, "bob decrypts alice's message", || {
        bob_messages.lock().unwrap().contains(&wanted)
    })
    .await;

    // bob -> alice, the other way round.
    bob.get_room(&room_id)
        .expect("bob's room")
        .send(RoomMessageEventContent::text_plain("Thanks, see you at 8"))
        .await
        .expect("bob sends");
    let wanted = (room_id.clone(), "Thanks, see you at 8".to_owned());
    sync_until(&alice_sync, "alice decrypts bob's message", || {
        alice_messages.lock().unwrap().contains(&wanted)
    })
    .await;
    assert!(
        room.latest_encryption_state().await.unwrap().is_encrypted(),
        "the room is encrypted"
    );
}

/// A raw sliding sync request.
async fn raw_sync(
    server: &TestServer,
    token: &str,
    query: &str,
    body: Value,
) -> (StatusCode, Value) {
    server
        .request(
            Method::POST,
            &format!("{SLIDING_SYNC}{query}"),
            Some(token),
            Some(body),
        )
        .await
}

#[tokio::test]
async fn positions_long_polls_filters_and_required_state() {
    let server = TestServer::start();
    let token = server.register("alice", PASSWORD).await;
    let bob_token = server.register("bob", PASSWORD).await;

    // Advertised the way matrix-sdk and Element X look for it.
    let (_, versions) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(
        versions["unstable_features"]["org.matrix.simplified_msc3575"],
        true
    );

    let plain = create_room(&server, &token, json!({ "name": "plain", "topic": "t" })).await;
    let dm = create_room(
        &server,
        &token,
        json!({ "is_direct": true, "invite": ["@bob:localhost"] }),
    )
    .await;
    let (status, _) = server
        .client_api(
            &token,
            Method::PUT,
            "/user/@alice:localhost/account_data/m.direct",
            Some(json!({ "@bob:localhost": [dm.as_str()] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .client_api(
            &bob_token,
            Method::POST,
            &format!("/join/{dm}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let invite = create_room(
        &server,
        &bob_token,
        json!({ "invite": ["@alice:localhost"] }),
    )
    .await;

    let body = json!({
        "txn_id": "t1",
        "lists": {
            "all": { "ranges": [[0, 9]], "timeline_limit": 2, "required_state": [["*", "*"]] },
            "dms": { "ranges": [[0, 9]], "timeline_limit": 0, "required_state": [["m.room.member", "$ME"]],
                     "filters": { "is_dm": true } },
            "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": true } }
        },
        "extensions": { "e2ee": { "enabled": true }, "to_device": { "enabled": true } }
    });
    let (status, first) = raw_sync(&server, &token, "", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["txn_id"], "t1");
    assert_eq!(first["lists"]["all"]["count"], 3);
    assert_eq!(first["lists"]["dms"]["count"], 1);
    assert_eq!(first["lists"]["invites"]["count"], 1);
    // Wildcards bring all of the plain room's state; `$ME` only alice's member event.
    let plain_room = &first["rooms"][plain.as_str()];
    assert_eq!(plain_room["initial"], true);
    assert_eq!(plain_room["name"], "plain");
    let types: BTreeSet<&str> = plain_room["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.name",
        "m.room.topic",
    ] {
        assert!(types.contains(kind), "{kind} missing from {types:?}");
    }
    assert_eq!(plain_room["timeline"].as_array().unwrap().len(), 2);
    assert_eq!(plain_room["limited"], true);
    assert!(plain_room["prev_batch"].is_string());
    assert!(plain_room["bump_stamp"].as_u64().is_some());
    assert_eq!(first["rooms"][dm.as_str()]["is_dm"], true);
    let invite_room = &first["rooms"][invite.as_str()];
    assert!(
        invite_room["invite_state"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(invite_room.get("timeline").is_none());
    // The e2ee extension has the key counts (signed_curve25519 always present).
    assert!(
        first["extensions"]["e2ee"]["device_one_time_keys_count"]["signed_curve25519"].is_number()
    );
    assert!(first["extensions"]["e2ee"]["device_unused_fallback_key_types"].is_array());
    assert!(first["extensions"]["to_device"]["next_batch"].is_string());
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Nothing new: an immediate answer with no rooms.
    let (status, quiet) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{quiet}");
    assert!(quiet.get("rooms").is_none(), "{quiet}");
    let pos = quiet["pos"].as_str().unwrap().to_owned();

    // A long-poll wakes for a message and carries only what changed.
    let started = Instant::now();
    let waiting = {
        let (url, token, body, pos) =
            (server.url.clone(), token.clone(), body.clone(), pos.clone());
        tokio::spawn(async move {
            let response = crate::harness::http()
                .post(format!("{url}{SLIDING_SYNC}?pos={pos}&timeout=20000"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_text(&server, &bob_token, &dm, "wake", "are you there?").await;
    let woke = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long-poll answers")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let dm_room = &woke["rooms"][dm.as_str()];
    assert!(dm_room.is_object(), "{woke}");
    assert!(
        dm_room.get("initial").is_none(),
        "a known room is not sent again in full"
    );
    assert!(
        woke["rooms"].get(plain.as_str()).is_none(),
        "unchanged rooms are left out"
    );
    let timeline = dm_room["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "only the new event: {dm_room}");
    assert_eq!(timeline[0]["content"]["body"], "are you there?");
    assert_eq!(dm_room["num_live"], 1);
    assert!(dm_room.get("limited").is_none_or(|l| l == false));

    // The same pos again (a retry after a lost answer) gets the same news again; a made-up
    // one does not work.
    let (status, retried) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        retried["rooms"][dm.as_str()]["timeline"][0]["content"]["body"],
        "are you there?"
    );
    let response = raw_sync(&server, &token, "?pos=999999&timeout=0", body.clone()).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_UNKNOWN_POS");
    // Another connection (conn_id) does not know this one's positions.
    let mut other = body.clone();
    other["conn_id"] = json!("other");
    let response = raw_sync(&server, &token, &format!("?pos={pos}&timeout=0"), other).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_UNKNOWN_POS");

    // `$ME` alone brings only the user's own member event.
    let only_me = json!({
        "conn_id": "me",
        "lists": { "dms": { "ranges": [[0, 9]], "timeline_limit": 0,
                            "required_state": [["m.room.member", "$ME"]],
                            "filters": { "is_dm": true } } }
    });
    let (_, answer) = raw_sync(&server, &token, "", only_me).await;
    let state = answer["rooms"][dm.as_str()]["required_state"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!(state[0]["type"], "m.room.member");
    assert_eq!(state[0]["state_key"], "@alice:localhost");
    // Heroes name the other member.
    assert_eq!(
        answer["rooms"][dm.as_str()]["heroes"][0]["user_id"],
        "@bob:localhost"
    );

    // Absurd requests are refused, not worked through.
    let ranges: Vec<Value> = (0..100).map(|_| json!([0, 499])).collect();
    let huge = json!({ "lists": { "all": { "ranges": ranges, "timeline_limit": 1 } } });
    let response = raw_sync(&server, &token, "", huge).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn joins_kicks_profile_changes_and_to_device_messages() {
    let server = TestServer::start();
    let token = server.register("alice", PASSWORD).await;
    let bob_token = server.register("bob", PASSWORD).await;
    let (_, whoami) = server.whoami(&token).await;
    let device = whoami["device_id"].as_str().unwrap().to_owned();
    let quiet = create_room(&server, &token, json!({ "name": "quiet" })).await;
    let busy = create_room(&server, &token, json!({ "name": "busy" })).await;
    send_text(&server, &token, &busy, "b1", "latest").await;
    let invited = create_room(
        &server,
        &bob_token,
        json!({ "invite": ["@alice:localhost"] }),
    )
    .await;
    let body = json!({
        "lists": { "all": { "ranges": [[0, 19]], "timeline_limit": 5, "required_state": [["*", "*"]] } },
        "extensions": { "to_device": { "enabled": true } }
    });
    let (_, first) = raw_sync(&server, &token, "", body.clone()).await;
    assert!(first["rooms"][invited.as_str()]["invite_state"].is_array());
    let stamp =
        |answer: &Value, room: &RoomId| answer["rooms"][room.as_str()]["bump_stamp"].as_u64();
    assert!(stamp(&first, &busy) > stamp(&first, &quiet));
    let mut pos = first["pos"].as_str().unwrap().to_owned();

    // Accepting the invite sends the room in full: power levels and all.
    let (status, _) = server
        .client_api(
            &token,
            Method::POST,
            &format!("/join/{invited}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, joined) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    let room = &joined["rooms"][invited.as_str()];
    assert_eq!(room["initial"], true, "{joined}");
    assert!(room.get("invite_state").is_none());
    let types: BTreeSet<&str> = room["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains("m.room.power_levels") && types.contains("m.room.join_rules"),
        "{types:?}"
    );
    assert_eq!(room["joined_count"], 2);
    pos = joined["pos"].as_str().unwrap().to_owned();

    // A new display name is a member event in every room, but reorders nothing.
    let (status, _) = server
        .client_api(
            &token,
            Method::PUT,
            "/profile/@alice:localhost/displayname",
            Some(json!({ "displayname": "Alice" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, renamed) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    assert_eq!(stamp(&renamed, &busy), stamp(&first, &busy), "{renamed}");
    assert_eq!(stamp(&renamed, &quiet), stamp(&first, &quiet));
    pos = renamed["pos"].as_str().unwrap().to_owned();

    // Kicked: the room comes once more, with the kick; then no more.
    let (status, _) = server
        .client_api(
            &bob_token,
            Method::POST,
            &format!("/rooms/{invited}/kick"),
            Some(json!({ "user_id": "@alice:localhost" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, kicked) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    let timeline = kicked["rooms"][invited.as_str()]["timeline"]
        .as_array()
        .unwrap()
        .clone();
    let last = timeline.last().unwrap();
    assert_eq!(last["type"], "m.room.member");
    assert_eq!(last["content"]["membership"], "leave");
    assert_eq!(last["sender"], "@bob:localhost");
    pos = kicked["pos"].as_str().unwrap().to_owned();
    let (_, after) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    assert!(after["rooms"].get(invited.as_str()).is_none(), "{after}");
    assert_eq!(after["lists"]["all"]["count"], 2);
    pos = after["pos"].as_str().unwrap().to_owned();
    // A new connection (say, after a restart) still hears of the kick.
    let mut fresh = body.clone();
    fresh["conn_id"] = json!("fresh");
    let (_, new_connection) = raw_sync(&server, &token, "", fresh).await;
    assert!(
        new_connection["rooms"][invited.as_str()].is_object(),
        "{new_connection}"
    );

    // A knock shows up with the stripped state and the knock itself.
    let knockable = create_room(
        &server,
        &bob_token,
        json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "",
                                    "content": { "join_rule": "knock" } }] }),
    )
    .await;
    let (status, knock) = server
        .client_api(
            &token,
            Method::POST,
            &format!("/knock/{knockable}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{knock}");
    let (_, knocked) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    let stripped = knocked["rooms"][knockable.as_str()]["invite_state"]
        .as_array()
        .unwrap_or_else(|| panic!("{knocked}"))
        .clone();
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == "@alice:localhost"
        && e["content"]["membership"] == "knock"));
    pos = knocked["pos"].as_str().unwrap().to_owned();

    // To-device: delivered once; `since` acknowledges it.
    let (status, _) = server
        .client_api(
            &bob_token,
            Method::PUT,
            "/sendToDevice/m.test/txn1",
            Some(json!({ "messages": { "@alice:localhost": { device.as_str(): { "n": 1 } } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, delivered) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        body.clone(),
    )
    .await;
    let to_device = &delivered["extensions"]["to_device"];
    assert_eq!(to_device["events"][0]["content"]["n"], 1, "{delivered}");
    let next_batch = to_device["next_batch"].as_str().unwrap().to_owned();
    pos = delivered["pos"].as_str().unwrap().to_owned();
    let mut acknowledged = body.clone();
    acknowledged["extensions"]["to_device"]["since"] = json!(next_batch);
    let (_, again) = raw_sync(
        &server,
        &token,
        &format!("?pos={pos}&timeout=0"),
        acknowledged,
    )
    .await;
    assert!(
        again["extensions"]["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{again}"
    );
}
