//! Profiles: display name and avatar through matrix-sdk, other fields and errors over HTTP.

use matrix_sdk::ruma::mxc_uri;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestServer, assert_error};

#[tokio::test]
async fn display_name_and_avatar_round_trip() {
    let server = TestServer::start();
    let client = server.client().await;
    server.register("quinn", "pw pw pw").await;
    client
        .matrix_auth()
        .login_username("quinn", "pw pw pw")
        .send()
        .await
        .unwrap();

    assert_eq!(
        client
            .account()
            .get_display_name()
            .await
            .unwrap()
            .as_deref(),
        Some("quinn")
    );
    client
        .account()
        .set_display_name(Some("Quinn the Eskimo"))
        .await
        .expect("set name");
    assert_eq!(
        client
            .account()
            .get_display_name()
            .await
            .unwrap()
            .as_deref(),
        Some("Quinn the Eskimo")
    );
    let avatar = mxc_uri!("mxc://localhost/abcdef");
    client
        .account()
        .set_avatar_url(Some(avatar))
        .await
        .expect("set avatar");
    assert_eq!(
        client.account().get_avatar_url().await.unwrap().as_deref(),
        Some(avatar)
    );

    // Another user (and nobody at all) sees the whole profile.
    let (status, profile) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/profile/@quinn:localhost",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(profile["displayname"], "Quinn the Eskimo");
    assert_eq!(profile["avatar_url"], "mxc://localhost/abcdef");

    let (status, field) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/profile/@quinn:localhost/displayname",
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, field),
        (StatusCode::OK, json!({ "displayname": "Quinn the Eskimo" }))
    );
}

#[tokio::test]
async fn profile_errors() {
    let server = TestServer::start();
    let token = server.register("rupert", "pw pw pw").await;
    server.register("sybil", "pw pw pw").await;

    assert_error(
        &server
            .request(
                Method::GET,
                "/_matrix/client/v3/profile/@nobody:localhost",
                None,
                None,
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .request(
                Method::GET,
                "/_matrix/client/v3/profile/@rupert:localhost/avatar_url",
                None,
                None,
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Someone else's profile cannot be changed.
    assert_error(
        &server
            .request(
                Method::PUT,
                "/_matrix/client/v3/profile/@sybil:localhost/displayname",
                Some(&token),
                Some(json!({ "displayname": "hacked" })),
            )
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Wrong shape for the field.
    assert_error(
        &server
            .request(
                Method::PUT,
                "/_matrix/client/v3/profile/@rupert:localhost/avatar_url",
                Some(&token),
                Some(json!({ "avatar_url": 42 })),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    // A profile over 64 KiB is refused and nothing changes.
    let big = "x".repeat(70 * 1024);
    assert_error(
        &server
            .request(
                Method::PUT,
                "/_matrix/client/v3/profile/@rupert:localhost/org.example.big",
                Some(&token),
                Some(json!({ "org.example.big": big })),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_PROFILE_TOO_LARGE",
    );
    let (_, profile) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/profile/@rupert:localhost",
            None,
            None,
        )
        .await;
    assert!(profile.get("org.example.big").is_none());

    // Custom fields (spec v1.16) can be set and deleted.
    let path = "/_matrix/client/v3/profile/@rupert:localhost/m.tz";
    let (status, _) = server
        .request(
            Method::PUT,
            path,
            Some(&token),
            Some(json!({ "m.tz": "Europe/Berlin" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.request(Method::GET, path, None, None).await.1["m.tz"],
        "Europe/Berlin"
    );
    assert_eq!(
        server
            .request(Method::DELETE, path, Some(&token), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &server.request(Method::GET, path, None, None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}
