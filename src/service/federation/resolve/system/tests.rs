//! The real well-known fetch against HTTPS servers on 127.0.0.1, and its pieces.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use reqwest::{
    Url,
    header::{CACHE_CONTROL, EXPIRES, HeaderMap, HeaderValue},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

use super::*;

#[test]
fn cache_period_from_headers_reads_cache_control_and_expires() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let period = |pairs: &[(&http::HeaderName, &str)]| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        cache_period_from_headers(&headers, now)
    };
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(period(&[]), None);
    assert_eq!(period(&[(&CACHE_CONTROL, "max-age=3600")]), secs(3600));
    assert_eq!(
        period(&[(&CACHE_CONTROL, "public, Max-Age=\"600\"")]),
        secs(600)
    );
    assert_eq!(
        period(&[(&CACHE_CONTROL, "max-age=3600, no-store")]),
        secs(0)
    );
    assert_eq!(
        period(&[(&CACHE_CONTROL, "public"), (&CACHE_CONTROL, "max-age=60")]),
        secs(60)
    );
    let in_an_hour = httpdate::fmt_http_date(now + Duration::from_secs(3600));
    let an_hour_ago = httpdate::fmt_http_date(now - Duration::from_secs(3600));
    // An unusable max-age falls back to Expires.
    assert_eq!(
        period(&[(&CACHE_CONTROL, "max-age=soon"), (&EXPIRES, &in_an_hour)]),
        secs(3600)
    );
    assert_eq!(period(&[(&EXPIRES, &in_an_hour)]), secs(3600));
    assert_eq!(period(&[(&EXPIRES, &an_hour_ago)]), secs(0));
    assert_eq!(period(&[(&EXPIRES, "0")]), secs(0));
    // max-age wins over Expires.
    assert_eq!(
        period(&[(&CACHE_CONTROL, "max-age=5"), (&EXPIRES, &in_an_hour)]),
        secs(5)
    );
}

#[test]
fn redirects_are_bounded_https_only_and_loop_free() {
    let url = |u: &str| Url::parse(u).unwrap();
    let first = url("https://example.org/.well-known/matrix/server");
    let next = url("https://www.example.org/.well-known/matrix/server");
    assert_eq!(redirect_refusal(&next, std::slice::from_ref(&first)), None);
    assert_eq!(
        redirect_refusal(&first, &[first.clone(), next.clone()]),
        Some("redirect loop")
    );
    assert_eq!(
        redirect_refusal(
            &url("http://www.example.org/.well-known/matrix/server"),
            std::slice::from_ref(&first)
        ),
        Some("redirected away from https")
    );
    let chain: Vec<Url> = (0..=MAX_WELL_KNOWN_REDIRECTS)
        .map(|i| url(&format!("https://r{i}.example.org/")))
        .collect();
    assert_eq!(
        redirect_refusal(&next, &chain[..MAX_WELL_KNOWN_REDIRECTS]),
        None
    );
    assert_eq!(redirect_refusal(&next, &chain), Some("too many redirects"));
}

/// A self-signed certificate for `localhost` (made with openssl, as the black-box tests do).
fn certificate(dir: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    (cert, key)
}

