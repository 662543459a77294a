//! End-to-end encryption keys through the real HTTP API: `keys/upload` (signature checks),
//! `keys/query`, `keys/claim` (each one-time key once, also under concurrent claims; then
//! the fallback key), `keys/changes` and the key fields of `/sync`.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use ruma::{
    CanonicalJsonObject,
    serde::Base64,
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

async fn device_of(server: &TestServer, token: &str) -> String {
    let (_, whoami) = server.whoami(token).await;
    whoami["device_id"].as_str().expect("device_id").to_owned()
}

/// Device keys for `user`/`device`, signed by a fresh ed25519 key of the device.
pub(crate) fn signed_device_keys(user: &str, device: &str) -> Value {
    let key_pair =
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), device.to_owned()).expect("key");
    let public = Base64::<ruma::serde::base64::Standard>::new(key_pair.public_key().to_vec());
    let keys = json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "Y3VydmUga2V5IG9mIHRoZSBkZXZpY2UgZm9yIHRlc3Q",
            format!("ed25519:{device}"): public.encode(),
        },
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(keys).expect("canonical");
    sign_json(user, &key_pair, &mut object).expect("sign");
    serde_json::to_value(object).expect("JSON")
}

pub(crate) fn one_time_keys(count: usize) -> Value {
    let keys: serde_json::Map<String, Value> = (0..count)
        .map(|i| {
            (
                format!("signed_curve25519:OTK{i:03}"),
                json!({ "key": format!("key{i}"), "signatures": {} }),
            )
        })
        .collect();
    Value::Object(keys)
}

#[tokio::test]
async fn upload_rejects_forged_and_misaddressed_keys_and_changes_nothing() {
    let server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let device = device_of(&server, &alice).await;

    // Signed, then altered: the signature no longer matches.
    let mut forged = signed_device_keys("@alice:localhost", &device);
    forged["keys"][format!("curve25519:{device}")] = json!("c3dhcHBlZCBjdXJ2ZSBrZXk");
    let response = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": forged, "one_time_keys": one_time_keys(2) })),
        )
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // Keys of another device, validly signed by that device.
    let other = signed_device_keys("@alice:localhost", "OTHERDEVICE");
    let response = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": other })),
        )
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // Wrong shapes.
    for body in [
        json!({ "device_keys": "not an object" }),
        json!({ "one_time_keys": { "no-algorithm": { "key": "x" } } }),
    ] {
        let response = server
            .client_api(&alice, Method::POST, "/keys/upload", Some(body))
            .await;
        assert_eq!(response.0, StatusCode::BAD_REQUEST, "{}", response.1);
    }

    // Nothing was stored: no device keys, and the one-time keys of the forged upload are
    // not counted.
    let (status, query) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { "@alice:localhost": [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}");
    assert_eq!(query["device_keys"]["@alice:localhost"], json!({}));
    let (_, counts) = server
        .client_api(&alice, Method::POST, "/keys/upload", Some(json!({})))
        .await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 0);
}

