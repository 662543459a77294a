//! Bots on matrix-nio (Python) encrypt and decrypt with a user of this server: a matrix-nio
//! bot (its own Olm/Megolm store, vodozemac underneath) and a matrix-sdk user share an
//! encrypted room, and each decrypts the other's message. Also the `keys/query` answer's
//! shape, which matrix-nio checks strictly.
//!
//! The bot (`tests/nio/bot.py`) runs in the virtualenv that `tests/nio/setup.sh` makes in
//! the target directory (`tests/run.sh` runs it); without it these tests fail and say so.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use matrix_sdk::ruma::{
    OwnedRoomId,
    api::client::room::create_room,
    events::{InitialStateEvent, room::encryption::RoomEncryptionEventContent},
    user_id,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    e2ee::{encrypting_client, receive, send},
    harness::TestServer,
    keys::signed_device_keys,
};

/// How long the bot may take for one step (start, join, send, receive); generous, as the
/// bot's Python start and a debug server share two cores with other tests.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The virtualenv's Python: `<target dir>/nio-venv/bin/python`, where
/// `tests/nio/setup.sh` puts it (`${CARGO_TARGET_DIR:-target}/nio-venv`).
fn venv_python() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory");
    let python = target.join("nio-venv").join("bin").join("python");
    assert!(
        python.exists(),
        "matrix-nio's virtualenv is missing ({} not found): run tests/run.sh, or \
         `bash tests/nio/setup.sh` with CARGO_TARGET_DIR={}, first",
        python.display(),
        target.display(),
    );
    python
}

/// A running `tests/nio/bot.py`: its stdout lines arrive on a channel, its stderr is kept
/// for failure messages, and it is killed if the test ends early.
struct Bot {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The thread copying stderr; it ends when the bot's stderr closes.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    _store: tempfile::TempDir,
}

