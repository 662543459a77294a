//! What clients keep on the server besides rooms: typing and receipts (through matrix-sdk),
//! account data, push rules and filters, all visible through /sync.

use std::time::Duration;

use matrix_sdk::{
    config::SyncSettings,
    ruma::{
        api::client::receipt::create_receipt::v3::ReceiptType,
        events::{receipt::ReceiptThread, room::message::RoomMessageEventContent},
    },
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

async fn token(server: &TestServer, name: &str) -> String {
    server.register(name, "pw pw pw").await
}

fn ephemeral_of(sync: &Value, room: &str, kind: &str) -> Option<Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|event| event["type"] == kind)
        .cloned()
}

#[tokio::test]
async fn typing_and_receipts_reach_the_other_members() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    server.register("bob", "pw pw pw").await;
    let (_, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();

    let bob = server.client().await;
    bob.matrix_auth()
        .login_username("bob", "pw pw pw")
        .send()
        .await
        .unwrap();
    let room_id = matrix_sdk::ruma::RoomId::parse(&room).unwrap();
    let joined = bob.join_room_by_id(&room_id).await.expect("bob joins");
    let (_, sync) = server.client_api(&alice, Method::GET, "/sync", None).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Typing, through matrix-sdk.
    joined.typing_notice(true).await.expect("typing");
    let (_, sync) = server
        .client_api(
            &alice,
            Method::GET,
            &format!("/sync?since={since}&timeout=5000"),
            None,
        )
        .await;
    let typing = ephemeral_of(&sync, &room, "m.typing").expect("m.typing in alice's sync");
    assert_eq!(typing["content"]["user_ids"], json!(["@bob:localhost"]));
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // A message and its read receipt, through matrix-sdk.
    let sent = joined
        .send(RoomMessageEventContent::text_plain("read me"))
        .await
        .unwrap()
        .response
        .event_id;
    joined
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, sent.clone())
        .await
        .expect("receipt");
    joined
        .send_single_receipt(
            ReceiptType::ReadPrivate,
            ReceiptThread::Unthreaded,
            sent.clone(),
        )
        .await
        .expect("private receipt");
    let (_, sync) = server
        .client_api(&alice, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    let receipts = ephemeral_of(&sync, &room, "m.receipt").expect("m.receipt in alice's sync");
    assert!(
        receipts["content"][sent.as_str()]["m.read"]["@bob:localhost"]["ts"].is_u64(),
        "{receipts}"
    );
    assert!(
        receipts["content"][sent.as_str()]
            .get("m.read.private")
            .is_none(),
        "private receipts stay private"
    );

    // Bob's own client sees his private receipt.
    let response = bob
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .unwrap();
    let own = response.rooms.joined.get(joined.room_id()).unwrap();
    let private = own
        .ephemeral
        .iter()
        .any(|event| event.json().get().contains("m.read.private"));
    assert!(private, "the owner sees its private receipt");

    // Read markers set m.fully_read (room account data) and a receipt.
    let markers = json!({ "m.fully_read": sent, "m.read": sent });
    assert_eq!(
        server
            .client_api(
                &alice,
                Method::POST,
                &format!("/rooms/{room}/read_markers"),
                Some(markers)
            )
            .await
            .0,
        StatusCode::OK
    );
    let path = format!("/user/@alice:localhost/rooms/{room}/account_data/m.fully_read");
    let (status, fully_read) = server.client_api(&alice, Method::GET, &path, None).await;
    assert_eq!(
        (status, fully_read["event_id"].clone()),
        (StatusCode::OK, json!(sent))
    );

    // Typing in a room one is not in is refused.
    let carol = token(&server, "carol").await;
    let typing = json!({ "typing": true, "timeout": 1000 });
    let path = format!("/rooms/{room}/typing/@carol:localhost");
    assert_error(
        &server
            .client_api(&carol, Method::PUT, &path, Some(typing))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn account_data_push_rules_and_filters() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let bob = token(&server, "bob").await;
    let (_, sync) = server.client_api(&alice, Method::GET, "/sync", None).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Global account data, visible in the next sync; private to its owner.
    let direct = json!({ "@bob:localhost": ["!dm:localhost"] });
    let path = "/user/@alice:localhost/account_data/m.direct";
    assert_eq!(
        server
            .client_api(&alice, Method::PUT, path, Some(direct.clone()))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server.client_api(&alice, Method::GET, path, None).await.1,
        direct
    );
    assert_error(
        &server.client_api(&bob, Method::GET, path, None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .client_api(
                &alice,
                Method::GET,
                "/user/@alice:localhost/account_data/m.nothing",
                None,
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (_, sync) = server
        .client_api(&alice, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    let events = sync["account_data"]["events"]
        .as_array()
        .expect("account data in sync");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.direct" && e["content"] == direct),
        "{sync}"
    );

    // Push rules: the spec's default set, plus rule CRUD.
    let (status, rules) = server
        .client_api(&alice, Method::GET, "/pushrules/", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let overrides = rules["global"]["override"]
        .as_array()
        .expect("override rules");
    assert!(
        overrides
            .iter()
            .any(|rule| rule["rule_id"] == ".m.rule.master")
    );
    let rule = json!({ "actions": ["notify"], "pattern": "cake" });
    assert_eq!(
        server
            .client_api(
                &alice,
                Method::PUT,
                "/pushrules/global/content/cake",
                Some(rule)
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, stored) = server
        .client_api(&alice, Method::GET, "/pushrules/global/content/cake", None)
        .await;
    assert_eq!(stored["pattern"], "cake");
    let disable = json!({ "enabled": false });
    assert_eq!(
        server
            .client_api(
                &alice,
                Method::PUT,
                "/pushrules/global/content/cake/enabled",
                Some(disable)
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, enabled) = server
        .client_api(
            &alice,
            Method::GET,
            "/pushrules/global/content/cake/enabled",
            None,
        )
        .await;
    assert_eq!(enabled["enabled"], false);
    assert_eq!(
        server
            .client_api(
                &alice,
                Method::DELETE,
                "/pushrules/global/content/cake",
                None
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &server
            .client_api(&alice, Method::GET, "/pushrules/global/content/cake", None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (_, bobs) = server
        .client_api(&bob, Method::GET, "/pushrules/", None)
        .await;
    assert!(
        bobs["global"]["content"]
            .as_array()
            .is_none_or(|rules| rules.iter().all(|r| r["rule_id"] != "cake"))
    );

    // Filters: stored, read back, and honoured by /sync.
    let filter = json!({ "room": { "timeline": { "limit": 2 } } });
    let (status, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/user/@alice:localhost/filter",
            Some(filter),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let filter_id = created["filter_id"].as_str().unwrap().to_owned();
    let (_, stored) = server
        .client_api(
            &alice,
            Method::GET,
            &format!("/user/@alice:localhost/filter/{filter_id}"),
            None,
        )
        .await;
    assert_eq!(stored["room"]["timeline"]["limit"], 2);
    assert_error(
        &server
            .client_api(
                &bob,
                Method::GET,
                &format!("/user/@alice:localhost/filter/{filter_id}"),
                None,
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (_, room) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "name": "filtered" })),
        )
        .await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let (_, sync) = server
        .client_api(
            &alice,
            Method::GET,
            &format!("/sync?filter={filter_id}"),
            None,
        )
        .await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        timeline["events"].as_array().unwrap().len(),
        2,
        "{timeline}"
    );
    assert_eq!(timeline["limited"], true);

    // Pushers: stored and listed.
    let pusher = json!({ "pushkey": "abc", "kind": "http", "app_id": "org.example.app", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": { "url": "https://127.0.0.1:9/_matrix/push/v1/notify" } });
    assert_eq!(
        server
            .client_api(&alice, Method::POST, "/pushers/set", Some(pusher))
            .await
            .0,
        StatusCode::OK
    );
    let (_, pushers) = server
        .client_api(&alice, Method::GET, "/pushers", None)
        .await;
    assert_eq!(pushers["pushers"][0]["pushkey"], "abc");
}

#[tokio::test]
async fn notification_counts_follow_push_rules_and_reset_on_read() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let bob = token(&server, "bob").await;
    let (_, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .client_api(
                &bob,
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let say = |txn: &str, content: Value| {
        let path = format!("/rooms/{room}/send/m.room.message/{txn}");
        let alice = alice.clone();
        let server = &server;
        async move {
            server
                .client_api(&alice, Method::PUT, &path, Some(content))
                .await
        }
    };
    let counts = |sync: &Value| {
        let unread = &sync["rooms"]["join"][&room]["unread_notifications"];
        (
            unread["notification_count"].as_u64().unwrap_or(0),
            unread["highlight_count"].as_u64().unwrap_or(0),
        )
    };

    for n in 0..3 {
        say(
            &format!("m{n}"),
            json!({ "msgtype": "m.text", "body": format!("news {n}") }),
        )
        .await;
    }
    let mention = json!({ "msgtype": "m.text", "body": "bob: look", "m.mentions": { "user_ids": ["@bob:localhost"] } });
    let (_, last) = say("m3", mention).await;
    let (_, sync) = server.client_api(&bob, Method::GET, "/sync", None).await;
    assert_eq!(
        counts(&sync),
        (4, 1),
        "three messages and a highlighted mention: {}",
        sync["rooms"]["join"][&room]["unread_notifications"]
    );
    let (_, own) = server.client_api(&alice, Method::GET, "/sync", None).await;
    assert_eq!(counts(&own), (0, 0), "one's own messages never count");

    // Reading clears them, and the change reaches the next incremental sync.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let receipt = format!(
        "/rooms/{room}/receipt/m.read/{}",
        last["event_id"].as_str().unwrap()
    );
    assert_eq!(
        server
            .client_api(&bob, Method::POST, &receipt, Some(json!({})))
            .await
            .0,
        StatusCode::OK
    );
    let (_, sync) = server
        .client_api(&bob, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    assert_eq!(counts(&sync), (0, 0), "{sync}");

    // The counts are committed just after the event. A long-poll woken by the event can
    // answer before them, with a token just past the event: the counts must still come in
    // the next sync from that token. (Tokens are stream positions here; the timeline's
    // `prev_batch` is the event's.)
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    say("m5", json!({ "msgtype": "m.text", "body": "one more" })).await;
    let (_, sync) = server
        .client_api(&bob, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    let event_position: u64 = sync["rooms"]["join"][&room]["timeline"]["prev_batch"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let just_past_the_event = event_position + 1;
    let (_, sync) = server
        .client_api(
            &bob,
            Method::GET,
            &format!("/sync?since={just_past_the_event}&timeout=0"),
            None,
        )
        .await;
    assert_eq!(counts(&sync), (1, 0), "{sync}");
    let (_, read) = server
        .client_api(&bob, Method::POST, &receipt, Some(json!({})))
        .await;
    assert!(read.is_object());

    // Bob's own rule silences the room.
    let mute = json!({ "actions": [] });
    assert_eq!(
        server
            .client_api(
                &bob,
                Method::PUT,
                &format!("/pushrules/global/room/{room}"),
                Some(mute)
            )
            .await
            .0,
        StatusCode::OK
    );
    say("m4", json!({ "msgtype": "m.text", "body": "quiet please" })).await;
    let (_, sync) = server.client_api(&bob, Method::GET, "/sync", None).await;
    assert_eq!(counts(&sync), (0, 0), "a muted room does not count");
}

/// Counts are kept as a room-wide sequence plus each member's exceptions (issue 13), so
/// every mix must come out as plain counting would: most members notified, few notified,
/// a muted member, a highlight, a read, and a member who left and came back.
#[tokio::test]
async fn notification_counts_stay_exact_for_every_mix_of_members() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let (bob, carol, dave) = (
        token(&server, "bob").await,
        token(&server, "carol").await,
        token(&server, "dave").await,
    );
    let (_, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let post = |who: &str, path: String, body: Value| {
        let (server, who) = (&server, who.to_owned());
        async move {
            let (status, answer) = server
                .client_api(&who, Method::POST, &path, Some(body))
                .await;
            assert_eq!(status, StatusCode::OK, "{path}: {answer}");
            answer
        }
    };
    let put = |who: &str, path: String, body: Value| {
        let (server, who) = (&server, who.to_owned());
        async move {
            let (status, answer) = server
                .client_api(&who, Method::PUT, &path, Some(body))
                .await;
            assert_eq!(status, StatusCode::OK, "{path}: {answer}");
            answer
        }
    };
    for member in [&bob, &carol, &dave] {
        post(member, format!("/rooms/{room}/join"), json!({})).await;
    }
    let mute = |who: &str| {
        put(
            who,
            format!("/pushrules/global/room/{room}"),
            json!({ "actions": [] }),
        )
    };
    let mut txn = 0;
    let mut say = |body: Value| {
        txn += 1;
        put(
            &alice,
            format!("/rooms/{room}/send/m.room.message/t{txn}"),
            body,
        )
    };
    let text = |body: &str| json!({ "msgtype": "m.text", "body": body });
    let counts = |who: &str| {
        let (server, who, room) = (&server, who.to_owned(), room.clone());
        async move {
            let (_, sync) = server.client_api(&who, Method::GET, "/sync", None).await;
            let unread = &sync["rooms"]["join"][&room]["unread_notifications"];
            (
                unread["notification_count"].as_u64().unwrap_or(0),
                unread["highlight_count"].as_u64().unwrap_or(0),
            )
        }
    };

    // Two of three notified: the room's sequence counts them, the muted one is excepted.
    mute(&carol).await;
    say(text("one")).await;
    say(text("two")).await;
    assert_eq!(counts(&bob).await, (2, 0));
    assert_eq!(counts(&carol).await, (0, 0), "muted");
    assert_eq!(counts(&dave).await, (2, 0));
    // One of three notified: only that one's record counts it.
    mute(&dave).await;
    say(text("three")).await;
    assert_eq!(counts(&bob).await, (3, 0));
    assert_eq!(counts(&dave).await, (2, 0));
    // A mention reaches a muted member, as a highlight.
    let mention = json!({ "msgtype": "m.text", "body": "carol?", "m.mentions": { "user_ids": ["@carol:localhost"] } });
    say(mention).await;
    assert_eq!(counts(&bob).await, (4, 0));
    assert_eq!(counts(&carol).await, (1, 1));
    assert_eq!(counts(&dave).await, (2, 0));
    assert_eq!(
        counts(&alice).await,
        (0, 0),
        "one's own messages never count"
    );

    // Reading starts again from zero; the next message counts from there.
    let last = say(text("five")).await;
    let receipt = format!(
        "/rooms/{room}/receipt/m.read/{}",
        last["event_id"].as_str().unwrap()
    );
    post(&bob, receipt, json!({})).await;
    assert_eq!(counts(&bob).await, (0, 0));
    say(text("six")).await;
    assert_eq!(counts(&bob).await, (1, 0));

    // Dave leaves with unread messages, misses some, and comes back: he starts at zero.
    let unmute = server
        .client_api(
            &dave,
            Method::DELETE,
            &format!("/pushrules/global/room/{room}"),
            None,
        )
        .await;
    assert_eq!(unmute.0, StatusCode::OK, "{}", unmute.1);
    post(&dave, format!("/rooms/{room}/leave"), json!({})).await;
    say(text("seven")).await;
    say(text("eight")).await;
    post(&dave, format!("/rooms/{room}/join"), json!({})).await;
    assert_eq!(counts(&dave).await, (0, 0), "nothing from before the join");
    say(text("nine")).await;
    assert_eq!(counts(&dave).await, (1, 0));
    assert_eq!(counts(&bob).await, (4, 0));
    assert_eq!(counts(&carol).await, (1, 1));
}

#[tokio::test]
async fn presence_can_be_set_read_and_switched_off() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let bob = token(&server, "bob").await;
    let status = json!({ "presence": "unavailable", "status_msg": "on the air" });
    assert_eq!(
        server
            .client_api(
                &alice,
                Method::PUT,
                "/presence/@alice:localhost/status",
                Some(status.clone())
            )
            .await
            .0,
        StatusCode::OK
    );
    let (status_code, seen) = server
        .client_api(&bob, Method::GET, "/presence/@alice:localhost/status", None)
        .await;
    assert_eq!(status_code, StatusCode::OK);
    assert_eq!(
        (seen["presence"].clone(), seen["status_msg"].clone()),
        (json!("unavailable"), json!("on the air"))
    );
    let (_, never) = server
        .client_api(&alice, Method::GET, "/presence/@bob:localhost/status", None)
        .await;
    assert_eq!(never["presence"], "offline");
    assert_error(
        &server
            .client_api(
                &bob,
                Method::PUT,
                "/presence/@alice:localhost/status",
                Some(status.clone()),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .client_api(
                &bob,
                Method::GET,
                "/presence/@nobody:localhost/status",
                None,
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let quiet = TestServer::with_env(&[("CONDUIT_ALLOW_PRESENCE", "false")]);
    let carol = token(&quiet, "carol").await;
    assert_error(
        &quiet
            .client_api(
                &carol,
                Method::PUT,
                "/presence/@carol:localhost/status",
                Some(status),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn presence_reaches_room_members_through_sync() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let bob = token(&server, "bob").await;
    let stranger = token(&server, "stranger").await;
    let (_, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .client_api(
                &bob,
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, sync) = server.client_api(&alice, Method::GET, "/sync", None).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let (_, strangers) = server
        .client_api(&stranger, Method::GET, "/sync", None)
        .await;
    let strangers_since = strangers["next_batch"].as_str().unwrap().to_owned();

    let status = json!({ "presence": "unavailable", "status_msg": "at the field day" });
    assert_eq!(
        server
            .client_api(
                &bob,
                Method::PUT,
                "/presence/@bob:localhost/status",
                Some(status)
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, sync) = server
        .client_api(
            &alice,
            Method::GET,
            &format!("/sync?since={since}&timeout=5000"),
            None,
        )
        .await;
    let events = sync["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let bobs = events
        .iter()
        .find(|e| e["sender"] == "@bob:localhost")
        .expect("bob's presence in alice's sync");
    assert_eq!(bobs["content"]["presence"], "unavailable");
    assert_eq!(bobs["content"]["status_msg"], "at the field day");
    // Someone sharing no room with bob does not hear of it.
    let (_, sync) = server
        .client_api(
            &stranger,
            Method::GET,
            &format!("/sync?since={strangers_since}"),
            None,
        )
        .await;
    let events = sync["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events.iter().all(|e| e["sender"] != "@bob:localhost"),
        "{sync}"
    );
}

#[tokio::test]
async fn room_tags_are_kept_and_synced() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let (_, created) = server
        .client_api(&alice, Method::POST, "/createRoom", Some(json!({})))
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (_, sync) = server.client_api(&alice, Method::GET, "/sync", None).await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let tags = format!("/user/@alice:localhost/rooms/{room}/tags");
    assert_eq!(
        server
            .client_api(
                &alice,
                Method::PUT,
                &format!("{tags}/m.favourite"),
                Some(json!({ "order": 0.5 }))
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server
            .client_api(
                &alice,
                Method::PUT,
                &format!("{tags}/u.work"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, listed) = server.client_api(&alice, Method::GET, &tags, None).await;
    assert_eq!(listed["tags"]["m.favourite"]["order"], 0.5);
    assert!(listed["tags"]["u.work"].is_object());
    let (_, sync) = server
        .client_api(&alice, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    let events = sync["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.tag" && e["content"]["tags"]["m.favourite"]["order"] == 0.5),
        "{sync}"
    );
    assert_eq!(
        server
            .client_api(&alice, Method::DELETE, &format!("{tags}/u.work"), None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, listed) = server.client_api(&alice, Method::GET, &tags, None).await;
    assert!(listed["tags"].get("u.work").is_none());
}

#[tokio::test]
async fn to_device_messages_are_delivered_once_in_order() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let bob_phone = token(&server, "bob").await;
    let (_, laptop) = server.login("bob", "pw pw pw").await;
    let bob_laptop = laptop["access_token"].as_str().unwrap().to_owned();
    let (_, phone) = server
        .client_api(&bob_phone, Method::GET, "/account/whoami", None)
        .await;
    let phone_id = phone["device_id"].as_str().unwrap().to_owned();
    let (_, first) = server
        .client_api(&bob_phone, Method::GET, "/sync", None)
        .await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // One message to the phone only, then one to all of bob's devices; a retried
    // transaction is not sent twice.
    let to_phone = json!({ "messages": { "@bob:localhost": { phone_id.clone(): { "n": 1 } } } });
    let to_all = json!({ "messages": { "@bob:localhost": { "*": { "n": 2 } } } });
    for (txn, body) in [("t1", &to_phone), ("t2", &to_all), ("t2", &to_all)] {
        let path = format!("/sendToDevice/org.example.ping/{txn}");
        assert_eq!(
            server
                .client_api(&alice, Method::PUT, &path, Some(body.clone()))
                .await
                .0,
            StatusCode::OK
        );
    }
    let messages = |sync: &Value| -> Vec<Value> {
        sync["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e["content"]["n"].clone())
            .collect()
    };
    let (_, sync) = server
        .client_api(
            &bob_phone,
            Method::GET,
            &format!("/sync?since={since}&timeout=5000"),
            None,
        )
        .await;
    assert_eq!(messages(&sync), vec![json!(1), json!(2)], "{sync}");
    assert_eq!(sync["to_device"]["events"][0]["sender"], "@alice:localhost");
    assert_eq!(sync["to_device"]["events"][0]["type"], "org.example.ping");
    // Not acknowledged yet: the same sync again returns them again.
    let (_, again) = server
        .client_api(
            &bob_phone,
            Method::GET,
            &format!("/sync?since={since}"),
            None,
        )
        .await;
    assert_eq!(messages(&again), vec![json!(1), json!(2)]);
    // A sync past them acknowledges them: they are gone.
    let next = sync["next_batch"].as_str().unwrap();
    let (_, later) = server
        .client_api(
            &bob_phone,
            Method::GET,
            &format!("/sync?since={next}"),
            None,
        )
        .await;
    assert!(messages(&later).is_empty(), "{later}");
    // The laptop got only the message for all devices.
    let (_, laptop_sync) = server
        .client_api(&bob_laptop, Method::GET, "/sync", None)
        .await;
    assert_eq!(messages(&laptop_sync), vec![json!(2)]);
}

#[tokio::test]
async fn device_lists_report_changes_joins_and_leaves() {
    let server = TestServer::start();
    let alice = token(&server, "alice").await;
    let bob = token(&server, "bob").await;
    let carol = token(&server, "carol").await;
    let (_, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .client_api(
                &bob,
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let next = |sync: &Value| sync["next_batch"].as_str().unwrap().to_owned();
    let lists = |sync: &Value, key: &str| -> Vec<String> {
        sync["device_lists"][key]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    };
    let (_, sync) = server.client_api(&alice, Method::GET, "/sync", None).await;
    let since = next(&sync);

    // Bob logs in on a new device: alice's long-poll wakes with bob in `changed`.
    let poll_path = format!("/sync?since={since}&timeout=10000");
    let poll = server.client_api(&alice, Method::GET, &poll_path, None);
    let login = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        server.login("bob", "pw pw pw").await
    };
    let ((_, sync), _) = tokio::join!(poll, login);
    assert!(
        lists(&sync, "changed").contains(&"@bob:localhost".to_owned()),
        "{sync}"
    );
    let since = next(&sync);

    // Carol joins: she is new to alice. Then she leaves and shares no room: `left`.
    assert_eq!(
        server
            .client_api(
                &carol,
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, sync) = server
        .client_api(&alice, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    assert!(
        lists(&sync, "changed").contains(&"@carol:localhost".to_owned()),
        "{sync}"
    );
    let since = next(&sync);
    assert_eq!(
        server
            .client_api(
                &carol,
                Method::POST,
                &format!("/rooms/{room}/leave"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, sync) = server
        .client_api(&alice, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    assert_eq!(
        lists(&sync, "left"),
        vec!["@carol:localhost".to_owned()],
        "{sync}"
    );

    // One's own new device shows up in one's own `changed`.
    let (_, bobs) = server.client_api(&bob, Method::GET, "/sync", None).await;
    let bob_since = next(&bobs);
    server.login("bob", "pw pw pw").await;
    let (_, bobs) = server
        .client_api(&bob, Method::GET, &format!("/sync?since={bob_since}"), None)
        .await;
    assert!(
        lists(&bobs, "changed").contains(&"@bob:localhost".to_owned()),
        "{bobs}"
    );
}

/// A push gateway on 127.0.0.1 over HTTPS (Python's standard library): it prints each
/// notification it receives as one JSON line and rejects the pushkey "stale".
const GATEWAY: &str = r#"
import http.server, json, ssl, sys
class Gateway(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        print(json.dumps({"path": self.path, "body": body}), flush=True)
        rejected = [d["pushkey"] for d in body["notification"]["devices"] if d["pushkey"] == "stale"]
        answer = json.dumps({"rejected": rejected}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[tokio::test]
async fn notifications_reach_push_gateways_and_rejected_pushers_go() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let mut gateway = std::process::Command::new("python3")
        .arg("-c")
        .arg(GATEWAY)
        .arg(&cert)
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the test gateway");
    let mut lines = BufReader::new(gateway.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });

    // The server trusts the gateway's certificate through the system store's override.
    let server = TestServer::with_env(&[("SSL_CERT_FILE", &cert.to_string_lossy())]);
    let alice = token(&server, "alice").await;
    let bob = token(&server, "bob").await;
    let (_, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat", "name": "Nets" })),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .client_api(
                &bob,
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );

    let url = format!("https://127.0.0.1:{port}/_matrix/push/v1/notify");
    for pushkey in ["fresh", "stale"] {
        let pusher = json!({ "pushkey": pushkey, "kind": "http", "app_id": "org.example.app", "app_display_name": "App",
            "device_display_name": "Phone", "lang": "en", "data": { "url": url } });
        assert_eq!(
            server
                .client_api(&bob, Method::POST, "/pushers/set", Some(pusher))
                .await
                .0,
            StatusCode::OK
        );
    }
    // Gateways must be HTTPS with the notify path.
    let insecure = json!({ "pushkey": "x", "kind": "http", "app_id": "a", "app_display_name": "A",
        "device_display_name": "D", "lang": "en", "data": { "url": format!("http://127.0.0.1:{port}/_matrix/push/v1/notify") } });
    assert_error(
        &server
            .client_api(&bob, Method::POST, "/pushers/set", Some(insecure))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    let (_, sent) = server
        .client_api(
            &alice,
            Method::PUT,
            &format!("/rooms/{room}/send/m.room.message/p1"),
            Some(json!({ "msgtype": "m.text", "body": "net starts now" })),
        )
        .await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let mut pushkeys = Vec::new();
    for _ in 0..2 {
        let line = received
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a notification arrives");
        let message: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(message["path"], "/_matrix/push/v1/notify");
        let notification = &message["body"]["notification"];
        assert_eq!(notification["event_id"], event_id.as_str());
        assert_eq!(notification["room_name"], "Nets");
        assert_eq!(notification["content"]["body"], "net starts now");
        assert_eq!(notification["counts"]["unread"], 1);
        assert_eq!(notification["prio"], "high");
        pushkeys.push(
            notification["devices"][0]["pushkey"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    pushkeys.sort();
    assert_eq!(pushkeys, ["fresh", "stale"]);

    // The gateway rejected "stale": that pusher is removed.
    let mut remaining = Vec::new();
    for _ in 0..50 {
        let (_, pushers) = server.client_api(&bob, Method::GET, "/pushers", None).await;
        remaining = pushers["pushers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pushkey"].as_str().unwrap().to_owned())
            .collect();
        if remaining.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, ["fresh"]);
    let _ = gateway.kill();
    let _ = gateway.wait();
}
