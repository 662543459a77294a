//! Registration, login, password change and deactivation, driven by matrix-sdk where it has
//! an API for the step, and by raw HTTP for the error cases.

use matrix_sdk::ruma::api::{
    client::{
        account::register,
        uiaa::{self, AuthData, AuthType},
    },
    error::ErrorKind,
};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestServer, assert_error, password_auth};

/// The two-step UIA registration a real client performs: ask, get flows and a session,
/// answer the dummy stage.
#[tokio::test]
async fn matrix_sdk_registers_and_is_logged_in() {
    let server = TestServer::start();
    let client = server.client().await;
    let mut request = register::v3::Request::new();
    request.username = Some("Alice".to_owned());
    request.password = Some("secret password".to_owned());
    request.initial_device_display_name = Some("Test laptop".to_owned());

    let error = client
        .matrix_auth()
        .register(request.clone())
        .await
        .unwrap_err();
    let info = error.as_uiaa_response().expect("a UIA challenge");
    assert_eq!(info.flows.len(), 1);
    assert_eq!(info.flows[0].stages, vec![AuthType::Dummy]);
    let session = info.session.clone().expect("a session id");

    let mut dummy = uiaa::Dummy::new();
    dummy.session = Some(session);
    request.auth = Some(AuthData::Dummy(dummy));
    let response = client
        .matrix_auth()
        .register(request)
        .await
        .expect("registered");
    // User names are downcased (appendices, "User Identifiers").
    assert_eq!(response.user_id, "@alice:localhost");
    assert!(response.access_token.is_some());

    let whoami = client.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id, "@alice:localhost");
    assert_eq!(whoami.device_id, response.device_id);
    assert!(!whoami.is_guest);

    let devices = client.devices().await.expect("devices").devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].display_name.as_deref(), Some("Test laptop"));
}

