//! A full disk (issue 13, item 5): writes are refused with the spec's
//! `507 M_RESOURCE_LIMIT_EXCEEDED` (never a 500), reads go on, the log says so once, and
//! writes resume by themselves when space is freed, with every acknowledged message kept.
//!
//! Each test mounts a 24 MiB tmpfs, which needs root (as here and in CI); without it the
//! test says why it is skipped and passes.

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::TestServer;

const MIB: u64 = 1 << 20;
/// The body of every message: large, so the disk fills in a few hundred sends.
const BODY_BYTES: usize = 16 * 1024;
/// No test sends more than this many messages before the disk is full.
const MAX_SENDS: usize = 3_000;
/// How long writes may take to resume once space is freed.
const RESUME_DEADLINE: Duration = Duration::from_secs(20);

/// A small tmpfs, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after saying why) when not root; a failed mount as root fails the test.
    fn mount(size_mib: u64) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("full_disk: skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the server (already killed) may not have closed everything yet.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("run df");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// Writes a file of about `bytes` at `path`, or until the disk is full when `bytes` is
/// `None`.
fn fill(path: &Path, bytes: Option<u64>) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0x55u8; 64 * 1024];
    let mut written = 0u64;
    while bytes.is_none_or(|bytes| written < bytes) {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(error) => panic!("writing the filler: {error}"),
        }
        if written > 64 * MIB {
            panic!("the filler never filled the disk");
        }
    }
    let _ = file.sync_all();
}

struct Room {
    id: String,
    tokens: [String; 2],
}

