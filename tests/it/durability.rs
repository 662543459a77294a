//! A 200 means the write is on disk: it survives `kill -9` right after the answer.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::TestServer;

/// Every backend (issue 13): the default for new databases first.
const BACKENDS: [&str; 3] = ["fjall", "sled", "redb"];

#[tokio::test]
async fn acknowledged_messages_survive_sigkill() {
    for backend in BACKENDS {
        let mut server = TestServer::with_env(&[("CONDUIT_DATABASE_BACKEND", backend)]);
        let token = server.register("zoe", "pw pw pw").await;
        let (status, room) = server
            .request(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&token),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{backend}: {room}");
        let room_id = room["room_id"].as_str().unwrap().to_owned();
        // A burst of acknowledged messages, the last one immediately followed by SIGKILL.
        let mut sent = Vec::new();
        for n in 0..10 {
            let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{n}");
            let body = json!({ "msgtype": "m.text", "body": format!("message {n}") });
            let (status, json) = server
                .request(Method::PUT, &path, Some(&token), Some(body))
                .await;
            assert_eq!(status, StatusCode::OK, "{backend}: {json}");
            sent.push(json["event_id"].as_str().unwrap().to_owned());
        }
        server.kill9();
        server.restart();
        for event_id in &sent {
            let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}");
            let (status, json) = server.request(Method::GET, &path, Some(&token), None).await;
            assert_eq!(status, StatusCode::OK, "{backend}: {event_id} lost: {json}");
        }
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    for backend in BACKENDS {
        let mut server = TestServer::with_env(&[("CONDUIT_DATABASE_BACKEND", backend)]);
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
}

/// Revocations are security-relevant: a logout, a device deletion and a deactivation must
/// hold after a crash right after their 200.
#[tokio::test]
async fn revocations_survive_sigkill() {
    for backend in BACKENDS {
        let mut server = TestServer::with_env(&[("CONDUIT_DATABASE_BACKEND", backend)]);
        let first = server.register("yusuf", "pw pw pw").await;
        let (_, second) = server.login("yusuf", "pw pw pw").await;
        let second = second["access_token"].as_str().unwrap().to_owned();
        let (status, _) = server
            .request(
                Method::POST,
                "/_matrix/client/v3/logout",
                Some(&first),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        server.kill9();
        server.restart();
        assert_eq!(
            server.whoami(&first).await.0,
            StatusCode::UNAUTHORIZED,
            "logout held"
        );
        assert_eq!(server.whoami(&second).await.0, StatusCode::OK);

        let deactivate = json!({ "auth": { "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": "yusuf" }, "password": "pw pw pw" } });
        let (status, json) = server
            .request(
                Method::POST,
                "/_matrix/client/v3/account/deactivate",
                Some(&second),
                Some(deactivate),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        server.kill9();
        server.restart();
        assert_eq!(
            server.whoami(&second).await.0,
            StatusCode::UNAUTHORIZED,
            "deactivation held"
        );
        assert_eq!(
            server.login("yusuf", "pw pw pw").await.0,
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn registration_survives_sigkill_and_a_clean_stop_flushes() {
    for backend in BACKENDS {
        let mut server = TestServer::with_env(&[("CONDUIT_DATABASE_BACKEND", backend)]);
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
}
