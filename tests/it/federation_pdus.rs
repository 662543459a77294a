//! Bad room events from another server, over HTTP (issue 11, "Rejection"): the test plays
//! a server, `localhost:PORT` with its own signing key (planted in our key store while
//! our server is stopped, as if fetched before; nothing listens there), whose user joins a
//! room here through `make_join` / `send_join` and then sends PDUs in signed `/send`
//! transactions: a valid message, one whose content was altered after signing (stored
//! redacted), a power grab that fails the auth rules (rejected, never shown), one with a
//! signature by a key the server does not have (dropped), and a transaction with more
//! than 50 PDUs (refused whole). The room and the server carry on.

use reqwest::{Method, StatusCode};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersionId,
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash, sign_json},
};
use serde_json::{Value, json};

use crate::harness::{TestServer, free_port};

/// The server the test plays.
pub(crate) struct Fake {
    pub(crate) name: String,
    pub(crate) key: Ed25519KeyPair,
}

impl Fake {
    pub(crate) fn new() -> Self {
        Self {
            name: format!("localhost:{}", free_port()),
            key: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "fake".into()).unwrap(),
        }
    }

    pub(crate) fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Puts this server's key into `server`'s key store (the server must be stopped).
    pub(crate) fn plant_key(&self, server: &TestServer) {
        let far = 4_102_444_800_000u64; // 2100
        let public = Base64::<Standard, _>::new(self.key.public_key().to_vec()).encode();
        let mut response: CanonicalJsonObject = serde_json::from_value(json!({
            "server_name": self.name,
            "verify_keys": { "ed25519:fake": { "key": public } },
            "old_verify_keys": {},
            "valid_until_ts": far,
        }))
        .unwrap();
        sign_json(&self.name, &self.key, &mut response).unwrap();
        let stored = json!({
            "keys": { "ed25519:fake": { "key": public, "valid_until": far } },
            "response": response,
            "valid_until_ts": far,
        });
        let db = conduit::storage::Db::open(
            server.data_dir(),
            None,
            8 << 20,
            conduit::service::migrations::STEPS,
        )
        .unwrap();
        db.tree("servername_serverkeys")
            .unwrap()
            .insert(self.name.as_bytes(), &serde_json::to_vec(&stored).unwrap())
            .unwrap();
        db.flush_blocking().unwrap();
    }

    /// A signed federation request to `server`.
    pub(crate) async fn request(
        &self,
        server: &TestServer,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut signed: CanonicalJsonObject = serde_json::from_value(json!({
            "method": method.as_str(),
            "uri": path,
            "origin": self.name,
            "destination": server.server_name,
        }))
        .unwrap();
        if let Some(body) = &body {
            signed.insert(
                "content".into(),
                serde_json::from_value(body.clone()).unwrap(),
            );
        }
        sign_json(&self.name, &self.key, &mut signed).unwrap();
        let signature = signed["signatures"].as_object().unwrap()[&self.name]
            .as_object()
            .unwrap()["ed25519:fake"]
            .as_str()
            .unwrap()
            .to_owned();
        let header = format!(
            r#"X-Matrix origin="{}",destination="{}",key="ed25519:fake",sig="{signature}""#,
            self.name, server.server_name
        );
        let mut request = server
            .http()
            .request(method, format!("{}{path}", server.url))
            .header("Authorization", header);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Hashes and signs `event` as this server (with `key`, normally its own) and returns
    /// it with its event id.
    pub(crate) fn sign(
        &self,
        mut event: CanonicalJsonObject,
        key: &Ed25519KeyPair,
    ) -> (CanonicalJsonObject, String) {
        let rules = RoomVersionId::V10.rules().unwrap();
        hash_and_sign_event(&self.name, key, &mut event, &rules.redaction).unwrap();
        let id = format!("${}", reference_hash(&event, &rules).unwrap());
        (event, id)
    }
}