#[tokio::test]
async fn keys_are_queried_claimed_once_and_fall_back() {
    let server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let bob = server.register("bob", "pw pw pw").await;
    let carol = server.register("carol", "pw pw pw").await;
    let device = device_of(&server, &alice).await;
    let device_keys = signed_device_keys("@alice:localhost", &device);

    const KEYS: usize = 20;
    let (status, upload) = server.client_api(&alice,
        Method::POST,
        "/keys/upload",
        Some(json!({
            "device_keys": device_keys,
            "one_time_keys": one_time_keys(KEYS),
            "fallback_keys": { "signed_curve25519:FALLBACK": { "key": "fb", "fallback": true } },
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{upload}");
    assert_eq!(upload["one_time_key_counts"]["signed_curve25519"], KEYS);

    // Another user sees the keys as uploaded. The device has no display name, so
    // `unsigned` has none (never `null`: see nio.rs).
    let (_, query) = server
        .client_api(
            &bob,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { "@alice:localhost": [] } })),
        )
        .await;
    let queried = &query["device_keys"]["@alice:localhost"][&device];
    assert_eq!(queried["keys"], device_keys["keys"], "{query}");
    assert_eq!(queried["signatures"], device_keys["signatures"]);
    assert_eq!(queried["unsigned"], json!({}), "{query}");

    // Bob and carol claim concurrently, more often than there are keys: each one-time
    // key is handed out exactly once, then everyone gets the fallback key.
    let claim = |token: String| {
        let server = &server;
        let device = device.clone();
        async move {
            let body = json!({ "one_time_keys": { "@alice:localhost": { device.clone(): "signed_curve25519" } } });
            let (status, json) = server
                .client_api(&token, Method::POST, "/keys/claim", Some(body))
                .await;
            assert_eq!(status, StatusCode::OK, "{json}");
            let keys = json["one_time_keys"]["@alice:localhost"][&device]
                .as_object()
                .expect("a key for every claim")
                .clone();
            assert_eq!(keys.len(), 1);
            keys.into_iter().next().expect("one key")
        }
    };
    let claims = (0..KEYS + 6).map(|i| {
        claim(if i % 2 == 0 {
            bob.clone()
        } else {
            carol.clone()
        })
    });
    let claimed = futures_util::future::join_all(claims).await;
    let mut seen = BTreeMap::new();
    for (key_id, key) in &claimed {
        *seen.entry(key_id.clone()).or_insert(0) += 1;
        if key_id != "signed_curve25519:FALLBACK" {
            assert_eq!(key, &one_time_keys(KEYS)[key_id], "claimed key as uploaded");
        }
    }
    let one_time: BTreeSet<_> = seen.keys().filter(|id| id.contains("OTK")).collect();
    assert_eq!(one_time.len(), KEYS, "{seen:?}");
    assert!(
        seen.iter()
            .all(|(id, n)| *n == 1 || id == "signed_curve25519:FALLBACK")
    );
    assert_eq!(seen["signed_curve25519:FALLBACK"], 6);

    // Alice's sync reports no one-time keys left and the fallback key as used.
    let (_, sync) = server.client_api(&alice, Method::GET, "/sync", None).await;
    assert_eq!(
        sync["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{sync}"
    );
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));

    // A new fallback key is unused again; claiming for an unknown device yields nothing.
    server.client_api(&alice,
        Method::POST,
        "/keys/upload",
        Some(json!({ "fallback_keys": { "signed_curve25519:FB2": { "key": "fb2", "fallback": true } } })),
    )
    .await;
    let (_, sync) = server.client_api(&alice, Method::GET, "/sync", None).await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    let (status, none) = server.client_api(&bob,
        Method::POST,
        "/keys/claim",
        Some(json!({ "one_time_keys": { "@alice:localhost": { "NOSUCHDEVICE": "signed_curve25519" } } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["one_time_keys"], json!({}));
}

#[tokio::test]
async fn new_device_keys_reach_room_members_via_sync_and_key_changes() {
    let server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let bob = server.register("bob", "pw pw pw").await;
    let (_, room) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "invite": ["@bob:localhost"] })),
        )
        .await;
    let room_id = room["room_id"].as_str().expect("room_id").to_owned();
    let (status, _) = server
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/{room_id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, sync) = server.client_api(&bob, Method::GET, "/sync", None).await;
    let since = sync["next_batch"].as_str().expect("next_batch").to_owned();

    // Alice signs in on a second device and uploads its keys.
    let (_, login) = server.login("alice", "pw pw pw").await;
    let phone = login["access_token"].as_str().expect("token").to_owned();
    let phone_device = login["device_id"].as_str().expect("device").to_owned();
    let (status, _) = server
        .client_api(
            &phone,
            Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": signed_device_keys("@alice:localhost", &phone_device) })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (_, sync) = server
        .client_api(
            &bob,
            Method::GET,
            &format!("/sync?since={since}&timeout=5000"),
            None,
        )
        .await;
    let changed = &sync["device_lists"]["changed"];
    assert!(
        changed
            .as_array()
            .is_some_and(|c| c.contains(&json!("@alice:localhost"))),
        "{sync}"
    );
    let to = sync["next_batch"].as_str().expect("next_batch");
    let (status, changes) = server
        .client_api(
            &bob,
            Method::GET,
            &format!("/keys/changes?from={since}&to={to}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    assert!(
        changes["changed"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("@alice:localhost")))
    );

    // Bob now finds the phone among alice's devices.
    let (_, query) = server
        .client_api(
            &bob,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { "@alice:localhost": [phone_device.clone()] } })),
        )
        .await;
    assert_eq!(
        query["device_keys"]["@alice:localhost"][&phone_device]["device_id"],
        json!(phone_device)
    );

    // Once the phone logs out, its keys go with it.
    let (status, _) = server
        .client_api(&phone, Method::POST, "/logout", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, query) = server
        .client_api(
            &bob,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { "@alice:localhost": [] } })),
        )
        .await;
    assert!(
        query["device_keys"]["@alice:localhost"]
            .get(&phone_device)
            .is_none(),
        "{query}"
    );

    // Bad tokens are refused.
    let response = server
        .client_api(&bob, Method::GET, "/keys/changes?from=x&to=y", None)
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

