//! Rooms end to end: a club creates a room, invites, joins, chats and pages through history
//! with matrix-sdk; permissions, aliases, versions and idempotency over raw HTTP.

use std::time::{Duration, Instant};

use matrix_sdk::{
    Client,
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, RoomOrAliasId, UInt, api::client::room::create_room,
        events::room::message::RoomMessageEventContent, user_id,
    },
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

async fn sdk_login(server: &TestServer, name: &str) -> Client {
    server.register(name, "pw pw pw").await;
    let client = server.client().await;
    client
        .matrix_auth()
        .login_username(name, "pw pw pw")
        .send()
        .await
        .expect("login");
    client
}

fn body_of(event: &matrix_sdk::deserialized_responses::TimelineEvent) -> Option<String> {
    let json: Value = serde_json::from_str(event.raw().json().get()).ok()?;
    json["content"]["body"].as_str().map(str::to_owned)
}

fn quick_sync() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_secs(0))
}

#[tokio::test]
async fn a_club_chats_and_pages_through_history() {
    let mut server = TestServer::start();
    let alice = sdk_login(&server, "alice").await;
    let bob = sdk_login(&server, "bob").await;

    let mut request = create_room::v3::Request::new();
    request.name = Some("Amateur radio".to_owned());
    request.topic = Some("Tuesday nets".to_owned());
    request.room_alias_name = Some("radio".to_owned());
    request.invite = vec![user_id!("@bob:localhost").to_owned()];
    let room = alice.create_room(request).await.expect("createRoom");
    let room_id: OwnedRoomId = room.room_id().to_owned();
    assert!(
        !room_id.as_str().contains(':'),
        "room version 12 ids have no server part: {room_id}"
    );

    // Bob sees the invite in his sync, then joins by alias.
    let sync = bob.sync_once(quick_sync()).await.expect("bob syncs");
    assert!(
        sync.rooms.invited.contains_key(&room_id),
        "the invite arrives through /sync"
    );
    let alias = <&RoomOrAliasId>::try_from("#radio:localhost").unwrap();
    let joined = bob
        .join_room_by_id_or_alias(alias, &[])
        .await
        .expect("join by alias");
    assert_eq!(joined.room_id(), room_id);
    let response = joined
        .send(RoomMessageEventContent::text_plain("73 de bob"))
        .await
        .expect("send");
    let bobs_event = response.response.event_id;

    // Alice receives it, with the room's name, through her sync.
    let sync = alice.sync_once(quick_sync()).await.expect("alice syncs");
    let update = sync
        .rooms
        .joined
        .get(&room_id)
        .expect("room in alice's sync");
    let bodies: Vec<_> = update.timeline.events.iter().filter_map(body_of).collect();
    assert!(bodies.contains(&"73 de bob".to_owned()), "{bodies:?}");
    assert_eq!(
        alice.get_room(&room_id).unwrap().name().as_deref(),
        Some("Amateur radio")
    );

    // Thirty more messages, then page back through all of them in order.
    let alice_room = alice.get_room(&room_id).unwrap();
    for n in 0..30 {
        alice_room
            .send(RoomMessageEventContent::text_plain(format!("message {n}")))
            .await
            .unwrap();
    }
    let page_options = |dir_backward: bool, from: Option<String>, limit: u32| {
        let mut options = if dir_backward {
            MessagesOptions::backward()
        } else {
            MessagesOptions::forward()
        };
        options.from = from;
        options.limit = UInt::from(limit);
        options
    };
    let mut backwards = Vec::new();
    let mut from = None;
    for _ in 0..20 {
        let page = joined
            .messages(page_options(true, from, 7))
            .await
            .expect("/messages backwards");
        assert!(page.chunk.len() <= 7);
        backwards.extend(page.chunk.iter().filter_map(body_of));
        from = page.end;
        if from.is_none() {
            break;
        }
    }
    let mut expected: Vec<String> = (0..30).rev().map(|n| format!("message {n}")).collect();
    expected.push("73 de bob".to_owned());
    assert_eq!(backwards, expected);

    // Forwards from the start gives the same messages the other way round.
    let mut forwards = Vec::new();
    let mut from = Some("0".to_owned());
    for _ in 0..20 {
        let page = joined
            .messages(page_options(false, from, 9))
            .await
            .expect("/messages forwards");
        if page.chunk.is_empty() {
            break;
        }
        forwards.extend(page.chunk.iter().filter_map(body_of));
        from = page.end;
    }
    expected.reverse();
    assert_eq!(forwards, expected);

    // Everything is still there after a restart.
    assert!(server.stop().success());
    server.restart();
    let (_, login) = server.login("bob", "pw pw pw").await;
    let token = login["access_token"].as_str().unwrap();
    let (_, rooms) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/joined_rooms",
            Some(token),
            None,
        )
        .await;
    assert_eq!(rooms["joined_rooms"], json!([room_id]));
    let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{bobs_event}");
    let (status, event) = server.request(Method::GET, &path, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["body"], "73 de bob");
    let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100");
    let (_, page) = server.request(Method::GET, &path, Some(token), None).await;
    let count = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .count();
    assert_eq!(count, 31);
}

/// Raw-HTTP helpers for the tests below.
struct User<'a> {
    server: &'a TestServer,
    token: String,
}