fn object(value: Value) -> CanonicalJsonObject {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn bad_events_from_another_server_are_refused_without_harm() {
    let fake = Fake::new();
    let mut ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let (status, created) = ours
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat", "room_version": "10" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    ours.stop();
    fake.plant_key(&ours);
    ours.restart();

    // Mallory, of the fake server, joins.
    let mallory = fake.user("mallory");
    let (status, template) = fake
        .request(
            &ours,
            Method::GET,
            &format!("/_matrix/federation/v1/make_join/{room_id}/{mallory}?ver=10"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{template}\n{}", ours.log());
    let mut join = object(template["event"].clone());
    join.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(1_800_000_000_000i64.try_into().unwrap()),
    );
    let (join, join_id) = fake.sign(join, &fake.key);
    let (status, answer) = fake
        .request(
            &ours,
            Method::PUT,
            &format!("/_matrix/federation/v2/send_join/{room_id}/{join_id}"),
            Some(serde_json::to_value(&join).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}\n{}", ours.log());

    // The auth events a message of Mallory's cites: create, power levels, his join.
    let id_of = |kind: &str| {
        answer["state"]
            .as_array()
            .unwrap()
            .iter()
            .find(|event| event["type"] == kind)
            .map(|event| {
                let event = object(event.clone());
                format!(
                    "${}",
                    reference_hash(&event, &RoomVersionId::V10.rules().unwrap()).unwrap()
                )
            })
            .unwrap()
    };
    let (create, power) = (id_of("m.room.create"), id_of("m.room.power_levels"));
    let event = |kind: &str, state_key: Option<&str>, content: Value, depth: u64| {
        let mut event = json!({
            "type": kind, "room_id": room_id, "sender": mallory, "content": content,
            "prev_events": [join_id], "auth_events": [create, power, join_id],
            "depth": depth, "origin_server_ts": 1_800_000_000_100u64 + depth,
        });
        if let Some(state_key) = state_key {
            event["state_key"] = state_key.into();
        }
        object(event)
    };
    let depth = match &join["depth"] {
        CanonicalJsonValue::Integer(depth) => u64::try_from(i64::from(*depth)).unwrap() + 1,
        other => panic!("depth: {other:?}"),
    };
    let (good, good_id) = fake.sign(
        event(
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "hello" }),
            depth,
        ),
        &fake.key,
    );
    let (mut tampered, tampered_id) = fake.sign(
        event(
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "original" }),
            depth,
        ),
        &fake.key,
    );
    if let Some(CanonicalJsonValue::Object(content)) = tampered.get_mut("content") {
        content.insert(
            "body".into(),
            CanonicalJsonValue::String("altered on the way".into()),
        );
    }
    let (grab, grab_id) = fake.sign(
        event(
            "m.room.power_levels",
            Some(""),
            json!({ "users": { mallory.as_str(): 100 } }),
            depth,
        ),
        &fake.key,
    );
    let impostor = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "fake".into()).unwrap();
    let (forged, forged_id) = fake.sign(
        event(
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "forged" }),
            depth,
        ),
        &impostor,
    );
    let (status, results) = fake
        .request(
            &ours,
            Method::PUT,
            "/_matrix/federation/v1/send/t1",
            Some(json!({
                "origin": fake.name,
                "origin_server_ts": 1_800_000_001_000u64,
                "pdus": [good, tampered, grab, forged],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{results}\n{}", ours.log());
    let pdus = &results["pdus"];
    assert_eq!(pdus[&good_id], json!({}), "{results}");
    assert_eq!(pdus[&tampered_id], json!({}), "{results}");
    assert!(
        pdus[&grab_id]["error"]
            .as_str()
            .unwrap()
            .starts_with("rejected"),
        "{results}"
    );
    assert!(pdus[&forged_id]["error"].is_string(), "{results}");

    // Alice sees the good message and the altered one redacted; nothing else.
    let (status, page) = ours
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/messages?dir=b&limit=20"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let chunk = page["chunk"].as_array().unwrap();
    let find = |id: &str| chunk.iter().find(|event| event["event_id"] == id);
    assert_eq!(find(&good_id).unwrap()["content"]["body"], "hello");
    assert_eq!(
        find(&tampered_id).unwrap()["content"],
        json!({}),
        "stored redacted"
    );
    assert!(find(&grab_id).is_none());
    assert!(find(&forged_id).is_none());
    for id in [&grab_id, &forged_id] {
        let (status, _) = ours
            .client_api(
                &alice,
                Method::GET,
                &format!("/rooms/{room_id}/event/{id}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
    }
    let (status, levels) = ours
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/state/m.room.power_levels"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(levels["users"].get(&mallory).is_none(), "{levels}");

    // More than 50 PDUs: refused whole.
    let many: Vec<Value> = (0..51)
        .map(|_| serde_json::to_value(&good).unwrap())
        .collect();
    let (status, body) = fake
        .request(
            &ours,
            Method::PUT,
            "/_matrix/federation/v1/send/t2",
            Some(json!({ "origin": fake.name, "origin_server_ts": 1_800_000_002_000u64, "pdus": many })),
        )
        .await;
    assert_eq!(body["errcode"], "M_TOO_LARGE", "{status} {body}");

    // The room carries on.
    let (status, sent) = ours
        .client_api(
            &alice,
            Method::PUT,
            &format!("/rooms/{room_id}/send/m.room.message/a1"),
            Some(json!({ "msgtype": "m.text", "body": "still here" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
}