/// A fresh ed25519 key pair named by its own public key (as cross-signing keys are), and
/// that public key.
fn cross_signing_pair() -> (Ed25519KeyPair, String) {
    let document = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&document, String::new()).expect("key");
    let public = Base64::<ruma::serde::base64::Standard>::new(probe.public_key().to_vec()).encode();
    (
        Ed25519KeyPair::from_der(&document, public.clone()).expect("key"),
        public,
    )
}

fn sign(value: &Value, user: &str, pair: &Ed25519KeyPair) -> Value {
    let mut object: CanonicalJsonObject = serde_json::from_value(value.clone()).expect("object");
    sign_json(user, pair, &mut object).expect("sign");
    serde_json::to_value(object).expect("JSON")
}

fn cross_signing_key(user: &str, usage: &str, public: &str) -> Value {
    json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{public}"): public } })
}

/// Master, self-signing and user-signing keys for `user`, the subkeys signed by the master.
pub(crate) struct CrossSigningKeys {
    master: (Ed25519KeyPair, String),
    self_signing: (Ed25519KeyPair, String),
    user_signing: (Ed25519KeyPair, String),
}

impl CrossSigningKeys {
    pub(crate) fn new() -> Self {
        Self {
            master: cross_signing_pair(),
            self_signing: cross_signing_pair(),
            user_signing: cross_signing_pair(),
        }
    }

    pub(crate) fn upload_body(&self, user: &str) -> Value {
        json!({
            "master_key": cross_signing_key(user, "master", &self.master.1),
            "self_signing_key": sign(
                &cross_signing_key(user, "self_signing", &self.self_signing.1), user, &self.master.0),
            "user_signing_key": sign(
                &cross_signing_key(user, "user_signing", &self.user_signing.1), user, &self.master.0),
        })
    }
}