impl<'a> User<'a> {
    async fn new(server: &'a TestServer, name: &str) -> Self {
        Self {
            server,
            token: server.register(name, "pw pw pw").await,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.server
            .request(
                method,
                &format!("/_matrix/client/v3{path}"),
                Some(&self.token),
                body,
            )
            .await
    }

    async fn create_room(&self, body: Value) -> String {
        let (status, json) = self.call(Method::POST, "/createRoom", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json["room_id"].as_str().unwrap().to_owned()
    }

    async fn say(&self, room: &str, text: &str) -> (StatusCode, Value) {
        // Unique per test process, so no two sends share a transaction id.
        let txn = format!("t{}", rand_suffix());
        let path = format!("/rooms/{room}/send/m.room.message/{txn}");
        self.call(
            Method::PUT,
            &path,
            Some(json!({ "msgtype": "m.text", "body": text })),
        )
        .await
    }
}

fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

#[tokio::test]
async fn long_poll_wakes_when_a_message_arrives() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, initial) = alice.call(Method::GET, "/sync", None).await;
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: an incremental sync with no timeout answers at once with no rooms.
    let (_, empty) = alice
        .call(Method::GET, &format!("/sync?since={since}&timeout=0"), None)
        .await;
    assert!(
        empty["rooms"]["join"]
            .as_object()
            .is_none_or(|rooms| rooms.is_empty()),
        "{empty}"
    );

    let started = Instant::now();
    let poll_path = format!("/sync?since={since}&timeout=20000");
    let poll = alice.call(Method::GET, &poll_path, None);
    let send = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.say(&room, "wake up").await
    };
    let ((status, woken), (sent, _)) = tokio::join!(poll, send);
    assert_eq!((status, sent), (StatusCode::OK, StatusCode::OK));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the long-poll was not woken"
    );
    let events = woken["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .expect("room in sync")
        .clone();
    assert!(
        events.iter().any(|e| e["content"]["body"] == "wake up"),
        "{woken}"
    );
    assert_ne!(woken["next_batch"], since.as_str());
}

