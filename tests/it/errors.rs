//! Every kind of bad request gets its Matrix error, and the server keeps serving.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestServer, assert_error, http};

#[tokio::test]
async fn bad_requests_get_matrix_errors_and_the_server_keeps_serving() {
    let server = TestServer::with_env(&[("CONDUIT_MAX_REQUEST_SIZE", "4096")]);
    let token = server.register("trent", "pw pw pw").await;
    let url = |path: &str| format!("{}{path}", server.url);
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        (
            status,
            response
                .json::<serde_json::Value>()
                .await
                .expect("a JSON error body"),
        )
    };

    // Unknown endpoint, and a known path with the wrong method.
    assert_error(
        &send(http().get(url("/_matrix/client/v3/nonsense"))).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &send(http().get(url("/anything/else"))).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    assert_error(
        &send(http().delete(url("/_matrix/client/v3/login"))).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );

    // Not JSON at all, and JSON of the wrong shape.
    let login = url("/_matrix/client/v3/login");
    assert_error(
        &send(http().post(&login).body("{not json")).await,
        StatusCode::BAD_REQUEST,
        "M_NOT_JSON",
    );
    assert_error(
        &send(
            http()
                .post(&login)
                .json(&json!({ "type": "m.login.password", "password": 5 })),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &send(
            http()
                .put(url("/_matrix/client/v3/devices/X"))
                .bearer_auth(&token)
                .json(&json!([1, 2])),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );

    // Tokens: missing, malformed header, unknown.
    let whoami = url("/_matrix/client/v3/account/whoami");
    assert_error(
        &send(http().get(&whoami)).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert_error(
        &send(http().get(&whoami).header("Authorization", "Basic abc")).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert_error(
        &send(http().get(&whoami).bearer_auth("made-up")).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(
        &send(http().get(format!("{whoami}?access_token=made-up"))).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    // The deprecated query parameter works for a real token.
    let (status, json) = send(http().get(format!("{whoami}?access_token={token}"))).await;
    assert_eq!(
        (status, json["user_id"].clone()),
        (StatusCode::OK, json!("@trent:localhost"))
    );

    // Too large: by Content-Length, and streamed without one.
    let big = "x".repeat(10_000);
    assert_error(
        &send(http().post(&login).body(big.clone())).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    let stream = futures_stream(big.into_bytes());
    assert_error(
        &send(http().post(&login).body(reqwest::Body::wrap_stream(stream))).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );

    // Bad path parameter.
    assert_error(
        &send(http().get(url("/_matrix/client/v3/profile/not-a-user-id"))).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // Still serving, and the account still works.
    let (status, _) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.whoami(&token).await.0, StatusCode::OK);
}

/// A body sent in chunks without a Content-Length.
fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<Vec<u8>> = bytes.chunks(1000).map(<[u8]>::to_vec).collect();
    futures_util::stream::iter(chunks.into_iter().map(Ok))
}

#[tokio::test]
async fn cors_headers_for_web_clients() {
    let server = TestServer::start();
    let preflight = http()
        .request(
            Method::OPTIONS,
            format!("{}/_matrix/client/v3/login", server.url),
        )
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    for method in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );

    // Errors carry the header too, or a browser could not read them.
    let error = http()
        .get(format!("{}/_matrix/client/v3/account/whoami", server.url))
        .header("Origin", "https://app.element.io")
        .send()
        .await
        .unwrap();
    assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn tokens_and_passwords_never_reach_the_log() {
    // Everything this crate logs, at every level, on success and error paths.
    let server = TestServer::with_env(&[("CONDUIT_LOG", "trace")]);
    let token = server.register("uma", "very-secret-password").await;
    server.whoami(&token).await;
    let path = format!("/_matrix/client/v3/account/whoami?access_token={token}");
    server.request(Method::GET, &path, None, None).await;
    server.login("uma", "wrong-secret-password").await;
    let change = json!({
        "new_password": "another-secret-password",
        "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "uma" },
                  "password": "very-secret-password" }
    });
    server
        .request(
            Method::POST,
            "/_matrix/client/v3/account/password",
            Some(&token),
            Some(change),
        )
        .await;
    let log = server.log();
    assert!(
        log.contains("/_matrix/client/v3/account/whoami"),
        "requests are logged:\n{log}"
    );
    assert!(!log.contains(&token), "a token was logged");
    for secret in [
        "very-secret-password",
        "wrong-secret-password",
        "another-secret-password",
    ] {
        assert!(!log.contains(secret), "a password was logged");
    }
}
