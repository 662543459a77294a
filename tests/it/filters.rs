//! Filters (client-server API, "Filtering") over raw HTTP: every field of a sync filter,
//! inline and stored, the same rules on `/messages` and `/context`, invalid filters, and
//! long-polls that a filtered-out change does not end.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

struct User<'a> {
    server: &'a TestServer,
    token: String,
    id: String,
}

impl<'a> User<'a> {
    async fn new(server: &'a TestServer, name: &str) -> Self {
        Self {
            server,
            token: server.register(name, "pw pw pw").await,
            id: format!("@{name}:localhost"),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.server
            .client_api(&self.token, method, path, body)
            .await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.call(method, path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {json}");
        json
    }

    async fn create_room(&self) -> String {
        let body = json!({ "preset": "public_chat", "name": "filters" });
        let json = self.ok(Method::POST, "/createRoom", Some(body)).await;
        json["room_id"].as_str().unwrap().to_owned()
    }

    async fn join(&self, room: &str) {
        self.ok(
            Method::POST,
            &format!("/rooms/{room}/join"),
            Some(json!({})),
        )
        .await;
    }

    async fn send(&self, room: &str, kind: &str, content: Value) -> String {
        let path = format!("/rooms/{room}/send/{kind}/t{}", next_txn());
        let json = self.ok(Method::PUT, &path, Some(content)).await;
        json["event_id"].as_str().unwrap().to_owned()
    }

    async fn say(&self, room: &str, text: &str) -> String {
        self.send(
            room,
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
        .await
    }

    /// `/sync` with an inline filter (`Value::Null` for none) and extra query parameters.
    async fn sync(&self, filter: &Value, query: &str) -> Value {
        self.ok(Method::GET, &sync_path(filter, query), None).await
    }

    async fn messages(&self, room: &str, filter: &Value, query: &str) -> Value {
        let path = match filter {
            Value::Null => format!("/rooms/{room}/messages?dir=b&{query}"),
            filter => format!(
                "/rooms/{room}/messages?dir=b&filter={}&{query}",
                urlencode(&filter.to_string())
            ),
        };
        self.ok(Method::GET, &path, None).await
    }
}

fn sync_path(filter: &Value, query: &str) -> String {
    match filter {
        Value::Null => format!("/sync?{query}"),
        Value::String(id) => format!("/sync?filter={}&{query}", urlencode(id)),
        filter => format!("/sync?filter={}&{query}", urlencode(&filter.to_string())),
    }
}

fn next_txn() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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

fn list_of(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn timeline(sync: &Value, room: &str) -> Vec<Value> {
    list_of(&sync["rooms"]["join"][room]["timeline"]["events"])
}

fn state(sync: &Value, room: &str) -> Vec<Value> {
    list_of(&sync["rooms"]["join"][room]["state"]["events"])
}

fn types_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn member_keys(events: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn rooms_and_not_rooms_choose_the_rooms() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let (a, b, c) = (
        alice.create_room().await,
        alice.create_room().await,
        alice.create_room().await,
    );
    let sync = alice
        .sync(
            &json!({ "room": { "rooms": [a, b], "not_rooms": [b] } }),
            "",
        )
        .await;
    let joined: Vec<&String> = sync["rooms"]["join"].as_object().unwrap().keys().collect();
    assert_eq!(joined, [&a], "{sync}");
    let sync = alice
        .sync(&json!({ "room": { "not_rooms": [a] } }), "")
        .await;
    let joined = sync["rooms"]["join"].as_object().unwrap();
    assert!(!joined.contains_key(&a) && joined.contains_key(&b) && joined.contains_key(&c));
    // Room account data and ephemeral events of excluded rooms stay out too.
    let sync = alice.sync(&json!({ "room": { "rooms": [] } }), "").await;
    assert!(
        sync["rooms"]["join"]
            .as_object()
            .is_none_or(|r| r.is_empty())
    );

    // /messages and /context: a `rooms` list without this room lets nothing through.
    let event = alice.say(&a, "hello").await;
    let page = alice.messages(&a, &json!({ "rooms": [b] }), "").await;
    assert!(list_of(&page["chunk"]).is_empty(), "{page}");
    let page = alice.messages(&a, &json!({ "not_rooms": [b] }), "").await;
    assert_eq!(bodies(&list_of(&page["chunk"])), ["hello"]);
    let path = format!(
        "/rooms/{a}/context/{event}?filter={}",
        urlencode(&json!({ "not_rooms": [a] }).to_string())
    );
    let context = alice.ok(Method::GET, &path, None).await;
    assert_eq!(context["event"]["event_id"], event);
    assert!(list_of(&context["events_before"]).is_empty(), "{context}");
}

#[tokio::test]
async fn types_not_types_wildcards_and_urls() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room().await;
    alice.say(&room, "one").await;
    alice
        .send(&room, "org.example.ping", json!({ "n": 1 }))
        .await;
    alice
        .send(
            &room,
            "m.room.message",
            json!({ "msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/cat" }),
        )
        .await;
    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{room}/state/m.room.topic/"),
            Some(json!({ "topic": "filters" })),
        )
        .await;
    alice.say(&room, "two").await;

    // Only m.room.* but never members; the limit counts what passes.
    let filter = json!({ "room": { "timeline": {
        "types": ["m.room.*"], "not_types": ["m.room.member", "m.room.topic"], "limit": 3 } } });
    let sync = alice.sync(&filter, "").await;
    let events = timeline(&sync, &room);
    assert_eq!(bodies(&events), ["one", "cat.png", "two"], "{sync}");
    assert!(
        types_of(&events)
            .iter()
            .all(|t| t == "m.room.message" || t == "m.room.name" || t == "m.room.power_levels"),
        "{events:?}"
    );
    // The topic change was left out of the timeline, so it comes in `state`.
    assert!(
        state(&sync, &room)
            .iter()
            .any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "filters"),
        "{sync}"
    );
    // A wildcard in the middle; `not_types` wins over `types`.
    let filter = json!({ "room": { "timeline": {
        "types": ["org.*.ping", "m.room.message"], "not_types": ["m.room.mess*"] } } });
    let sync = alice.sync(&filter, "").await;
    assert_eq!(types_of(&timeline(&sync, &room)), ["org.example.ping"]);
    // The state filter: only the types named.
    let filter = json!({ "room": { "state": { "types": ["m.room.create", "m.room.name"] },
                                   "timeline": { "limit": 1 } } });
    let sync = alice.sync(&filter, "").await;
    let mut kinds = types_of(&state(&sync, &room));
    kinds.sort();
    assert_eq!(kinds, ["m.room.create", "m.room.name"], "{sync}");

    // /messages: types with wildcards, contains_url both ways, not_types ["*"].
    let page = alice
        .messages(&room, &json!({ "types": ["org.*"] }), "")
        .await;
    assert_eq!(types_of(&events_of(&page)), ["org.example.ping"]);
    let page = alice
        .messages(&room, &json!({ "contains_url": true }), "")
        .await;
    assert_eq!(bodies(&events_of(&page)), ["cat.png"]);
    let page = alice
        .messages(
            &room,
            &json!({ "contains_url": false, "types": ["m.room.message"] }),
            "",
        )
        .await;
    assert_eq!(bodies(&events_of(&page)), ["two", "one"]);
    let page = alice
        .messages(&room, &json!({ "not_types": ["*"] }), "")
        .await;
    assert!(events_of(&page).is_empty());
    assert!(page.get("end").is_none(), "{page}");
}

fn events_of(page: &Value) -> Vec<Value> {
    list_of(&page["chunk"])
}

#[tokio::test]
async fn senders_and_not_senders() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice.create_room().await;
    bob.join(&room).await;
    alice.say(&room, "from alice").await;
    let middle = bob.say(&room, "from bob").await;
    alice.say(&room, "alice again").await;

