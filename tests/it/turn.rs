//! `voip/turnServer` against a real TURN server: coturn (installed by `.ci/run` from
//! Debian's packages) runs on 127.0.0.1 with the same shared secret, and its own client,
//! `turnutils_uclient`, allocates a relay with the credentials our server handed out.

use std::{
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::TestServer;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// One allocation (and a short exchange) with `turnutils_uclient`.
fn allocate(port: u16, username: &str, password: &str) -> Output {
    let peer_port = free_port().to_string();
    Command::new("timeout")
        .args([
            "20",
            "turnutils_uclient",
            "-p",
            &port.to_string(),
            "-u",
            username,
        ])
        .args([
            "-w",
            password,
            "-n",
            "1",
            "-m",
            "1",
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
        ])
        .arg("127.0.0.1")
        .output()
        .expect("turnutils_uclient runs (coturn is installed by .ci/run)")
}

fn allocated(output: &Output) -> bool {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.status.success() && !text.contains("Cannot complete Allocation")
}

#[tokio::test]
async fn turn_credentials_are_accepted_by_coturn() {
    let secret = format!("secret-{}", free_port());
    let port = free_port();
    let state = tempfile::tempdir().expect("temp dir");
    let _coturn = KillOnDrop(
        Command::new("turnserver")
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
            ])
            .args(["--realm=localhost", "--no-tls", "--no-dtls", "--no-cli"])
            .args([
                "--allow-loopback-peers",
                "--log-file=stdout",
                "--simple-log",
            ])
            .arg(format!(
                "--pidfile={}",
                state.path().join("turn.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver runs (coturn is installed by .ci/run)"),
    );

    let uris = format!("[\"turn:127.0.0.1:{port}?transport=udp\"]");
    let server = TestServer::with_env(&[
        ("CONDUIT_TURN_URIS", uris.as_str()),
        ("CONDUIT_TURN_SECRET", secret.as_str()),
        ("CONDUIT_TURN_TTL", "600"),
    ]);
    let token = server.register("alice", "pw pw pw").await;
    let (status, turn) = server
        .request(
            Method::GET,
            "/_matrix/client/v3/voip/turnServer",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{turn}");
    assert_eq!(
        turn["uris"],
        json!([format!("turn:127.0.0.1:{port}?transport=udp")])
    );
    assert_eq!(turn["ttl"], 600);
    let username = turn["username"].as_str().expect("username").to_owned();
    let password = turn["password"].as_str().expect("password").to_owned();
    assert!(username.ends_with(":@alice:localhost"), "{username}");

    // coturn may take a moment to listen: a bounded number of tries.
    let mut ok = false;
    for _ in 0..10 {
        if allocated(&allocate(port, &username, &password)) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(ok, "coturn accepts the credentials from turnServer");
    // The same username with a password made from another secret is refused.
    let wrong = "rxoXL08YEkggX0sluNxnEx7KkKg=";
    assert!(
        !allocated(&allocate(port, &username, wrong)),
        "a wrong password is refused"
    );

    // Without TURN configured the answer is empty.
    let bare = TestServer::start();
    let token = bare.register("bob", "pw pw pw").await;
    let (status, turn) = bare
        .request(
            Method::GET,
            "/_matrix/client/v3/voip/turnServer",
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, turn), (StatusCode::OK, json!({})));
}
