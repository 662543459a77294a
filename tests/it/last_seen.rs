//! Devices' last-seen time and address: recorded on every authenticated request, shown at
//! once, kept across a graceful restart, and always present in the raw JSON (`null` when
//! unknown), as Synapse answers.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, password_auth};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The device with `id` from a `GET /devices` answer.
fn device<'a>(devices: &'a Value, id: &str) -> &'a Value {
    devices["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|device| device["device_id"] == id)
        .unwrap_or_else(|| panic!("no device {id} in {devices}"))
}

/// Every field of the spec's device object is there, `null` or not.
#[track_caller]
fn assert_all_fields(device: &Value) {
    let fields = device.as_object().expect("device object");
    for field in ["device_id", "display_name", "last_seen_ip", "last_seen_ts"] {
        assert!(fields.contains_key(field), "{field} missing: {device}");
    }
}

async fn login(server: &TestServer, user: &str) -> (String, String) {
    let (status, json) = server.login(user, "pw pw pw").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    (
        json["access_token"].as_str().unwrap().to_owned(),
        json["device_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn devices_show_last_seen_at_once_and_after_a_restart() {
    let mut server = TestServer::start();
    let first = server.register("lena", "pw pw pw").await;
    let (token, device_id) = login(&server, "lena").await;
    // A device that never makes a request.
    let (_, never_id) = login(&server, "lena").await;
    let before = now_ms();
    assert_eq!(server.whoami(&token).await.0, StatusCode::OK);

    let (status, devices) = server
        .client_api(&token, Method::GET, "/devices", None)
        .await;
    let after = now_ms();
    assert_eq!(status, StatusCode::OK, "{devices}");
    let seen = device(&devices, &device_id);
    assert_all_fields(seen);
    assert_eq!(seen["last_seen_ip"], "127.0.0.1", "{seen}");
    let seen_ts = seen["last_seen_ts"].as_u64().expect("last_seen_ts");
    assert!(
        (before..=after).contains(&seen_ts),
        "{seen_ts} not in {before}..={after}"
    );
    let never = device(&devices, &never_id);
    assert_all_fields(never);
    for field in ["display_name", "last_seen_ip", "last_seen_ts"] {
        assert_eq!(never[field], Value::Null, "{never}");
    }
    let (status, single) = server
        .client_api(&first, Method::GET, &format!("/devices/{never_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{single}");
    assert_all_fields(&single);
    assert_eq!(single["last_seen_ts"], Value::Null, "{single}");

    // A graceful restart keeps what was only in memory. The device makes no request
    // meanwhile, so its time is exactly the one shown before.
    assert!(server.stop().success());
    server.restart();
    let (status, single) = server
        .client_api(&first, Method::GET, &format!("/devices/{device_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{single}");
    assert_eq!(single["last_seen_ts"], seen_ts, "{single}");
    assert_eq!(single["last_seen_ip"], "127.0.0.1", "{single}");

    // A deleted device stays deleted, even when it was seen just before and the shutdown
    // writes what is in memory.
    assert_eq!(server.whoami(&token).await.0, StatusCode::OK);
    let auth = serde_json::to_value(password_auth("lena", "pw pw pw")).unwrap();
    let (status, json) = server
        .client_api(
            &first,
            Method::POST,
            "/delete_devices",
            Some(json!({ "devices": [device_id], "auth": auth })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert!(server.stop().success());
    server.restart();
    let (_, devices) = server
        .client_api(&first, Method::GET, "/devices", None)
        .await;
    let listed = devices["devices"].as_array().expect("devices");
    assert_eq!(listed.len(), 2, "{devices}");
    assert!(
        listed
            .iter()
            .all(|device| device["device_id"] != device_id.as_str()),
        "{devices}"
    );
    assert_eq!(device(&devices, &never_id)["last_seen_ts"], Value::Null);
}
