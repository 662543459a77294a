//! End-to-end encryption across servers (issue 12 item 4): matrix-sdk with its Olm/Megolm
//! on both sides, each client on its own homeserver. For a remote user's message to
//! decrypt, every piece has to cross: the other user's device keys (`/keys/query` relayed
//! over federation), a one-time key (`/keys/claim` relayed), the Megolm room key (an Olm
//! to-device message carried by an `m.direct_to_device` EDU) and the encrypted event itself
//! (a PDU in `/send`).

use std::time::{Duration, Instant};

use matrix_sdk::{
    Client,
    config::SyncSettings,
    ruma::{
        OwnedRoomId, OwnedRoomOrAliasId, UserId,
        api::client::room::{Visibility, create_room},
        events::{InitialStateEvent, room::encryption::RoomEncryptionEventContent},
    },
};

use crate::{
    e2ee::{encrypting_client_at, receive, send},
    harness::TestServer,
    synapse::Synapse,
};

const PASSWORD: &str = "pw pw pw";

/// Creates a public, encrypted room with the alias `#name:server` as `client`'s user.
async fn create_encrypted_room(client: &Client, name: &str) -> OwnedRoomId {
    let mut request = create_room::v3::Request::new();
    request.room_alias_name = Some(name.to_owned());
    request.visibility = Visibility::Public;
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = client.create_room(request).await.expect("createRoom");
    room.room_id().to_owned()
}

/// Syncs `client` until it knows `user` as joined to `room_id` (bounded: 30 s): only then
/// does its next message's room key go to that user's devices.
async fn wait_for_member(client: &Client, room_id: &OwnedRoomId, user: &UserId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("sync");
        if let Some(room) = client.get_room(room_id)
            && let Some(member) = room.get_member_no_sync(user).await.expect("member")
            && *member.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join
        {
            return;
        }
        assert!(Instant::now() < deadline, "{user} never joined {room_id}");
    }
}

/// The encrypted exchange both tests run: `host` made the room, `guest` (on another
/// server) joins it by alias; each decrypts the other's message, and the guest's second
/// message, sent while the host is not syncing, decrypts when the host comes back.
async fn exchange(host: &Client, guest: &Client, alias: &str) {
    host.sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .expect("host syncs");
    guest
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .expect("guest syncs");
    let room_id = create_encrypted_room(host, alias.split(':').next().unwrap()).await;
    let alias: OwnedRoomOrAliasId = format!("#{alias}").try_into().expect("an alias");
    let joined = guest
        .join_room_by_id_or_alias(&alias, &[])
        .await
        .expect("the guest joins by alias over federation");
    assert_eq!(joined.room_id(), room_id);
    assert!(
        joined
            .latest_encryption_state()
            .await
            .expect("state")
            .is_encrypted(),
        "the joined room's state carries m.room.encryption"
    );
    wait_for_member(host, &room_id, guest.user_id().unwrap()).await;

    send(host, &room_id, "Meeting moved to the clubhouse").await;
    receive(guest, &room_id, "Meeting moved to the clubhouse").await;
    send(guest, &room_id, "Got it, bringing the antenna").await;
    receive(host, &room_id, "Got it, bringing the antenna").await;
    send(guest, &room_id, "And the coax").await;
    receive(host, &room_id, "And the coax").await;
}

#[tokio::test]
async fn encrypted_messages_decrypt_between_two_of_our_servers() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    a.register("alice", PASSWORD).await;
    b.register("bob", PASSWORD).await;
    let alice = encrypting_client_at(&a.url, a.certificate(), "alice", PASSWORD).await;
    let bob = encrypting_client_at(&b.url, b.certificate(), "bob", PASSWORD).await;

    exchange(&alice, &bob, &format!("crypt:{}", a.server_name)).await;

    // Each side sees the other's cross-signing identity, fetched over federation.
    for (client, other) in [(&alice, b.user_id("bob")), (&bob, a.user_id("alice"))] {
        let other = UserId::parse(other).unwrap();
        let identity = client
            .encryption()
            .request_user_identity(&other)
            .await
            .expect("identity request");
        assert!(identity.is_some(), "{other}'s master key crosses servers");
    }
}

#[tokio::test]
async fn encrypted_messages_decrypt_between_synapse_and_ours() {
    let ours = TestServer::start_federating();
    let synapse = Synapse::start().await;
    ours.register("dana", PASSWORD).await;
    synapse.register("erin", PASSWORD).await;
    let dana = encrypting_client_at(&ours.url, ours.certificate(), "dana", PASSWORD).await;
    let erin =
        encrypting_client_at(&synapse.url, Some(&synapse.certificate), "erin", PASSWORD).await;

    // A room on Synapse joined from ours, then a room here joined from Synapse.
    exchange(&erin, &dana, &format!("there:{}", synapse.server_name)).await;
    exchange(&dana, &erin, &format!("here:{}", ours.server_name)).await;
}
