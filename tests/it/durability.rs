//! A 200 means the write is on disk: it survives `kill -9` right after the answer.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let mut server = TestServer::start();
    let token = server.register("victor", "first password").await;

    // A burst of acknowledged writes, the last one immediately followed by SIGKILL.
    let path = "/_matrix/client/v3/profile/@victor:localhost/displayname";
    for n in 0..20 {
        let body = json!({ "displayname": format!("Victor {n}") });
        let (status, json) = server
            .request(Method::PUT, path, Some(&token), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
    }
    let body = json!({
        "new_password": "second password",
        "logout_devices": false,
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "victor" },
                  "password": "first password" }
    });
    let (status, json) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(&token),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    server.kill9();

    server.restart();
    assert_eq!(
        server.whoami(&token).await.0,
        StatusCode::OK,
        "the device and token survived"
    );
    assert_eq!(
        server.login("victor", "second password").await.0,
        StatusCode::OK
    );
    let (_, name) = server.request(Method::GET, path, None, None).await;
    assert_eq!(name["displayname"], "Victor 19");
}

#[tokio::test]
async fn registration_survives_sigkill_and_a_clean_stop_flushes() {
    let mut server = TestServer::start();
    let token = server.register("wendy", "pw pw pw").await;
    server.kill9();
    server.restart();
    assert_eq!(server.whoami(&token).await.0, StatusCode::OK);

    let second = server.register("xavier", "pw pw pw").await;
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM ends the server cleanly: {status:?}"
    );
    assert!(
        server.log().contains("database flushed"),
        "{}",
        server.log()
    );
    server.restart();
    assert_eq!(server.whoami(&second).await.0, StatusCode::OK);
}
