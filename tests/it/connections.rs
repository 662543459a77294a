//! Slow, idle and surplus connections: the header and keep-alive timeouts close them, the
//! connection cap holds, and ordinary clients are served throughout.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::TestServer;

/// The header and keep-alive timeouts the tests configure, in seconds.
const TIMEOUT_SECS: u64 = 4;
const TIMEOUT: Duration = Duration::from_secs(TIMEOUT_SECS);
/// Slack for a loaded 2-core machine; every wait below is bounded by it.
const MARGIN: Duration = Duration::from_secs(15);
const STALLED: usize = 2_000;

/// This process holds thousands of sockets: raise its own soft open-files limit.
fn raise_own_open_files_limit(needed: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_max
    );
}

fn address(server: &TestServer) -> SocketAddr {
    server
        .url
        .strip_prefix("http://")
        .expect("plain HTTP server")
        .parse()
        .expect("socket address")
}

/// A client that opens a new connection for every request, as a new client would.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(MARGIN)
        .build()
        .unwrap()
}

/// Reads until the server closes `stream` (EOF or reset) or `deadline` passes; returns when
/// it was closed, or `None`. Anything the server sends first (a 408, say) is read past.
async fn closed_at(mut stream: TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_while_others_are_served() {
    raise_own_open_files_limit(STALLED as libc::rlim_t + 512);
    let timeout = TIMEOUT_SECS.to_string();
    let server = TestServer::with_env(&[
        ("CONDUIT_HEADER_TIMEOUT", &timeout),
        ("CONDUIT_KEEPALIVE_TIMEOUT", &timeout),
    ]);
    let token = server.register("alice", "correct horse").await;
    let address = address(&server);
    let client = fresh_connections();
    let versions = format!("{}/_matrix/client/versions", server.url);

    // 2,000 connections that never finish a request: some send nothing, some half a
    // request line, some a request line and headers without the blank line that ends them.
    let partials: [&[u8]; 3] = [
        b"",
        b"GET /_matrix/cl",
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n",
    ];
    let mut stalled = Vec::with_capacity(STALLED);
    for n in 0..STALLED {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(partials[n % 3]).await.unwrap();
        stalled.push((Instant::now(), stream));
        if n % 500 == 0 {
            // Served while the stalled connections pile up.
            let started = Instant::now();
            let response = client.get(&versions).send().await.expect("versions");
            assert_eq!(response.status(), StatusCode::OK);
            assert!(started.elapsed() < TIMEOUT, "slow: {:?}", started.elapsed());
        }
    }
    let all_open = Instant::now();
    let last_opened = stalled.last().unwrap().0;

    // Meanwhile, beside the stalled connections (the latest opened less than TIMEOUT ago),
    // a new client logs in, syncs and asks for the versions, promptly.
    let started = Instant::now();
    let (status, body) = server.login("alice", "correct horse").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .client_api(&token, Method::GET, "/sync?timeout=0", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next_batch"].is_string(), "{body}");
    let response = client.get(&versions).send().await.expect("versions");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() < TIMEOUT,
        "ordinary requests took {:?} beside {STALLED} stalled connections",
        started.elapsed()
    );

    // Every stalled connection is closed by the server: not before its timeout, and all of
    // them within the timeout (plus slack) of the last one opening.
    let deadline = last_opened + TIMEOUT + MARGIN;
    let closes = futures_util::future::join_all(
        stalled
            .into_iter()
            .map(|(opened, stream)| async move { (opened, closed_at(stream, deadline).await) }),
    )
    .await;
    let mut still_open = 0;
    for (opened, closed) in closes {
        match closed {
            None => still_open += 1,
            Some(closed) => {
                // The server's clock starts at accept, which is after our connect returned.
                let lived = closed.duration_since(opened);
                assert!(
                    lived + Duration::from_millis(200) >= TIMEOUT,
                    "closed after {lived:?}, before the {TIMEOUT:?} timeout"
                );
            }
        }
    }
    assert_eq!(
        still_open,
        0,
        "stalled connections still open {:?} after the last was opened",
        TIMEOUT + MARGIN
    );
    assert!(all_open.elapsed() <= TIMEOUT + MARGIN + Duration::from_secs(1));

    // And the server still serves.
    let response = client.get(&versions).send().await.expect("versions");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let timeout = TIMEOUT_SECS.to_string();
    let server = TestServer::with_env(&[
        ("CONDUIT_HEADER_TIMEOUT", "30"),
        ("CONDUIT_KEEPALIVE_TIMEOUT", &timeout),
    ]);
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    stream
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Read the whole response (it fits one read on loopback, but do not rely on that).
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let answered = loop {
        let read = tokio::time::timeout(MARGIN, stream.read(&mut buffer))
            .await
            .expect("response in time")
            .unwrap();
        assert!(read > 0, "closed before answering");
        response.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&response);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length: usize = text[..head_end]
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if response.len() >= head_end + 4 + length {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                break Instant::now();
            }
        }
    };
    // Kept alive, then closed once idle for keepalive_timeout (header_timeout is longer).
    let closed = closed_at(stream, answered + TIMEOUT + MARGIN)
        .await
        .unwrap_or_else(|| panic!("the idle connection is still open; log:\n{}", server.log()));
    let idle = closed.duration_since(answered);
    assert!(
        idle + Duration::from_millis(200) >= TIMEOUT,
        "closed after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_long_polls_do_not_count_as_requests() {
    let timeout = TIMEOUT_SECS.to_string();
    let server = TestServer::with_env(&[
        ("CONDUIT_HEADER_TIMEOUT", &timeout),
        ("CONDUIT_KEEPALIVE_TIMEOUT", "30"),
        ("CONDUIT_MAX_CONNECTIONS", "20"),
        ("CONDUIT_MAX_CONCURRENT_REQUESTS", "1"),
    ]);
    let token = server.register("bob", "correct horse").await;
    let (status, body) = server
        .client_api(&token, Method::GET, "/sync?timeout=0", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Three long-polls wait (10 s) under a cap of one request at a time; they use 3 of the
    // 20 connections. Their waiting must not hold up other requests.
    let polls: Vec<_> = (0..3)
        .map(|_| {
            let (url, token, since) = (server.url.clone(), token.clone(), since.clone());
            tokio::spawn(async move {
                fresh_connections()
                    .get(format!(
                        "{url}/_matrix/client/v3/sync?since={since}&timeout=10000"
                    ))
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|response| response.status())
            })
        })
        .collect();
    let client = fresh_connections();
    let versions = format!("{}/_matrix/client/versions", server.url);
    // Give the long-polls a moment to reach the server. Should one not have arrived yet,
    // the checks below only prove less; they cannot fail for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = server.whoami(&token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            started.elapsed() < TIMEOUT,
            "a request waited {:?} behind long-polls",
            started.elapsed()
        );
    }

    // Fill the remaining connections with stalled ones; the next client waits until the
    // header timeout frees a place, and is then served.
    let mut stalled = Vec::new();
    for _ in 0..17 {
        stalled.push(TcpStream::connect(address(&server)).await.unwrap());
    }
    let started = Instant::now();
    let response = client
        .get(&versions)
        .send()
        .await
        .expect("served in the end");
    assert_eq!(response.status(), StatusCode::OK);
    let waited = started.elapsed();
    assert!(
        waited + Duration::from_millis(500) >= TIMEOUT,
        "answered after {waited:?}: the cap of 20 connections did not hold"
    );
    for poll in polls {
        assert_eq!(poll.await.unwrap().expect("long-poll"), StatusCode::OK);
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_holds_no_turn_for_ever() {
    let timeout = TIMEOUT_SECS.to_string();
    let server = TestServer::with_env(&[
        ("CONDUIT_HEADER_TIMEOUT", &timeout),
        ("CONDUIT_MAX_CONCURRENT_REQUESTS", "1"),
    ]);
    let token = server.register("carol", "correct horse").await;

    // A login whose head is complete but whose body stops after 8 of its 100 bytes.
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    stream
        .write_all(
            b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":",
        )
        .await
        .unwrap();
    let sent = Instant::now();

    // With one request handled at a time, another request is served: at once, or once the
    // stalled one has given up its turn.
    let (status, body) = tokio::time::timeout(TIMEOUT + MARGIN, server.whoami(&token))
        .await
        .expect("whoami waited for ever behind a stalled body");
    assert_eq!(status, StatusCode::OK, "{body}");

    // The stalled request fails after header_timeout without a byte, with a 400.
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read =
            tokio::time::timeout_at((sent + TIMEOUT + MARGIN).into(), stream.read(&mut buffer))
                .await
                .expect("the stalled request is answered")
                .unwrap();
        assert!(read > 0, "closed without an answer");
        head.extend_from_slice(&buffer[..read]);
    }
    let waited = sent.elapsed();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        waited + Duration::from_millis(200) >= TIMEOUT,
        "answered after {waited:?}, before the body timeout"
    );
}
