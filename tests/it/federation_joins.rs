//! Joins and knocks across servers (issue 12 items 1 and 2): two instances of this server
//! over TLS on 127.0.0.1. A user of B knocks on A's knock-rule room by alias
//! (`make_knock` / `send_knock`) and sees it under `rooms.knock` while A's user sees the
//! knock, then takes it back (`make_leave` / `send_leave`); a user of B joins A's
//! restricted room after joining the space it allows (`join_authorised_via_users_server`,
//! signed by A); joins by room id with `server_name`; a join A accepted through
//! `send_join` sent on by A to the room's third server;
//! and the error paths: an unknown room, an unreachable server, and, from a server the test
//! plays, an old room version, a garbage answer and a `send_join` answer with a forged
//! state event (left out of the room). With Synapse: knocks both ways and a restricted
//! join of one of our users.

use std::{path::Path, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    routing::{get, put},
};
use reqwest::{Method, StatusCode};
use ruma::{
    CanonicalJsonObject, RoomVersionId,
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash, sign_json},
};
use serde_json::{Value, json};

use crate::{
    federation_rooms::sync_until,
    harness::{TestServer, assert_error, free_port, self_signed_certificate},
    synapse::Synapse,
};

async fn create_room(server: &TestServer, token: &str, body: Value) -> String {
    let (status, created) = server
        .client_api(token, Method::POST, "/createRoom", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["room_id"].as_str().unwrap().to_owned()
}

fn join_rule(rule: Value) -> Value {
    json!([{ "type": "m.room.join_rules", "state_key": "", "content": rule }])
}

#[tokio::test]
async fn a_knock_by_alias_shows_on_both_servers() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let bob_id = b.user_id("bob");
    let room_id = create_room(
        &a,
        &alice,
        json!({
            "room_alias_name": "doorstep",
            "name": "Knock first",
            "initial_state": join_rule(json!({ "join_rule": "knock" })),
        }),
    )
    .await;

    // Bob knocks by alias: B asks A's directory, then make_knock / send_knock.
    let alias = format!("%23doorstep:{}", a.server_name);
    let (status, knocked) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/knock/{alias}"),
            Some(json!({ "reason": "let me in" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{knocked}");
    assert_eq!(knocked["room_id"], room_id.as_str());

    // A: alice sees bob's knock in the room.
    let knock = sync_until(&a, &alice, None, "bob's knock", |sync| {
        sync["rooms"]["join"][room_id.as_str()]["timeline"]["events"]
            .as_array()?
            .iter()
            .find(|event| event["type"] == "m.room.member" && event["state_key"] == bob_id)
            .cloned()
    })
    .await;
    assert_eq!(knock["content"]["membership"], "knock", "{knock}");
    assert_eq!(knock["content"]["reason"], "let me in", "{knock}");

    // B: bob sees the room under rooms.knock with the stripped state A gave, and his knock.
    let state = sync_until(&b, &bob, None, "the knocked room", |sync| {
        sync["rooms"]["knock"][room_id.as_str()]["knock_state"]["events"]
            .as_array()
            .cloned()
    })
    .await;
    let has = |kind: &str, check: &dyn Fn(&Value) -> bool| {
        state
            .iter()
            .any(|event| event["type"] == kind && check(event))
    };
    assert!(has("m.room.create", &|_| true), "{state:?}");
    assert!(
        has("m.room.name", &|event| event["content"]["name"]
            == "Knock first"),
        "{state:?}"
    );
    assert!(
        has("m.room.member", &|event| event["state_key"] == bob_id
            && event["content"]["membership"] == "knock"),
        "{state:?}"
    );
    // Stripped: no event ids or signatures reach the client.
    assert!(state.iter().all(|event| event.get("signatures").is_none()));
    // An incremental sync does not repeat it.
    let (_, first) = b
        .client_api(&bob, Method::GET, "/sync?timeout=0", None)
        .await;
    let since = first["next_batch"].as_str().unwrap();
    let (_, next) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/sync?timeout=0&since={since}"),
            None,
        )
        .await;
    assert!(next["rooms"]["knock"].get(&room_id).is_none(), "{next}");

    // Sliding sync lists it with the same stripped state.
    let (status, sliding) = b
        .request(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(&bob),
            Some(json!({ "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sliding}");
    let room = &sliding["rooms"][room_id.as_str()];
    assert_eq!(room["name"], "Knock first", "{sliding}");
    assert!(room["invite_state"].as_array().is_some_and(|state| {
        state
            .iter()
            .any(|event| event["state_key"] == bob_id && event["content"]["membership"] == "knock")
    }));

    // Bob takes his knock back: a leave through A (make_leave / send_leave). Alice sees
    // it; B moves the room from bob's knocks to his left rooms, and he may forget it.
    let (_, before) = b
        .client_api(&bob, Method::GET, "/sync?timeout=0", None)
        .await;
    let since = before["next_batch"].as_str().unwrap();
    let (status, left) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/rooms/{room_id}/leave"),
            Some(json!({ "reason": "never mind" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{left}");
    let leave = sync_until(&a, &alice, None, "bob's leave", |sync| {
        sync["rooms"]["join"][room_id.as_str()]["timeline"]["events"]
            .as_array()?
            .iter()
            .find(|event| {
                event["type"] == "m.room.member"
                    && event["state_key"] == bob_id
                    && event["content"]["membership"] == "leave"
            })
            .cloned()
    })
    .await;
    assert_eq!(leave["sender"], bob_id, "{leave}");
    assert_eq!(leave["content"]["reason"], "never mind", "{leave}");
    let (_, after) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/sync?timeout=0&since={since}"),
            None,
        )
        .await;
    assert!(
        after["rooms"]["leave"].get(room_id.as_str()).is_some(),
        "{after}"
    );
    assert!(
        after["rooms"]["knock"].get(room_id.as_str()).is_none(),
        "{after}"
    );
    let (_, fresh) = b
        .client_api(&bob, Method::GET, "/sync?timeout=0", None)
        .await;
    assert!(
        fresh["rooms"]["knock"].get(room_id.as_str()).is_none(),
        "{fresh}"
    );
    let (status, forgot) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/rooms/{room_id}/forget"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{forgot}");

    // A room whose rules do not allow knocking: A's 403 comes back to bob.
    let closed = create_room(&a, &alice, json!({ "preset": "private_chat" })).await;
    let refused = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/knock/{closed}?via={}", a.server_name),
            Some(json!({})),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

/// The resident server sends on a join it accepted through `send_join` (S2S "Joining
/// Rooms": it "then sends the event to the other servers in the room"): carol of C joins
/// A's room, in which bob of B already is; bob sees her join with nothing sent after it.
#[tokio::test]
async fn a_join_through_the_resident_reaches_the_rooms_other_servers() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let c = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let carol = c.register("carol", "tr0ub4dor").await;
    let carol_id = c.user_id("carol");
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "square" }),
    )
    .await;
    let alias = format!("%23square:{}", a.server_name);
    for (server, token) in [(&b, &bob), (&c, &carol)] {
        let (status, joined) = server
            .client_api(
                token,
                Method::POST,
                &format!("/join/{alias}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{joined}");
    }
    let join = sync_until(&b, &bob, None, "carol's join, sent on by A", |sync| {
        sync["rooms"]["join"][room_id.as_str()]["timeline"]["events"]
            .as_array()?
            .iter()
            .find(|event| event["type"] == "m.room.member" && event["state_key"] == carol_id)
            .cloned()
    })
    .await;
    assert_eq!(join["content"]["membership"], "join", "{join}");
    assert_eq!(join["sender"], carol_id, "{join}");
}

#[tokio::test]
async fn a_restricted_room_is_joined_through_its_space() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let bob_id = b.user_id("bob");
    let space = create_room(
        &a,
        &alice,
        json!({
            "preset": "public_chat",
            "room_alias_name": "guild",
            "creation_content": { "type": "m.space" },
        }),
    )
    .await;
    let restricted = create_room(
        &a,
        &alice,
        json!({
            "preset": "private_chat",
            "name": "Guild members",
            "initial_state": join_rule(json!({
                "join_rule": "restricted",
                "allow": [{ "type": "m.room_membership", "room_id": space }],
            })),
        }),
    )
    .await;
    let join_restricted = |server_name: String| {
        let (b, bob, restricted) = (&b, &bob, &restricted);
        async move {
            b.client_api(
                bob,
                Method::POST,
                &format!("/join/{restricted}?server_name={server_name}"),
                Some(json!({})),
            )
            .await
        }
    };

    // Not in the space yet: A refuses.
    let refused = join_restricted(a.server_name.clone()).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // In the space (by alias), then the restricted room by id with `server_name`.
    let (status, joined) = b
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23guild:{}", a.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, joined) = join_restricted(a.server_name.clone()).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], restricted.as_str());

    // Both servers hold the join, authorised by alice and signed by A.
    for (server, token) in [(&a, &alice), (&b, &bob)] {
        let (status, member) = server
            .client_api(
                token,
                Method::GET,
                &format!("/rooms/{restricted}/state/m.room.member/{bob_id}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{member}");
        assert_eq!(member["membership"], "join");
        assert_eq!(
            member["join_authorised_via_users_server"],
            a.user_id("alice"),
            "{member}"
        );
    }
    let (status, name) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{restricted}/state/m.room.name"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name["name"], "Guild members");
}

#[tokio::test]
async fn joins_that_cannot_work_fail_cleanly() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    let join = |target: String| {
        let (b, bob) = (&b, &bob);
        async move {
            b.client_api(
                bob,
                Method::POST,
                &format!("/join/{target}"),
                Some(json!({})),
            )
            .await
        }
    };

    // A room A does not have; an alias A does not know.
    let unknown = format!("!nowhere:{}", a.server_name);
    assert_error(
        &join(format!("{unknown}?server_name={}", a.server_name)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &join(format!("%23nothing:{}", a.server_name)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // A server nobody listens on: 502, at once.
    let nobody = format!("localhost:{}", free_port());
    let started = std::time::Instant::now();
    let response = join(format!("{room_id}?server_name={nobody}")).await;
    assert_eq!(response.0, StatusCode::BAD_GATEWAY, "{}", response.1);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // The same room through A works.
    let (status, joined) = join(format!("{room_id}?via={}", a.server_name)).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
}

/// A resident server the test plays (`localhost:PORT`, over TLS, its own key): it answers
/// `make_join` as `mode` says and `send_join` with a room whose state holds a forged event.
struct Fake {
    name: String,
    key: Ed25519KeyPair,
    /// Signs what the forged event carries: the same key id, another key.
    forger: Ed25519KeyPair,
    room_id: String,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A room of version 2 (which we never offer in `ver`).
    OldVersion,
    /// A 200 whose body is not JSON.
    Garbage,
    /// A good template, and a `send_join` answer with a forged `m.room.topic`.
    Forged,
}

fn generate_key() -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "fake".into()).unwrap()
}

impl Fake {
    fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Hashes and signs a v10 event with `key`; returns it with its id.
    fn sign(&self, event: Value, key: &Ed25519KeyPair) -> (Value, String) {
        let rules = RoomVersionId::V10.rules().unwrap();
        let mut event: CanonicalJsonObject = serde_json::from_value(event).unwrap();
        hash_and_sign_event(&self.name, key, &mut event, &rules.redaction).unwrap();
        let id = format!("${}", reference_hash(&event, &rules).unwrap());
        (serde_json::to_value(&event).unwrap(), id)
    }

    fn event(
        &self,
        kind: &str,
        state_key: &str,
        content: Value,
        auth: &[&str],
        prev: &[&str],
        depth: u64,
    ) -> Value {
        json!({
            "type": kind,
            "state_key": state_key,
            "sender": self.user("carol"),
            "room_id": self.room_id,
            "content": content,
            "auth_events": auth,
            "prev_events": prev,
            "depth": depth,
            "origin_server_ts": 1_700_000_000_000u64 + depth,
        })
    }

    /// The room: create, carol's join, power levels, a public join rule and a name, all
    /// properly signed; a topic signed by another key; and the join template for `user`.
    fn room(&self, user: &str) -> (Vec<Value>, Value) {
        let carol = self.user("carol");
        let (create, create_id) = self.sign(
            self.event(
                "m.room.create",
                "",
                json!({ "creator": carol, "room_version": "10" }),
                &[],
                &[],
                1,
            ),
            &self.key,
        );
        let (member, member_id) = self.sign(
            self.event(
                "m.room.member",
                &carol,
                json!({ "membership": "join" }),
                &[&create_id],
                &[&create_id],
                2,
            ),
            &self.key,
        );
        let (power, power_id) = self.sign(
            self.event(
                "m.room.power_levels",
                "",
                json!({ "users": { carol.clone(): 100 } }),
                &[&create_id, &member_id],
                &[&member_id],
                3,
            ),
            &self.key,
        );
        let base = [create_id.as_str(), member_id.as_str(), power_id.as_str()];
        let (rules, rules_id) = self.sign(
            self.event(
                "m.room.join_rules",
                "",
                json!({ "join_rule": "public" }),
                &base,
                &[&power_id],
                4,
            ),
            &self.key,
        );
        let (name, name_id) = self.sign(
            self.event(
                "m.room.name",
                "",
                json!({ "name": "Fake room" }),
                &base,
                &[&rules_id],
                5,
            ),
            &self.key,
        );
        let (topic, _) = self.sign(
            self.event(
                "m.room.topic",
                "",
                json!({ "topic": "forged" }),
                &base,
                &[&name_id],
                6,
            ),
            &self.forger,
        );
        let template = json!({
            "type": "m.room.member",
            "state_key": user,
            "sender": user,
            "room_id": self.room_id,
            "content": { "membership": "join" },
            "auth_events": [create_id, power_id, rules_id],
            "prev_events": [name_id],
            "depth": 6,
            "origin": self.name,
            "origin_server_ts": 1_700_000_000_100u64,
        });
        (vec![create, member, power, rules, name, topic], template)
    }

    fn key_answer(&self) -> Value {
        let public = Base64::<Standard, _>::new(self.key.public_key().to_vec()).encode();
        let mut answer: CanonicalJsonObject = serde_json::from_value(json!({
            "server_name": self.name,
            "verify_keys": { "ed25519:fake": { "key": public } },
            "old_verify_keys": {},
            "valid_until_ts": 4_102_444_800_000u64,
        }))
        .unwrap();
        sign_json(&self.name, &self.key, &mut answer).unwrap();
        serde_json::to_value(&answer).unwrap()
    }

    /// Starts serving on its port over TLS (with `dir` for the certificate).
    async fn serve(self, dir: &Path) -> Arc<Self> {
        let port: u16 = self.name.rsplit(':').next().unwrap().parse().unwrap();
        let fake = Arc::new(self);
        let app = Router::new()
            .route(
                "/_matrix/key/v2/server",
                get(|State(fake): State<Arc<Fake>>| async move { Json(fake.key_answer()) }),
            )
            .route(
                "/_matrix/federation/v1/make_join/{room}/{user}",
                get(
                    |State(fake): State<Arc<Fake>>,
                     UrlPath((_, user)): UrlPath<(String, String)>| async move {
                        let (_, template) = fake.room(&user);
                        match fake.mode {
                            Mode::OldVersion => (
                                StatusCode::OK,
                                json!({ "room_version": "2", "event": template }).to_string(),
                            ),
                            Mode::Garbage => (StatusCode::OK, "<html>hello</html>".to_owned()),
                            Mode::Forged => (
                                StatusCode::OK,
                                json!({ "room_version": "10", "event": template }).to_string(),
                            ),
                        }
                    },
                ),
            )
            .route(
                "/_matrix/federation/v2/send_join/{room}/{event}",
                put(
                    |State(fake): State<Arc<Fake>>, Json(join): Json<Value>| async move {
                        let user = join["sender"].as_str().unwrap_or_default().to_owned();
                        let (state, _) = fake.room(&user);
                        let auth_chain: Vec<Value> = state[..4].to_vec();
                        Json(json!({
                            "origin": fake.name,
                            "members_omitted": false,
                            "state": state,
                            "auth_chain": auth_chain,
                            "servers_in_room": [fake.name],
                        }))
                    },
                ),
            )
            .with_state(Arc::clone(&fake));
        let (certificate, key) = self_signed_certificate(dir);
        let acceptor = conduit::server::tls_acceptor(&certificate, &key).unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
                });
            }
        });
        fake
    }
}