    let sync = alice
        .sync(
            &json!({ "room": { "timeline": { "senders": [bob.id] } } }),
            "",
        )
        .await;
    let events = timeline(&sync, &room);
    assert!(events.iter().all(|e| e["sender"] == bob.id.as_str()));
    assert_eq!(bodies(&events), ["from bob"]);
    let sync = alice
        .sync(
            &json!({ "room": { "timeline": {
                "senders": [alice.id, bob.id], "not_senders": [bob.id] } } }),
            "",
        )
        .await;
    assert!(
        timeline(&sync, &room)
            .iter()
            .all(|e| e["sender"] == alice.id.as_str())
    );

    let page = alice
        .messages(&room, &json!({ "not_senders": [alice.id] }), "")
        .await;
    assert!(
        events_of(&page)
            .iter()
            .all(|e| e["sender"] == bob.id.as_str()),
        "{page}"
    );
    // /context: only alice's events around bob's, and state through the same filter.
    let filter = json!({ "senders": [alice.id], "types": ["m.room.message"] });
    let path = format!(
        "/rooms/{room}/context/{middle}?limit=10&filter={}",
        urlencode(&filter.to_string())
    );
    let context = alice.ok(Method::GET, &path, None).await;
    assert_eq!(bodies(&list_of(&context["events_before"])), ["from alice"]);
    assert_eq!(bodies(&list_of(&context["events_after"])), ["alice again"]);
    assert!(
        list_of(&context["state"]).is_empty(),
        "state passes the filter too: {context}"
    );
}

