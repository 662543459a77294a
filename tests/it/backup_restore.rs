//! `conduit backup` while the server runs and `conduit restore` into a new data directory, and
//! `conduit export`/`import` on a stopped server: everything a user had comes back (issue 13
//! item 4).

use std::{path::Path, process::Output};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{self, TestServer};

const ROOM_KEYS_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
/// Federation on (for `/_matrix/key/v2/server`), with nobody to talk to.
const ENV: &[(&str, &str)] = &[
    ("CONDUIT_ALLOW_FEDERATION", "true"),
    ("CONDUIT_TRUSTED_SERVERS", "[]"),
];

fn env() -> Vec<(String, String)> {
    ENV.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `conduit ARGS` on the data directory `data`.
fn conduit(data: &Path, args: &[&str]) -> Output {
    harness::command(data, &env())
        .args(args)
        .output()
        .expect("run conduit")
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[track_caller]
fn failed(output: &Output) -> String {
    assert!(!output.status.success(), "it succeeded: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The server's signing keys, as `/_matrix/key/v2/server` publishes them.
async fn verify_keys(server: &TestServer) -> Value {
    let (status, keys) = server
        .request(Method::GET, "/_matrix/key/v2/server", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert!(!keys["verify_keys"].as_object().unwrap().is_empty());
    keys["verify_keys"].clone()
}

async fn message_bodies(server: &TestServer, token: &str, room: &str) -> Vec<String> {
    let (status, messages) = server
        .client_api(
            token,
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{messages}");
    messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

async fn send(server: &TestServer, token: &str, room: &str, body: &str) {
    let (status, sent) = server
        .client_api(
            token,
            Method::PUT,
            &format!("/rooms/{room}/send/m.room.message/{body}"),
            Some(json!({ "msgtype": "m.text", "body": body })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
}

async fn download(server: &TestServer, token: &str, media_id: &str) -> Vec<u8> {
    let response = server
        .http()
        .get(format!(
            "{}/_matrix/client/v1/media/download/localhost/{media_id}",
            server.url
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn a_backup_taken_while_the_server_runs_restores_everything() {
    let mut server = TestServer::with_env(ENV);
    let token = server.register("alice", "correct horse battery").await;
    let alice = server.user_id("alice");
    let (_, whoami) = server.whoami(&token).await;
    let device = whoami["device_id"].as_str().unwrap().to_owned();

    // A room with messages.
    let (status, created) = server
        .client_api(
            &token,
            Method::POST,
            "/createRoom",
            Some(json!({ "name": "Club" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().unwrap().replace('!', "%21");
    for body in ["first", "second", "third"] {
        send(&server, &token, &room, body).await;
    }

    // Device keys, a key backup with a key, account data, a media file.
    let device_keys = crate::keys::signed_device_keys(&alice, &device);
    let (status, body) = server
        .client_api(
            &token,
            Method::POST,
            "/keys/upload",
            Some(json!({ "device_keys": device_keys })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, version) = server
        .client_api(
            &token,
            Method::POST,
            "/room_keys/version",
            Some(json!({ "algorithm": ROOM_KEYS_ALGORITHM, "auth_data": { "public_key": "cHVibGlj" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{version}");
    let version = version["version"].as_str().unwrap().to_owned();
    let session_key = json!({
        "first_message_index": 1,
        "forwarded_count": 0,
        "is_verified": true,
        "session_data": { "ephemeral": "ZXBo", "ciphertext": "c2VjcmV0", "mac": "bWFj" },
    });
    let key_path = format!("/room_keys/keys/{room}/session1?version={version}");
    let (status, body) = server
        .client_api(&token, Method::PUT, &key_path, Some(session_key.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let account_data_path = format!("/user/{alice}/account_data/org.example.settings");
    let settings = json!({ "theme": "dark", "n": 7 });
    let (status, body) = server
        .client_api(
            &token,
            Method::PUT,
            &account_data_path,
            Some(settings.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let picture: Vec<u8> = (0..200_000u32).map(|n| (n * 7 % 251) as u8).collect();
    let uploaded = server
        .http()
        .post(format!("{}/_matrix/media/v3/upload", server.url))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(picture.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(uploaded.status(), StatusCode::OK);
    let uploaded: Value = uploaded.json().await.unwrap();
    let media_id = uploaded["content_uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let signing_keys = verify_keys(&server).await;

    // The backup, taken by the running server (which holds the database) through its socket.
    let socket = server.data_dir().join("admin.sock");
    assert!(socket.exists(), "the running server has no admin socket");
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("nightly");
    let said = succeeded(&server.admin(&["backup", backup.to_str().unwrap()]));
    assert!(said.contains("backup written"), "{said}");
    for file in ["database.export", "manifest.json"] {
        assert!(backup.join(file).is_file(), "{file} is missing");
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["server_name"], "localhost");
    assert_eq!(manifest["backup_format"], 1);
    // A second backup into the same directory is refused: nothing is overwritten.
    let refused = failed(&server.admin(&["backup", backup.to_str().unwrap()]));
    assert!(refused.contains("not empty"), "{refused}");
    // The server keeps working after a backup.
    send(&server, &token, &room, "after-the-backup").await;
    assert!(server.stop().success());
    assert!(!socket.exists(), "the admin socket outlived the server");

    // Restore into a new data directory, and start a server on it.
    let data = tempfile::tempdir().unwrap();
    let said = succeeded(&conduit(
        data.path(),
        &["restore", backup.to_str().unwrap()],
    ));
    assert!(said.contains("restored"), "{said}");
    // A second restore into the now filled directory is refused.
    let refused = failed(&conduit(
        data.path(),
        &["restore", backup.to_str().unwrap()],
    ));
    assert!(refused.contains("not empty"), "{refused}");
    let restored = TestServer::start_in(data, ENV);

    // The old access token and its device.
    let (status, whoami) = restored.whoami(&token).await;
    assert_eq!(status, StatusCode::OK, "{whoami}");
    assert_eq!(whoami["user_id"], alice.as_str());
    assert_eq!(whoami["device_id"], device.as_str());
    // The password.
    let (status, login) = restored.login("alice", "correct horse battery").await;
    assert_eq!(status, StatusCode::OK, "{login}");
    // The room and its messages, as of the backup; new messages sort after them.
    assert_eq!(
        message_bodies(&restored, &token, &room).await,
        ["third", "second", "first"]
    );
    send(&restored, &token, &room, "after-the-restore").await;
    assert_eq!(
        message_bodies(&restored, &token, &room).await,
        ["after-the-restore", "third", "second", "first"]
    );
    // Device keys.
    let (status, keys) = restored
        .client_api(
            &token,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { alice.as_str(): [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(
        keys["device_keys"][alice.as_str()][device.as_str()]["keys"],
        device_keys["keys"],
        "{keys}"
    );
    // The key backup and its key.
    let (status, current) = restored
        .client_api(&token, Method::GET, "/room_keys/version", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{current}");
    assert_eq!(current["version"], version.as_str());
    let (status, key) = restored
        .client_api(&token, Method::GET, &key_path, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(key["session_data"], session_key["session_data"]);
    // Account data.
    let (status, stored) = restored
        .client_api(&token, Method::GET, &account_data_path, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored, settings);
    // The media file, byte for byte.
    assert!(download(&restored, &token, &media_id).await == picture);
    // The same signing key.
    assert_eq!(verify_keys(&restored).await, signing_keys);
}

#[tokio::test]
async fn export_and_import_move_a_stopped_servers_database() {
    let mut server = TestServer::with_env(ENV);
    let token = server.register("bob", "a long password").await;
    // The database is the running server's: export needs it stopped.
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("conduit.export");
    let file = file.to_str().unwrap();
    let refused = failed(&server.admin(&["export", file]));
    assert!(refused.contains("in use"), "{refused}");
    assert!(server.stop().success());

    let said = succeeded(&server.admin(&["export", file]));
    assert!(said.contains("exported"), "{said}");
    // An existing file is never overwritten.
    let refused = failed(&server.admin(&["export", file]));
    assert!(refused.contains("exists already"), "{refused}");
    // A server's data directory is not empty: import refuses it.
    let refused = failed(&server.admin(&["import", file]));
    assert!(refused.contains("not empty"), "{refused}");

    // A damaged copy is refused before anything is written.
    let mut damaged = std::fs::read(file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x01;
    let damaged_file = files.path().join("damaged.export");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let untouched = tempfile::tempdir().unwrap();
    let refused = failed(&conduit(
        untouched.path(),
        &["import", damaged_file.to_str().unwrap()],
    ));
    assert!(
        refused.contains("checksum")
            || refused.contains("corrupted")
            || refused.contains("truncated"),
        "{refused}"
    );
    assert_eq!(std::fs::read_dir(untouched.path()).unwrap().count(), 0);

    let data = tempfile::tempdir().unwrap();
    let said = succeeded(&conduit(data.path(), &["import", file]));
    assert!(said.contains("imported"), "{said}");
    let imported = TestServer::start_in(data, ENV);
    let (status, whoami) = imported.whoami(&token).await;
    assert_eq!(status, StatusCode::OK, "{whoami}");
    assert_eq!(whoami["user_id"], imported.user_id("bob").as_str());
    let (status, login) = imported.login("bob", "a long password").await;
    assert_eq!(status, StatusCode::OK, "{login}");
}

#[tokio::test]
async fn the_admin_socket_is_private_and_knows_one_command() {
    use std::{
        io::{Read, Write},
        os::unix::{fs::PermissionsExt, net::UnixStream},
        time::Duration,
    };
    let server = TestServer::start();
    let socket = server.data_dir().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let inside = server.data_dir().join("backup");
    for (command, answer) in [
        ("hello\n".to_owned(), "error unknown command"),
        (
            "backup relative/dir\n".to_owned(),
            "error the backup directory must be an absolute path",
        ),
        (
            format!("backup {}\n", inside.display()),
            "error ", // inside the data directory
        ),
    ] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(command.as_bytes()).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with(answer), "{command:?}: {reply}");
        assert!(reply.ends_with('\n'), "{reply}");
    }
    assert!(!inside.exists());
}
