//! Invites across servers (issue 12 item 2): `PUT /v2/invite` both ways, accepting a remote
//! invite (a join through the inviting server), rejecting one (`make_leave` / `send_leave`,
//! or here alone when the inviting server is down), kicks and bans of a remote member;
//! between two instances of this server and with a real Synapse; and invites this server
//! refuses, over raw signed HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    federation_pdus::Fake,
    federation_rooms::{Homeserver, send_text, sync_until, wait_for_message},
    harness::TestServer,
    synapse::Synapse,
};

async fn create_room(server: &impl Homeserver, token: &str, body: Value) -> String {
    let (status, created) = server
        .call(token, Method::POST, "/createRoom", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["room_id"].as_str().unwrap().to_owned()
}

async fn invite(server: &impl Homeserver, token: &str, room_id: &str, user_id: &str) {
    let (status, body) = server
        .call(
            token,
            Method::POST,
            &format!("/rooms/{room_id}/invite"),
            Some(json!({ "user_id": user_id })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn membership_call(
    server: &impl Homeserver,
    token: &str,
    room_id: &str,
    what: &str,
    body: Value,
) -> (StatusCode, Value) {
    server
        .call(
            token,
            Method::POST,
            &format!("/rooms/{room_id}/{what}"),
            Some(body),
        )
        .await
}

/// Waits until `room_id` is among the user's invites; returns its stripped state.
async fn wait_for_invite(server: &impl Homeserver, token: &str, room_id: &str) -> Vec<Value> {
    sync_until(
        server,
        token,
        None,
        &format!("the invite to {room_id}"),
        |sync| {
            sync["rooms"]["invite"][room_id]["invite_state"]["events"]
                .as_array()
                .cloned()
        },
    )
    .await
}

/// The member event of `user_id` in `room_id` as `server` holds it (its current state).
async fn membership_of(
    server: &impl Homeserver,
    token: &str,
    room_id: &str,
    user_id: &str,
) -> Option<String> {
    let (status, member) = server
        .call(
            token,
            Method::GET,
            &format!("/rooms/{room_id}/state/m.room.member/{user_id}"),
            None,
        )
        .await;
    (status == StatusCode::OK).then(|| member["membership"].as_str().unwrap().to_owned())
}

/// Polls `membership_of` until it is `wanted` (bounded: 30 s).
async fn wait_for_membership(
    server: &impl Homeserver,
    token: &str,
    room_id: &str,
    user_id: &str,
    wanted: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if membership_of(server, token, room_id, user_id)
            .await
            .as_deref()
            == Some(wanted)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user_id} never became {wanted} in {room_id} on {}",
            server.name()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn sync_token(server: &impl Homeserver, token: &str) -> String {
    let (status, sync) = server
        .call(token, Method::GET, "/sync?timeout=0", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    sync["next_batch"].as_str().unwrap().to_owned()
}

/// Waits until the user's sync from `since` lists `room_id` among left rooms, with
/// `membership` there.
async fn wait_for_left(
    server: &impl Homeserver,
    token: &str,
    since: String,
    room_id: &str,
    membership: &str,
) {
    sync_until(
        server,
        token,
        Some(since),
        &format!("{membership} of {room_id}"),
        |sync| {
            sync["rooms"]["leave"][room_id]["timeline"]["events"]
                .as_array()?
                .iter()
                .find(|event| {
                    event["type"] == "m.room.member" && event["content"]["membership"] == membership
                })
                .cloned()
        },
    )
    .await;
}

fn has_name(state: &[Value], name: &str) -> bool {
    state
        .iter()
        .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == name)
}

#[tokio::test]
async fn an_invite_to_another_server_is_accepted_and_kicks_and_bans_reach_it() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let bob_id = b.user_id("bob");
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "private_chat", "name": "Secret garden" }),
    )
    .await;

    // B refuses an invite for a user it does not have; A passes its answer on.
    let (status, body) = membership_call(
        &a,
        &alice,
        &room_id,
        "invite",
        json!({ "user_id": b.user_id("nobody") }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // The invite reaches B, with the room's stripped state, in /sync and sliding sync.
    invite(&a, &alice, &room_id, &bob_id).await;
    let state = wait_for_invite(&b, &bob, &room_id).await;
    assert!(has_name(&state, "Secret garden"), "{state:?}");
    assert!(
        state.iter().any(|event| event["type"] == "m.room.member"
            && event["state_key"] == bob_id.as_str()
            && event["content"]["membership"] == "invite"
            && event["sender"] == a.user_id("alice").as_str()),
        "{state:?}"
    );
    let (status, sliding) = b
        .request(
            Method::POST,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(&bob),
            Some(json!({ "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 5 } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sliding}");
    let room = &sliding["rooms"][room_id.as_str()];
    assert_eq!(room["name"], "Secret garden", "{sliding}");
    assert!(room["invite_state"].is_array(), "{sliding}");

    // Bob accepts: B joins through A; they talk.
    let (status, joined) = b
        .call(
            &bob,
            Method::POST,
            &format!("/join/{room_id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", b.log());
    let from_b = send_text(&b, &bob, &room_id, "b1", "thanks for the invite").await;
    let seen = wait_for_message(&a, &alice, &room_id, "thanks for the invite").await;
    assert_eq!(seen["event_id"], from_b.as_str());
    send_text(&a, &alice, &room_id, "a1", "welcome").await;
    wait_for_message(&b, &bob, &room_id, "welcome").await;

    // A kick reaches Bob.
    let since = sync_token(&b, &bob).await;
    let (status, body) = membership_call(
        &a,
        &alice,
        &room_id,
        "kick",
        json!({ "user_id": bob_id, "reason": "tidying up" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_left(&b, &bob, since, &room_id, "leave").await;

    // Invited again, he comes back; then a ban reaches him, and he cannot rejoin.
    invite(&a, &alice, &room_id, &bob_id).await;
    wait_for_invite(&b, &bob, &room_id).await;
    let (status, joined) = b
        .call(
            &bob,
            Method::POST,
            &format!("/join/{room_id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", b.log());
    wait_for_membership(&a, &alice, &room_id, &bob_id, "join").await;
    let since = sync_token(&b, &bob).await;
    let (status, body) = membership_call(
        &a,
        &alice,
        &room_id,
        "ban",
        json!({ "user_id": bob_id, "reason": "enough" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_left(&b, &bob, since, &room_id, "ban").await;
    let (status, body) = b
        .call(
            &bob,
            Method::POST,
            &format!("/join/{room_id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        membership_of(&a, &alice, &room_id, &bob_id)
            .await
            .as_deref(),
        Some("ban")
    );
}

#[tokio::test]
async fn a_remote_invite_is_rejected_through_the_inviting_server_or_here_alone() {
    let a = TestServer::start_federating();
    let mut b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let alice_id = a.user_id("alice");
    let room_id = create_room(&b, &bob, json!({ "preset": "private_chat", "name": "Den" })).await;
    invite(&b, &bob, &room_id, &alice_id).await;
    wait_for_invite(&a, &alice, &room_id).await;
    let since = sync_token(&a, &alice).await;

    // Alice rejects: B (the room's server) has her leave.
    let (status, body) = membership_call(&a, &alice, &room_id, "leave", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", a.log());
    assert_eq!(
        membership_of(&b, &bob, &room_id, &alice_id)
            .await
            .as_deref(),
        Some("leave")
    );
    // A's next sync moves the room to `leave`; a new sync lists no invite.
    let left = sync_until(&a, &alice, Some(since), "the rejection", |sync| {
        sync["rooms"]["leave"].get(room_id.as_str()).cloned()
    })
    .await;
    assert_eq!(
        left["timeline"]["events"][0]["content"]["membership"], "leave",
        "{left}"
    );
    let (_, sync) = a.call(&alice, Method::GET, "/sync?timeout=0", None).await;
    assert!(
        sync["rooms"]["invite"].get(room_id.as_str()).is_none(),
        "{sync}"
    );
    let (status, body) = membership_call(&a, &alice, &room_id, "forget", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Another invite (from createRoom's `invite`), and B goes down: the rejection is made
    // here alone.
    let other = create_room(
        &b,
        &bob,
        json!({ "preset": "private_chat", "invite": [alice_id] }),
    )
    .await;
    wait_for_invite(&a, &alice, &other).await;
    b.stop();
    let (status, body) = membership_call(&a, &alice, &other, "leave", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", a.log());
    let (_, sync) = a.call(&alice, Method::GET, "/sync?timeout=0", None).await;
    assert!(
        sync["rooms"]["invite"].get(other.as_str()).is_none(),
        "{sync}"
    );
    // Leaving again: there is nothing to leave.
    let (status, _) = membership_call(&a, &alice, &other, "leave", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An invite from Synapse to our user, and from our user to a Synapse user, each accepted.
#[tokio::test]
async fn invites_between_synapse_and_ours_are_accepted() {
    let synapse = Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (ours.user_id("alice"), synapse.user_id("bob"));

    // Synapse → ours.
    let room_id = create_room(
        &synapse,
        &bob,
        json!({ "preset": "private_chat", "name": "Synapse side" }),
    )
    .await;
    invite(&synapse, &bob, &room_id, &alice_id).await;
    let state = wait_for_invite(&ours, &alice, &room_id).await;
    assert!(has_name(&state, "Synapse side"), "{state:?}");
    let (status, joined) = ours
        .call(
            &alice,
            Method::POST,
            &format!("/join/{room_id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{joined}\n{}\n{}",
        ours.log(),
        synapse.log()
    );
    send_text(&ours, &alice, &room_id, "o1", "hello from conduit").await;
    wait_for_message(&synapse, &bob, &room_id, "hello from conduit").await;
    // Leaving a room on Synapse is a room event like any other.
    let (status, body) = membership_call(&ours, &alice, &room_id, "leave", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_membership(&synapse, &bob, &room_id, &alice_id, "leave").await;

    // A second invite from Synapse, rejected through Synapse.
    let rejected = create_room(&synapse, &bob, json!({ "preset": "private_chat" })).await;
    invite(&synapse, &bob, &rejected, &alice_id).await;
    wait_for_invite(&ours, &alice, &rejected).await;
    let (status, body) = membership_call(&ours, &alice, &rejected, "leave", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        membership_of(&synapse, &bob, &rejected, &alice_id)
            .await
            .as_deref(),
        Some("leave"),
        "{}",
        synapse.log()
    );

    // Ours → Synapse.
    let room_id = create_room(
        &ours,
        &alice,
        json!({ "preset": "private_chat", "name": "Conduit side" }),
    )
    .await;
    let (status, body) = ours
        .call(
            &alice,
            Method::POST,
            &format!("/rooms/{room_id}/invite"),
            Some(json!({ "user_id": bob_id })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.log());
    let state = wait_for_invite(&synapse, &bob, &room_id).await;
    assert!(has_name(&state, "Conduit side"), "{state:?}");
    let (status, joined) = synapse
        .call(
            &bob,
            Method::POST,
            &format!("/join/{room_id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.log());
    wait_for_membership(&ours, &alice, &room_id, &bob_id, "join").await;
    send_text(&synapse, &bob, &room_id, "s1", "hello from Synapse").await;
    wait_for_message(&ours, &alice, &room_id, "hello from Synapse").await;
}

/// Invites this server refuses (S2S `PUT /v2/invite`), and one it signs, from a server the
/// test plays.
#[tokio::test]
async fn invites_from_another_server_are_checked_before_they_are_signed() {
    let fake = Fake::new();
    let mut ours = TestServer::start_federating();
    let bob = ours.register("bob", "battery staple").await;
    ours.stop();
    fake.plant_key(&ours);
    ours.restart();
    let room_id = format!("!garden:{}", fake.name);
    let event = |invitee: &str| {
        serde_json::from_value(json!({
            "type": "m.room.member",
            "room_id": room_id,
            "sender": fake.user("alice"),
            "state_key": invitee,
            "content": { "membership": "invite" },
            "origin_server_ts": 1_800_000_000_000u64,
            "depth": 4,
            "prev_events": [],
            "auth_events": [],
        }))
        .unwrap()
    };
    let state = json!([{
        "type": "m.room.name", "state_key": "", "sender": fake.user("alice"),
        "content": { "name": "Fake garden" },
    }]);
    let put = |event_id: String, event: Value| {
        let fake = &fake;
        let ours = &ours;
        let room_id = room_id.clone();
        let state = state.clone();
        async move {
            fake.request(
                ours,
                Method::PUT,
                &format!("/_matrix/federation/v2/invite/{room_id}/{event_id}"),
                Some(json!({
                    "room_version": "10",
                    "event": event,
                    "invite_room_state": state,
                })),
            )
            .await
        }
    };

    // A user who does not exist.
    let (signed, id) = fake.sign(event(&ours.user_id("nobody")), &fake.key);
    let (status, body) = put(id, serde_json::to_value(&signed).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");

    // A signature by a key that is not the server's.
    let other_key = ruma::signatures::Ed25519KeyPair::from_der(
        &ruma::signatures::Ed25519KeyPair::generate(),
        "fake".into(),
    )
    .unwrap();
    let (forged, id) = fake.sign(event(&ours.user_id("bob")), &other_key);
    let (status, body) = put(id, serde_json::to_value(&forged).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM");

    // An event id that is not the event's.
    let (signed, id) = fake.sign(event(&ours.user_id("bob")), &fake.key);
    let signed = serde_json::to_value(&signed).unwrap();
    let wrong_id = format!("${}", "A".repeat(43));
    let (status, body) = put(wrong_id, signed.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Nothing of these reached Bob; a good invite does, signed by us too.
    let (status, body) = put(id, signed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signatures = body["event"]["signatures"].as_object().unwrap();
    assert!(signatures.contains_key(&fake.name), "{body}");
    assert!(signatures.contains_key(ours.server_name.as_str()), "{body}");
    assert_eq!(body["event"]["content"]["membership"], "invite");
    let state = wait_for_invite(&ours, &bob, &room_id).await;
    assert!(has_name(&state, "Fake garden"), "{state:?}");
}