#[tokio::test]
async fn limits_fill_through_the_filter() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room().await;
    for n in 0..12 {
        alice.say(&room, &format!("m{n}")).await;
        alice
            .send(&room, "org.example.noise", json!({ "n": n }))
            .await;
    }
    let filter = json!({ "room": { "timeline": { "types": ["m.room.message"], "limit": 4 } } });
    let sync = alice.sync(&filter, "").await;
    assert_eq!(bodies(&timeline(&sync, &room)), ["m8", "m9", "m10", "m11"]);
    assert_eq!(sync["rooms"]["join"][&room]["timeline"]["limited"], true);
    // prev_batch pages back from the first one shown.
    let prev = sync["rooms"]["join"][&room]["timeline"]["prev_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = alice
        .messages(
            &room,
            &json!({ "types": ["m.room.message"] }),
            &format!("from={prev}&limit=3"),
        )
        .await;
    assert_eq!(bodies(&events_of(&page)), ["m7", "m6", "m5"]);
    // The filter's own limit caps /messages below the query's.
    let page = alice
        .messages(
            &room,
            &json!({ "types": ["m.room.message"], "limit": 2 }),
            "limit=20",
        )
        .await;
    assert_eq!(bodies(&events_of(&page)), ["m11", "m10"]);
    // Presence and account data limits.
    for n in 0..3 {
        alice
            .ok(
                Method::PUT,
                &format!("/user/{}/account_data/org.example.{n}", alice.id),
                Some(json!({ "n": n })),
            )
            .await;
    }
    let sync = alice
        .sync(
            &json!({ "account_data": { "types": ["org.example.*"], "limit": 2 } }),
            "",
        )
        .await;
    assert_eq!(list_of(&sync["account_data"]["events"]).len(), 2, "{sync}");
}

#[tokio::test]
async fn include_leave_shows_left_rooms_in_an_initial_sync() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = bob.create_room().await;
    alice.join(&room).await;
    alice.say(&room, "bye").await;
    alice
        .ok(
            Method::POST,
            &format!("/rooms/{room}/leave"),
            Some(json!({})),
        )
        .await;
    let sync = alice.sync(&Value::Null, "").await;
    assert!(sync["rooms"]["leave"].get(&room).is_none(), "{sync}");
    let sync = alice
        .sync(
            &json!({ "room": { "include_leave": true, "timeline": { "limit": 2 } } }),
            "",
        )
        .await;
    let left = &sync["rooms"]["leave"][&room];
    let events = list_of(&left["timeline"]["events"]);
    assert_eq!(bodies(&events), ["bye"], "{sync}");
    assert_eq!(events.last().unwrap()["content"]["membership"], "leave");
    assert!(
        list_of(&left["state"]["events"])
            .iter()
            .any(|e| e["type"] == "m.room.create"),
        "{left}"
    );
    // `rooms` applies to left rooms as well.
    let sync = alice
        .sync(
            &json!({ "room": { "include_leave": true, "not_rooms": [room] } }),
            "",
        )
        .await;
    assert!(sync["rooms"]["leave"].get(&room).is_none(), "{sync}");
}

