//! Dehydrated devices (MSC3814) over raw HTTP: put/get/delete, keys others can claim,
//! to-device messages paged and acknowledged, replacement of the previous device.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, assert_error},
    keys::{one_time_keys, signed_device_keys},
};

const PREFIX: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1";

async fn call(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    server.request(method, path, Some(token), body).await
}

fn put_body(device_id: &str) -> Value {
    json!({
        "device_id": device_id,
        "initial_device_display_name": "Dehydrated device",
        "device_data": { "algorithm": "org.matrix.msc3814.v2", "device_pickle": "cGlja2xl", "nonce": "bm9uY2U" },
        "device_keys": signed_device_keys("@alice:localhost", device_id),
        "one_time_keys": one_time_keys(3),
    })
}

#[tokio::test]
async fn dehydrated_device_lifecycle() {
    let server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let bob = server.register("bob", "pw pw pw").await;
    let path = format!("{PREFIX}/dehydrated_device");

    let response = call(&server, &alice, Method::GET, &path, None).await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Keys signed for another device id: refused, nothing created.
    let mut forged = put_body("DEHYDRATED1");
    forged["device_keys"] = signed_device_keys("@alice:localhost", "SOMEOTHER");
    let response = call(&server, &alice, Method::PUT, &path, Some(forged)).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let response = call(&server, &alice, Method::GET, &path, None).await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let body = put_body("DEHYDRATED1");
    let (status, put) = call(&server, &alice, Method::PUT, &path, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["device_id"], "DEHYDRATED1");
    let (_, got) = call(&server, &alice, Method::GET, &path, None).await;
    assert_eq!(got["device_id"], "DEHYDRATED1");
    assert_eq!(got["device_data"], body["device_data"]);

    // Bob finds the device and claims one of its one-time keys.
    let (_, query) = call(
        &server,
        &bob,
        Method::POST,
        "/_matrix/client/v3/keys/query",
        Some(json!({ "device_keys": { "@alice:localhost": [] } })),
    )
    .await;
    assert_eq!(
        query["device_keys"]["@alice:localhost"]["DEHYDRATED1"]["keys"],
        body["device_keys"]["keys"]
    );
    let (_, claimed) = call(
        &server,
        &bob,
        Method::POST,
        "/_matrix/client/v3/keys/claim",
        Some(json!({ "one_time_keys": { "@alice:localhost": { "DEHYDRATED1": "signed_curve25519" } } })),
    )
    .await;
    assert_eq!(
        claimed["one_time_keys"]["@alice:localhost"]["DEHYDRATED1"]
            .as_object()
            .map(|keys| keys.len()),
        Some(1),
        "{claimed}"
    );

    // Bob sends it a room key; alice's new device reads it, then acknowledges the page.
    let (status, _) = call(
        &server,
        &bob,
        Method::PUT,
        "/_matrix/client/v3/sendToDevice/m.room.encrypted/t1",
        Some(json!({ "messages": { "@alice:localhost": { "DEHYDRATED1": { "ciphertext": "secret" } } } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events_path = format!("{PREFIX}/dehydrated_device/DEHYDRATED1/events");
    let (status, page) = call(&server, &alice, Method::POST, &events_path, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        page["events"][0]["content"]["ciphertext"], "secret",
        "{page}"
    );
    assert_eq!(page["events"][0]["sender"], "@bob:localhost");
    let next = page["next_batch"].as_str().expect("next_batch").to_owned();
    for _ in 0..2 {
        let (_, page) = call(
            &server,
            &alice,
            Method::POST,
            &events_path,
            Some(json!({ "next_batch": next })),
        )
        .await;
        assert_eq!(page["events"], json!([]), "{page}");
    }

    // The id of an ordinary device cannot be taken.
    let (_, login) = server.login("alice", "pw pw pw").await;
    let laptop = login["device_id"].as_str().expect("device_id");
    let response = call(&server, &alice, Method::PUT, &path, Some(put_body(laptop))).await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // A new dehydrated device replaces the old one, keys included.
    let (status, _) = call(
        &server,
        &alice,
        Method::PUT,
        &path,
        Some(put_body("DEHYDRATED2")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, query) = call(
        &server,
        &bob,
        Method::POST,
        "/_matrix/client/v3/keys/query",
        Some(json!({ "device_keys": { "@alice:localhost": [] } })),
    )
    .await;
    let devices = &query["device_keys"]["@alice:localhost"];
    assert!(
        devices.get("DEHYDRATED1").is_none() && devices.get("DEHYDRATED2").is_some(),
        "{query}"
    );
    let response = call(&server, &alice, Method::POST, &events_path, Some(json!({}))).await;
    assert_error(&response, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // Bob cannot read alice's.
    let response = call(
        &server,
        &bob,
        Method::POST,
        &format!("{PREFIX}/dehydrated_device/DEHYDRATED2/events"),
        Some(json!({})),
    )
    .await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let (status, deleted) = call(&server, &alice, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["device_id"], "DEHYDRATED2");
    let response = call(&server, &alice, Method::GET, &path, None).await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (_, devices) = call(
        &server,
        &alice,
        Method::GET,
        "/_matrix/client/v3/devices",
        None,
    )
    .await;
    assert!(!devices.to_string().contains("DEHYDRATED"), "{devices}");
}