#[tokio::test]
async fn cross_signing_keys_and_signatures_are_checked_stored_and_served() {
    let server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let bob = server.register("bob", "pw pw pw").await;
    let device = device_of(&server, &alice).await;
    let device_keys = signed_device_keys("@alice:localhost", &device);
    let (status, _) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": device_keys })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Bob's subkeys signed by a key that is not his master: refused, nothing stored.
    let bobs = CrossSigningKeys::new();
    let mut forged = bobs.upload_body("@bob:localhost");
    let (stranger, _) = cross_signing_pair();
    forged["self_signing_key"] = sign(
        &cross_signing_key("@bob:localhost", "self_signing", &bobs.self_signing.1),
        "@bob:localhost",
        &stranger,
    );
    let response = server
        .client_api(
            &bob,
            Method::POST,
            "/keys/device_signing/upload",
            Some(forged),
        )
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let query_of = |token: String, user: &'static str| {
        let server = &server;
        async move {
            let (status, query) = server
                .client_api(
                    &token,
                    Method::POST,
                    "/keys/query",
                    Some(json!({ "device_keys": { user: [] } })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{query}");
            query
        }
    };
    assert!(
        query_of(bob.clone(), "@bob:localhost").await["master_keys"]
            .get("@bob:localhost")
            .is_none()
    );

    // The first upload needs no UIA.
    let alices = CrossSigningKeys::new();
    let body = alices.upload_body("@alice:localhost");
    let (status, json) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/device_signing/upload",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    // Repeating it needs none either; replacing the master key does.
    let (status, _) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/device_signing/upload",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Subkeys alone, even the stored ones, do not skip UIA: the spec's exception needs
    // the request's master key to match the stored one.
    let subkeys_only = json!({ "self_signing_key": body["self_signing_key"] });
    let (status, _) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/device_signing/upload",
            Some(subkeys_only),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let replacement = CrossSigningKeys::new().upload_body("@alice:localhost");
    let (status, uia) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/device_signing/upload",
            Some(replacement),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{uia}");
    assert!(uia["flows"].is_array(), "{uia}");

    // Bob sees alice's master and self-signing keys, not her user-signing key; she does.
    let seen_by_bob = query_of(bob.clone(), "@alice:localhost").await;
    assert_eq!(
        seen_by_bob["master_keys"]["@alice:localhost"]["keys"],
        body["master_key"]["keys"]
    );
    assert_eq!(
        seen_by_bob["self_signing_keys"]["@alice:localhost"],
        body["self_signing_key"]
    );
    assert!(
        seen_by_bob["user_signing_keys"]
            .get("@alice:localhost")
            .is_none()
    );
    let seen_by_alice = query_of(alice.clone(), "@alice:localhost").await;
    assert_eq!(
        seen_by_alice["user_signing_keys"]["@alice:localhost"],
        body["user_signing_key"]
    );

    // Alice signs her device with her self-signing key; a forged signature is refused.
    let ssk_id = format!("ed25519:{}", alices.self_signing.1);
    let mut unsigned_device = device_keys.clone();
    unsigned_device
        .as_object_mut()
        .expect("object")
        .remove("signatures");
    let signed_device = sign(&unsigned_device, "@alice:localhost", &alices.self_signing.0);
    let mut forged_device = unsigned_device.clone();
    let forged_signature =
        sign(&unsigned_device, "@alice:localhost", &stranger)["signatures"]["@alice:localhost"]
            .as_object()
            .expect("signature")
            .values()
            .next()
            .expect("one")
            .clone();
    forged_device["signatures"] =
        json!({ "@alice:localhost": { ssk_id.clone(): forged_signature } });
    for (signed, accepted) in [(forged_device, false), (signed_device.clone(), true)] {
        let (status, result) = server
            .client_api(
                &alice,
                Method::POST,
                "/keys/signatures/upload",
                Some(json!({ "@alice:localhost": { device.clone(): signed } })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{result}");
        let failure = &result["failures"]["@alice:localhost"][&device];
        if accepted {
            assert!(failure.is_null(), "{result}");
        } else {
            assert_eq!(failure["errcode"], "M_INVALID_SIGNATURE", "{result}");
        }
    }
    let seen_by_bob = query_of(bob.clone(), "@alice:localhost").await;
    let device_signatures =
        &seen_by_bob["device_keys"]["@alice:localhost"][&device]["signatures"]["@alice:localhost"];
    assert_eq!(
        device_signatures[&ssk_id], signed_device["signatures"]["@alice:localhost"][&ssk_id],
        "{seen_by_bob}"
    );
    // The device's own signature is still there.
    assert_eq!(
        device_signatures[format!("ed25519:{device}")],
        device_keys["signatures"]["@alice:localhost"][format!("ed25519:{device}")]
    );

    // Bob verifies alice: his user-signing key signs her master key. Bob sees it; alice's
    // view of her own key does not include it.
    let (status, _) = server
        .client_api(
            &bob,
            Method::POST,
            "/keys/device_signing/upload",
            Some(bobs.upload_body("@bob:localhost")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Another user's device cannot be signed, only their master key.
    let bob_signs_device = sign(&unsigned_device, "@bob:localhost", &bobs.user_signing.0);
    let (_, result) = server
        .client_api(
            &bob,
            Method::POST,
            "/keys/signatures/upload",
            Some(json!({ "@alice:localhost": { device.clone(): bob_signs_device } })),
        )
        .await;
    assert_eq!(
        result["failures"]["@alice:localhost"][&device]["errcode"], "M_INVALID_SIGNATURE",
        "{result}"
    );
    let alice_master = &body["master_key"];
    let signed_master = sign(alice_master, "@bob:localhost", &bobs.user_signing.0);
    let (status, result) = server
        .client_api(
            &bob,
            Method::POST,
            "/keys/signatures/upload",
            Some(json!({ "@alice:localhost": { alices.master.1.clone(): signed_master } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        result["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{result}"
    );
    let usk_id = format!("ed25519:{}", bobs.user_signing.1);
    let seen_by_bob = query_of(bob.clone(), "@alice:localhost").await;
    assert!(
        seen_by_bob["master_keys"]["@alice:localhost"]["signatures"]["@bob:localhost"][&usk_id]
            .is_string(),
        "{seen_by_bob}"
    );
    let seen_by_alice = query_of(alice.clone(), "@alice:localhost").await;
    assert!(
        seen_by_alice["master_keys"]["@alice:localhost"]["signatures"]
            .get("@bob:localhost")
            .is_none()
    );
}

/// Uploads correctly signed device keys for the token's device; returns the device id.
async fn upload_signed_device_keys(server: &TestServer, token: &str, user: &str) -> String {
    let device = device_of(server, token).await;
    let device_keys = signed_device_keys(user, &device);
    let (status, body) = server
        .client_api(
            token,
            Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": device_keys })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    device
}

/// Seen from another user: devices and cross-signing keys are gone. (That the backups go
/// too is checked in `service/backup.rs`'s unit test: after deactivation no API reads them.)
#[tokio::test]
async fn deactivation_removes_devices_cross_signing_keys_and_backups() {
    let server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let bob = server.register("bob", "pw pw pw").await;
    let device = upload_signed_device_keys(&server, &alice, "@alice:localhost").await;
    let keys = CrossSigningKeys::new();
    let (status, _) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/device_signing/upload",
            Some(keys.upload_body("@alice:localhost")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .client_api(
            &alice,
            Method::POST,
            "/room_keys/version",
            Some(
                json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                         "auth_data": { "public_key": "abc" } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let query = || async {
        let (status, query) = server
            .client_api(
                &bob,
                Method::POST,
                "/keys/query",
                Some(json!({ "device_keys": { "@alice:localhost": [] } })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{query}");
        query
    };
    let before = query().await;
    assert!(before["master_keys"]["@alice:localhost"].is_object());
    assert!(before["device_keys"]["@alice:localhost"][&device].is_object());

    let (status, _) = server
        .client_api(
            &alice,
            Method::POST,
            "/account/deactivate",
            Some(
                json!({ "auth": { "type": "m.login.password", "password": "pw pw pw",
                                   "identifier": { "type": "m.id.user", "user": "alice" } } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let after = query().await;
    assert!(
        after["master_keys"].get("@alice:localhost").is_none(),
        "{after}"
    );
    assert!(
        after["self_signing_keys"].get("@alice:localhost").is_none(),
        "{after}"
    );
    assert!(
        after["device_keys"]["@alice:localhost"]
            .as_object()
            .is_none_or(|devices| devices.is_empty()),
        "{after}"
    );
}