#[tokio::test]
async fn top_level_account_data_and_presence() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    for kind in ["org.example.a", "org.example.b", "com.other.c"] {
        alice
            .ok(
                Method::PUT,
                &format!("/user/{}/account_data/{kind}", alice.id),
                Some(json!({ "kind": kind })),
            )
            .await;
    }
    let kinds = |sync: &Value| {
        let mut kinds = types_of(&list_of(&sync["account_data"]["events"]));
        kinds.sort();
        kinds
    };
    let sync = alice
        .sync(
            &json!({ "account_data": { "types": ["org.example.*"], "not_types": ["*.b"] } }),
            "",
        )
        .await;
    assert_eq!(kinds(&sync), ["org.example.a"]);
    let sync = alice
        .sync(&json!({ "account_data": { "not_types": ["*"] } }), "")
        .await;
    assert!(kinds(&sync).is_empty(), "{sync}");

    // Presence: one's own appears unless the filter drops it.
    let sync = alice.sync(&Value::Null, "").await;
    assert!(
        list_of(&sync["presence"]["events"])
            .iter()
            .any(|e| e["sender"] == alice.id.as_str()),
        "{sync}"
    );
    for filter in [
        json!({ "presence": { "types": [] } }),
        json!({ "presence": { "not_senders": [alice.id] } }),
        json!({ "presence": { "types": ["m.typing"] } }),
    ] {
        let sync = alice.sync(&filter, "").await;
        assert!(
            list_of(&sync["presence"]["events"]).is_empty(),
            "{filter}: {sync}"
        );
    }
    let sync = alice
        .sync(&json!({ "presence": { "senders": [alice.id] } }), "")
        .await;
    assert_eq!(list_of(&sync["presence"]["events"]).len(), 1, "{sync}");
}

#[tokio::test]
async fn ephemeral_and_room_account_data() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice.create_room().await;
    bob.join(&room).await;
    let event = bob.say(&room, "hi").await;
    bob.ok(
        Method::PUT,
        &format!("/rooms/{room}/typing/{}", bob.id),
        Some(json!({ "typing": true, "timeout": 30000 })),
    )
    .await;
    bob.ok(
        Method::POST,
        &format!("/rooms/{room}/receipt/m.read/{event}"),
        Some(json!({})),
    )
    .await;
    alice
        .ok(
            Method::PUT,
            &format!("/user/{}/rooms/{room}/account_data/org.example.x", alice.id),
            Some(json!({ "x": 1 })),
        )
        .await;
    let ephemeral = |sync: &Value| {
        let mut kinds = types_of(&list_of(
            &sync["rooms"]["join"][&room]["ephemeral"]["events"],
        ));
        kinds.sort();
        kinds
    };
    let sync = alice.sync(&Value::Null, "").await;
    assert_eq!(ephemeral(&sync), ["m.receipt", "m.typing"], "{sync}");
    let sync = alice
        .sync(
            &json!({ "room": { "ephemeral": { "not_types": ["m.typing"] } } }),
            "",
        )
        .await;
    assert_eq!(ephemeral(&sync), ["m.receipt"]);
    let sync = alice
        .sync(
            &json!({ "room": { "ephemeral": { "types": ["m.typing"], "rooms": [room] } } }),
            "",
        )
        .await;
    assert_eq!(ephemeral(&sync), ["m.typing"]);
    let room_data = |sync: &Value| {
        types_of(&list_of(
            &sync["rooms"]["join"][&room]["account_data"]["events"],
        ))
    };
    let sync = alice.sync(&Value::Null, "").await;
    assert_eq!(room_data(&sync), ["org.example.x"]);
    let sync = alice
        .sync(
            &json!({ "room": { "account_data": { "not_rooms": [room] } } }),
            "",
        )
        .await;
    assert!(room_data(&sync).is_empty(), "{sync}");
}

