//! The media repository: matrix-sdk uploads and downloads (authenticated endpoints, as Element
//! X uses them), thumbnails, asynchronous uploads, the security headers browsers need, size
//! limits, durability across `kill -9`, the admin commands, and URL previews that never reach
//! private addresses. Raw HTTP for headers and error cases.

use std::time::Duration;

use matrix_sdk::{
    Client,
    media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{OwnedMxcUri, events::room::MediaSource, media::Method as ThumbnailMethod, uint},
};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use crate::harness::{TestServer, assert_error, http};

const PASSWORD: &str = "pw pw pw";

async fn logged_in(server: &TestServer, name: &str) -> (Client, String) {
    let token = server.register(name, PASSWORD).await;
    let client = server.client().await;
    client
        .matrix_auth()
        .login_username(name, PASSWORD)
        .send()
        .await
        .expect("login");
    (client, token)
}

/// A `width` x `height` RGB gradient as PNG.
pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// `len` bytes that do not repeat in any short period (stands in for encoded audio).
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn media_id(uri: &OwnedMxcUri) -> String {
    uri.media_id().unwrap().to_owned()
}

/// A raw GET; returns status, headers and body bytes.
async fn get(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let mut request = http().get(format!("{}{path}", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// A raw upload through `POST /_matrix/media/v3/upload`.
async fn upload(
    server: &TestServer,
    token: &str,
    content_type: &str,
    filename: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut url = format!("{}/_matrix/media/v3/upload", server.url);
    if let Some(name) = filename {
        url.push_str(&format!("?filename={name}"));
    }
    let response = http()
        .post(url)
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = response.status();
    (status, json(&response.bytes().await.unwrap()))
}

pub(crate) fn header<'a>(headers: &'a header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

/// The headers every media response must carry so a browser never runs uploaded content.
#[track_caller]
pub(crate) fn assert_safe_headers(headers: &header::HeaderMap) {
    let csp = header(headers, "content-security-policy");
    assert!(csp.starts_with("sandbox;"), "{csp}");
    assert!(csp.contains("script-src 'none'"), "{csp}");
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(headers, "cross-origin-resource-policy"),
        "cross-origin"
    );
}

pub(crate) fn decoded_size(bytes: &[u8]) -> (u32, u32) {
    let image = image::load_from_memory(bytes).expect("an image");
    (image.width(), image.height())
}

#[tokio::test]
async fn images_and_voice_messages_reach_another_user_byte_identical() {
    let server = TestServer::start();
    let (alice, _) = logged_in(&server, "alice").await;
    let (bob, bob_token) = logged_in(&server, "bob").await;

    let image = png(640, 480);
    let voice = noise(300 * 1024, 7);
    let image_uri = alice
        .media()
        .upload(&mime::IMAGE_PNG, image.clone(), None)
        .await
        .expect("upload image")
        .content_uri;
    let voice_uri = alice
        .media()
        .upload(&"audio/ogg".parse().unwrap(), voice.clone(), None)
        .await
        .expect("upload voice message")
        .content_uri;
    assert_eq!(image_uri.server_name().unwrap(), "localhost");
    assert_ne!(image_uri, voice_uri);

    // bob downloads both through the authenticated endpoints (matrix-sdk picks them because
    // /versions lists v1.11).
    for (uri, original) in [(&image_uri, &image), (&voice_uri, &voice)] {
        let request = MediaRequestParameters {
            source: MediaSource::Plain(uri.clone()),
            format: MediaFormat::File,
        };
        let downloaded = bob
            .media()
            .get_media_content(&request, false)
            .await
            .unwrap();
        assert!(downloaded == *original, "{uri} is not byte-identical");
    }

    // A 96x96 crop thumbnail, as clients request for avatars.
    let request = MediaRequestParameters {
        source: MediaSource::Plain(image_uri.clone()),
        format: MediaFormat::Thumbnail(MediaThumbnailSettings::with_method(
            ThumbnailMethod::Crop,
            uint!(96),
            uint!(96),
        )),
    };
    let thumbnail = bob
        .media()
        .get_media_content(&request, false)
        .await
        .unwrap();
    assert_eq!(decoded_size(&thumbnail), (96, 96));

    // A scaled one over raw HTTP: type, size and inline disposition.
    let id = media_id(&image_uri);
    let (status, headers, body) = get(
        &server,
        &format!(
            "/_matrix/client/v1/media/thumbnail/localhost/{id}?width=320&height=240&method=scale"
        ),
        Some(&bob_token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), "image/png");
    assert_eq!(decoded_size(&body), (320, 240));
    assert_eq!(
        header(&headers, "content-disposition"),
        "inline; filename=\"thumbnail.png\""
    );
    assert_safe_headers(&headers);

    // The download's own headers; a file name in the path names the file.
    let (status, headers, body) = get(
        &server,
        &format!("/_matrix/client/v1/media/download/localhost/{id}/holiday.png"),
        Some(&bob_token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == image);
    assert_eq!(header(&headers, "content-type"), "image/png");
    assert_eq!(header(&headers, "content-length"), image.len().to_string());
    assert_eq!(
        header(&headers, "content-disposition"),
        "inline; filename=\"holiday.png\""
    );
    assert_safe_headers(&headers);

    // The voice message is inline too (audio/ogg is on the spec's list).
    let (_, headers, _) = get(
        &server,
        &format!(
            "/_matrix/client/v1/media/download/localhost/{}",
            media_id(&voice_uri)
        ),
        Some(&bob_token),
    )
    .await;
    assert_eq!(header(&headers, "content-type"), "audio/ogg");
    assert_eq!(header(&headers, "content-disposition"), "inline");

    // The authenticated endpoint needs a token; the deprecated one does not (on by default).
    let path = format!("/_matrix/client/v1/media/download/localhost/{id}");
    let (status, headers, body) = get(&server, &path, None).await;
    assert_error(
        &(status, json(&body)),
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    assert_safe_headers(&headers);
    let (status, _, body) = get(
        &server,
        &format!("/_matrix/media/v3/download/localhost/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == image);
    let (status, _, body) = get(
        &server,
        &format!("/_matrix/media/v3/thumbnail/localhost/{id}?width=32&height=32&method=crop"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decoded_size(&body), (32, 32));

    // /config tells clients the upload limit (the default max_request_size).
    let (status, _, body) = get(&server, "/_matrix/client/v1/media/config", Some(&bob_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["m.upload.size"], 20 * 1024 * 1024);
}

#[tokio::test]
async fn uploaded_html_and_svg_are_served_as_attachments() {
    let server = TestServer::start();
    let token = server.register("mallory", PASSWORD).await;
    let html = b"<html><script>fetch('/_matrix/client/v3/account/whoami')</script></html>".to_vec();
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>".to_vec();
    for (content_type, name, body) in [
        ("text/html", "page.html", html),
        ("image/svg+xml", "drawing.svg", svg),
    ] {
        let (status, uploaded) =
            upload(&server, &token, content_type, Some(name), body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{uploaded}");
        let uri = OwnedMxcUri::from(uploaded["content_uri"].as_str().unwrap());
        for path in [
            format!(
                "/_matrix/client/v1/media/download/localhost/{}",
                media_id(&uri)
            ),
            format!("/_matrix/media/v3/download/localhost/{}", media_id(&uri)),
        ] {
            let (status, headers, downloaded) = get(&server, &path, Some(&token)).await;
            assert_eq!(status, StatusCode::OK);
            assert!(downloaded == body);
            // The type is what was uploaded; the disposition keeps browsers from rendering it.
            assert_eq!(header(&headers, "content-type"), content_type);
            assert_eq!(
                header(&headers, "content-disposition"),
                format!("attachment; filename=\"{name}\"")
            );
            assert_safe_headers(&headers);
        }
    }
}

#[tokio::test]
async fn too_large_unknown_and_unthumbnailable_media_get_their_errors() {
    let server = TestServer::with_env(&[("CONDUIT_MAX_REQUEST_SIZE", "65536")]);
    let token = server.register("alice", PASSWORD).await;

    // Declared too large: refused from the Content-Length.
    let (status, body) = upload(&server, &token, "video/mp4", None, vec![0; 100_000]).await;
    assert_error(
        &(status, body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // Streamed without a length: refused once the limit is passed, nothing kept.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..25).map(|_| Ok(vec![1u8; 4096])).collect();
    let response = http()
        .post(format!("{}/_matrix/media/v3/upload", server.url))
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = json(&response.bytes().await.unwrap());
    assert_error(
        &(status, body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    let media_dir = server.data_dir().join("media");
    let leftovers: Vec<_> = std::fs::read_dir(media_dir.join("tmp"))
        .map(|dir| dir.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "half uploads left behind: {leftovers:?}"
    );
    assert!(!media_dir.join("blobs").exists());
    // Exactly the limit is fine.
    let (status, _) = upload(&server, &token, "video/mp4", None, vec![2; 65536]).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = get(&server, "/_matrix/client/v1/media/config", Some(&token)).await;
    assert_eq!(json(&body)["m.upload.size"], 65536);

    // Unknown, malformed, remote.
    for path in [
        "/_matrix/client/v1/media/download/localhost/NoSuchMediaId",
        "/_matrix/client/v1/media/download/localhost/..%2F..%2Fetc%2Fpasswd",
        "/_matrix/client/v1/media/download/matrix.org/SomeRemoteMedia",
        "/_matrix/client/v1/media/download/not%20a%20server/SomeMedia",
        "/_matrix/client/v1/media/thumbnail/localhost/NoSuchMediaId?width=32&height=32",
    ] {
        let (status, headers, body) = get(&server, path, Some(&token)).await;
        assert_error(&(status, json(&body)), StatusCode::NOT_FOUND, "M_NOT_FOUND");
        assert_safe_headers(&headers);
    }

    // Thumbnails: not an image, missing size, a decompression bomb, a tiny image.
    let (_, text) = upload(&server, &token, "text/plain", None, b"just text".to_vec()).await;
    let text_id = media_id(&OwnedMxcUri::from(text["content_uri"].as_str().unwrap()));
    let path = format!("/_matrix/client/v1/media/thumbnail/localhost/{text_id}");
    let (status, _, body) = get(&server, &format!("{path}?width=96&height=96"), Some(&token)).await;
    assert_error(&(status, json(&body)), StatusCode::BAD_REQUEST, "M_UNKNOWN");
    let (status, _, body) = get(&server, &format!("{path}?width=96"), Some(&token)).await;
    assert_error(
        &(status, json(&body)),
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    let (status, _, body) = get(
        &server,
        &format!("{path}?width=96&height=96&method=stretch"),
        Some(&token),
    )
    .await;
    assert_error(
        &(status, json(&body)),
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // A file name longer than 1024 bytes is refused before the body is read.
    let long_name = "n".repeat(1025);
    let response = upload(
        &server,
        &token,
        "text/plain",
        Some(&long_name),
        b"x".to_vec(),
    )
    .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // A PNG claiming 16000 x 16000 pixels (256 megapixels): refused before decoding, also
    // when asked again at another size (the refusal is remembered, not decoded again).
    let (_, bomb) = upload(
        &server,
        &token,
        "image/png",
        None,
        png_header(16_000, 16_000),
    )
    .await;
    let bomb_id = media_id(&OwnedMxcUri::from(bomb["content_uri"].as_str().unwrap()));
    for size in ["width=96&height=96", "width=32&height=32&method=crop"] {
        let path = format!("/_matrix/client/v1/media/thumbnail/localhost/{bomb_id}?{size}");
        let (status, _, body) = get(&server, &path, Some(&token)).await;
        assert_error(
            &(status, json(&body)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
        );
    }

    // Smaller than the request: the original comes back, never upscaled.
    let tiny = png(20, 20);
    let (_, uploaded) = upload(&server, &token, "image/png", None, tiny.clone()).await;
    let tiny_id = media_id(&OwnedMxcUri::from(
        uploaded["content_uri"].as_str().unwrap(),
    ));
    let (status, headers, body) = get(
        &server,
        &format!(
            "/_matrix/client/v1/media/thumbnail/localhost/{tiny_id}?width=96&height=96&method=crop"
        ),
        Some(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == tiny);
    assert_eq!(header(&headers, "content-type"), "image/png");
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG claiming `width` x `height` (8-bit RGBA) whose pixel data is one empty zlib stream:
/// what a decompression bomb looks like up to its first data chunk.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", header.as_slice()),
        (
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01][..],
        ),
        (b"IEND", &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

/// `PUT /_matrix/media/v3/upload/{server}/{id}` with a raw body.
async fn put_content(
    server: &TestServer,
    token: &str,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let id = uri.rsplit('/').next().unwrap();
    let response = http()
        .put(format!(
            "{}/_matrix/media/v3/upload/localhost/{id}",
            server.url
        ))
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, "image/png")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, json(&response.bytes().await.unwrap()))
}

#[tokio::test]
async fn asynchronous_upload_create_then_put() {
    let server = TestServer::start();
    let (alice, alice_token) = logged_in(&server, "alice").await;
    let bob_token = server.register("bob", PASSWORD).await;

    // matrix-sdk's preallocated upload (what Element X's send queue does).
    let preallocated = alice.media().create_content_uri().await.unwrap();
    let image = png(64, 48);
    let uri = preallocated.uri.clone();
    alice
        .media()
        .upload_preallocated(preallocated, &mime::IMAGE_PNG, image.clone())
        .await
        .unwrap();
    let path = format!(
        "/_matrix/client/v1/media/download/localhost/{}",
        media_id(&uri)
    );
    let (status, _, body) = get(&server, &path, Some(&bob_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == image);

    // Raw: the spec's errors around a pending id.
    let (status, created) = server
        .request(
            Method::POST,
            "/_matrix/media/v1/create",
            Some(&alice_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let pending = created["content_uri"].as_str().unwrap().to_owned();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expires = created["unused_expires_at"]
        .as_u64()
        .expect("unused_expires_at");
    assert!(expires > now_ms + 23 * 3600 * 1000, "{created}");
    let path = format!(
        "/_matrix/client/v1/media/download/localhost/{}",
        pending.rsplit('/').next().unwrap()
    );
    let (status, _, body) = get(&server, &format!("{path}?timeout_ms=100"), Some(&bob_token)).await;
    assert_error(
        &(status, json(&body)),
        StatusCode::GATEWAY_TIMEOUT,
        "M_NOT_YET_UPLOADED",
    );
    let response = put_content(&server, &bob_token, &pending, vec![1, 2, 3]).await;
    assert_error(&response, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // A download that is already waiting gets the content as soon as it arrives.
    let waiting = {
        let (url, token) = (
            format!("{}{path}?timeout_ms=20000", server.url),
            bob_token.clone(),
        );
        tokio::spawn(async move {
            let response = http().get(url).bearer_auth(token).send().await.unwrap();
            (response.status(), response.bytes().await.unwrap().to_vec())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let content = noise(10_000, 3);
    let (status, body) = put_content(&server, &alice_token, &pending, content.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, downloaded) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting download finishes")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(downloaded == content);

    let response = put_content(&server, &alice_token, &pending, vec![9]).await;
    assert_error(&response, StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA");
    let response = put_content(
        &server,
        &alice_token,
        "mxc://localhost/NeverCreated",
        vec![9],
    )
    .await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // At most ten pending ids per user.
    for _ in 0..10 {
        let (status, _) = server
            .request(
                Method::POST,
                "/_matrix/media/v1/create",
                Some(&alice_token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let response = server
        .request(
            Method::POST,
            "/_matrix/media/v1/create",
            Some(&alice_token),
            None,
        )
        .await;
    assert_error(&response, StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED");
}

/// Files under `media/blobs`.
fn blob_count(server: &TestServer) -> usize {
    let blobs = server.data_dir().join("media").join("blobs");
    let Ok(dirs) = std::fs::read_dir(blobs) else {
        return 0;
    };
    dirs.map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap().count())
        .sum()
}

#[tokio::test]
async fn media_survives_kill_9_and_admin_commands_delete_it() {
    let mut server = TestServer::start();
    let token = server.register("alice", PASSWORD).await;
    let photo = png(800, 600);
    let (_, first) = upload(&server, &token, "image/png", Some("a.png"), photo.clone()).await;
    let (_, second) = upload(&server, &token, "image/png", Some("b.png"), photo.clone()).await;
    let first = first["content_uri"].as_str().unwrap().to_owned();
    let second = second["content_uri"].as_str().unwrap().to_owned();
    let id = |uri: &str| uri.rsplit('/').next().unwrap().to_owned();
    let (status, _, _) = get(
        &server,
        &format!(
            "/_matrix/client/v1/media/thumbnail/localhost/{}?width=96&height=96&method=crop",
            id(&first)
        ),
        Some(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, voice) = upload(&server, &token, "audio/ogg", None, noise(50_000, 9)).await;
    let voice = voice["content_uri"].as_str().unwrap().to_owned();
    server.kill9();
    server.restart();

    for (uri, expected) in [(&first, &photo), (&second, &photo)] {
        let path = format!("/_matrix/client/v1/media/download/localhost/{}", id(uri));
        let (status, headers, body) = get(&server, &path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{uri} after kill -9");
        assert!(body == *expected);
        assert_eq!(header(&headers, "content-type"), "image/png");
    }
    // Identical uploads share one file: photo, its thumbnail, the voice message.
    assert_eq!(blob_count(&server), 3);

    server.stop();
    // A file nothing refers to (as a crash between an upload's rename and its metadata
    // write leaves behind) is swept at the next start; referenced ones stay.
    let orphan_dir = server.data_dir().join("media").join("blobs").join("ff");
    std::fs::create_dir_all(&orphan_dir).unwrap();
    std::fs::write(orphan_dir.join("ff".repeat(32)), b"orphan").unwrap();
    assert_eq!(blob_count(&server), 4);
    server.restart();
    assert_eq!(blob_count(&server), 3);
    server.stop();
    let output = server.admin(&["media", "list", "alice"]);
    let listing = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{output:?}");
    for uri in [&first, &second, &voice] {
        assert!(
            listing.contains(uri.as_str()),
            "{uri} missing from {listing}"
        );
    }
    assert!(
        listing.contains("a.png") && listing.contains("audio/ogg"),
        "{listing}"
    );

    let output = server.admin(&["media", "delete", &first]);
    assert!(output.status.success(), "{output:?}");
    // The photo's file is still used by the second upload; the first one's thumbnail went.
    assert_eq!(blob_count(&server), 2);
    let output = server.admin(&["media", "delete", "mxc://localhost/NoSuchMedia"]);
    assert!(!output.status.success());

    let output = server.admin(&["media", "purge-user", "alice"]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("deleted 2"));
    assert_eq!(blob_count(&server), 0);

    server.restart();
    for uri in [&first, &second, &voice] {
        let path = format!("/_matrix/client/v1/media/download/localhost/{}", id(uri));
        let (status, _, body) = get(&server, &path, Some(&token)).await;
        assert_error(&(status, json(&body)), StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
}

#[tokio::test]
async fn legacy_media_can_be_turned_off() {
    let server = TestServer::with_env(&[("CONDUIT_ALLOW_LEGACY_MEDIA", "false")]);
    let token = server.register("alice", PASSWORD).await;
    let (_, uploaded) = upload(&server, &token, "image/png", None, png(10, 10)).await;
    let id = media_id(&OwnedMxcUri::from(
        uploaded["content_uri"].as_str().unwrap(),
    ));
    let (status, _, body) = get(
        &server,
        &format!("/_matrix/media/v3/download/localhost/{id}"),
        None,
    )
    .await;
    assert_error(&(status, json(&body)), StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, _, _) = get(
        &server,
        &format!("/_matrix/client/v1/media/download/localhost/{id}"),
        Some(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// `GET /_matrix/client/v1/media/preview_url?url=…`
async fn preview(server: &TestServer, token: &str, url: &str) -> (StatusCode, Value) {
    let encoded: String = url
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let path = format!("/_matrix/client/v1/media/preview_url?url={encoded}");
    let (status, _, body) = get(server, &path, Some(token)).await;
    (status, json(&body))
}

#[tokio::test]
async fn url_previews_are_off_by_default_and_never_reach_private_addresses() {
    // A local web server the preview must never reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    let server = TestServer::start();
    let token = server.register("alice", PASSWORD).await;
    let response = preview(&server, &token, &format!("http://127.0.0.1:{port}/")).await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    drop(server);

    let server = TestServer::with_env(&[("CONDUIT_ALLOW_URL_PREVIEW", "true")]);
    let token = server.register("alice", PASSWORD).await;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"), // 127.0.0.1 as one number
        "http://10.0.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let response = preview(&server, &token, &url).await;
        assert_error(&response, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    let response = preview(&server, &token, "file:///etc/passwd").await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // Nothing connected to the local web server.
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "a preview reached a loopback address");
}
