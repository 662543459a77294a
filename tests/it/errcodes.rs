//! The status codes and errcodes the spec names, endpoint by endpoint (client-server API),
//! over raw HTTP: room versions, event size limits, alias checks, over-large bodies, rooms
//! the user cannot see or has forgotten, empty answers and parameter validation.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error, http};

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

    /// A request below `/_matrix/client/v3` (or at `path` itself if it starts with `/_`).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let path = if path.starts_with("/_") {
            path.to_owned()
        } else {
            format!("/_matrix/client/v3{path}")
        };
        self.server
            .request(method, &path, Some(&self.token), body)
            .await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, json) = self.call(method, path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {json}");
        json
    }

    async fn create_room(&self, body: Value) -> String {
        let json = self.ok(Method::POST, "/createRoom", Some(body)).await;
        json["room_id"].as_str().unwrap().to_owned()
    }

    async fn send(&self, room: &str, txn: &str, body: Value) -> (StatusCode, Value) {
        let path = format!("/rooms/{room}/send/m.room.message/{txn}");
        self.call(Method::PUT, &path, Some(body)).await
    }

    async fn say(&self, room: &str, txn: &str, text: &str) -> String {
        let (status, json) = self
            .send(room, txn, json!({ "msgtype": "m.text", "body": text }))
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json["event_id"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn unknown_room_versions_are_unsupported() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    for version in ["999", "org.example.custom", "0"] {
        assert_error(
            &alice
                .call(
                    Method::POST,
                    "/createRoom",
                    Some(json!({ "room_version": version })),
                )
                .await,
            StatusCode::BAD_REQUEST,
            "M_UNSUPPORTED_ROOM_VERSION",
        );
    }
    let room = alice.create_room(json!({})).await;
    assert_error(
        &alice
            .call(
                Method::POST,
                &format!("/rooms/{room}/upgrade"),
                Some(json!({ "new_version": "999" })),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
}

#[tokio::test]
async fn events_over_the_size_limits_are_too_large() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room(json!({})).await;

    // Client-server API, "Size limits": 65,536 bytes for the whole signed event.
    let (status, _) = alice
        .send(
            &room,
            "near",
            json!({ "msgtype": "m.text", "body": "x".repeat(60_000) }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "an event under the limit is sent");
    let over = json!({ "msgtype": "m.text", "body": "x".repeat(65_536) });
    assert_error(
        &alice.send(&room, "over", over).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    let state = json!({ "topic": "y".repeat(66_000) });
    assert_error(
        &alice
            .call(
                Method::PUT,
                &format!("/rooms/{room}/state/m.room.topic/"),
                Some(state),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // `type` and `state_key` are at most 255 bytes.
    let long = "k".repeat(256);
    assert_error(
        &alice
            .call(
                Method::PUT,
                &format!("/rooms/{room}/state/org.example.thing/{long}"),
                Some(json!({})),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    assert_error(
        &alice
            .call(
                Method::PUT,
                &format!("/rooms/{room}/send/{long}/t-type"),
                Some(json!({})),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    let fits = "k".repeat(255);
    assert_eq!(
        alice
            .call(
                Method::PUT,
                &format!("/rooms/{room}/state/org.example.thing/{fits}"),
                Some(json!({})),
            )
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn canonical_aliases_are_checked_for_syntax_then_for_the_room() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice
        .create_room(json!({ "room_alias_name": "lobby" }))
        .await;
    let put = |content: Value| {
        let alice = &alice;
        let path = format!("/rooms/{room}/state/m.room.canonical_alias/");
        async move { alice.call(Method::PUT, &path, Some(content)).await }
    };
    // Invalid syntax: 400 M_INVALID_PARAM (spec, PUT /rooms/{roomId}/state).
    for content in [
        json!({ "alias": "lobby" }),
        json!({ "alias": "#nocolon" }),
        json!({ "alias": 5 }),
        json!({ "alias": "#lobby:localhost", "alt_aliases": ["not an alias"] }),
        json!({ "alias": "#lobby:localhost", "alt_aliases": "#lobby:localhost" }),
        json!({ "alt_aliases": [7] }),
    ] {
        assert_error(
            &put(content).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    // Valid syntax, but not pointing at this room: 400 M_BAD_ALIAS.
    assert_error(
        &put(json!({ "alias": "#nowhere:localhost" })).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_ALIAS",
    );
    assert_eq!(
        put(json!({ "alias": "#lobby:localhost" })).await.0,
        StatusCode::OK
    );
    // An empty content removes the alias.
    assert_eq!(put(json!({})).await.0, StatusCode::OK);
}

/// Sends `bytes` with the given content length header (or chunked, without one).
async fn raw_send(
    server: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    bytes: Vec<u8>,
    chunked: bool,
) -> (StatusCode, Value) {
    let mut request = http()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token);
    request = if chunked {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(1024).map(|c| Ok(c.to_vec())).collect();
        request.body(reqwest::Body::wrap_stream(futures_stream(chunks)))
    } else {
        request.body(bytes)
    };
    let response = request.send().await.expect("HTTP request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures_util::stream::iter(chunks)
}

#[tokio::test]
async fn every_413_carries_the_standard_error_body() {
    let server = TestServer::with_env(&[
        ("CONDUIT_MAX_REQUEST_SIZE", "4096"),
        ("CONDUIT_MAX_UPLOAD_SIZE", "4096"),
    ]);
    let alice = User::new(&server, "alice").await;
    let big = format!("{{\"name\":\"{}\"}}", "n".repeat(8000)).into_bytes();
    for chunked in [false, true] {
        for (method, path) in [
            (Method::POST, "/_matrix/client/v3/createRoom"),
            (
                Method::PUT,
                "/_matrix/client/v3/profile/@alice:localhost/displayname",
            ),
            (Method::POST, "/_matrix/media/v3/upload"),
            (Method::POST, "/_synapse/admin/v1/register"),
        ] {
            let response =
                raw_send(&server, method, path, &alice.token, big.clone(), chunked).await;
            assert_error(&response, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
        }
    }
}

#[tokio::test]
async fn events_of_rooms_one_cannot_see_are_not_found() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let eve = User::new(&server, "eve").await;
    let room = alice.create_room(json!({ "preset": "private_chat" })).await;
    let secret = alice.say(&room, "s1", "secret").await;

    // Spec, GET /rooms/{roomId}/event/{eventId}: 404 "not found or you do not have permission",
    // the same answer as for an event that does not exist, in a room that does not exist.
    let hidden = eve
        .call(Method::GET, &format!("/rooms/{room}/event/{secret}"), None)
        .await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let missing = eve
        .call(
            Method::GET,
            &format!("/rooms/{room}/event/$doesnotexist"),
            None,
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let nowhere = eve
        .call(
            Method::GET,
            "/rooms/!nowhere:localhost/event/$nothing",
            None,
        )
        .await;
    assert_error(&nowhere, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(
        hidden.1, nowhere.1,
        "nothing tells a hidden event from none"
    );

    // /messages and /context answer 403 for a room the user is not in, whether it exists
    // or not (spec: "You aren't a member of the room").
    for room in [room.as_str(), "!nowhere:localhost"] {
        assert_error(
            &eve.call(Method::GET, &format!("/rooms/{room}/messages?dir=b"), None)
                .await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
}

#[tokio::test]
async fn a_forgotten_room_shows_no_history() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({})))
        .await;
    let seen = alice.say(&room, "m1", "while bob was here").await;
    let event_path = format!("/rooms/{room}/event/{seen}");
    bob.ok(Method::GET, &event_path, None).await;
    bob.ok(
        Method::POST,
        &format!("/rooms/{room}/leave"),
        Some(json!({})),
    )
    .await;

    // Left but not forgotten: history up to the leave is still readable.
    bob.ok(Method::GET, &event_path, None).await;
    let page = bob
        .ok(Method::GET, &format!("/rooms/{room}/messages?dir=b"), None)
        .await;
    assert!(!page["chunk"].as_array().unwrap().is_empty(), "{page}");

    // Forgetting while joined is refused (spec: 400 M_UNKNOWN).
    assert_error(
        &alice
            .call(
                Method::POST,
                &format!("/rooms/{room}/forget"),
                Some(json!({})),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    bob.ok(
        Method::POST,
        &format!("/rooms/{room}/forget"),
        Some(json!({})),
    )
    .await;

    // Forgotten: "a user will no longer be able to retrieve history for this room".
    assert_error(
        &bob.call(Method::GET, &event_path, None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &bob.call(Method::GET, &format!("/rooms/{room}/messages?dir=b"), None)
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.call(Method::GET, &format!("/rooms/{room}/context/{seen}"), None)
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let joined = bob.ok(Method::GET, "/joined_rooms", None).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    let filter = json!({ "room": { "include_leave": true } }).to_string();
    let sync = bob
        .ok(
            Method::GET,
            &format!("/sync?timeout=0&filter={}", urlencode(&filter)),
            None,
        )
        .await;
    for section in ["join", "leave", "invite"] {
        assert!(
            sync["rooms"][section].get(&room).is_none(),
            "a forgotten room is not in {section}: {sync}"
        );
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn empty_answers_keep_their_shape() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;

    let joined = alice.ok(Method::GET, "/joined_rooms", None).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    let public = alice.ok(Method::GET, "/publicRooms", None).await;
    assert_eq!(public["chunk"], json!([]), "{public}");
    let users = alice
        .ok(
            Method::POST,
            "/user_directory/search",
            Some(json!({ "search_term": "zzzz-nobody" })),
        )
        .await;
    assert_eq!(users["results"], json!([]), "{users}");
    assert_eq!(users["limited"], json!(false), "{users}");
    let pushers = alice.ok(Method::GET, "/pushers", None).await;
    assert_eq!(pushers["pushers"], json!([]), "{pushers}");

    let room = alice.create_room(json!({})).await;
    let root = alice.say(&room, "r1", "root").await;
    // Paging forward from the end: an empty chunk, no `end` (spec: omitted when there are
    // no further events).
    let latest = alice
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=1"),
            None,
        )
        .await;
    let start = latest["start"].as_str().unwrap();
    let page = alice
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=f&from={start}"),
            None,
        )
        .await;
    assert_eq!(page["chunk"], json!([]), "{page}");
    assert!(page.get("end").is_none(), "{page}");
    assert!(page["start"].is_string(), "{page}");

    let relations = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{room}/relations/{root}"),
            None,
        )
        .await;
    assert_eq!(relations["chunk"], json!([]), "{relations}");
    assert!(relations.get("next_batch").is_none(), "{relations}");
    let threads = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{room}/threads"),
            None,
        )
        .await;
    assert_eq!(threads["chunk"], json!([]), "{threads}");
    let search = alice
        .ok(
            Method::POST,
            "/search",
            Some(json!({ "search_categories": { "room_events": { "search_term": "zzzz" } } })),
        )
        .await;
    let results = &search["search_categories"]["room_events"];
    assert_eq!(results["results"], json!([]), "{search}");
    assert_eq!(results["count"], json!(0), "{search}");
}

#[tokio::test]
async fn parameters_are_validated() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    let event = alice.say(&room, "p1", "hello").await;

    for query in [
        "dir=x",
        "dir=b&limit=-1",
        "dir=b&limit=ten",
        "dir=b&limit=99999999999999999999999",
        "dir=b&from=not-a-token",
        "dir=b&from=99999999999999999999",
        "dir=b&to=%00",
        "dir=b&filter=%7Bnot-json",
    ] {
        let response = alice
            .call(
                Method::GET,
                &format!("/rooms/{room}/messages?{query}"),
                None,
            )
            .await;
        assert_eq!(
            response.0,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            response.1
        );
        let errcode = response.1["errcode"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            ["M_INVALID_PARAM", "M_BAD_JSON"].contains(&errcode.as_str()),
            "{query}: {}",
            response.1
        );
    }
    // `limit=0` asks for at most no events: none, and a token to go on from.
    let empty = alice
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=0"),
            None,
        )
        .await;
    assert_eq!(empty["chunk"], json!([]), "{empty}");
    let end = empty["end"].as_str().expect("an end token to go on from");
    let next = alice
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=1&from={end}"),
            None,
        )
        .await;
    assert_eq!(next["chunk"][0]["event_id"], event.as_str(), "{next}");
    // Tokens are timeline positions and may be negative (backfilled history sorts below
    // 0): below the room's first event there is nothing, forwards from there everything.
    let below = alice
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&from=-5"),
            None,
        )
        .await;
    assert_eq!(
        (&below["chunk"], below.get("end")),
        (&json!([]), None),
        "{below}"
    );
    let above = alice
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=f&from=-5&limit=1"),
            None,
        )
        .await;
    assert_eq!(above["chunk"][0]["type"], "m.room.create", "{above}");
    let first = alice
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=f&limit=1"),
            None,
        )
        .await;
    assert_eq!(
        first["chunk"][0]["event_id"], above["chunk"][0]["event_id"],
        "{first}"
    );
    // `/sync` tokens stay stream positions: a negative one is no token of ours.
    for since in ["-1", "9223372036854775808"] {
        assert_error(
            &alice
                .call(Method::GET, &format!("/sync?since={since}&timeout=0"), None)
                .await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    // A required query parameter that is missing.
    assert_error(
        &alice
            .call(Method::GET, &format!("/rooms/{room}/messages"), None)
            .await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    assert_error(
        &alice
            .call(
                Method::GET,
                &format!("/rooms/{room}/context/{event}?limit=-5"),
                None,
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Malformed identifiers in the path.
    for path in [
        "/rooms/not-a-room/messages?dir=b".to_owned(),
        "/profile/not-a-user".to_owned(),
        format!("/rooms/{room}/event/not-an-event"),
    ] {
        assert_error(
            &alice.call(Method::GET, &path, None).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    // Bodies of the wrong shape.
    assert_error(
        &alice
            .call(
                Method::POST,
                "/user_directory/search",
                Some(json!({ "search_term": "a", "limit": -1 })),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &alice
            .call(
                Method::POST,
                "/createRoom",
                Some(json!({ "invite": "nope" })),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn a_login_body_without_a_type_is_a_missing_parameter() {
    let server = TestServer::start();
    server.register("alice", "pw pw pw").await;
    let login = |body: &'static str| {
        let url = format!("{}/_matrix/client/v3/login", server.url);
        async move {
            let response = http().post(url).body(body).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    assert_error(
        &login("{}").await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    assert_error(
        &login(r#"{"identifier":{"type":"m.id.user","user":"alice"},"password":"pw pw pw"}"#).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    assert_error(
        &login(r#"{"type":5}"#).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(&login("[]").await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    assert_error(&login("{").await, StatusCode::BAD_REQUEST, "M_NOT_JSON");
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn former_members_read_the_state_as_they_left_it() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let eve = User::new(&server, "eve").await;
    let room = alice
        .create_room(json!({ "preset": "public_chat", "name": "before" }))
        .await;
    bob.ok(Method::POST, &format!("/join/{room}"), Some(json!({})))
        .await;
    bob.ok(
        Method::POST,
        &format!("/rooms/{room}/leave"),
        Some(json!({})),
    )
    .await;
    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{room}/state/m.room.name/"),
            Some(json!({ "name": "after" })),
        )
        .await;

    // Spec, GET /rooms/{roomId}/state: 403 only for one who is not and never was a member.
    let name = bob
        .ok(
            Method::GET,
            &format!("/rooms/{room}/state/m.room.name/"),
            None,
        )
        .await;
    assert_eq!(name["name"], "before");
    let state = bob
        .ok(Method::GET, &format!("/rooms/{room}/state"), None)
        .await;
    let names: Vec<&Value> = state
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.name")
        .collect();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0]["content"]["name"], "before");
    let members = bob
        .ok(Method::GET, &format!("/rooms/{room}/members"), None)
        .await;
    let bobs = members["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["state_key"] == "@bob:localhost")
        .expect("bob's own leave is in the members");
    assert_eq!(bobs["content"]["membership"], "leave");

    for path in [
        format!("/rooms/{room}/state"),
        format!("/rooms/{room}/state/m.room.name/"),
        format!("/rooms/{room}/members"),
    ] {
        assert_error(
            &eve.call(Method::GET, &path, None).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    bob.ok(
        Method::POST,
        &format!("/rooms/{room}/forget"),
        Some(json!({})),
    )
    .await;
    assert_error(
        &bob.call(Method::GET, &format!("/rooms/{room}/state"), None)
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn receipts_check_their_type_and_thread() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    let root = alice.say(&room, "t1", "root").await;
    let other = alice.say(&room, "t2", "elsewhere").await;
    let (status, reply) = alice
        .send(
            &room,
            "t3",
            json!({
                "msgtype": "m.text", "body": "in thread",
                "m.relates_to": { "rel_type": "m.thread", "event_id": root },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let reply = reply["event_id"].as_str().unwrap();
    let receipt = |kind: &str, event: &str, body: Value| {
        let path = format!("/rooms/{room}/receipt/{kind}/{event}");
        let alice = &alice;
        async move { alice.call(Method::POST, &path, Some(body)).await }
    };
    for (kind, event, body) in [
        ("m.unknown", root.as_str(), json!({})),
        (
            "m.fully_read",
            root.as_str(),
            json!({ "thread_id": "main" }),
        ),
        ("m.read", root.as_str(), json!({ "thread_id": "" })),
        ("m.read", root.as_str(), json!({ "thread_id": "nonsense" })),
        ("m.read", reply, json!({ "thread_id": other })),
    ] {
        assert_error(
            &receipt(kind, event, body.clone()).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    for (kind, event, body) in [
        ("m.read", reply, json!({ "thread_id": root })),
        ("m.read", root.as_str(), json!({ "thread_id": root })),
        ("m.read", other.as_str(), json!({ "thread_id": "main" })),
        ("m.read.private", other.as_str(), json!({})),
        ("m.fully_read", other.as_str(), json!({})),
    ] {
        let (status, json) = receipt(kind, event, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{kind} {body}: {json}");
    }
}

/// `/hierarchy` shows every room's join rule, whatever string `m.room.join_rules` holds (the
/// malformed-input test found a 500 here), and a restricted room's `allowed_room_ids`.
#[tokio::test]
async fn the_hierarchy_shows_any_join_rule() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let room = alice.create_room(json!({})).await;
    let hierarchy = format!("/_matrix/client/v1/rooms/{room}/hierarchy");
    let join_rules = format!("/rooms/{room}/state/m.room.join_rules/");

    let space = alice.create_room(json!({})).await;
    alice
        .ok(
            Method::PUT,
            &join_rules,
            Some(json!({
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": space }],
            })),
        )
        .await;
    let restricted = alice.ok(Method::GET, &hierarchy, None).await;
    assert_eq!(
        restricted["rooms"][0]["join_rule"], "restricted",
        "{restricted}"
    );
    assert_eq!(
        restricted["rooms"][0]["allowed_room_ids"],
        json!([space]),
        "{restricted}"
    );

    // Any string is a valid join rule; one the spec does not define lets no one join, and
    // is shown as `private` (the spec's rule reserved with no meaning).
    for rule in ["org.example.custom", ""] {
        alice
            .ok(Method::PUT, &join_rules, Some(json!({ "join_rule": rule })))
            .await;
        let custom = alice.ok(Method::GET, &hierarchy, None).await;
        assert_eq!(custom["rooms"][0]["room_id"], room.as_str(), "{custom}");
        assert_eq!(custom["rooms"][0]["join_rule"], "private", "{custom}");
    }
}

#[tokio::test]
async fn aliases_longer_than_255_bytes_are_refused_before_anything_is_written() {
    // Appendices, "Room aliases": at most 255 bytes, sigil and domain included.
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let long = "a".repeat(70_000);
    let created = alice
        .call(
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": long })),
        )
        .await;
    assert_error(&created, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let room = alice.create_room(json!({})).await;
    let fits = "a".repeat(255 - "#:localhost".len());
    let too_long = format!("{fits}a");
    let put = |name: &str| {
        let (alice, room) = (&alice, &room);
        let path = format!("/directory/room/%23{name}:localhost");
        async move {
            alice
                .call(Method::PUT, &path, Some(json!({ "room_id": room })))
                .await
        }
    };
    assert_error(
        &put(&too_long).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_eq!(put(&fits).await.0, StatusCode::OK);
}