/// TLS offering only HTTP/1.1 (the server's own acceptor offers h2, which this test server
/// does not speak).
fn http1_acceptor(cert: &Path, key: &Path) -> TlsAcceptor {
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// An HTTPS server on 127.0.0.1 that answers every request with `answer(path)`, a whole
/// HTTP/1.1 response, and closes the connection. Returns the host to fetch from.
async fn serve(answer: fn(&str) -> Vec<u8>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(&dir);
    let acceptor = http1_acceptor(&cert, &key);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buffer = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let _ = tls.write_all(&answer(path)).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    // 127.0.0.1 by name, so the certificate's name is the one asked for.
    format!("localhost:{port}")
}

fn response(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn redirect(location: &str) -> Vec<u8> {
    response("302 Found", &format!("Location: {location}\r\n"), "")
}

async fn fetch(host: &str) -> Result<WellKnownResponse, WellKnownError> {
    HttpsWellKnown::new(false, loopback())
        .unwrap()
        .fetch(host)
        .await
}

const BODY: &str = r#"{"m.server": "matrix.example.org:443"}"#;

#[tokio::test]
async fn fetches_the_body_and_its_cache_lifetime() {
    let host = serve(|path| {
        assert_eq!(path, "/.well-known/matrix/server");
        response("200 OK", "Cache-Control: public, max-age=600\r\n", BODY)
    })
    .await;
    let answer = fetch(&host).await.unwrap();
    assert_eq!(answer.body, BODY.as_bytes());
    assert_eq!(answer.cache_for, Some(Duration::from_secs(600)));
}

#[tokio::test]
async fn checks_certificates_unless_told_not_to() {
    let host = serve(|_| response("200 OK", "", BODY)).await;
    let checked = HttpsWellKnown::new(true, loopback())
        .unwrap()
        .fetch(&host)
        .await;
    assert!(
        matches!(checked, Err(WellKnownError::Unavailable(_))),
        "{checked:?}"
    );
    assert!(fetch(&host).await.is_ok());
}

#[tokio::test]
async fn not_found_is_refused_and_server_errors_are_unavailable() {
    let host = serve(|_| response("404 Not Found", "", "")).await;
    assert!(matches!(
        fetch(&host).await,
        Err(WellKnownError::Refused(_))
    ));
    let host = serve(|_| response("503 Service Unavailable", "", "")).await;
    assert!(matches!(
        fetch(&host).await,
        Err(WellKnownError::Unavailable(_))
    ));
}

#[tokio::test]
async fn bodies_over_the_limit_are_unavailable() {
    // With a Content-Length, and without one (read to the end of the connection).
    let host = serve(|_| response("200 OK", "", &" ".repeat(WELL_KNOWN_MAX_SIZE + 1))).await;
    assert!(matches!(
        fetch(&host).await,
        Err(WellKnownError::Unavailable(_))
    ));
    let host = serve(|_| {
        let body = " ".repeat(WELL_KNOWN_MAX_SIZE + 1);
        format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{body}").into_bytes()
    })
    .await;
    assert!(matches!(
        fetch(&host).await,
        Err(WellKnownError::Unavailable(_))
    ));
    let host = serve(|_| response("200 OK", "", &" ".repeat(WELL_KNOWN_MAX_SIZE))).await;
    assert!(fetch(&host).await.is_ok());
}

#[tokio::test]
async fn redirects_are_followed() {
    let host = serve(|path| match path {
        "/.well-known/matrix/server" => redirect("/moved"),
        "/moved" => redirect("/moved/again"),
        _ => response("200 OK", "", BODY),
    })
    .await;
    assert_eq!(fetch(&host).await.unwrap().body, BODY.as_bytes());
}

#[tokio::test]
async fn redirect_loops_and_chains_are_not_followed() {
    let host = serve(|path| match path {
        "/.well-known/matrix/server" => redirect("/a"),
        _ => redirect("/.well-known/matrix/server"),
    })
    .await;
    let error = fetch(&host).await.unwrap_err();
    assert!(matches!(error, WellKnownError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains("redirect loop"), "{error}");
    let host = serve(|path| {
        let n: u32 = path.trim_start_matches("/r").parse().unwrap_or(0);
        redirect(&format!("/r{}", n + 1))
    })
    .await;
    let error = fetch(&host).await.unwrap_err();
    assert!(error.to_string().contains("too many redirects"), "{error}");
    let host = serve(|_| redirect("http://localhost:1/.well-known/matrix/server")).await;
    assert!(matches!(
        fetch(&host).await,
        Err(WellKnownError::Unavailable(_))
    ));
}

/// The test servers run on loopback, which is not public: allowed explicitly.
fn loopback() -> Vec<ipnet::IpNet> {
    vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
}

#[tokio::test]
async fn well_known_hosts_at_private_addresses_are_refused_unless_allowed() {
    let refused = HttpsWellKnown::new(false, Vec::new())
        .unwrap()
        .fetch("localhost:1")
        .await;
    match refused {
        Err(WellKnownError::Unavailable(reason)) => {
            assert!(reason.contains("public"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Requests the redirect test's server answered.
static REDIRECT_HITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The federation client never follows a redirect (server-server API: servers "MUST NOT"
/// follow them): a 302 is an error naming the server, and the place it points to is never
/// asked.
#[tokio::test]
async fn federation_requests_never_follow_redirects() {
    use crate::service::{federation::client::FederationClient, server_keys::ServerKeys};
    let host = serve(|path| {
        REDIRECT_HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(!path.contains("redirected"), "the redirect was followed");
        redirect("/_matrix/federation/v1/version?redirected=1")
    })
    .await;
    let db = crate::storage::Db::memory();
    let client = FederationClient::new(
        ruma::server_name!("origin.test").to_owned(),
        Arc::new(ServerKeys::load_or_generate(&db).unwrap()),
        Arc::new(super::super::Resolver::system(false, loopback()).unwrap()),
        false,
        loopback(),
    )
    .unwrap();
    let destination = <&ruma::ServerName>::try_from(host.as_str()).unwrap();
    let answer = client
        .send(
            destination,
            ruma::api::federation::discovery::get_server_version::v1::Request::new(),
        )
        .await;
    match answer {
        Err(crate::Error::Matrix {
            status, message, ..
        }) => {
            assert_eq!(status, http::StatusCode::BAD_GATEWAY);
            assert!(message.contains(&host), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(REDIRECT_HITS.load(std::sync::atomic::Ordering::SeqCst), 1);
}