impl Bot {
    fn spawn(server: &TestServer, user: &str, room_id: &str, args: &[&str]) -> Self {
        let store = tempfile::tempdir().expect("temporary directory");
        let mut child = Command::new(venv_python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nio/bot.py"))
            .args(["--homeserver", &server.url])
            .args(["--user", user, "--password", "pw pw pw"])
            .arg("--store")
            .arg(store.path())
            .args(["--room", room_id])
            .args(["--timeout", &STEP_TIMEOUT.as_secs().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the matrix-nio bot");
        let (sender, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let kept = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                kept.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
            _store: store,
        }
    }

    /// Waits for the bot's next line, which must start with `word`; returns the rest.
    async fn expect(&mut self, word: &str) -> String {
        let line = match tokio::time::timeout(STEP_TIMEOUT, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => self.fail(&format!("the bot exited before {word}")),
            Err(_) => self.fail(&format!("no {word} from the bot in {STEP_TIMEOUT:?}")),
        };
        match line.strip_prefix(word) {
            Some(rest) => rest.trim().to_owned(),
            None => self.fail(&format!("expected {word}, the bot said {line:?}")),
        }
    }

    /// Waits (bounded) for the bot to exit, which it must do successfully.
    async fn finish(mut self) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("bot status") {
                if !status.success() {
                    self.fail(&format!("the bot failed ({status})"));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail("the bot did not exit within 30 s of its last step");
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The bot is gone, so its stderr is closed: the reader has all it printed.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        panic!("{what}; its stderr:\n{}", self.stderr.lock().unwrap());
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alice (matrix-sdk, with a device that has no display name, like many bots' peers) makes
/// an encrypted room and invites `invitee`; returns the room's id.
async fn encrypted_room(alice: &matrix_sdk::Client, invitee: &str) -> OwnedRoomId {
    let mut request = create_room::v3::Request::new();
    request.invite = vec![invitee.try_into().expect("user id")];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.create_room(request).await.expect("createRoom");
    room.room_id().to_owned()
}

#[tokio::test]
async fn a_matrix_nio_bot_and_a_matrix_sdk_user_exchange_encrypted_messages() {
    venv_python(); // fails early, with what to do, when the virtualenv is missing
    let server = TestServer::start();
    server.register("alice", "pw pw pw").await;
    server.register("bot", "pw pw pw").await;
    let alice = encrypting_client(&server, "alice").await;
    alice
        .sync_once(crate::e2ee::quick_sync())
        .await
        .expect("alice syncs");
    let room_id = encrypted_room(&alice, "@bot:localhost").await;

    let mut bot = Bot::spawn(
        &server,
        "@bot:localhost",
        room_id.as_str(),
        &[
            "--send",
            "Hello from matrix-nio",
            "--expect",
            "Hello from matrix-sdk",
        ],
    );
    bot.expect("READY").await;
    bot.expect("JOINED").await;
    // The bot found alice's device through keys/query, sent its room key over Olm and
    // the message with Megolm: alice decrypts it.
    bot.expect("SENT").await;
    receive(&alice, &room_id, "Hello from matrix-nio").await;

    // Alice encrypts for the bot's device (she saw it join and queries its keys); the bot
    // decrypts.
    send(&alice, &room_id, "Hello from matrix-sdk").await;
    let sender = bot.expect("RECEIVED").await;
    assert_eq!(sender, "@alice:localhost");
    bot.finish().await;

    // The bot's device is one alice's client knows, by the name the bot gave it.
    let devices = alice
        .encryption()
        .get_user_devices(user_id!("@bot:localhost"))
        .await
        .expect("bot's devices");
    let names: Vec<_> = devices
        .devices()
        .filter_map(|d| d.display_name().map(str::to_owned))
        .collect();
    assert_eq!(names, ["nio bot"]);
}

/// Two matrix-nio bots, each with its own store: the first sends, the second decrypts and
/// answers, the first decrypts the answer.
#[tokio::test]
async fn two_matrix_nio_bots_exchange_encrypted_messages() {
    venv_python();
    let server = TestServer::start();
    let first = server.register("first", "pw pw pw").await;
    server.register("second", "pw pw pw").await;
    let (status, room) = server
        .client_api(
            &first,
            Method::POST,
            "/createRoom",
            Some(json!({
                "invite": ["@second:localhost"],
                "initial_state": [{
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": { "algorithm": "m.megolm.v1.aes-sha2" },
                }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{room}");
    let room_id = room["room_id"].as_str().expect("room_id");

    // The second bot is in the room before the first sends, so it gets the room key.
    let mut second = Bot::spawn(
        &server,
        "@second:localhost",
        room_id,
        &["--reply", "--expect", "Ping", "--send", "Pong"],
    );
    second.expect("READY").await;
    second.expect("JOINED").await;
    let mut first = Bot::spawn(
        &server,
        "@first:localhost",
        room_id,
        &["--send", "Ping", "--expect", "Pong"],
    );
    first.expect("READY").await;
    first.expect("JOINED").await;
    first.expect("SENT").await;
    assert_eq!(second.expect("RECEIVED").await, "@first:localhost");
    second.expect("SENT").await;
    assert_eq!(first.expect("RECEIVED").await, "@second:localhost");
    first.finish().await;
    second.finish().await;
}

/// Every device in a `keys/query` answer has the fields the spec requires (and matrix-nio
/// checks): `user_id`, `device_id`, `algorithms`, `keys`, `signatures`, and `unsigned`
/// whose `device_display_name` is a string when the device has a name and absent when it
/// has none. No field is `null`.
#[tokio::test]
async fn keys_query_answers_devices_in_the_shape_clients_validate() {
    let server = TestServer::start();
    let alice = server.register("alice", "pw pw pw").await;
    let carol = server.register("carol", "pw pw pw").await;
    let (status, login) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": "pw pw pw",
                "initial_device_display_name": "Alice's phone",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let phone_token = login["access_token"].as_str().expect("token");
    let phone = login["device_id"].as_str().expect("device_id");
    let (_, whoami) = server.whoami(&alice).await;
    let unnamed = whoami["device_id"].as_str().expect("device_id").to_owned();
    for (token, device) in [(alice.as_str(), unnamed.as_str()), (phone_token, phone)] {
        let (status, body) = server
            .client_api(
                token,
                Method::POST,
                "/keys/upload",
                Some(json!({ "device_keys": signed_device_keys("@alice:localhost", device) })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (status, query) = server
        .client_api(
            &carol,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { "@alice:localhost": [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}");
    // `failures` may be left out when empty (the spec requires neither field).
    assert!(
        query.get("failures").is_none_or(Value::is_object),
        "{query}"
    );
    let devices = query["device_keys"]["@alice:localhost"]
        .as_object()
        .expect("alice's devices");
    assert_eq!(devices.len(), 2, "{query}");
    for (device_id, keys) in devices {
        assert_no_null(keys, device_id);
        assert_eq!(keys["user_id"], "@alice:localhost", "{keys}");
        assert_eq!(keys["device_id"], device_id.as_str(), "{keys}");
        assert!(
            keys["algorithms"]
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            "{keys}"
        );
        assert!(keys["keys"].is_object(), "{keys}");
        assert!(keys["signatures"]["@alice:localhost"].is_object(), "{keys}");
        let unsigned = keys["unsigned"].as_object().expect("unsigned object");
        if device_id == phone {
            assert_eq!(unsigned["device_display_name"], "Alice's phone");
        } else {
            assert!(!unsigned.contains_key("device_display_name"), "{keys}");
        }
    }
}

#[track_caller]
fn assert_no_null(value: &Value, at: &str) {
    match value {
        Value::Null => panic!("null at {at}"),
        Value::Object(map) => map
            .iter()
            .for_each(|(key, value)| assert_no_null(value, &format!("{at}.{key}"))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, value)| assert_no_null(value, &format!("{at}[{i}]"))),
        _ => {}
    }
}
