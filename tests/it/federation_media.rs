//! Media across servers (issue 12 item 6): a user of one server downloads and thumbnails
//! `mxc://other.server/…` through their own server, which fetches it over the
//! authenticated federation media endpoints and keeps it; against a second instance of this
//! server and against a real Synapse, both ways.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::{
    harness::{TestServer, assert_error},
    media::{assert_safe_headers, decoded_size, header, png},
    synapse::Synapse,
};

/// A raw GET as `token` (if any) with `http` (a client that trusts the server's
/// certificate); status, headers and body.
async fn get(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// Uploads `body` as `content_type` with `POST /_matrix/media/v3/upload`; the media id and
/// server name of the `mxc://` URI it answers.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    content_type: &str,
    filename: &str,
    body: Vec<u8>,
) -> (String, String) {
    let response = http
        .post(format!(
            "{base}/_matrix/media/v3/upload?filename={filename}"
        ))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = response.status();
    let json: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{json}");
    let uri = json["content_uri"].as_str().expect("a content_uri");
    let (server, id) = uri
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
        .expect("an mxc URI");
    (server.to_owned(), id.to_owned())
}

/// How many requests for `path` `server` has logged, once it has logged at least one
/// (the log is read as the process writes it: polled, bounded).
fn served(server: &TestServer, path: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = server
            .log()
            .lines()
            .filter(|line| line.contains(&format!("path={path} ")) && line.contains("status=200"))
            .count();
        if count > 0 || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error(body: &[u8]) -> (Value, Value) {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    (json["errcode"].clone(), json)
}

/// A user on B downloads and thumbnails an image uploaded on A, through B; B keeps both,
/// so they are still served with A stopped. Missing media is `404 M_NOT_FOUND`, media of a
/// stopped server that B never fetched is `502`, and A's federation endpoint refuses an
/// unsigned request.
#[tokio::test]
async fn a_remote_image_downloads_and_thumbnails_and_stays_cached() {
    let mut a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let image = png(200, 150);
    let (server, id) = upload(
        &a.http(),
        &a.url,
        &alice,
        "image/png",
        "cat.png",
        image.clone(),
    )
    .await;
    assert_eq!(server, a.server_name);
    let (_, other_id) = upload(
        &a.http(),
        &a.url,
        &alice,
        "text/plain",
        "note.txt",
        b"never fetched".to_vec(),
    )
    .await;

    let download = format!("{}/_matrix/client/v1/media/download/{server}/{id}", b.url);
    let thumbnail = format!(
        "{}/_matrix/client/v1/media/thumbnail/{server}/{id}?width=32&height=32&method=crop",
        b.url
    );
    let (status, headers, body) = get(&b.http(), download.clone(), Some(&bob)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        b.log()
    );
    assert_eq!(body, image, "the bytes A stored");
    assert_eq!(header(&headers, "content-type"), "image/png");
    assert_eq!(
        header(&headers, "content-disposition"),
        "inline; filename=\"cat.png\""
    );
    assert_safe_headers(&headers);

    let (status, headers, thumb) = get(&b.http(), thumbnail.clone(), Some(&bob)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&thumb)
    );
    assert!(header(&headers, "content-type").starts_with("image/"));
    assert_eq!(decoded_size(&thumb), (32, 32));
    assert_safe_headers(&headers);

    // A file name in the path names the download; the bytes are the same.
    let (status, headers, named) =
        get(&b.http(), format!("{download}/renamed.png"), Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(named, image);
    assert_eq!(
        header(&headers, "content-disposition"),
        "inline; filename=\"renamed.png\""
    );

    // Served from B's store: A was asked once for the file and once for the thumbnail.
    let (status, _, body) = get(&b.http(), download.clone(), Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, image);
    assert_eq!(
        served(&a, &format!("/_matrix/federation/v1/media/download/{id}")),
        1,
        "{}",
        a.log()
    );
    assert_eq!(
        served(&a, &format!("/_matrix/federation/v1/media/thumbnail/{id}")),
        1,
        "{}",
        a.log()
    );

    // Concurrent first requests for the same media make one fetch.
    let (_, busy_id) = upload(
        &a.http(),
        &a.url,
        &alice,
        "image/png",
        "busy.png",
        png(64, 64),
    )
    .await;
    let busy = format!(
        "{}/_matrix/client/v1/media/download/{server}/{busy_id}",
        b.url
    );
    let http = b.http();
    let answers =
        futures_util::future::join_all((0..4).map(|_| get(&http, busy.clone(), Some(&bob)))).await;
    for (status, _, body) in answers {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, png(64, 64));
    }
    assert_eq!(
        served(
            &a,
            &format!("/_matrix/federation/v1/media/download/{busy_id}")
        ),
        1,
        "{}",
        a.log()
    );

    // No such media on A: A's 404 M_NOT_FOUND reaches the client.
    let (status, _, body) = get(
        &b.http(),
        format!(
            "{}/_matrix/client/v1/media/download/{server}/NoSuchMedia1",
            b.url
        ),
        Some(&bob),
    )
    .await;
    let (errcode, json) = error(&body);
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    assert_eq!(errcode, "M_NOT_FOUND", "{json}");

    // A's federation endpoint serves only signed requests.
    let (status, _, body) = get(
        &a.http(),
        format!("{}/_matrix/federation/v1/media/download/{id}", a.url),
        None,
    )
    .await;
    let (errcode, json) = error(&body);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert_eq!(errcode, "M_UNAUTHORIZED", "{json}");

    // With A gone, what B fetched is served from B's store; what it did not fetch cannot be.
    a.stop();
    let (status, _, again) = get(&b.http(), download, Some(&bob)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&again)
    );
    assert_eq!(again, image);
    let (status, _, thumb_again) = get(&b.http(), thumbnail, Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(thumb_again, thumb);
    let (status, _, body) = get(
        &b.http(),
        format!(
            "{}/_matrix/client/v1/media/download/{server}/{other_id}",
            b.url
        ),
        Some(&bob),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// Remote media is refused cleanly when it cannot be had: a malformed media id is
/// `404 M_NOT_FOUND` without asking anyone, and the deprecated endpoint's
/// `allow_remote=false` never fetches.
#[tokio::test]
async fn remote_media_that_cannot_be_had_is_a_clean_error() {
    let a = TestServer::start_federating();
    let b = TestServer::federating_with_env(&[("CONDUIT_ALLOW_LEGACY_MEDIA", "true")]);
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (server, id) = upload(&a.http(), &a.url, &alice, "image/png", "cat.png", png(8, 8)).await;
    let (status, _, body) = get(
        &b.http(),
        format!(
            "{}/_matrix/client/v1/media/download/{server}/bad%2Eid",
            b.url
        ),
        Some(&bob),
    )
    .await;
    let (errcode, json) = error(&body);
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    assert_eq!(errcode, "M_NOT_FOUND", "{json}");
    let (status, _, body) = get(
        &b.http(),
        format!(
            "{}/_matrix/media/v3/download/{server}/{id}?allow_remote=false",
            b.url
        ),
        None,
    )
    .await;
    assert_error(
        &(status, serde_json::from_slice(&body).unwrap_or(Value::Null)),
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Allowed, the deprecated endpoint fetches like the authenticated one.
    let (status, _, body) = get(
        &b.http(),
        format!("{}/_matrix/media/v3/download/{server}/{id}", b.url),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, png(8, 8));
}

/// Against Synapse: our user downloads (and thumbnails) a Synapse user's upload through our
/// server, and the Synapse user downloads ours through Synapse, which asks our federation
/// endpoint.
#[tokio::test]
async fn synapse_and_our_users_download_each_others_media() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;

    let theirs = png(64, 48);
    let (server, id) = upload(
        &synapse.http(),
        &synapse.url,
        &bob,
        "image/png",
        "theirs.png",
        theirs.clone(),
    )
    .await;
    assert_eq!(server, synapse.server_name);
    let (status, headers, body) = get(
        &ours.http(),
        format!(
            "{}/_matrix/client/v1/media/download/{server}/{id}",
            ours.url
        ),
        Some(&alice),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        synapse.log()
    );
    assert_eq!(body, theirs);
    assert_eq!(header(&headers, "content-type"), "image/png");
    assert_safe_headers(&headers);
    let (status, headers, thumb) = get(
        &ours.http(),
        format!(
            "{}/_matrix/client/v1/media/thumbnail/{server}/{id}?width=32&height=32&method=crop",
            ours.url
        ),
        Some(&alice),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&thumb)
    );
    assert!(header(&headers, "content-type").starts_with("image/"));
    let (width, height) = decoded_size(&thumb);
    assert!(width <= 64 && height <= 48, "{width}x{height}");

    let mine = png(40, 30);
    let (server, id) = upload(
        &ours.http(),
        &ours.url,
        &alice,
        "image/png",
        "mine.png",
        mine.clone(),
    )
    .await;
    let (status, headers, body) = get(
        &synapse.http(),
        format!(
            "{}/_matrix/client/v1/media/download/{server}/{id}",
            synapse.url
        ),
        Some(&bob),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        synapse.log()
    );
    assert_eq!(body, mine);
    assert_eq!(header(&headers, "content-type"), "image/png");
    // Synapse asked the authenticated federation endpoint, not the deprecated one.
    assert_eq!(
        served(
            &ours,
            &format!("/_matrix/federation/v1/media/download/{id}")
        ),
        1,
        "{}",
        ours.log()
    );
}