async fn fake_resident(mode: Mode, dir: &Path) -> Arc<Fake> {
    let name = format!("localhost:{}", free_port());
    Fake {
        room_id: format!("!fakeroom:{name}"),
        name,
        key: generate_key(),
        forger: generate_key(),
        mode,
    }
    .serve(dir)
    .await
}

#[tokio::test]
async fn bad_answers_from_the_resident_server_are_refused_cleanly() {
    let ours = TestServer::start_federating();
    let bob = ours.register("bob", "battery staple").await;
    let bob_id = ours.user_id("bob");
    let dir = tempfile::tempdir().unwrap();
    let join = |fake: Arc<Fake>| {
        let (ours, bob) = (&ours, &bob);
        async move {
            ours.client_api(
                bob,
                Method::POST,
                &format!("/join/{}?server_name={}", fake.room_id, fake.name),
                Some(json!({})),
            )
            .await
        }
    };

    // A room of version 2: refused with a clear error, nothing joined.
    let old = fake_resident(Mode::OldVersion, dir.path()).await;
    let refused = join(Arc::clone(&old)).await;
    assert_error(
        &refused,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    // A template that is not JSON: 502.
    let garbage = fake_resident(Mode::Garbage, dir.path()).await;
    let (status, body) = join(garbage).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");

    // A send_join answer with a forged topic: the join works, the topic is not in the room.
    let forged = fake_resident(Mode::Forged, dir.path()).await;
    let (status, joined) = join(Arc::clone(&forged)).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let room = &forged.room_id;
    let (status, name) = ours
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room}/state/m.room.name"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name["name"], "Fake room");
    let (status, topic) = ours
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room}/state/m.room.topic"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{topic}");
    let (status, member) = ours
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room}/state/m.room.member/{bob_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "join");
}

