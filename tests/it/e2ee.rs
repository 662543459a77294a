//! End-to-end encryption with a real Olm/Megolm client: matrix-sdk (with its
//! `e2e-encryption` feature, as in Element X) encrypts and decrypts; the server only carries
//! keys and ciphertext. Covers: two users exchanging messages in an encrypted room, a
//! message sent while the recipient is offline, cross-signing seen by the other user, a new
//! device showing up in the other user's device list, and a second device restoring room
//! keys from the server-side backup to read earlier history.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use matrix_sdk::{
    Client,
    config::SyncSettings,
    deserialized_responses::TimelineEvent,
    encryption::EncryptionSettings,
    ruma::{
        OwnedEventId, OwnedRoomId, RoomId,
        api::client::room::create_room,
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
        user_id,
    },
};
use serde_json::Value;

use crate::harness::TestServer;

/// A client with encryption and automatic cross-signing, logged in as `name`.
pub(crate) async fn encrypting_client(server: &TestServer, name: &str) -> Client {
    encrypting_client_at(&server.url, None, name, "pw pw pw").await
}

/// [`encrypting_client`] for any homeserver at `url` (ours or Synapse), trusting
/// `certificate` (a self-signed PEM) when there is one.
pub(crate) async fn encrypting_client_at(
    url: &str,
    certificate: Option<&Path>,
    name: &str,
    password: &str,
) -> Client {
    let mut builder = Client::builder()
        .homeserver_url(url)
        .with_encryption_settings(EncryptionSettings {
            auto_enable_cross_signing: true,
            ..Default::default()
        });
    if let Some(certificate) = certificate {
        let pem = std::fs::read(certificate).expect("read the certificate");
        let certificate =
            matrix_sdk::reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
        builder = builder.add_root_certificates(vec![certificate]);
    }
    let client = builder.build().await.expect("build client");
    client
        .matrix_auth()
        .login_username(name, password)
        .send()
        .await
        .expect("login");
    client
}

pub(crate) fn quick_sync() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_secs(0))
}

/// The plaintext body of a timeline event, if the client decrypted it.
fn decrypted_body(event: &TimelineEvent) -> Option<String> {
    event.encryption_info()?;
    let json: Value = serde_json::from_str(event.raw().json().get()).ok()?;
    json["content"]["body"].as_str().map(str::to_owned)
}

/// Syncs `client` until `room_id`'s timeline yields `body` decrypted (bounded: 30 s, enough
/// for a message and its room key to cross between servers).
pub(crate) async fn receive(client: &Client, room_id: &RoomId, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let sync = client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("sync");
        if let Some(room) = sync.rooms.joined.get(room_id)
            && room
                .timeline
                .events
                .iter()
                .any(|e| decrypted_body(e).as_deref() == Some(body))
        {
            return;
        }
    }
    panic!("{body:?} never arrived decrypted");
}

pub(crate) async fn send(client: &Client, room_id: &RoomId, body: &str) -> OwnedEventId {
    let room = client.get_room(room_id).expect("room known");
    room.send(RoomMessageEventContent::text_plain(body))
        .await
        .expect("send")
        .response
        .event_id
}

#[tokio::test]
async fn encrypted_chat_cross_signing_and_key_backup() {
    let server = TestServer::start();
    server.register("alice", "pw pw pw").await;
    server.register("bob", "pw pw pw").await;
    let alice = encrypting_client(&server, "alice").await;
    let bob = encrypting_client(&server, "bob").await;
    alice.sync_once(quick_sync()).await.expect("alice syncs");
    bob.sync_once(quick_sync()).await.expect("bob syncs");

    // Alice creates an encrypted room and invites bob, who joins.
    let mut request = create_room::v3::Request::new();
    request.invite = vec![user_id!("@bob:localhost").to_owned()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.create_room(request).await.expect("createRoom");
    let room_id: OwnedRoomId = room.room_id().to_owned();
    bob.sync_once(quick_sync())
        .await
        .expect("bob sees the invite");
    bob.join_room_by_id(&room_id).await.expect("bob joins");
    alice.sync_once(quick_sync()).await.expect("alice sees bob");
    assert!(
        room.latest_encryption_state()
            .await
            .expect("state")
            .is_encrypted()
    );

    // Each side decrypts the other's message to the exact plaintext.
    let first = send(&alice, &room_id, "The key is under the mat").await;
    receive(&bob, &room_id, "The key is under the mat").await;
    send(&bob, &room_id, "Thanks, see you at 8").await;
    receive(&alice, &room_id, "Thanks, see you at 8").await;

    // Sent while bob is not syncing: decrypted when he comes back.
    send(&alice, &room_id, "Sent while you were away").await;
    receive(&bob, &room_id, "Sent while you were away").await;

    // Bob sees alice's cross-signing identity (bootstrapped automatically at login).
    let identity = bob
        .encryption()
        .request_user_identity(user_id!("@alice:localhost"))
        .await
        .expect("identity request");
    assert!(identity.is_some(), "alice's master key reaches bob");

    // Alice turns on recovery: key backup and secret storage; her room keys are uploaded.
    let recovery_key = alice
        .encryption()
        .recovery()
        .enable()
        .await
        .expect("recovery enabled");
    alice
        .encryption()
        .backups()
        .wait_for_steady_state()
        .await
        .expect("room keys backed up");

    // Alice's new phone: bob's client lists it among her devices.
    let phone = encrypting_client(&server, "alice").await;
    phone.sync_once(quick_sync()).await.expect("phone syncs");
    let phone_device = phone.device_id().expect("device id").to_owned();
    let mut seen = false;
    for _ in 0..20 {
        bob.sync_once(quick_sync()).await.expect("bob syncs");
        let devices = bob
            .encryption()
            .get_user_devices(user_id!("@alice:localhost"))
            .await
            .expect("devices");
        if devices.get(&phone_device).is_some() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "alice's new device appears in bob's device list");

    // The phone restores the room keys from the backup and reads the earlier history.
    phone
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .expect("recover with the recovery key");
    phone
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .expect("download room keys");
    let event = phone
        .get_room(&room_id)
        .expect("phone knows the room")
        .event(&first, None)
        .await
        .expect("fetch event");
    assert_eq!(
        decrypted_body(&event).as_deref(),
        Some("The key is under the mat"),
        "history decrypted with keys from the backup"
    );
}