/// Two users in one room.
async fn room(server: &TestServer) -> Room {
    let alice = server.register("alice", "alice password").await;
    let bob = server.register("bob", "bob password").await;
    let (status, json) = server
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let id = json["room_id"].as_str().unwrap().to_owned();
    let (status, json) = server
        .client_api(&bob, Method::POST, &format!("/join/{id}"), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    Room {
        id,
        tokens: [alice, bob],
    }
}

/// Sends message `n` (from alice or bob by turn).
async fn send(server: &TestServer, room: &Room, n: usize) -> (StatusCode, Value) {
    let body = format!("message {n} {}", "x".repeat(BODY_BYTES));
    server
        .client_api(
            &room.tokens[n % 2],
            Method::PUT,
            &format!("/rooms/{}/send/m.room.message/txn{n}", room.id),
            Some(json!({ "msgtype": "m.text", "body": body })),
        )
        .await
}

/// Sends until one is refused; returns the acknowledged event ids and the refusal.
async fn send_until_refused(
    server: &TestServer,
    room: &Room,
    acked: &mut HashSet<String>,
    next: &mut usize,
) -> (StatusCode, Value) {
    loop {
        assert!(*next < MAX_SENDS, "the disk never filled");
        let (status, json) = send(server, room, *next).await;
        *next += 1;
        if status != StatusCode::OK {
            return (status, json);
        }
        acked.insert(json["event_id"].as_str().unwrap().to_owned());
    }
}

fn assert_full_disk_error(status: StatusCode, json: &Value, contact: &str) {
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{json}");
    assert_eq!(json["errcode"], "M_RESOURCE_LIMIT_EXCEEDED", "{json}");
    assert_eq!(json["admin_contact"], contact, "{json}");
}

/// Sends (new transactions) until one is acknowledged, within [`RESUME_DEADLINE`].
async fn send_until_accepted(
    server: &TestServer,
    room: &Room,
    acked: &mut HashSet<String>,
    next: &mut usize,
) {
    let deadline = Instant::now() + RESUME_DEADLINE;
    loop {
        let (status, json) = send(server, room, *next).await;
        *next += 1;
        if status == StatusCode::OK {
            acked.insert(json["event_id"].as_str().unwrap().to_owned());
            return;
        }
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{json}");
        assert!(
            Instant::now() < deadline,
            "writes did not resume after space was freed: {status} {json}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message event id in the room, paginating back from the end.
async fn message_ids(server: &TestServer, room: &Room) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut from: Option<String> = None;
    for _ in 0..1_000 {
        let mut path = format!("/rooms/{}/messages?dir=b&limit=100", room.id);
        if let Some(from) = &from {
            path.push_str(&format!("&from={from}"));
        }
        let (status, json) = server
            .client_api(&room.tokens[0], Method::GET, &path, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let chunk = json["chunk"].as_array().unwrap();
        for event in chunk {
            if event["type"] == "m.room.message" {
                ids.insert(event["event_id"].as_str().unwrap().to_owned());
            }
        }
        match json["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => return ids,
        }
    }
    panic!("pagination did not end");
}

/// Error lines about the full disk (other lines may mention it: a warning of a background
/// write that failed, say).
fn full_lines(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("ERROR") && line.contains("the disk holding"))
        .count()
}

fn assert_all_kept(acked: &HashSet<String>, found: &HashSet<String>) {
    let lost: Vec<_> = acked.difference(found).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost",
        lost.len(),
        acked.len()
    );
}

/// The reserve: sends are refused while less than `min_free_disk_mb` is free, before the
/// store is touched.
#[tokio::test]
async fn reserve_refuses_writes_and_they_resume_when_space_is_freed() {
    let Some(tmpfs) = Tmpfs::mount(24) else {
        return;
    };
    // Leave about 10 MiB; the reserve is 4.
    let filler: PathBuf = tmpfs.path().join("filler");
    fill(
        &filler,
        Some(free_bytes(tmpfs.path()).saturating_sub(10 * MIB)),
    );
    let data = tempfile::tempdir_in(tmpfs.path()).unwrap();
    let contact = "mailto:admin@example.org";
    let mut server = TestServer::start_in(
        data,
        &[
            ("CONDUIT_MIN_FREE_DISK_MB", "4"),
            ("CONDUIT_ADMIN_CONTACT", contact),
        ],
    );
    let room = room(&server).await;

    let mut acked = HashSet::new();
    let mut next = 0;
    let (status, json) = send_until_refused(&server, &room, &mut acked, &mut next).await;
    assert_full_disk_error(status, &json, contact);
    assert!(
        acked.len() > 10,
        "only {} sends before the refusal",
        acked.len()
    );
    // Still refused, from the other user too; reads are answered.
    let (status, json) = send(&server, &room, next).await;
    next += 1;
    assert_full_disk_error(status, &json, contact);
    let (status, json) = server
        .client_api(&room.tokens[1], Method::GET, "/sync?timeout=0", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(message_ids(&server, &room).await, acked);
    // Media files keep the reserve too.
    let response = server
        .http()
        .post(format!("{}/_matrix/media/v3/upload", server.url))
        .bearer_auth(&room.tokens[0])
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 64 * 1024])
        .send()
        .await
        .expect("upload");
    let status = response.status();
    let json: Value = response.json().await.expect("a JSON error");
    assert_full_disk_error(status, &json, contact);
    // Loud once, not per request.
    let log = server.log();
    assert_eq!(full_lines(&log), 1, "{log}");
    assert!(log.contains("4.0 MiB reserve"), "{log}");
    assert!(!log.contains("storage failure"), "{log}");

    // A restart while the disk is full: the server starts and reads. (Closing and opening
    // fjall may free some space, its journal written out compressed; so send until refused
    // again: the new process says so once too.)
    assert!(server.stop().success());
    server.restart();
    assert_eq!(message_ids(&server, &room).await, acked);
    let (status, json) = send_until_refused(&server, &room, &mut acked, &mut next).await;
    assert_full_disk_error(status, &json, contact);
    let log = server.log();
    assert_eq!(full_lines(&log), 2, "{log}");

    // Space returns: writes resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    send_until_accepted(&server, &room, &mut acked, &mut next).await;
    for _ in 0..5 {
        let (status, json) = send(&server, &room, next).await;
        next += 1;
        assert_eq!(status, StatusCode::OK, "{json}");
        acked.insert(json["event_id"].as_str().unwrap().to_owned());
    }
    let log = server.log();
    assert!(log.contains("space is free again: writes resume"), "{log}");
    assert_eq!(full_lines(&log), 2, "{log}");

    // Everything acknowledged survives a restart.
    assert!(server.stop().success());
    server.restart();
    assert_all_kept(&acked, &message_ids(&server, &room).await);
    drop(server);
    drop(tmpfs);
}

/// No reserve: the store itself meets `ENOSPC`, and still answers with the spec's error
/// and recovers by itself (fjall, the default, is reopened in place).
#[tokio::test]
async fn store_out_of_space_recovers_without_restart() {
    store_out_of_space("fjall").await;
}

/// The same on sled: the spec's error, one line, and after space is freed sled still fails
/// (it keeps its I/O error): the spec's error still, one line says to restart, and after the restart nothing
/// acknowledged is lost.
#[tokio::test]
async fn sled_out_of_space_recovers_after_a_restart() {
    store_out_of_space("sled").await;
}

/// The same on redb (which fails with "previous I/O error" until it is opened again).
#[tokio::test]
async fn redb_out_of_space_recovers_after_a_restart() {
    store_out_of_space("redb").await;
}

async fn store_out_of_space(backend: &str) {
    let Some(tmpfs) = Tmpfs::mount(24) else {
        return;
    };
    let data = tempfile::tempdir_in(tmpfs.path()).unwrap();
    let mut server = TestServer::start_in(
        data,
        &[
            ("CONDUIT_MIN_FREE_DISK_MB", "0"),
            ("CONDUIT_DATABASE_BACKEND", backend),
        ],
    );
    let room = room(&server).await;
    let mut acked = HashSet::new();
    let mut next = 0;
    for _ in 0..10 {
        let (status, json) = send(&server, &room, next).await;
        next += 1;
        assert_eq!(status, StatusCode::OK, "{json}");
        acked.insert(json["event_id"].as_str().unwrap().to_owned());
    }

    // Another program fills the disk while the server runs.
    let filler = tmpfs.path().join("filler");
    fill(&filler, None);
    let (status, json) = send_until_refused(&server, &room, &mut acked, &mut next).await;
    // The default admin contact.
    assert_full_disk_error(status, &json, "https://localhost");
    let (status, json) = send(&server, &room, next).await;
    next += 1;
    assert_full_disk_error(status, &json, "https://localhost");
    let (status, json) = server
        .client_api(&room.tokens[1], Method::GET, "/sync?timeout=0", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let log = server.log();
    assert_eq!(full_lines(&log), 1, "{log}");

    std::fs::remove_file(&filler).unwrap();
    if backend == "fjall" {
        send_until_accepted(&server, &room, &mut acked, &mut next).await;
        let log = server.log();
        assert!(log.contains("space is free again: writes resume"), "{log}");
        // fjall poisoned itself at the failed write and was opened again.
        assert!(
            log.contains("the database was reopened after a failed write"),
            "{log}"
        );
    } else {
        // Still the spec's error (never a 500), and one line that says what to do.
        for _ in 0..3 {
            let (status, json) = send(&server, &room, next).await;
            next += 1;
            assert_full_disk_error(status, &json, "https://localhost");
        }
        let log = server.log();
        let restart = log
            .lines()
            .filter(|line| line.contains("if writes keep failing, restart the server"))
            .count();
        assert_eq!(restart, 1, "{log}");
        server.kill9();
        server.restart();
        send_until_accepted(&server, &room, &mut acked, &mut next).await;
    }
    for _ in 0..5 {
        let (status, json) = send(&server, &room, next).await;
        next += 1;
        assert_eq!(status, StatusCode::OK, "{json}");
        acked.insert(json["event_id"].as_str().unwrap().to_owned());
    }
    assert_all_kept(&acked, &message_ids(&server, &room).await);
    let log = server.log();
    assert_eq!(full_lines(&log), 1, "{log}");

    assert!(server.stop().success());
    server.restart();
    assert_all_kept(&acked, &message_ids(&server, &room).await);
    drop(server);
    drop(tmpfs);
}
