//! Federation (issue 11): with `allow_federation` off (the default) nothing of it is served
//! and client requests that need another server say so; with it on, requests from other
//! servers must carry a valid `X-Matrix` signature. Servers talk over TLS on 127.0.0.1 only.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

#[tokio::test]
async fn with_federation_off_nothing_is_served_and_remote_requests_are_refused() {
    let server = TestServer::start();
    for path in [
        "/_matrix/federation/v1/version",
        "/_matrix/federation/v1/query/profile?user_id=@a:localhost",
        "/_matrix/key/v2/server",
    ] {
        assert_error(
            &server.request(Method::GET, path, None, None).await,
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
        );
    }

    let alice = server.register("alice", "correct horse").await;
    let (_, created) = server
        .client_api(&alice, Method::POST, "/createRoom", Some(json!({})))
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let names_the_server = |response: &(StatusCode, Value)| {
        assert_error(response, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        let message = response.1["error"].as_str().unwrap();
        assert!(message.contains("other.example"), "{message}");
        assert!(message.contains("Federation is off"), "{message}");
    };

    // An invite of a remote user used to answer 200 and send nothing.
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                &format!("/rooms/{room}/invite"),
                Some(json!({ "user_id": "@bob:other.example" })),
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                "/createRoom",
                Some(json!({ "invite": ["@bob:other.example"] })),
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(&alice, Method::GET, "/profile/@bob:other.example", None)
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::GET,
                "/profile/@bob:other.example/displayname",
                None,
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::GET,
                "/directory/room/%23club:other.example",
                None,
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                "/join/%23club:other.example",
                Some(json!({})),
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                "/join/!abc:other.example?via=other.example",
                Some(json!({})),
            )
            .await,
    );
    // A room nobody can be asked about is simply unknown.
    assert_error(
        &server
            .client_api(&alice, Method::POST, "/join/!nowhere", Some(json!({})))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Key queries and claims answer for local users and list the other server as failed.
    let (status, keys) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { "@bob:other.example": [], "@alice:localhost": [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["failures"]["other.example"]["status"], 403, "{keys}");
    assert!(
        keys["device_keys"]["@alice:localhost"].is_object(),
        "{keys}"
    );
    assert!(keys["device_keys"].get("@bob:other.example").is_none());
    let (status, claimed) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/claim",
            Some(json!({ "one_time_keys": { "@bob:other.example": { "DEV": "signed_curve25519" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(
        claimed["failures"]["other.example"]["status"], 403,
        "{claimed}"
    );
    assert_eq!(claimed["one_time_keys"], json!({}));
}

#[tokio::test]
async fn federation_requests_without_a_valid_signature_are_401() {
    let server = TestServer::start_federating();
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id=@alice:{}",
        server.server_name
    );
    let unauthorized = |response: (StatusCode, Value)| {
        assert_error(&response, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    };
    unauthorized(server.request(Method::GET, &path, None, None).await);
    // A bearer token is not a server's signature.
    unauthorized(
        server
            .request(Method::GET, &path, Some("token"), None)
            .await,
    );
    // Well-formed headers that do not hold: another destination, an origin whose keys
    // cannot be had (a loopback port nobody listens on: test traffic stays on 127.0.0.1), a
    // made-up signature, our own name as the origin.
    let ours = server.server_name.clone();
    let nobody = format!("localhost:{}", crate::harness::free_port());
    for header in [
        format!(
            r#"X-Matrix origin="{nobody}",destination="elsewhere.example",key="ed25519:a",sig="AAAA""#
        ),
        format!(r#"X-Matrix origin="{nobody}",destination="{ours}",key="ed25519:a",sig="AAAA""#),
        format!(r#"X-Matrix origin="{ours}",destination="{ours}",key="ed25519:a",sig="AAAA""#),
        "X-Matrix nonsense".to_owned(),
    ] {
        let response = server
            .http()
            .get(format!("{}{path}", server.url))
            .header("Authorization", header.as_str())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        unauthorized((status, body));
    }
}
