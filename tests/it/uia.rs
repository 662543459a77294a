//! The shape of every user-interactive authentication answer (client-server API,
//! "User-interactive authentication API"): `401` with `flows`, `params` (an object, `{}`
//! when no stage has parameters) and `session`, read as raw JSON the way matrix-nio does.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{harness::TestServer, keys::CrossSigningKeys};

/// Asserts a UIA answer; returns its session.
#[track_caller]
fn assert_uia(response: &(StatusCode, Value), stage: &str) -> String {
    let (status, body) = response;
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{body}");
    let flows = body["flows"].as_array().expect("flows");
    assert!(
        flows.iter().any(|flow| flow["stages"] == json!([stage])),
        "{body}"
    );
    assert_eq!(body["params"], json!({}), "params is an object: {body}");
    let session = body["session"].as_str().expect("session");
    assert!(!session.is_empty(), "{body}");
    session.to_owned()
}

#[tokio::test]
async fn every_uia_answer_has_flows_params_and_session() {
    let server = TestServer::start();

    // Registration, without and with a wrong stage.
    let register = |body: Value| {
        let server = &server;
        async move {
            server
                .request(
                    Method::POST,
                    "/_matrix/client/v3/register",
                    None,
                    Some(body),
                )
                .await
        }
    };
    let first = register(json!({ "username": "uma", "password": "pw pw pw" })).await;
    let session = assert_uia(&first, "m.login.dummy");
    let wrong = register(json!({
        "username": "uma", "password": "pw pw pw",
        "auth": { "type": "m.login.registration_token", "token": "x", "session": session },
    }))
    .await;
    assert_eq!(assert_uia(&wrong, "m.login.dummy"), session, "session kept");
    assert_eq!(wrong.1["errcode"], "M_FORBIDDEN", "{}", wrong.1);

    let token = server.register("uma", "pw pw pw").await;
    let (_, whoami) = server.whoami(&token).await;
    let device = whoami["device_id"].as_str().unwrap().to_owned();

    // Every endpoint that asks for the password.
    let cross_signing = CrossSigningKeys::new().upload_body("@uma:localhost");
    let (status, _) = server
        .client_api(
            &token,
            Method::POST,
            "/keys/device_signing/upload",
            Some(cross_signing),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the first upload needs no UIA");
    let replacement = CrossSigningKeys::new().upload_body("@uma:localhost");
    let requests = [
        (Method::DELETE, format!("/devices/{device}"), json!({})),
        (
            Method::POST,
            "/delete_devices".to_owned(),
            json!({ "devices": [device] }),
        ),
        (
            Method::POST,
            "/account/password".to_owned(),
            json!({ "new_password": "new pw new pw" }),
        ),
        (Method::POST, "/account/deactivate".to_owned(), json!({})),
        (
            Method::POST,
            "/keys/device_signing/upload".to_owned(),
            replacement,
        ),
    ];
    for (index, (method, path, body)) in requests.into_iter().enumerate() {
        let response = server
            .client_api(&token, method.clone(), &path, Some(body.clone()))
            .await;
        let session = assert_uia(&response, "m.login.password");

        // A wrong password: the same shape, the session echoed, and the reason. (Only a
        // few: five failures in a minute lock the password for a while.)
        if index >= 3 {
            continue;
        }
        let mut attempt = body;
        attempt["auth"] = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": "uma" },
            "password": "wrong",
            "session": session,
        });
        let failed = server
            .client_api(&token, method, &path, Some(attempt))
            .await;
        assert_eq!(assert_uia(&failed, "m.login.password"), session, "{path}");
        assert_eq!(failed.1["errcode"], "M_FORBIDDEN", "{path}: {}", failed.1);
    }
    assert_eq!(
        server.whoami(&token).await.0,
        StatusCode::OK,
        "nothing was done"
    );
}
