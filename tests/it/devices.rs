//! Device management through matrix-sdk: list, get, rename, delete (UIA), delete several.

use matrix_sdk::ruma::{OwnedDeviceId, api::client::device::get_device};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestServer, assert_error, password_auth};

#[tokio::test]
async fn list_rename_and_delete_devices() {
    let server = TestServer::start();
    server.register("olivia", "pw pw pw").await;
    let mut tokens = Vec::new();
    for name in ["Tablet", "Old phone", "Work laptop"] {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": "olivia" },
            "password": "pw pw pw",
            "initial_device_display_name": name,
        });
        let (status, json) = server
            .request(Method::POST, "/_matrix/client/v3/login", None, Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        tokens.push((
            json["access_token"].as_str().unwrap().to_owned(),
            OwnedDeviceId::from(json["device_id"].as_str().unwrap()),
        ));
    }

    let client = server.client().await;
    client
        .matrix_auth()
        .login_username("olivia", "pw pw pw")
        .device_id("MAIN")
        .send()
        .await
        .unwrap();
    let devices = client.devices().await.unwrap().devices;
    assert_eq!(
        devices.len(),
        5,
        "registration device, three logins and this one"
    );

    // Rename and read back one device.
    let (_, tablet) = &tokens[0];
    client
        .rename_device(tablet, "Kitchen tablet")
        .await
        .expect("rename");
    let device = client
        .send(get_device::v3::Request::new(tablet.clone()))
        .await
        .unwrap()
        .device;
    assert_eq!(device.display_name.as_deref(), Some("Kitchen tablet"));

    // Deleting needs the password; the device's token dies with it.
    let error = client
        .delete_devices(std::slice::from_ref(tablet), None)
        .await
        .unwrap_err();
    assert!(
        error.as_uiaa_response().is_some(),
        "deleting a device needs UIA"
    );
    assert_eq!(
        server.whoami(&tokens[0].0).await.0,
        StatusCode::OK,
        "nothing deleted yet"
    );

    let (old_phone_token, old_phone) = &tokens[1];
    let (laptop_token, laptop) = &tokens[2];
    client
        .delete_devices(
            &[old_phone.clone(), laptop.clone()],
            Some(password_auth("olivia", "pw pw pw")),
        )
        .await
        .expect("delete_devices");
    assert_error(
        &server.whoami(old_phone_token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(
        &server.whoami(laptop_token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let remaining: Vec<_> = client
        .devices()
        .await
        .unwrap()
        .devices
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(remaining.len(), 3);
    assert!(!remaining.contains(old_phone) && !remaining.contains(laptop));
}

#[tokio::test]
async fn delete_single_device_over_http() {
    let server = TestServer::start();
    let keep = server.register("peggy", "pw pw pw").await;
    let (_, other) = server.login("peggy", "pw pw pw").await;
    let other_device = other["device_id"].as_str().unwrap().to_owned();
    let other_token = other["access_token"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/devices/{other_device}");

    let (status, json) = server
        .request(Method::DELETE, &path, Some(&keep), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["flows"], json!([{ "stages": ["m.login.password"] }]));

    // Another user's identifier does not count, even with the right password shape.
    let wrong_user = json!({ "auth": { "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "someone" }, "password": "pw pw pw" } });
    let (status, json) = server
        .request(Method::DELETE, &path, Some(&keep), Some(wrong_user))
        .await;
    assert_eq!(
        (status, json["errcode"].clone()),
        (StatusCode::UNAUTHORIZED, json!("M_FORBIDDEN"))
    );

    let auth = json!({ "auth": { "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "peggy" }, "password": "pw pw pw" } });
    let (status, json) = server
        .request(Method::DELETE, &path, Some(&keep), Some(auth.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_error(
        &server.whoami(&other_token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Gone now: 404 for get and rename; deleting again is fine ("removed previously").
    assert_error(
        &server.request(Method::GET, &path, Some(&keep), None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .request(
                Method::PUT,
                &path,
                Some(&keep),
                Some(json!({ "display_name": "x" })),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, json) = server
        .request(Method::DELETE, &path, Some(&keep), Some(auth))
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

#[tokio::test]
async fn renaming_without_a_name_keeps_it() {
    let server = TestServer::start();
    let token = server.register("quentin", "pw pw pw").await;
    let (_, me) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(&token),
            None,
        )
        .await;
    let path = format!(
        "/_matrix/client/v3/devices/{}",
        me["device_id"].as_str().unwrap()
    );
    let named = json!({ "display_name": "Desk" });
    assert_eq!(
        server
            .request(Method::PUT, &path, Some(&token), Some(named))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server
            .request(Method::PUT, &path, Some(&token), Some(json!({})))
            .await
            .0,
        StatusCode::OK
    );
    let (_, device) = server.request(Method::GET, &path, Some(&token), None).await;
    assert_eq!(
        device["display_name"], "Desk",
        "spec: if not given, the name is unchanged"
    );
}

#[tokio::test]
async fn devices_need_a_token() {
    let server = TestServer::start();
    assert_error(
        &server
            .request(Method::GET, "/_matrix/client/v3/devices", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}