/// Against Synapse (rooms v12, its default): our user knocks on a Synapse room and joins a
/// Synapse restricted room through its space (Synapse signs the join); a Synapse user
/// knocks on a room here.
#[tokio::test]
async fn knocks_and_restricted_joins_with_synapse() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let alice_id = ours.user_id("alice");
    let bob = synapse.register("bob", "battery staple").await;
    let bob_id = synapse.user_id("bob");
    let synapse_room = |body: Value| {
        let (synapse, bob) = (&synapse, &bob);
        async move {
            let (status, created) = synapse
                .client_api(bob, Method::POST, "/createRoom", Some(body))
                .await;
            assert_eq!(status, StatusCode::OK, "{created}");
            created["room_id"].as_str().unwrap().to_owned()
        }
    };

    // Alice knocks on bob's room by alias; both see the knock.
    let door = synapse_room(json!({
        "room_alias_name": "door",
        "name": "Synapse door",
        "initial_state": join_rule(json!({ "join_rule": "knock" })),
    }))
    .await;
    let (status, knocked) = ours
        .client_api(
            &alice,
            Method::POST,
            &format!("/knock/%23door:{}", synapse.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{knocked}\n{}", synapse.log());
    let state = sync_until(&ours, &alice, None, "the knocked Synapse room", |sync| {
        sync["rooms"]["knock"][door.as_str()]["knock_state"]["events"]
            .as_array()
            .cloned()
    })
    .await;
    assert!(
        state.iter().any(|event| event["type"] == "m.room.create"),
        "{state:?}"
    );
    assert!(
        state
            .iter()
            .any(|event| event["type"] == "m.room.name"
                && event["content"]["name"] == "Synapse door"),
        "{state:?}"
    );
    let knock = sync_until(&synapse, &bob, None, "alice's knock", |sync| {
        sync["rooms"]["join"][door.as_str()]["timeline"]["events"]
            .as_array()?
            .iter()
            .find(|event| event["type"] == "m.room.member" && event["state_key"] == alice_id)
            .cloned()
    })
    .await;
    assert_eq!(knock["content"]["membership"], "knock", "{knock}");

    // Alice joins bob's space, then his restricted room by id.
    let space = synapse_room(json!({
        "preset": "public_chat",
        "room_alias_name": "hall",
        "creation_content": { "type": "m.space" },
    }))
    .await;
    let restricted = synapse_room(json!({
        "preset": "private_chat",
        "name": "Hall members",
        "initial_state": join_rule(json!({
            "join_rule": "restricted",
            "allow": [{ "type": "m.room_membership", "room_id": space }],
        })),
    }))
    .await;
    let (status, joined) = ours
        .client_api(
            &alice,
            Method::POST,
            &format!("/join/%23hall:{}", synapse.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, joined) = ours
        .client_api(
            &alice,
            Method::POST,
            &format!("/join/{restricted}?via={}", synapse.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", ours.log());
    let (status, member) = synapse
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{restricted}/state/m.room.member/{alice_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "join");
    assert_eq!(member["join_authorised_via_users_server"], bob_id.as_str());

    // Bob knocks on alice's room here.
    let ours_room = create_room(
        &ours,
        &alice,
        json!({
            "room_alias_name": "porch",
            "name": "Our porch",
            "initial_state": join_rule(json!({ "join_rule": "knock" })),
        }),
    )
    .await;
    let (status, knocked) = synapse
        .client_api(
            &bob,
            Method::POST,
            &format!("/knock/%23porch:{}", ours.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{knocked}\n{}", synapse.log());
    let knock = sync_until(&ours, &alice, None, "bob's knock", |sync| {
        sync["rooms"]["join"][ours_room.as_str()]["timeline"]["events"]
            .as_array()?
            .iter()
            .find(|event| event["type"] == "m.room.member" && event["state_key"] == bob_id)
            .cloned()
    })
    .await;
    assert_eq!(knock["content"]["membership"], "knock", "{knock}");
    let state = sync_until(&synapse, &bob, None, "our knocked room", |sync| {
        sync["rooms"]["knock"][ours_room.as_str()]["knock_state"]["events"]
            .as_array()
            .cloned()
    })
    .await;
    assert!(
        state
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "Our porch"),
        "{state:?}"
    );
}