#[tokio::test]
async fn matrix_sdk_logs_in_and_out() {
    let server = TestServer::start();
    server.register("bob", "hunter2 hunter2").await;

    let client = server.client().await;
    let login = client
        .matrix_auth()
        .login_username("bob", "hunter2 hunter2")
        .device_id("BOBPHONE")
        .initial_device_display_name("Bob's phone")
        .send()
        .await
        .expect("login");
    assert_eq!(login.user_id, "@bob:localhost");
    assert_eq!(login.device_id, "BOBPHONE");
    let token = login.access_token.clone();
    assert_eq!(server.whoami(&token).await.0, StatusCode::OK);

    // Logging in again with the same device id keeps one device and revokes the old token.
    let again = server.client().await;
    let relogin = again
        .matrix_auth()
        .login_username("@bob:localhost", "hunter2 hunter2")
        .device_id("BOBPHONE")
        .send()
        .await
        .expect("second login");
    assert_error(
        &server.whoami(&token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let devices = again.devices().await.unwrap().devices;
    assert_eq!(
        devices.iter().filter(|d| d.device_id == "BOBPHONE").count(),
        1
    );
    let phone = devices.iter().find(|d| d.device_id == "BOBPHONE").unwrap();
    assert_eq!(phone.display_name.as_deref(), Some("Bob's phone"));

    again.matrix_auth().logout().await.expect("logout");
    assert_error(
        &server.whoami(&relogin.access_token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    // The device went with the token.
    let (_, fresh) = server.login("bob", "hunter2 hunter2").await;
    let fresh = fresh["access_token"].as_str().unwrap();
    let (_, list) = server
        .request(Method::GET, "/_matrix/client/v3/devices", Some(fresh), None)
        .await;
    assert!(
        list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["device_id"] != "BOBPHONE")
    );
}

#[tokio::test]
async fn logout_all_revokes_every_token() {
    let server = TestServer::start();
    let first = server.register("hank", "pw pw pw").await;
    let (_, second) = server.login("hank", "pw pw pw").await;
    let second = second["access_token"].as_str().unwrap().to_owned();
    let other = server.register("ida", "pw pw pw").await;
    let (status, _) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/logout/all",
            Some(&second),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for token in [&first, &second] {
        assert_error(
            &server.whoami(token).await,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
        );
    }
    assert_eq!(
        server.whoami(&other).await.0,
        StatusCode::OK,
        "other users are untouched"
    );
    let (_, list) = {
        let (_, fresh) = server.login("hank", "pw pw pw").await;
        let fresh = fresh["access_token"].as_str().unwrap().to_owned();
        server
            .request(
                Method::GET,
                "/_matrix/client/v3/devices",
                Some(&fresh),
                None,
            )
            .await
    };
    assert_eq!(
        list["devices"].as_array().unwrap().len(),
        1,
        "only the new login's device: {list}"
    );
}

#[tokio::test]
async fn login_variants_and_failures() {
    let server = TestServer::start();
    server.register("carol", "correct horse").await;

    // The deprecated top-level `user` field still works, as does a full user id.
    let body = json!({ "type": "m.login.password", "user": "carol", "password": "correct horse" });
    let (status, json) = server
        .request(Method::POST, "/_matrix/client/v3/login", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        server.login("@CAROL:localhost", "correct horse").await.0,
        StatusCode::OK
    );

    assert_error(
        &server.login("carol", "wrong").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.login("nobody", "x").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_error(
        &server
            .login("@carol:elsewhere.example", "correct horse")
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let token_login = json!({ "type": "m.login.token", "token": "abc" });
    assert_error(
        &server
            .request(
                Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(token_login),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );

    let (status, flows) = server
        .request(Method::GET, "/_matrix/client/v3/login", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(flows["flows"], json!([{ "type": "m.login.password" }]));
}

#[tokio::test]
async fn repeated_wrong_passwords_are_rate_limited() {
    let server = TestServer::start();
    server.register("dave", "right password").await;
    for _ in 0..5 {
        assert_error(
            &server.login("dave", "wrong").await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
    let limited = server.login("dave", "right password").await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
    let retry = limited.1["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    // Other accounts are not affected.
    server.register("erin", "pw pw pw").await;
    assert_eq!(server.login("erin", "pw pw pw").await.0, StatusCode::OK);
}

#[tokio::test]
async fn registration_rules() {
    let server = TestServer::start();
    let register = |body| {
        server.request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(body),
        )
    };

    // No auth: 401 with the dummy flow, even for a fine request.
    let (status, json) = register(json!({ "username": "frank", "password": "pw" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    assert!(json["session"].is_string());

    let dummy = json!({ "type": "m.login.dummy" });
    assert_error(
        &register(json!({ "username": "fr ank", "password": "pw", "auth": dummy })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
    );
    assert_error(
        &register(json!({ "username": "fränk", "password": "pw", "auth": dummy })).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
    );
    let (status, json) =
        register(json!({ "username": "frank", "password": "pw", "auth": dummy })).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_error(
        &register(json!({ "username": "FRANK", "password": "pw", "auth": dummy })).await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );

    // inhibit_login: an account but no token or device.
    let (status, json) = register(json!({
        "username": "grace", "password": "pw", "auth": dummy, "inhibit_login": true
    }))
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["user_id"], "@grace:localhost");
    assert!(json.get("access_token").is_none(), "{json}");
    assert!(json["device_id"].is_null(), "{json}");

    // Guests are not allowed.
    let (status, json) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register?kind=guest",
            None,
            Some(json!({})),
        )
        .await;
    assert_error(
        &(status, json),
        StatusCode::FORBIDDEN,
        "M_GUEST_ACCESS_FORBIDDEN",
    );

    // Availability.
    let server = &server;
    let available = |name: &str| {
        let path = format!("/_matrix/client/v3/register/available?username={name}");
        async move { server.request(Method::GET, &path, None, None).await }
    };
    let (status, json) = available("heidi").await;
    assert_eq!(
        (status, json["available"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_error(
        &available("frank").await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
    assert_error(
        &available("in%20valid").await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
    );
}

#[tokio::test]
async fn registration_is_off_by_default() {
    let server = TestServer::with_env(&[
        ("CONDUIT_ALLOW_REGISTRATION", "false"),
        ("CONDUIT_REGISTRATION_TOKEN", "007123"),
    ]);
    let body = json!({ "username": "ivan", "password": "pw", "auth": { "type": "m.login.dummy" } });
    let register = server.request(
        Method::POST,
        "/_matrix/client/v3/register",
        None,
        Some(body),
    );
    assert_error(&register.await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // With registration closed no token is valid, so the check itself is refused.
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token=007123";
    assert_error(
        &server.request(Method::GET, validity, None, None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn registration_token_flow() {
    let server = TestServer::with_env(&[("CONDUIT_REGISTRATION_TOKEN", "club-2026")]);
    let register = |auth| {
        let body = json!({ "username": "judy", "password": "pw", "auth": auth });
        server.request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(body),
        )
    };
    let (status, json) = register(serde_json::Value::Null).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        json["flows"],
        json!([{ "stages": ["m.login.registration_token"] }])
    );
    let session = json["session"].as_str().unwrap().to_owned();

    // The dummy stage is not enough when a token is configured.
    let (status, json) = register(json!({ "type": "m.login.dummy", "session": session })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert_eq!(json["errcode"], "M_FORBIDDEN");

    let wrong =
        json!({ "type": "m.login.registration_token", "token": "guess", "session": session });
    let (status, json) = register(wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert_eq!(json["errcode"], "M_FORBIDDEN");
    assert_eq!(
        json["session"],
        session.as_str(),
        "the session is kept across attempts"
    );

    let right =
        json!({ "type": "m.login.registration_token", "token": "club-2026", "session": session });
    let (status, json) = register(right).await;
    assert_eq!(status, StatusCode::OK, "{json}");

    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    let (status, json) = server
        .request(
            Method::GET,
            &format!("{validity}?token=club-2026"),
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, json["valid"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (_, json) = server
        .request(Method::GET, &format!("{validity}?token=nope"), None, None)
        .await;
    assert_eq!(json["valid"], false);
}

#[tokio::test]
async fn change_password_needs_the_old_one_and_logs_out_other_devices() {
    let server = TestServer::start();
    let other_token = server.register("kim", "old password").await;
    let client = server.client().await;
    client
        .matrix_auth()
        .login_username("kim", "old password")
        .send()
        .await
        .unwrap();

    // Without auth: a UIA challenge for the password stage.
    let error = client
        .account()
        .change_password("new password", None)
        .await
        .unwrap_err();
    let info = error.as_uiaa_response().expect("UIA challenge");
    assert_eq!(info.flows[0].stages, vec![AuthType::Password]);

    // Wrong current password: 401 again, with M_FORBIDDEN.
    let error = client
        .account()
        .change_password("new password", Some(password_auth("kim", "wrong")))
        .await
        .unwrap_err();
    let info = error
        .as_uiaa_response()
        .expect("UIA challenge after a failed stage");
    assert_eq!(
        info.auth_error.as_ref().map(|e| e.kind.clone()),
        Some(ErrorKind::Forbidden)
    );

    client
        .account()
        .change_password("new password", Some(password_auth("kim", "old password")))
        .await
        .expect("password changed");

    assert_error(
        &server.login("kim", "old password").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(server.login("kim", "new password").await.0, StatusCode::OK);
    // The other device is logged out; this one is not.
    assert_error(
        &server.whoami(&other_token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    client
        .whoami()
        .await
        .expect("the calling device stays logged in");
}

#[tokio::test]
async fn change_password_can_keep_other_devices() {
    let server = TestServer::start();
    let first = server.register("leo", "one one one").await;
    let (_, second) = server.login("leo", "one one one").await;
    let second = second["access_token"].as_str().unwrap();
    let body = json!({
        "new_password": "two two two",
        "logout_devices": false,
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "leo" },
                  "password": "one one one" }
    });
    let (status, json) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(second),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(server.whoami(&first).await.0, StatusCode::OK);
}

#[tokio::test]
async fn deactivation_is_final() {
    let server = TestServer::start();
    let other_token = server.register("mallory", "pw pw pw").await;
    let client = server.client().await;
    client
        .matrix_auth()
        .login_username("mallory", "pw pw pw")
        .send()
        .await
        .unwrap();

    let error = client
        .account()
        .deactivate(None, None, false)
        .await
        .unwrap_err();
    assert!(error.as_uiaa_response().is_some(), "deactivation needs UIA");
    client
        .whoami()
        .await
        .expect("still active after the challenge");

    client
        .account()
        .deactivate(None, Some(password_auth("mallory", "pw pw pw")), false)
        .await
        .expect("deactivated");

    assert_error(
        &server.whoami(&other_token).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(
        &server.login("mallory", "pw pw pw").await,
        StatusCode::FORBIDDEN,
        "M_USER_DEACTIVATED",
    );
    let body =
        json!({ "username": "mallory", "password": "x", "auth": { "type": "m.login.dummy" } });
    assert_error(
        &server
            .request(
                Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(body),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
}

#[tokio::test]
async fn whoami_and_capabilities_and_discovery() {
    let server = TestServer::with_env(&[
        ("CONDUIT_WELL_KNOWN_CLIENT", "https://matrix.example.org"),
        ("CONDUIT_WELL_KNOWN__SERVER", "matrix.example.org:443"),
    ]);
    let token = server.register("nina", "pw pw pw").await;
    let (status, caps) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/capabilities",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{caps}");
    // Capabilities at their spec default (m.change_password: enabled) may be omitted.
    let change_password = &caps["capabilities"]["m.change_password"];
    assert!(
        change_password.is_null() || change_password["enabled"] == true,
        "{caps}"
    );
    assert_eq!(caps["capabilities"]["m.3pid_changes"]["enabled"], false);
    assert_eq!(caps["capabilities"]["m.profile_fields"]["enabled"], true);
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");

    let (status, json) = server
        .request(Method::GET, "/.well-known/matrix/client", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );
    let (status, json) = server
        .request(Method::GET, "/.well-known/matrix/server", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["m.server"], "matrix.example.org:443");

    let client = server.client().await;
    let versions = client
        .server_versions()
        .await
        .expect("versions via matrix-sdk");
    assert!(!versions.is_empty());
}

#[tokio::test]
async fn well_known_is_404_when_not_configured() {
    let server = TestServer::start();
    assert_error(
        &server
            .request(Method::GET, "/.well-known/matrix/client", None, None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .request(Method::GET, "/.well-known/matrix/server", None, None)
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}