#[tokio::test]
async fn authorization_rules_and_power_levels_are_enforced() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice.create_room(json!({ "name": "Committee" })).await; // private: invite only

    // Not a member: cannot read, send or join.
    assert_error(
        &bob.say(&room, "hi").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.call(Method::GET, &format!("/rooms/{room}/messages?dir=b"), None)
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // Invited, bob joins and talks, but with power level 0 cannot rename the room.
    let invite = json!({ "user_id": "@bob:localhost" });
    assert_eq!(
        alice
            .call(
                Method::POST,
                &format!("/rooms/{room}/invite"),
                Some(invite.clone())
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(bob.say(&room, "hello").await.0, StatusCode::OK);
    let rename = json!({ "name": "Bob's room" });
    assert_error(
        &bob.call(
            Method::PUT,
            &format!("/rooms/{room}/state/m.room.name/"),
            Some(rename.clone()),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (_, name) = bob
        .call(
            Method::GET,
            &format!("/rooms/{room}/state/m.room.name/"),
            None,
        )
        .await;
    assert_eq!(
        name["name"], "Committee",
        "a rejected event changes nothing"
    );
    // Bob cannot kick alice; alice can kick bob.
    let kick_alice = json!({ "user_id": "@alice:localhost" });
    assert_error(
        &bob.call(
            Method::POST,
            &format!("/rooms/{room}/kick"),
            Some(kick_alice),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let kick_bob = json!({ "user_id": "@bob:localhost", "reason": "test" });
    assert_eq!(
        alice
            .call(Method::POST, &format!("/rooms/{room}/kick"), Some(kick_bob))
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &bob.say(&room, "still here?").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // Ban: even an invite does not let bob back in; unban and a new invite do.
    let ban = json!({ "user_id": "@bob:localhost" });
    assert_eq!(
        alice
            .call(
                Method::POST,
                &format!("/rooms/{room}/ban"),
                Some(ban.clone())
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &alice
            .call(
                Method::POST,
                &format!("/rooms/{room}/invite"),
                Some(invite.clone()),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        alice
            .call(Method::POST, &format!("/rooms/{room}/unban"), Some(ban))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        alice
            .call(Method::POST, &format!("/rooms/{room}/invite"), Some(invite))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );

    // Members listings.
    let (_, joined) = alice
        .call(Method::GET, &format!("/rooms/{room}/joined_members"), None)
        .await;
    let joined = joined["joined"].as_object().unwrap();
    assert!(joined.contains_key("@alice:localhost") && joined.contains_key("@bob:localhost"));
    let (_, members) = alice
        .call(
            Method::GET,
            &format!("/rooms/{room}/members?membership=join"),
            None,
        )
        .await;
    assert_eq!(members["chunk"].as_array().unwrap().len(), 2);

    // Leave and forget: the room disappears from bob's joined rooms.
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/leave"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/forget"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, rooms) = bob.call(Method::GET, "/joined_rooms", None).await;
    assert_eq!(rooms["joined_rooms"], json!([]));
}

#[tokio::test]
async fn sends_are_idempotent_per_device() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    let path = format!("/rooms/{room}/send/m.room.message/same-txn");
    let content = json!({ "msgtype": "m.text", "body": "once" });
    let (_, first) = alice.call(Method::PUT, &path, Some(content.clone())).await;
    let (_, again) = alice.call(Method::PUT, &path, Some(content.clone())).await;
    assert_eq!(first["event_id"], again["event_id"]);
    // The same transaction id from another device is another message.
    let (_, other) = server.login("alice", "pw pw pw").await;
    let other_token = other["access_token"].as_str().unwrap();
    let (_, third) = server
        .request(
            Method::PUT,
            &format!("/_matrix/client/v3{path}"),
            Some(other_token),
            Some(content),
        )
        .await;
    assert_ne!(third["event_id"], first["event_id"]);
    let (_, page) = alice
        .call(Method::GET, &format!("/rooms/{room}/messages?dir=b"), None)
        .await;
    let onces = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"]["body"] == "once")
        .count();
    assert_eq!(onces, 2);
    // The sender's own sync shows its transaction id.
    let (_, sync) = alice.call(Method::GET, "/sync", None).await;
    let events = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        events
            .iter()
            .any(|e| e["unsigned"]["transaction_id"] == "same-txn"),
        "{sync}"
    );
}

#[tokio::test]
async fn room_versions_and_aliases() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;

    let v10 = alice.create_room(json!({ "room_version": "10" })).await;
    assert!(v10.ends_with(":localhost"), "{v10}");
    let (_, create) = alice
        .call(
            Method::GET,
            &format!("/rooms/{v10}/state/m.room.create/"),
            None,
        )
        .await;
    assert_eq!(create["room_version"], "10");
    assert_error(
        &alice
            .call(
                Method::POST,
                "/createRoom",
                Some(json!({ "room_version": "1" })),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    let (_, caps) = alice.call(Method::GET, "/capabilities", None).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
    assert!(
        caps["capabilities"]["m.room_versions"]["available"]
            .get("1")
            .is_none()
    );

    let room = alice
        .create_room(json!({ "preset": "public_chat", "room_alias_name": "lobby" }))
        .await;
    assert_error(
        &alice
            .call(
                Method::POST,
                "/createRoom",
                Some(json!({ "room_alias_name": "lobby" })),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_ROOM_IN_USE",
    );
    let (status, resolved) = bob
        .call(Method::GET, "/directory/room/%23lobby:localhost", None)
        .await;
    assert_eq!(
        (status, resolved["room_id"].clone()),
        (StatusCode::OK, json!(room))
    );

    let alias_path = "/directory/room/%23hangout:localhost";
    assert_eq!(
        alice
            .call(Method::PUT, alias_path, Some(json!({ "room_id": room })))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        alice
            .call(Method::PUT, alias_path, Some(json!({ "room_id": room })))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        bob.call(Method::POST, "/join/%23hangout:localhost", Some(json!({})))
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &bob.call(Method::DELETE, alias_path, None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // m.room.canonical_alias may only name aliases that point at the room.
    let bad = json!({ "alias": "#nowhere:localhost" });
    assert_error(
        &alice
            .call(
                Method::PUT,
                &format!("/rooms/{room}/state/m.room.canonical_alias/"),
                Some(bad),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_ALIAS",
    );
    let good = json!({ "alias": "#lobby:localhost", "alt_aliases": ["#hangout:localhost"] });
    assert_eq!(
        alice
            .call(
                Method::PUT,
                &format!("/rooms/{room}/state/m.room.canonical_alias/"),
                Some(good)
            )
            .await
            .0,
        StatusCode::OK
    );

    assert_eq!(
        alice.call(Method::DELETE, alias_path, None).await.0,
        StatusCode::OK
    );
    assert_error(
        &bob.call(Method::GET, alias_path, None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn redactions_strip_content_and_need_power_for_others_events() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, sent) = bob.say(&room, "oops, my password is hunter2").await;
    let bobs = sent["event_id"].as_str().unwrap().to_owned();
    let (_, sent) = alice.say(&room, "welcome").await;
    let alices = sent["event_id"].as_str().unwrap().to_owned();

    // Bob (power 0) may redact his own message but not alice's.
    let path = |event: &str, txn: &str| format!("/rooms/{room}/redact/{event}/{txn}");
    assert_error(
        &bob.call(Method::PUT, &path(&alices, "r1"), Some(json!({})))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, redaction) = bob
        .call(
            Method::PUT,
            &path(&bobs, "r2"),
            Some(json!({ "reason": "typo" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{redaction}");
    let (_, again) = bob
        .call(
            Method::PUT,
            &path(&bobs, "r2"),
            Some(json!({ "reason": "typo" })),
        )
        .await;
    assert_eq!(
        again["event_id"], redaction["event_id"],
        "redactions are idempotent per transaction"
    );

    // The stored event has lost its content, for everyone, and says why.
    let (_, event) = alice
        .call(Method::GET, &format!("/rooms/{room}/event/{bobs}"), None)
        .await;
    assert_eq!(event["content"], json!({}), "{event}");
    assert_eq!(
        event["unsigned"]["redacted_because"]["event_id"],
        redaction["event_id"]
    );
    let (_, page) = alice
        .call(Method::GET, &format!("/rooms/{room}/messages?dir=b"), None)
        .await;
    assert!(
        !page.to_string().contains("hunter2"),
        "redacted text is gone from history"
    );
    // The room's creator (power 100) may redact anyone's events.
    let (_, untouched) = alice
        .call(Method::GET, &format!("/rooms/{room}/event/{alices}"), None)
        .await;
    assert_eq!(untouched["content"]["body"], "welcome");
    let (_, again) = bob.say(&room, "second").await;
    let second = again["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        alice
            .call(Method::PUT, &path(&second, "r3"), Some(json!({})))
            .await
            .0,
        StatusCode::OK
    );
    let (_, event) = bob
        .call(Method::GET, &format!("/rooms/{room}/event/{second}"), None)
        .await;
    assert_eq!(event["content"], json!({}));
}

#[tokio::test]
async fn directory_user_search_context_and_profile_propagation() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let carol = User::new(&server, "carol").await;

    // Public rooms are listed (and searchable); private ones are not.
    let public = alice
        .create_room(
            json!({ "visibility": "public", "name": "Makerspace", "topic": "3D printers" }),
        )
        .await;
    let private = alice.create_room(json!({ "name": "Board" })).await;
    let (status, listing) = bob.call(Method::GET, "/publicRooms", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<_> = listing["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(public)]);
    assert_eq!(listing["chunk"][0]["name"], "Makerspace");
    let search = json!({ "filter": { "generic_search_term": "printer" } });
    let (_, found) = bob.call(Method::POST, "/publicRooms", Some(search)).await;
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    let (_, none) = bob
        .call(
            Method::POST,
            "/publicRooms",
            Some(json!({ "filter": { "generic_search_term": "knitting" } })),
        )
        .await;
    assert!(none["chunk"].as_array().unwrap().is_empty());
    let (_, visibility) = bob
        .call(
            Method::GET,
            &format!("/directory/list/room/{private}"),
            None,
        )
        .await;
    assert_eq!(visibility["visibility"], "private");
    // Only someone with enough power may publish a room.
    assert_error(
        &bob.call(
            Method::PUT,
            &format!("/directory/list/room/{private}"),
            Some(json!({ "visibility": "public" })),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(
        alice
            .call(
                Method::PUT,
                &format!("/directory/list/room/{private}"),
                Some(json!({ "visibility": "public" }))
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, listing) = bob.call(Method::GET, "/publicRooms?limit=1", None).await;
    assert_eq!(listing["chunk"].as_array().unwrap().len(), 1);
    assert!(listing["next_batch"].is_string(), "pagination: {listing}");

    // User directory: people in public rooms or sharing a room are found by name.
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{public}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let name = json!({ "displayname": "Bob the Builder" });
    assert_eq!(
        bob.call(
            Method::PUT,
            "/profile/@bob:localhost/displayname",
            Some(name)
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, results) = carol
        .call(
            Method::POST,
            "/user_directory/search",
            Some(json!({ "search_term": "builder" })),
        )
        .await;
    assert_eq!(
        results["results"][0]["user_id"], "@bob:localhost",
        "{results}"
    );
    assert_eq!(results["results"][0]["display_name"], "Bob the Builder");

    // The new name reached bob's member event in the room.
    let (_, member) = alice
        .call(
            Method::GET,
            &format!("/rooms/{public}/state/m.room.member/@bob:localhost"),
            None,
        )
        .await;
    assert_eq!(member["displayname"], "Bob the Builder");
    assert_eq!(member["membership"], "join");

    // Context around an event.
    let mut ids = Vec::new();
    for n in 0..7 {
        let (_, sent) = alice.say(&public, &format!("line {n}")).await;
        ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    let (status, context) = bob
        .call(
            Method::GET,
            &format!("/rooms/{public}/context/{}?limit=4", ids[3]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert_eq!(context["event"]["content"]["body"], "line 3");
    let before: Vec<_> = context["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].clone())
        .collect();
    let after: Vec<_> = context["events_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].clone())
        .collect();
    assert_eq!(before, vec![json!("line 2"), json!("line 1")]);
    assert_eq!(after, vec![json!("line 4"), json!("line 5")]);
    assert!(
        context["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    // Paging on from the context's end token continues after the window.
    let end = context["end"].as_str().unwrap();
    let (_, next) = bob
        .call(
            Method::GET,
            &format!("/rooms/{public}/messages?dir=f&from={end}&limit=5"),
            None,
        )
        .await;
    assert_eq!(next["chunk"][0]["content"]["body"], "line 6");
}

#[tokio::test]
async fn history_visibility_is_enforced() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let carol = User::new(&server, "carol").await;
    let bodies = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };

    // `joined`: nothing from before one joined.
    let joined_only = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }
        ] }))
        .await;
    let (_, secret) = alice.say(&joined_only, "said before bob came").await;
    let secret = secret["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{joined_only}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    alice.say(&joined_only, "said after bob came").await;
    let (_, page) = bob
        .call(
            Method::GET,
            &format!("/rooms/{joined_only}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(bodies(&page), vec!["said after bob came".to_owned()]);
    assert_error(
        &bob.call(
            Method::GET,
            &format!("/rooms/{joined_only}/event/{secret}"),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (_, sync) = bob.call(Method::GET, "/sync", None).await;
    assert!(
        !sync.to_string().contains("said before bob came"),
        "sync leaks history: {sync}"
    );
    assert!(sync.to_string().contains("said after bob came"));

    // `shared` (the default): everything, for members; after leaving, nothing new.
    let shared = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.say(&shared, "old news").await;
    assert_eq!(
        carol
            .call(
                Method::POST,
                &format!("/rooms/{shared}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let (_, page) = carol
        .call(
            Method::GET,
            &format!("/rooms/{shared}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(bodies(&page), vec!["old news".to_owned()]);
    assert_eq!(
        carol
            .call(
                Method::POST,
                &format!("/rooms/{shared}/leave"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    alice.say(&shared, "after carol left").await;
    let (status, page) = carol
        .call(
            Method::GET,
            &format!("/rooms/{shared}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a former member may read what they could see: {page}"
    );
    assert_eq!(bodies(&page), vec!["old news".to_owned()]);
    // Someone who was never in it may not read it.
    assert_error(
        &bob.call(
            Method::GET,
            &format!("/rooms/{shared}/messages?dir=b"),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // `world_readable`: anyone may read.
    let open = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "world_readable" } }
        ] }))
        .await;
    alice.say(&open, "hello world").await;
    let (status, page) = bob
        .call(
            Method::GET,
            &format!("/rooms/{open}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bodies(&page), vec!["hello world".to_owned()]);

    // `invited`: from the invite on.
    let invited = alice
        .create_room(json!({ "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "invited" } }
        ] }))
        .await;
    alice.say(&invited, "before the invite").await;
    alice
        .call(
            Method::POST,
            &format!("/rooms/{invited}/invite"),
            Some(json!({ "user_id": "@bob:localhost" })),
        )
        .await;
    alice.say(&invited, "while invited").await;
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{invited}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, page) = bob
        .call(
            Method::GET,
            &format!("/rooms/{invited}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(bodies(&page), vec!["while invited".to_owned()]);
}

#[tokio::test]
async fn relations_threads_and_reports() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let outsider = User::new(&server, "eve").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let server = &server;
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, root) = alice.say(&room, "Who is coming on Tuesday?").await;
    let root = root["event_id"].as_str().unwrap().to_owned();

    let send = |user: &User<'_>, txn: &str, kind: &str, content: Value| {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}");
        let token = user.token.clone();
        async move {
            server
                .request(Method::PUT, &path, Some(&token), Some(content))
                .await
        }
    };
    let thread = |body: &str| {
        json!({ "msgtype": "m.text", "body": body,
        "m.relates_to": { "rel_type": "m.thread", "event_id": root, "is_falling_back": true } })
    };
    for n in 0..5 {
        assert_eq!(
            send(
                &bob,
                &format!("th{n}"),
                "m.room.message",
                thread(&format!("reply {n}"))
            )
            .await
            .0,
            StatusCode::OK
        );
    }
    let reaction =
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": root, "key": "👍" } });
    assert_eq!(
        send(&bob, "re1", "m.reaction", reaction).await.0,
        StatusCode::OK
    );

    // All relations, newest first, paged.
    let (status, page) = alice
        .call(
            Method::GET,
            &format!("/rooms/{room}/relations/{root}?limit=4").replace("/v3/", "/v1/"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "relations live under /v1: {page}"
    );
    let v1 = |path: String| {
        let token = alice.token.clone();
        async move {
            server
                .request(
                    Method::GET,
                    &format!("/_matrix/client/v1{path}"),
                    Some(&token),
                    None,
                )
                .await
        }
    };
    let (status, page) = v1(format!("/rooms/{room}/relations/{root}?limit=4")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"].as_array().unwrap().len(), 4);
    assert_eq!(page["chunk"][0]["type"], "m.reaction");
    let next = page["next_batch"].as_str().expect("more pages").to_owned();
    let (_, rest) = v1(format!(
        "/rooms/{room}/relations/{root}?limit=4&from={next}"
    ))
    .await;
    let bodies: Vec<_> = rest["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!("reply 1"), json!("reply 0")]);
    // By relation type, and by relation and event type.
    let (_, threads_only) = v1(format!("/rooms/{room}/relations/{root}/m.thread?limit=50")).await;
    assert_eq!(threads_only["chunk"].as_array().unwrap().len(), 5);
    let (_, reactions) = v1(format!(
        "/rooms/{room}/relations/{root}/m.annotation/m.reaction"
    ))
    .await;
    assert_eq!(reactions["chunk"].as_array().unwrap().len(), 1);
    // Thread roots.
    let (_, threads) = v1(format!("/rooms/{room}/threads")).await;
    assert_eq!(threads["chunk"][0]["event_id"], root.as_str(), "{threads}");
    // include=participated: alice started the thread and bob replied; frank did neither.
    let frank = User::new(server, "frank").await;
    assert_eq!(
        frank
            .call(
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let threads_of = |user: &User<'_>| {
        let token = user.token.clone();
        let path = format!("/_matrix/client/v1/rooms/{room}/threads?include=participated");
        async move {
            server
                .request(Method::GET, &path, Some(&token), None)
                .await
                .1
        }
    };
    assert_eq!(
        threads_of(&bob).await["chunk"]
            .as_array()
            .map_or(0, Vec::len),
        1
    );
    assert_eq!(
        threads_of(&frank).await["chunk"]
            .as_array()
            .map_or(0, Vec::len),
        0
    );
    // Outsiders see nothing of it, not even that it exists (spec: 404 when "the user does
    // not have permission to read this event").
    let (status, _) = server
        .request(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{room}/relations/{root}"),
            Some(&outsider.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Reports: of a visible event, of a room; an invisible event is "not found".
    let report = json!({ "reason": "spam" });
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/report/{root}"),
            Some(report.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/report"),
            Some(report.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    let private = alice.create_room(json!({})).await;
    let (_, hidden) = alice.say(&private, "internal").await;
    let hidden = hidden["event_id"].as_str().unwrap();
    assert_error(
        &bob.call(
            Method::POST,
            &format!("/rooms/{private}/report/{hidden}"),
            Some(report),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert!(server.log().contains("content reported"));
}

#[tokio::test]
async fn rooms_upgrade_to_a_new_version() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let old = alice
        .create_room(
            json!({ "room_version": "10", "preset": "public_chat", "name": "Old club",
            "topic": "since 1990", "room_alias_name": "club" }),
        )
        .await;
    assert_eq!(
        bob.call(Method::POST, &format!("/rooms/{old}/join"), Some(json!({})))
            .await
            .0,
        StatusCode::OK
    );

    let upgrade = json!({ "new_version": "12" });
    assert_error(
        &bob.call(
            Method::POST,
            &format!("/rooms/{old}/upgrade"),
            Some(upgrade.clone()),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, upgraded) = alice
        .call(
            Method::POST,
            &format!("/rooms/{old}/upgrade"),
            Some(upgrade.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{upgraded}");
    let new = upgraded["replacement_room"].as_str().unwrap().to_owned();
    assert!(!new.contains(':'), "a version-12 room: {new}");

    // The old room points at the new one and is closed for bob.
    let (_, tombstone) = bob
        .call(
            Method::GET,
            &format!("/rooms/{old}/state/m.room.tombstone/"),
            None,
        )
        .await;
    assert_eq!(tombstone["replacement_room"], new.as_str());
    assert_error(
        &bob.say(&old, "still here").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice
            .call(
                Method::POST,
                &format!("/rooms/{old}/upgrade"),
                Some(upgrade),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );

    // The new room: predecessor, copied state, the alias, and bob can join.
    let (_, create) = alice
        .call(
            Method::GET,
            &format!("/rooms/{new}/state/m.room.create/"),
            None,
        )
        .await;
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert_eq!(create["room_version"], "12");
    let (_, name) = alice
        .call(
            Method::GET,
            &format!("/rooms/{new}/state/m.room.name/"),
            None,
        )
        .await;
    assert_eq!(name["name"], "Old club");
    let (_, topic) = alice
        .call(
            Method::GET,
            &format!("/rooms/{new}/state/m.room.topic/"),
            None,
        )
        .await;
    assert_eq!(topic["topic"], "since 1990");
    let (_, resolved) = bob
        .call(Method::GET, "/directory/room/%23club:localhost", None)
        .await;
    assert_eq!(resolved["room_id"], new.as_str());
    assert_eq!(
        bob.call(Method::POST, "/join/%23club:localhost", Some(json!({})))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(bob.say(&new, "hello new room").await.0, StatusCode::OK);
}

#[tokio::test]
async fn search_and_space_hierarchy() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;

    // Search: words match case-insensitively, newest first, paged, only where one may read.
    let club = alice
        .create_room(json!({ "preset": "public_chat", "name": "Radio club" }))
        .await;
    for n in 0..4 {
        alice.say(&club, &format!("Antenna build night {n}")).await;
    }
    alice.say(&club, "unrelated chatter").await;
    let secret = alice.create_room(json!({ "name": "Board" })).await;
    alice.say(&secret, "antenna budget is secret").await;
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{club}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let query = json!({ "search_categories": { "room_events": {
        "search_term": "ANTENNA night", "filter": { "limit": 3 } } } });
    let (status, found) = bob.call(Method::POST, "/search", Some(query.clone())).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let events = &found["search_categories"]["room_events"];
    let bodies: Vec<_> = events["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["content"]["body"].clone())
        .collect();
    assert_eq!(
        bodies,
        vec![
            json!("Antenna build night 3"),
            json!("Antenna build night 2"),
            json!("Antenna build night 1")
        ]
    );
    let next = events["next_batch"]
        .as_str()
        .expect("a second page")
        .to_owned();
    // `next_batch` is a query parameter of /search.
    let path = format!("/search?next_batch={next}");
    let (_, page2) = bob.call(Method::POST, &path, Some(query)).await;
    let bodies: Vec<_> = page2["search_categories"]["room_events"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["content"]["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!("Antenna build night 0")]);
    let (_, alices) = alice
        .call(
            Method::POST,
            "/search",
            Some(json!({ "search_categories": { "room_events": { "search_term": "budget" } } })),
        )
        .await;
    assert_eq!(
        alices["search_categories"]["room_events"]["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, bobs) = bob
        .call(
            Method::POST,
            "/search",
            Some(json!({ "search_categories": { "room_events": { "search_term": "budget" } } })),
        )
        .await;
    let results = bobs["search_categories"]["room_events"]["results"].as_array();
    assert!(
        results.is_none_or(|r| r.is_empty()),
        "no results from rooms one is not in: {bobs}"
    );

    // A space with two children, one suggested; the hierarchy walks them.
    let space = alice
        .create_room(json!({ "preset": "public_chat", "name": "Makerspace",
        "creation_content": { "type": "m.space" } }))
        .await;
    let workshop = alice
        .create_room(json!({ "preset": "public_chat", "name": "Workshop" }))
        .await;
    for (child, suggested) in [(&club, true), (&workshop, false)] {
        let content = json!({ "via": ["localhost"], "suggested": suggested });
        let path = format!("/rooms/{space}/state/m.space.child/{child}");
        assert_eq!(
            alice.call(Method::PUT, &path, Some(content)).await.0,
            StatusCode::OK
        );
    }
    let v1 = |path: String| {
        let token = bob.token.clone();
        let server = &server;
        async move {
            server
                .request(
                    Method::GET,
                    &format!("/_matrix/client/v1{path}"),
                    Some(&token),
                    None,
                )
                .await
        }
    };
    let (status, tree) = v1(format!("/rooms/{space}/hierarchy")).await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    let names: Vec<_> = tree["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names.len(), 3, "{tree}");
    assert_eq!(names[0], "Makerspace");
    assert_eq!(tree["rooms"][0]["room_type"], "m.space");
    assert_eq!(
        tree["rooms"][0]["children_state"].as_array().unwrap().len(),
        2
    );
    let (_, suggested) = v1(format!("/rooms/{space}/hierarchy?suggested_only=true")).await;
    let names: Vec<_> = suggested["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("Makerspace"), json!("Radio club")]);
    let (_, page) = v1(format!("/rooms/{space}/hierarchy?limit=1")).await;
    assert_eq!(page["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_batch"], "1");
    let (status, _) = v1(format!("/rooms/{secret}/hierarchy")).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a private room one is not in stays hidden"
    );
}

#[tokio::test]
async fn members_at_a_point_in_time_and_knocking() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let carol = User::new(&server, "carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    assert_eq!(
        bob.call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, sync) = alice.call(Method::GET, "/sync", None).await;
    let before_carol = sync["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        carol
            .call(
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({}))
            )
            .await
            .0,
        StatusCode::OK
    );
    let members = |path: String| {
        let token = alice.token.clone();
        let server = &server;
        async move {
            let (_, page) = server
                .request(
                    Method::GET,
                    &format!("/_matrix/client/v3{path}"),
                    Some(&token),
                    None,
                )
                .await;
            let mut users: Vec<String> = page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["state_key"].as_str().unwrap().to_owned())
                .collect();
            users.sort();
            users
        }
    };
    assert_eq!(
        members(format!("/rooms/{room}/members")).await,
        ["@alice:localhost", "@bob:localhost", "@carol:localhost"]
    );
    assert_eq!(
        members(format!("/rooms/{room}/members?at={before_carol}")).await,
        ["@alice:localhost", "@bob:localhost"]
    );
    assert_eq!(
        members(format!(
            "/rooms/{room}/members?not_membership=leave&membership=join"
        ))
        .await
        .len(),
        3
    );

    // Knocking (room versions 7+): the knock shows in the knocker's sync, and an invite lets in.
    let knock_room = alice
        .create_room(json!({ "initial_state": [
            { "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }
        ], "name": "Knock first" }))
        .await;
    let dave = User::new(&server, "dave").await;
    let (status, knocked) = dave
        .call(
            Method::POST,
            &format!("/knock/{knock_room}"),
            Some(json!({ "reason": "let me in" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{knocked}");
    let (_, sync) = dave.call(Method::GET, "/sync", None).await;
    assert!(
        sync["rooms"]["knock"][&knock_room]["knock_state"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{sync}"
    );
    let invite = json!({ "user_id": "@dave:localhost" });
    assert_eq!(
        alice
            .call(
                Method::POST,
                &format!("/rooms/{knock_room}/invite"),
                Some(invite)
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        dave.call(
            Method::POST,
            &format!("/rooms/{knock_room}/join"),
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sync_lazy_loads_members() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut members = Vec::new();
    for n in 0..6 {
        let member = User::new(&server, &format!("member{n}")).await;
        assert_eq!(
            member
                .call(
                    Method::POST,
                    &format!("/rooms/{room}/join"),
                    Some(json!({}))
                )
                .await
                .0,
            StatusCode::OK
        );
        members.push(member);
    }
    // The last three timeline events come from member0 and member1 only.
    members[0].say(&room, "one").await;
    members[1].say(&room, "two").await;
    members[0].say(&room, "three").await;
    let member_keys = |sync: &Value| -> Vec<String> {
        let mut keys: Vec<String> = sync["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .map(|e| e["state_key"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    };
    let lazy =
        json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 3 } } });
    let path = format!("/sync?filter={}", urlencode(&lazy.to_string()));
    let (_, sync) = alice.call(Method::GET, &path, None).await;
    assert_eq!(
        member_keys(&sync),
        [
            "@alice:localhost",
            "@member0:localhost",
            "@member1:localhost"
        ]
    );
    // Without lazy loading, everyone's member event comes along.
    let full = json!({ "room": { "timeline": { "limit": 3 } } });
    let (_, sync) = alice
        .call(
            Method::GET,
            &format!("/sync?filter={}", urlencode(&full.to_string())),
            None,
        )
        .await;
    assert_eq!(member_keys(&sync).len(), 7);
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Redaction, aliases, the directory and an upgrade, all through matrix-sdk, and all still
/// there after a restart.
#[tokio::test]
async fn redact_alias_directory_and_upgrade_with_matrix_sdk() {
    use matrix_sdk::ruma::{
        RoomAliasId, RoomVersionId,
        api::client::room::{Visibility, upgrade_room},
    };

    let mut server = TestServer::start();
    let alice = sdk_login(&server, "alice").await;
    let bob = sdk_login(&server, "bob").await;
    let mut request = create_room::v3::Request::new();
    request.name = Some("Swap meet".to_owned());
    request.visibility = Visibility::Public;
    request.room_version = Some(RoomVersionId::V11);
    let room = alice.create_room(request).await.unwrap();
    let room_id = room.room_id().to_owned();

    // An alias made and resolved by the client library; the room is in the directory.
    let alias = <&RoomAliasId>::try_from("#swap:localhost").unwrap();
    alice
        .create_room_alias(alias, &room_id)
        .await
        .expect("alias created");
    assert_eq!(
        bob.resolve_room_alias(alias)
            .await
            .expect("alias resolves")
            .room_id,
        room_id
    );
    let listing = bob
        .public_rooms(Some(10), None, None)
        .await
        .expect("directory");
    assert!(
        listing
            .chunk
            .iter()
            .any(|r| r.room_id == room_id && r.name.as_deref() == Some("Swap meet"))
    );

    // Bob joins by alias, posts, and redacts his own message.
    let joined = bob
        .join_room_by_id_or_alias(<&RoomOrAliasId>::from(alias), &[])
        .await
        .unwrap();
    let oops = joined
        .send(RoomMessageEventContent::text_plain("my phone number is …"))
        .await
        .unwrap()
        .response
        .event_id;
    let redaction = joined
        .redact(&oops, Some("oops"), None)
        .await
        .expect("redacted")
        .event_id;
    let event = joined
        .event(&oops, None)
        .await
        .expect("event still fetchable");
    let json: Value = serde_json::from_str(event.raw().json().get()).unwrap();
    assert_eq!(json["content"], json!({}), "{json}");
    assert_eq!(
        json["unsigned"]["redacted_because"]["event_id"],
        redaction.as_str()
    );

    // Alice upgrades the room to version 12; the alias follows the room.
    let upgraded = alice
        .send(upgrade_room::v3::Request::new(
            room_id.clone(),
            RoomVersionId::V12,
        ))
        .await
        .expect("upgrade")
        .replacement_room;
    assert_eq!(
        bob.resolve_room_alias(alias).await.unwrap().room_id,
        upgraded
    );

    // After a restart everything is as it was.
    assert!(server.stop().success());
    server.restart();
    let bob = sdk_login_again(&server, "bob").await;
    assert_eq!(
        bob.resolve_room_alias(alias).await.unwrap().room_id,
        upgraded
    );
    let token = bob.access_token().unwrap();
    let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{oops}");
    let (status, event) = server.request(Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["content"], json!({}));
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.tombstone/");
    let (_, tombstone) = server.request(Method::GET, &path, Some(&token), None).await;
    assert_eq!(tombstone["replacement_room"], upgraded.as_str());
}

async fn sdk_login_again(server: &TestServer, name: &str) -> Client {
    let client = server.client().await;
    client
        .matrix_auth()
        .login_username(name, "pw pw pw")
        .send()
        .await
        .expect("login");
    client
}

/// Sends an `m.room.message` with `content`; returns its event id.
async fn send_message(user: &User<'_>, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/rooms/{room}/send/m.room.message/{txn}");
    let (status, body) = user.call(Method::PUT, &path, Some(content)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn thread_summaries_and_edits_are_bundled() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let carol = User::new(&server, "carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    for user in [&bob, &carol] {
        let (status, _) = user
            .call(
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, root) = alice.say(&room, "Who brings the antenna?").await;
    let root = root["event_id"].as_str().unwrap().to_owned();
    let mut last_reply = String::new();
    for n in 0..3 {
        last_reply = send_message(
            &bob,
            &room,
            &format!("r{n}"),
            json!({ "msgtype": "m.text", "body": format!("me {n}"),
                    "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
        )
        .await;
    }
    // Alice edits her question twice; carol's "edit" of it is not valid (another sender).
    let edit = |body: &str| {
        json!({ "msgtype": "m.text", "body": format!("* {body}"),
                "m.new_content": { "msgtype": "m.text", "body": body },
                "m.relates_to": { "rel_type": "m.replace", "event_id": root } })
    };
    send_message(&alice, &room, "e1", edit("Who brings the big antenna?")).await;
    let last_edit = send_message(&alice, &room, "e2", edit("Who brings the 2 m antenna?")).await;
    send_message(&carol, &room, "e3", edit("Nobody")).await;

    // In /event, /messages and /sync alike.
    let (status, event) = carol
        .call(Method::GET, &format!("/rooms/{room}/event/{root}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let relations = &event["unsigned"]["m.relations"];
    assert_eq!(relations["m.thread"]["count"], 3, "{event}");
    assert_eq!(
        relations["m.thread"]["latest_event"]["event_id"],
        last_reply
    );
    assert_eq!(relations["m.thread"]["current_user_participated"], false);
    assert_eq!(relations["m.replace"]["event_id"], last_edit);
    assert_eq!(
        relations["m.replace"]["content"]["m.new_content"]["body"],
        "Who brings the 2 m antenna?"
    );
    for user in [&alice, &bob] {
        let (_, page) = user
            .call(
                Method::GET,
                &format!("/rooms/{room}/messages?dir=b&limit=50"),
                None,
            )
            .await;
        let root_event = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == root.as_str())
            .expect("the root is in the page")
            .clone();
        // The root's sender and a replier took part.
        assert_eq!(
            root_event["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
            true
        );
    }
    let filter = urlencode(r#"{"room":{"timeline":{"limit":50}}}"#);
    let (_, sync) = carol
        .call(Method::GET, &format!("/sync?filter={filter}"), None)
        .await;
    let timeline = sync["rooms"]["join"][room.as_str()]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let synced_root = timeline
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .expect("the root is in the synced timeline");
    assert_eq!(
        synced_root["unsigned"]["m.relations"]["m.thread"]["count"],
        3
    );
    // An event nothing relates to carries no m.relations.
    let (_, reply) = carol
        .call(
            Method::GET,
            &format!("/rooms/{room}/event/{last_reply}"),
            None,
        )
        .await;
    assert!(reply["unsigned"].get("m.relations").is_none(), "{reply}");
}

#[tokio::test]
async fn ignored_users_messages_and_invites_are_not_shown() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = bob.create_room(json!({ "preset": "public_chat" })).await;
    let (status, _) = alice
        .call(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = alice
        .call(
            Method::PUT,
            "/user/@alice:localhost/account_data/m.ignored_user_list",
            Some(json!({ "ignored_users": { "@bob:localhost": {} } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    bob.say(&room, "you can't hear me").await;
    // Bob's state events still count: the room's name must not depend on whom one ignores.
    let (status, _) = bob
        .call(
            Method::PUT,
            &format!("/rooms/{room}/state/m.room.topic/"),
            Some(json!({ "topic": "bob's topic" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    alice.say(&room, "anyone there?").await;
    let invite = bob
        .create_room(json!({ "invite": ["@alice:localhost"] }))
        .await;

    let bodies = |events: &Value| -> Vec<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, sync) = alice.call(Method::GET, "/sync", None).await;
    let timeline = &sync["rooms"]["join"][room.as_str()]["timeline"]["events"];
    assert_eq!(
        bodies(timeline),
        vec!["anyone there?".to_owned()],
        "{timeline}"
    );
    assert!(
        timeline
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic"),
        "state events of ignored users are still sent"
    );
    assert!(
        sync["rooms"]["invite"].get(invite.as_str()).is_none(),
        "{sync}"
    );
    let (_, page) = alice
        .call(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(bodies(&page["chunk"]), vec!["anyone there?".to_owned()]);
    // Sliding sync lists neither the invite nor bob's message.
    let (_, sliding) = server
        .request(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(&alice.token),
            Some(json!({ "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 10 } } })),
        )
        .await;
    assert_eq!(sliding["lists"]["all"]["count"], 1, "{sliding}");
    assert_eq!(
        bodies(&sliding["rooms"][room.as_str()]["timeline"]),
        vec!["anyone there?".to_owned()]
    );
    // Bob himself still sees everything.
    let (_, page) = bob
        .call(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(bodies(&page["chunk"]).len(), 2);
}