#[tokio::test]
async fn event_fields_and_event_format() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room().await;
    alice.say(&room, "fields").await;
    let filter = json!({ "event_fields": ["type", "content.body", "unsigned.m\\.nothing"],
                         "room": { "timeline": { "limit": 1 } } });
    let sync = alice.sync(&filter, "").await;
    let events = timeline(&sync, &room);
    assert_eq!(
        events,
        [json!({ "type": "m.room.message", "content": { "body": "fields" } })]
    );
    // State events are cut the same way.
    assert!(
        state(&sync, &room).iter().all(|e| e
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k == "type" || k == "content")),
        "{sync}"
    );

    let sync = alice
        .sync(
            &json!({ "event_format": "federation", "room": { "timeline": { "limit": 1 } } }),
            "",
        )
        .await;
    let pdu = &timeline(&sync, &room)[0];
    for field in [
        "auth_events",
        "prev_events",
        "depth",
        "hashes",
        "signatures",
        "room_id",
    ] {
        assert!(pdu.get(field).is_some(), "{field} missing from {pdu}");
    }
    assert_eq!(pdu["content"]["body"], "fields");
    let client = alice.sync(&json!({ "event_format": "client" }), "").await;
    assert!(timeline(&client, &room)[0].get("hashes").is_none());
}

