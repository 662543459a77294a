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

/// A server of another kind on 127.0.0.1 over HTTPS (Python's standard library), for what
/// neither our server nor Synapse does: it has no federation media endpoints for `old`
/// (`404 M_UNRECOGNIZED`, so the deprecated endpoint is asked), answers `loc` with a
/// `Location` part, and `big` with more than the asking server's limit. It prints each
/// path it is asked for as one line.
const OTHER_SERVER: &str = r#"
import http.server, json, ssl, sys
class Server(http.server.BaseHTTPRequestHandler):
    def answer(self, status, content_type, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
    def multipart(self, part):
        body = (b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n" + part
                + b"\r\n--b--\r\n")
        self.answer(200, "multipart/mixed; boundary=b", body)
    def do_GET(self):
        print(self.path, flush=True)
        port = self.server.server_address[1]
        if self.path.startswith("/_matrix/federation/v1/media/download/old"):
            self.answer(404, "application/json",
                        json.dumps({"errcode": "M_UNRECOGNIZED", "error": "?"}).encode())
        elif self.path.startswith("/_matrix/media/v3/download/"):
            self.answer(200, "text/plain", b"from the old endpoint",
                        [("Content-Disposition", 'attachment; filename="old.txt"')])
        elif self.path.startswith("/_matrix/federation/v1/media/download/loc"):
            self.multipart(b"Location: https://127.0.0.1:%d/files/loc\r\n\r\n" % port)
        elif self.path == "/files/loc":
            self.answer(200, "text/plain", b"from the location")
        elif self.path.startswith("/_matrix/federation/v1/media/download/big"):
            self.multipart(b"Content-Type: text/plain\r\n\r\n" + b"x" * 200000)
        else:
            self.answer(404, "application/json",
                        json.dumps({"errcode": "M_NOT_FOUND", "error": "no"}).encode())
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Kills the other server when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next path the other server printed that starts with `prefix` (bounded: 10 s).
fn next_asked(asked: &std::sync::mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match asked.recv_timeout(left) {
            Ok(path) if path.starts_with(prefix) => return path,
            Ok(_) => continue,
            Err(_) => panic!("the other server was not asked for {prefix}"),
        }
    }
}

/// A server without the federation media endpoints is asked through the deprecated one
/// (with `allow_remote=false`); a `Location` part is followed; an answer larger than our
/// limit is `502 M_TOO_LARGE` and nothing is kept.
#[tokio::test]
async fn an_old_server_a_location_and_too_much_are_handled() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let (certificate, key) = crate::harness::self_signed_certificate(dir.path());
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(OTHER_SERVER)
        .arg(&certificate)
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the other server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _other = Killed(child);
    let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let (sender, asked) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let other = format!("localhost:{port}");

    let ours = TestServer::federating_with_env(&[("CONDUIT_MAX_REQUEST_SIZE", "65536")]);
    let alice = ours.register("alice", "correct horse").await;
    let download = |id: &str| format!("{}/_matrix/client/v1/media/download/{other}/{id}", ours.url);

    let (status, headers, body) = get(&ours.http(), download("old"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"from the old endpoint");
    assert_eq!(header(&headers, "content-type"), "text/plain");
    assert_eq!(
        header(&headers, "content-disposition"),
        "inline; filename=\"old.txt\""
    );
    let legacy = next_asked(&asked, "/_matrix/media/v3/download/");
    assert!(
        legacy.starts_with(&format!("/_matrix/media/v3/download/{other}/old?"))
            && legacy.contains("allow_remote=false"),
        "{legacy}"
    );

    let (status, _, body) = get(&ours.http(), download("loc"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"from the location");

    for _ in 0..2 {
        let (status, _, body) = get(&ours.http(), download("big"), Some(&alice)).await;
        let (errcode, json) = error(&body);
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{json}");
        assert_eq!(errcode, "M_TOO_LARGE", "{json}");
    }
    // Refused answers are not kept: each request asked again.
    next_asked(&asked, "/_matrix/federation/v1/media/download/big");
    next_asked(&asked, "/_matrix/federation/v1/media/download/big");
}
