//! Server-side key backup through the real HTTP API: versions, keys at all three levels,
//! the rule for which of two session keys is kept, `etag`/`count`, and
//! `M_WRONG_ROOM_KEYS_VERSION` for a stale version.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM: &str = "%21room%3Alocalhost";

fn session_key(verified: bool, index: u64, forwarded: u64) -> Value {
    json!({
        "first_message_index": index,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": { "ephemeral": "ZXBo", "ciphertext": format!("c{index}-{forwarded}"), "mac": "bWFj" },
    })
}

#[tokio::test]
async fn key_backup_versions_and_keys() {
    let mut server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let bob = server.register("bob", "pw pw pw").await;

    let response = server
        .client_api(&alice, Method::GET, "/room_keys/version", None)
        .await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let response = server
        .client_api(
            &alice,
            Method::POST,
            "/room_keys/version",
            Some(json!({ "auth_data": {} })),
        )
        .await;
    assert_eq!(response.0, StatusCode::BAD_REQUEST, "{}", response.1);

    let auth_data = json!({ "public_key": "cHVibGljIGtleQ", "signatures": {} });
    let (status, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/room_keys/version",
            Some(json!({ "algorithm": ALGORITHM, "auth_data": auth_data })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let v1 = created["version"].as_str().expect("version").to_owned();
    let (_, info) = server
        .client_api(&alice, Method::GET, "/room_keys/version", None)
        .await;
    assert_eq!(info["version"], json!(v1));
    assert_eq!(info["algorithm"], ALGORITHM);
    assert_eq!(info["auth_data"], auth_data);
    assert_eq!(info["count"], 0);
    let etag0 = info["etag"].clone();

    // Two sessions at once.
    let (status, stored) = server
        .client_api(
            &alice,
            Method::PUT,
            &format!("/room_keys/keys?version={v1}"),
            Some(json!({ "rooms": { "!room:localhost": { "sessions": {
            "s1": session_key(false, 5, 0), "s2": session_key(false, 0, 0),
        } } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["count"], 2);
    assert_ne!(stored["etag"], etag0);
    let etag1 = stored["etag"].clone();

    // A worse key for s1 is ignored; a verified one replaces it.
    let path = format!("/room_keys/keys/{ROOM}/s1?version={v1}");
    let (_, kept) = server
        .client_api(&alice, Method::PUT, &path, Some(session_key(false, 9, 0)))
        .await;
    assert_eq!(
        (kept["count"].clone(), kept["etag"].clone()),
        (json!(2), etag1.clone())
    );
    let (_, s1) = server.client_api(&alice, Method::GET, &path, None).await;
    assert_eq!(s1, session_key(false, 5, 0));
    let (_, replaced) = server
        .client_api(&alice, Method::PUT, &path, Some(session_key(true, 7, 1)))
        .await;
    assert_eq!(replaced["count"], 2);
    assert_ne!(replaced["etag"], etag1);
    let (_, s1) = server.client_api(&alice, Method::GET, &path, None).await;
    assert_eq!(s1, session_key(true, 7, 1));

    // Wrong shapes change nothing.
    let response = server
        .client_api(
            &alice,
            Method::PUT,
            &format!("/room_keys/keys/{ROOM}/s3?version={v1}"),
            Some(json!({ "first_message_index": 1 })),
        )
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let (_, room) = server
        .client_api(
            &alice,
            Method::GET,
            &format!("/room_keys/keys/{ROOM}?version={v1}"),
            None,
        )
        .await;
    assert_eq!(
        room["sessions"].as_object().map(|s| s.len()),
        Some(2),
        "{room}"
    );

    // Bob sees none of it.
    let response = server
        .client_api(&bob, Method::GET, &format!("/room_keys/version/{v1}"), None)
        .await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let response = server
        .client_api(
            &bob,
            Method::GET,
            &format!("/room_keys/keys?version={v1}"),
            None,
        )
        .await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // A new version makes the old one stale for writes, but it can still be read.
    let (_, created) = server
        .client_api(
            &alice,
            Method::POST,
            "/room_keys/version",
            Some(json!({ "algorithm": ALGORITHM, "auth_data": auth_data })),
        )
        .await;
    let v2 = created["version"].as_str().expect("version").to_owned();
    let response = server
        .client_api(&alice, Method::PUT, &path, Some(session_key(true, 0, 0)))
        .await;
    assert_error(
        &response,
        StatusCode::FORBIDDEN,
        "M_WRONG_ROOM_KEYS_VERSION",
    );
    assert_eq!(response.1["current_version"], json!(v2));
    let (_, all) = server
        .client_api(
            &alice,
            Method::GET,
            &format!("/room_keys/keys?version={v1}"),
            None,
        )
        .await;
    assert_eq!(
        all["rooms"]["!room:localhost"]["sessions"]["s2"],
        session_key(false, 0, 0),
        "{all}"
    );

    // auth_data can change, the algorithm cannot.
    let new_auth = json!({ "public_key": "bmV3IGtleQ", "signatures": {} });
    let (status, _) = server
        .client_api(
            &alice,
            Method::PUT,
            &format!("/room_keys/version/{v2}"),
            Some(json!({ "algorithm": ALGORITHM, "auth_data": new_auth })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = server
        .client_api(
            &alice,
            Method::PUT,
            &format!("/room_keys/version/{v2}"),
            Some(json!({ "algorithm": "org.example.other", "auth_data": {} })),
        )
        .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (_, info) = server
        .client_api(&alice, Method::GET, "/room_keys/version", None)
        .await;
    assert_eq!(
        (info["version"].clone(), info["auth_data"].clone()),
        (json!(v2), new_auth)
    );

    // Deleting: one session, then the newer version (the older becomes current again).
    let (_, deleted) = server
        .client_api(
            &alice,
            Method::DELETE,
            &format!("/room_keys/keys/{ROOM}/s2?version={v1}"),
            None,
        )
        .await;
    assert_eq!(deleted["count"], 1, "{deleted}");
    let (status, _) = server
        .client_api(
            &alice,
            Method::DELETE,
            &format!("/room_keys/version/{v2}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = server
        .client_api(
            &alice,
            Method::GET,
            &format!("/room_keys/version/{v2}"),
            None,
        )
        .await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Everything survives a kill -9 and a restart.
    server.kill9();
    server.restart();
    let (_, info) = server
        .client_api(&alice, Method::GET, "/room_keys/version", None)
        .await;
    assert_eq!(
        (info["version"].clone(), info["count"].clone()),
        (json!(v1), json!(1))
    );
    let (_, s1) = server.client_api(&alice, Method::GET, &path, None).await;
    assert_eq!(s1, session_key(true, 7, 1));
    let (_, deleted) = server
        .client_api(
            &alice,
            Method::DELETE,
            &format!("/room_keys/keys?version={v1}"),
            None,
        )
        .await;
    assert_eq!(deleted["count"], 0);
    let response = server.client_api(&alice, Method::GET, &path, None).await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}
