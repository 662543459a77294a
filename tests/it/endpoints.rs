//! Endpoints clients call that earlier versions did not serve: a room's local aliases,
//! `timestamp_to_event`, the third-party identifier endpoints, OpenID tokens,
//! `/notifications` and the third-party protocol list. Raw HTTP, so every status and
//! errcode is checked as a client sees it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// A request below `/_matrix/client/{version}`.
    async fn call_at(
        &self,
        version: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.server
            .request(
                method,
                &format!("/_matrix/client/{version}{path}"),
                Some(&self.token),
                body,
            )
            .await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_at("v3", method, path, body).await
    }

    async fn create_room(&self, body: Value) -> String {
        let (status, json) = self.call(Method::POST, "/createRoom", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json["room_id"].as_str().unwrap().to_owned()
    }

    async fn join(&self, room: &str) {
        let response = self
            .call(
                Method::POST,
                &format!("/rooms/{room}/join"),
                Some(json!({})),
            )
            .await;
        assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    }

    /// Sends a message; returns its event id.
    async fn send(&self, room: &str, content: Value) -> String {
        let txn = next_txn();
        let path = format!("/rooms/{room}/send/m.room.message/{txn}");
        let (status, json) = self.call(Method::PUT, &path, Some(content)).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json["event_id"].as_str().unwrap().to_owned()
    }

    async fn event(&self, room: &str, event_id: &str) -> Value {
        let (status, json) = self
            .call(
                Method::GET,
                &format!("/rooms/{room}/event/{event_id}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json
    }
}

fn next_txn() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("e{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits (bounded) until the wall clock, which the server on this machine also stamps events
/// with, is past `ts`, so the next event gets a strictly later timestamp.
async fn clock_past(ts: u64) {
    for _ in 0..1_000 {
        if now_ms() > ts {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the clock did not pass {ts}");
}

#[tokio::test]
async fn room_aliases_are_listed_for_members_and_world_readable_rooms() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice
        .create_room(json!({ "room_alias_name": "garden" }))
        .await;
    let response = alice
        .call(
            Method::PUT,
            "/directory/room/%23shed:localhost",
            Some(json!({ "room_id": room })),
        )
        .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);

    let path = format!("/rooms/{room}/aliases");
    let (status, body) = alice.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut aliases: Vec<&str> = body["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alias| alias.as_str().unwrap())
        .collect();
    aliases.sort();
    assert_eq!(aliases, ["#garden:localhost", "#shed:localhost"]);

    // Not a member: 403, and the same for a room that does not exist.
    assert_error(
        &bob.call(Method::GET, &path, None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.call(Method::GET, "/rooms/!nowhere:localhost/aliases", None)
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &bob.call(Method::GET, "/rooms/not-a-room-id/aliases", None)
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // A room without aliases answers an empty list.
    let plain = alice.create_room(json!({})).await;
    let (status, body) = alice
        .call(Method::GET, &format!("/rooms/{plain}/aliases"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "aliases": [] }));

    // World-readable history: anyone may list them.
    let response = alice
        .call(
            Method::PUT,
            &format!("/rooms/{room}/state/m.room.history_visibility/"),
            Some(json!({ "history_visibility": "world_readable" })),
        )
        .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    let (status, body) = bob.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["aliases"].as_array().unwrap().len(), 2);

    // Without a token: 401.
    let response = server
        .request(
            Method::GET,
            &format!("/_matrix/client/v3{path}"),
            None,
            None,
        )
        .await;
    assert_error(&response, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn timestamp_to_event_finds_the_closest_event_each_way() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice.create_room(json!({})).await;

    // Three messages with strictly increasing timestamps.
    let mut events = Vec::new();
    let mut last_ts = now_ms();
    for text in ["first", "second", "third"] {
        clock_past(last_ts).await;
        let id = alice
            .send(&room, json!({ "msgtype": "m.text", "body": text }))
            .await;
        last_ts = alice.event(&room, &id).await["origin_server_ts"]
            .as_u64()
            .unwrap();
        events.push((id, last_ts));
    }
    let [(first, first_ts), (second, second_ts), (third, third_ts)] = &events[..] else {
        unreachable!()
    };
    let caller = &alice;
    let lookup = |ts: u64, dir: &str| {
        let path = format!("/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}");
        async move { caller.call_at("v1", Method::GET, &path, None).await }
    };
    let found = |response: (StatusCode, Value)| {
        assert_eq!(response.0, StatusCode::OK, "{}", response.1);
        (
            response.1["event_id"].as_str().unwrap().to_owned(),
            response.1["origin_server_ts"].as_u64().unwrap(),
        )
    };

    assert_eq!(
        found(lookup(*second_ts, "f").await),
        (second.clone(), *second_ts)
    );
    assert_eq!(
        found(lookup(*second_ts, "b").await),
        (second.clone(), *second_ts)
    );
    assert_eq!(found(lookup(first_ts + 1, "f").await).0, *second);
    assert_eq!(found(lookup(second_ts - 1, "b").await).0, *first);
    assert_eq!(found(lookup(third_ts + 1, "b").await).0, *third);

    // Nothing after the last event, nothing before the room began.
    assert_error(
        &lookup(third_ts + 1, "f").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(&lookup(1, "b").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // From the very start, forwards: the room's first event (its create event).
    let (create, _) = found(lookup(1, "f").await);
    assert_eq!(alice.event(&room, &create).await["type"], "m.room.create");

    // Bad parameters: 400.
    let bad = |query: &str| {
        let path = format!("/rooms/{room}/timestamp_to_event?{query}");
        async move { caller.call_at("v1", Method::GET, &path, None).await }
    };
    for query in [
        format!("ts={second_ts}&dir=sideways"),
        format!("ts={second_ts}"),
        "dir=f".to_owned(),
        "ts=yesterday&dir=f".to_owned(),
    ] {
        let response = bad(&query).await;
        assert_eq!(
            response.0,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            response.1
        );
    }

    // Someone who was never in the room: 403; an unknown room too (as Synapse: nothing tells
    // an outsider whether a room exists).
    let path = format!("/rooms/{room}/timestamp_to_event?ts={second_ts}&dir=f");
    assert_error(
        &bob.call_at("v1", Method::GET, &path, None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &alice
            .call_at(
                "v1",
                Method::GET,
                "/rooms/!nowhere:localhost/timestamp_to_event?ts=1&dir=f",
                None,
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // Bob joins a room whose history is only for joined members: Alice's message before his
    // join is not his to find.
    let private = alice
        .create_room(json!({
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": { "history_visibility": "joined" }
            }]
        }))
        .await;
    clock_past(now_ms()).await;
    let secret = alice
        .send(
            &private,
            json!({ "msgtype": "m.text", "body": "before bob" }),
        )
        .await;
    let secret_ts = alice.event(&private, &secret).await["origin_server_ts"]
        .as_u64()
        .unwrap();
    let response = alice
        .call(
            Method::POST,
            &format!("/rooms/{private}/invite"),
            Some(json!({ "user_id": bob.id })),
        )
        .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    bob.join(&private).await;
    // Forwards, the first event he may see is his own join; backwards, one from before the
    // room's history became members-only (the spec's default, `shared`, applied until then).
    let path = format!("/rooms/{private}/timestamp_to_event?ts={secret_ts}&dir=f");
    let (event_id, _) = found(bob.call_at("v1", Method::GET, &path, None).await);
    let join = alice.event(&private, &event_id).await;
    assert_eq!(join["type"], "m.room.member", "{join}");
    assert_eq!(join["state_key"], bob.id.as_str());
    assert_eq!(join["content"]["membership"], "join");
    let path = format!("/rooms/{private}/timestamp_to_event?ts={secret_ts}&dir=b");
    let (event_id, event_ts) = found(bob.call_at("v1", Method::GET, &path, None).await);
    assert_ne!(event_id, secret);
    assert!(event_ts < secret_ts);
}

#[tokio::test]
async fn third_party_identifiers_are_an_empty_list_and_changes_are_refused() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;

    let (status, body) = alice.call(Method::GET, "/account/3pid", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "threepids": [] }));
    assert_error(
        &server
            .request(Method::GET, "/_matrix/client/v3/account/3pid", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );

    let add = json!({ "client_secret": "d0nt-T3ll", "sid": "abc123" });
    assert_error(
        &alice
            .call(Method::POST, "/account/3pid/add", Some(add))
            .await,
        StatusCode::BAD_REQUEST,
        "M_FORBIDDEN",
    );
    let bind = json!({
        "client_secret": "d0nt-T3ll", "sid": "abc123",
        "id_server": "id.example.org", "id_access_token": "opaque",
    });
    assert_error(
        &alice
            .call(Method::POST, "/account/3pid/bind", Some(bind))
            .await,
        StatusCode::BAD_REQUEST,
        "M_SERVER_NOT_TRUSTED",
    );
    let address = json!({ "medium": "email", "address": "alice@example.org" });
    assert_error(
        &alice
            .call(Method::POST, "/account/3pid/delete", Some(address.clone()))
            .await,
        StatusCode::BAD_REQUEST,
        "M_FORBIDDEN",
    );
    let (status, body) = alice
        .call(Method::POST, "/account/3pid/unbind", Some(address))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "id_server_unbind_result": "no-support" }));

    // No validation token is ever sent, by email or SMS, for any purpose.
    let email =
        json!({ "client_secret": "d0nt-T3ll", "email": "alice@example.org", "send_attempt": 1 });
    let msisdn = json!({
        "client_secret": "d0nt-T3ll", "country": "GB", "phone_number": "07700900001",
        "send_attempt": 1,
    });
    for (path, body) in [
        ("/account/3pid/email/requestToken", &email),
        ("/account/3pid/msisdn/requestToken", &msisdn),
        ("/account/password/email/requestToken", &email),
        ("/account/password/msisdn/requestToken", &msisdn),
        ("/register/email/requestToken", &email),
        ("/register/msisdn/requestToken", &msisdn),
    ] {
        let response = server
            .request(
                Method::POST,
                &format!("/_matrix/client/v3{path}"),
                None,
                Some(body.clone()),
            )
            .await;
        assert_error(
            &response,
            StatusCode::BAD_REQUEST,
            "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        );
    }
    // A body missing a required field is still a bad request first.
    let response = alice
        .call(Method::POST, "/account/3pid/add", Some(json!({})))
        .await;
    assert_eq!(response.0, StatusCode::BAD_REQUEST, "{}", response.1);
}

#[tokio::test]
async fn openid_tokens_are_issued_to_the_caller_only() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let path = format!("/user/{}/openid/request_token", alice.id);

    let (status, first) = alice.call(Method::POST, &path, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["matrix_server_name"], "localhost");
    assert_eq!(first["expires_in"], 3600);
    let token = first["access_token"].as_str().unwrap();
    assert!(token.len() >= 32, "an unguessable token: {token}");
    let (_, second) = alice.call(Method::POST, &path, Some(json!({}))).await;
    assert_ne!(second["access_token"], first["access_token"]);

    // An OpenID token is not an access token.
    assert_error(
        &server.whoami(token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Not for anyone else, nor without a token.
    let bob = User::new(&server, "bob").await;
    assert_error(
        &bob.call(Method::POST, &path, Some(json!({}))).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .request(
                Method::POST,
                &format!("/_matrix/client/v3{path}"),
                None,
                Some(json!({})),
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert_error(
        &alice
            .call(
                Method::POST,
                "/user/alice/openid/request_token",
                Some(json!({})),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn notifications_list_what_push_rules_notified_with_read_state() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let bob = User::new(&server, "bob").await;
    let room = alice
        .create_room(json!({ "preset": "private_chat", "invite": [bob.id] }))
        .await;
    bob.join(&room).await;

    // In a one-to-one room every message notifies; a mention also highlights.
    let plain = |text: &str| json!({ "msgtype": "m.text", "body": text });
    let m1 = bob.send(&room, plain("one")).await;
    let m2 = bob
        .send(
            &room,
            json!({
                "msgtype": "m.text", "body": "two, alice",
                "m.mentions": { "user_ids": [alice.id] },
            }),
        )
        .await;
    let m3 = bob.send(&room, plain("three")).await;

    let caller = &alice;
    let list = |query: &'static str| async move {
        let (status, body) = caller
            .call(Method::GET, &format!("/notifications{query}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    };
    let ids = |body: &Value| -> Vec<String> {
        body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["event"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = list("").await;
    assert_eq!(
        ids(&all),
        [m3.clone(), m2.clone(), m1.clone()],
        "newest first"
    );
    assert!(all.get("next_token").is_none(), "nothing more: {all}");
    for notification in all["notifications"].as_array().unwrap() {
        assert_eq!(notification["room_id"], room.as_str());
        assert_eq!(notification["read"], false);
        assert!(notification["ts"].as_u64().unwrap() > 0);
        assert!(
            notification["actions"]
                .as_array()
                .unwrap()
                .contains(&json!("notify"))
        );
        assert_eq!(notification["event"]["sender"], bob.id.as_str());
        assert!(notification["event"].get("room_id").is_none(), "sync form");
    }
    let highlighted = |n: &Value| {
        n["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["set_tweak"] == "highlight" && a.get("value") != Some(&json!(false)))
    };
    assert!(highlighted(&all["notifications"][1]));
    assert!(!highlighted(&all["notifications"][0]));

    let only = list("?only=highlight").await;
    assert_eq!(ids(&only), [m2.as_str()]);

    // Pages of two.
    let page = list("?limit=2").await;
    assert_eq!(ids(&page), [m3.clone(), m2.clone()]);
    let token = page["next_token"].as_str().expect("a next page").to_owned();
    let (status, rest) = alice
        .call(
            Method::GET,
            &format!("/notifications?limit=2&from={token}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(ids(&rest), [m1.as_str()]);
    assert!(rest.get("next_token").is_none(), "{rest}");

    // A read receipt on the second message marks it and the first as read.
    let response = alice
        .call(
            Method::POST,
            &format!("/rooms/{room}/receipt/m.read/{m2}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    let after = list("").await;
    let read: Vec<bool> = after["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["read"].as_bool().unwrap())
        .collect();
    assert_eq!(read, [false, true, true]);

    // The sender is not notified of their own messages.
    let (status, body) = bob.call(Method::GET, "/notifications", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["notifications"], json!([]));

    // Bad parameters.
    assert_error(
        &alice
            .call(Method::GET, "/notifications?from=not-a-token", None)
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let response = alice
        .call(Method::GET, "/notifications?limit=many", None)
        .await;
    assert_eq!(response.0, StatusCode::BAD_REQUEST, "{}", response.1);
    assert_error(
        &server
            .request(Method::GET, "/_matrix/client/v3/notifications", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn third_party_protocols_are_an_empty_list() {
    let server = TestServer::start();
    let alice = User::new(&server, "alice").await;
    let (status, body) = alice.call(Method::GET, "/thirdparty/protocols", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({}));
    assert_error(
        &alice
            .call(Method::GET, "/thirdparty/protocol/irc", None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}