#[tokio::test]
async fn lazy_members_and_redundant_members() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let carol = User::new(&server, "carol").await;
    let room = alice.create_room().await;
    bob.join(&room).await;
    carol.join(&room).await;
    bob.say(&room, "first").await;

    let lazy = json!({ "room": { "state": { "lazy_load_members": true },
                                 "timeline": { "limit": 1 } } });
    let sync = alice.sync(&lazy, "").await;
    assert_eq!(
        member_keys(&state(&sync, &room)),
        [alice.id.clone(), bob.id.clone()]
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    bob.say(&room, "second").await;
    // Bob's member event was already sent to this device: not again.
    let sync = alice.sync(&lazy, &format!("since={since}")).await;
    assert_eq!(bodies(&timeline(&sync, &room)), ["second"]);
    assert!(member_keys(&state(&sync, &room)).is_empty(), "{sync}");
    // Carol is new to the client: her member event comes along.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    carol.say(&room, "third").await;
    let sync = alice.sync(&lazy, &format!("since={since}")).await;
    assert_eq!(member_keys(&state(&sync, &room)), [carol.id.as_str()]);

    // With include_redundant_members, every sender's member event every time.
    let redundant = json!({ "room": { "state": {
        "lazy_load_members": true, "include_redundant_members": true },
        "timeline": { "limit": 1 } } });
    let sync = alice.sync(&redundant, "").await;
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    bob.say(&room, "fourth").await;
    let sync = alice.sync(&redundant, &format!("since={since}")).await;
    assert_eq!(
        member_keys(&state(&sync, &room)),
        [alice.id.clone(), bob.id.clone()]
    );

    // /messages: the member events of the page's senders only.
    let page = alice
        .messages(&room, &json!({ "lazy_load_members": true }), "limit=2")
        .await;
    assert_eq!(bodies(&events_of(&page)), ["fourth", "third"]);
    assert_eq!(
        member_keys(&list_of(&page["state"])),
        [bob.id.clone(), carol.id.clone()]
    );
    // /context: likewise, around an event.
    let newest = events_of(&alice.messages(&room, &Value::Null, "limit=1").await)[0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!(
        "/rooms/{room}/context/{newest}?limit=0&filter={}",
        urlencode(&json!({ "lazy_load_members": true }).to_string())
    );
    let context = alice.ok(Method::GET, &path, None).await;
    assert_eq!(member_keys(&list_of(&context["state"])), [bob.id.as_str()]);
    assert!(
        list_of(&context["state"])
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
}

#[tokio::test]
async fn stored_and_inline_filters_agree() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room().await;
    alice.say(&room, "a").await;
    alice.send(&room, "org.example.x", json!({})).await;
    let filter = json!({ "room": { "timeline": { "types": ["org.example.x"] } },
                         "presence": { "not_types": ["*"] } });
    let created = alice
        .ok(
            Method::POST,
            &format!("/user/{}/filter", alice.id),
            Some(filter.clone()),
        )
        .await;
    let id = created["filter_id"].as_str().unwrap().to_owned();
    let stored = alice.sync(&Value::String(id), "").await;
    let inline = alice.sync(&filter, "").await;
    for sync in [&stored, &inline] {
        assert_eq!(
            types_of(&timeline(sync, &room)),
            ["org.example.x"],
            "{sync}"
        );
        assert!(list_of(&sync["presence"]["events"]).is_empty(), "{sync}");
    }
}

#[tokio::test]
async fn invalid_filters_are_refused() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room().await;
    let event = alice.say(&room, "x").await;
    for (filter, errcode) in [
        (r#"{"room": {"timeline": "#, "M_BAD_JSON"),
        (r#"{"room": {"timeline": {"limit": "ten"}}}"#, "M_BAD_JSON"),
        (r#"{"room": {"rooms": "!a:localhost"}}"#, "M_BAD_JSON"),
        (r#"{"event_fields": [1]}"#, "M_BAD_JSON"),
        ("12345", "M_INVALID_PARAM"),
    ] {
        let path = format!("/sync?filter={}", urlencode(filter));
        let response = alice.call(Method::GET, &path, None).await;
        assert_error(&response, StatusCode::BAD_REQUEST, errcode);
    }
    for path in [
        format!("/rooms/{room}/messages?dir=b&filter={}", urlencode("{nope")),
        format!(
            "/rooms/{room}/messages?dir=b&filter={}",
            urlencode(r#"{"types": "m.room.message"}"#)
        ),
        format!("/rooms/{room}/context/{event}?filter={}", urlencode("[1]")),
    ] {
        let response = alice.call(Method::GET, &path, None).await;
        assert_eq!(
            response.0,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            response.1
        );
        assert!(
            ["M_BAD_JSON", "M_INVALID_PARAM", "M_NOT_JSON"]
                .contains(&response.1["errcode"].as_str().unwrap_or_default()),
            "{path}: {}",
            response.1
        );
    }
    let response = alice
        .call(
            Method::POST,
            &format!("/user/{}/filter", alice.id),
            Some(json!({ "room": { "timeline": { "types": "m.room.message" } } })),
        )
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_BAD_JSON");
}

#[tokio::test]
async fn a_long_poll_outlasts_what_its_filter_drops() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let quiet = alice.create_room().await;
    let noisy = bob.create_room().await;
    alice.join(&noisy).await;
    let filter = json!({ "presence": { "not_types": ["*"] },
                         "room": { "not_rooms": [noisy] } });
    let since = alice.sync(&filter, "").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Alice's own presence changes with this very request, and bob talks in a room her
    // filter leaves out while she waits: neither ends the wait.
    let talk = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        bob.say(&noisy, "not for the filter").await;
    };
    let started = Instant::now();
    let path = sync_path(
        &filter,
        &format!("since={since}&timeout=1500&set_presence=unavailable"),
    );
    let ((status, sync), ()) = tokio::join!(alice.call(Method::GET, &path, None), talk);
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert!(
        waited >= Duration::from_millis(1400),
        "returned after {waited:?}: {sync}"
    );
    assert!(list_of(&sync["presence"]["events"]).is_empty(), "{sync}");
    assert!(sync["rooms"]["join"].get(&noisy).is_none(), "{sync}");

    // What the filter lets through still ends the wait at once.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let talk = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice.say(&quiet, "for the filter").await;
    };
    let started = Instant::now();
    let path = sync_path(
        &filter,
        &format!("since={since}&timeout=10000&set_presence=unavailable"),
    );
    let ((status, sync), ()) = tokio::join!(alice.call(Method::GET, &path, None), talk);
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert!(started.elapsed() < Duration::from_secs(8), "{sync}");
    assert_eq!(bodies(&timeline(&sync, &quiet)), ["for the filter"]);

    // Without a presence filter, one's own presence change is news.
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let path = format!("/sync?since={since}&timeout=10000&set_presence=online");
    let sync = alice.ok(Method::GET, &path, None).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "{waited:?} {sync}");
    assert!(
        list_of(&sync["presence"]["events"])
            .iter()
            .any(|e| e["sender"] == alice.id.as_str()),
        "{waited:?} {sync}"
    );
}
