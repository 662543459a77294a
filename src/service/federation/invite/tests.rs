//! The checks on a received invite (S2S `PUT /v2/invite`) and its `invite_room_state`.

use ruma::{
    CanonicalJsonObject, RoomVersionId, api::federation::membership::RawStrippedState, room_id,
    server_name,
};
use serde_json::{Value as JsonValue, json};

use super::{check_invite_fields, stripped_invite_state};
use crate::Error;

fn invite(changes: JsonValue) -> CanonicalJsonObject {
    let mut event = json!({
        "type": "m.room.member",
        "room_id": "!room:remote.test",
        "sender": "@alice:remote.test",
        "state_key": "@bob:example.org",
        "content": { "membership": "invite" },
    });
    for (field, value) in changes.as_object().unwrap() {
        event[field] = value.clone();
    }
    serde_json::from_value(event).unwrap()
}

fn check(event: &CanonicalJsonObject) -> crate::Result<ruma::OwnedUserId> {
    check_invite_fields(
        event,
        server_name!("remote.test"),
        server_name!("example.org"),
        room_id!("!room:remote.test"),
    )
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: crate::Result<T>, errcode: &str) {
    match result {
        Err(Error::Matrix { kind, .. }) => assert_eq!(kind.errcode().to_string(), errcode),
        other => panic!("expected {errcode}, got {other:?}"),
    }
}

#[test]
fn a_well_formed_invite_names_its_invitee() {
    assert_eq!(check(&invite(json!({}))).unwrap(), "@bob:example.org");
}

#[test]
fn invites_that_are_not_invites_for_our_users_from_the_origin_are_refused() {
    for changes in [
        json!({ "type": "m.room.message" }),
        json!({ "content": { "membership": "join" } }),
        json!({ "content": {} }),
        // The sender is not on the requesting server.
        json!({ "sender": "@mallory:elsewhere.test" }),
        // The invitee is not ours.
        json!({ "state_key": "@carol:elsewhere.test" }),
        json!({ "state_key": "not a user" }),
        json!({ "room_id": "!other:remote.test" }),
    ] {
        assert_invalid(check(&invite(changes.clone())), "M_INVALID_PARAM");
    }
}

fn pdu(kind: &str, room: &str) -> RawStrippedState {
    let event = json!({
        "type": kind,
        "state_key": "",
        "room_id": room,
        "sender": "@alice:remote.test",
        "content": { "name": "Lobby" },
        "auth_events": [], "prev_events": [], "signatures": {}, "hashes": {},
        "depth": 3, "origin_server_ts": 1,
    });
    RawStrippedState::Pdu(serde_json::value::to_raw_value(&event).unwrap())
}

#[test]
fn invite_room_state_is_stripped_and_checked_by_room_version() {
    let room = room_id!("!room:remote.test");
    let state = [
        pdu("m.room.create", room.as_str()),
        pdu("m.room.name", room.as_str()),
    ];
    let stripped = stripped_invite_state(&state, room, &RoomVersionId::V12).unwrap();
    assert_eq!(
        stripped[1],
        json!({
            "type": "m.room.name", "state_key": "", "sender": "@alice:remote.test",
            "content": { "name": "Lobby" },
        })
    );
    // Room version 12: the create event must be there, every entry of the room.
    let no_create = [pdu("m.room.name", room.as_str())];
    assert_invalid(
        stripped_invite_state(&no_create, room, &RoomVersionId::V12),
        "M_MISSING_PARAM",
    );
    let other_room = [
        pdu("m.room.create", room.as_str()),
        pdu("m.room.name", "!other:remote.test"),
    ];
    assert_invalid(
        stripped_invite_state(&other_room, room, &RoomVersionId::V12),
        "M_INVALID_PARAM",
    );
    // Older versions: the bad entry is dropped, the invite kept.
    let kept = stripped_invite_state(&other_room, room, &RoomVersionId::V10).unwrap();
    assert_eq!(kept.len(), 1);
    assert!(stripped_invite_state(&no_create, room, &RoomVersionId::V10).is_ok());
}

/// An invite from another server is recorded with the invitee's membership, shown with its
/// stripped state while pending, and replaced by its rejection; forgetting drops it.
#[tokio::test]
async fn a_remote_invite_is_recorded_then_rejected_then_forgotten() {
    use ruma::{events::room::member::MembershipState, user_id};

    use crate::service::rooms::{pdu::Pdu, remote_invite::RemoteInvite};

    let services = crate::service::Services::build(
        crate::config::tests_support::config(),
        crate::storage::Db::memory(),
    )
    .unwrap();
    let rooms = &services.rooms;
    let room = room_id!("!room:remote.test");
    let bob = user_id!("@bob:example.org");
    let member = |membership: &str, sender: &str, id: &str| -> Pdu {
        serde_json::from_value(json!({
            "event_id": id, "room_id": room, "sender": sender, "type": "m.room.member",
            "state_key": bob, "content": { "membership": membership },
            "origin_server_ts": 1, "depth": 5, "prev_events": [], "auth_events": [],
        }))
        .unwrap()
    };
    rooms
        .record_remote_invite(RemoteInvite {
            version: RoomVersionId::V10,
            invite: member("invite", "@alice:remote.test", "$invite"),
            stripped: vec![json!({
                "type": "m.room.name", "state_key": "", "sender": "@alice:remote.test",
                "content": { "name": "Lobby" },
            })],
            leave: None,
        })
        .await
        .unwrap();
    let entries = rooms.rooms_of(bob).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1.membership, MembershipState::Invite);
    let pending = rooms.pending_remote_invite(room, bob).unwrap().unwrap();
    assert_eq!(pending.sender(), "@alice:remote.test");
    let state: Vec<JsonValue> = pending
        .invite_state()
        .unwrap()
        .iter()
        .map(|event| event.deserialize_as_unchecked().unwrap())
        .collect();
    assert_eq!(state[0]["content"]["name"], "Lobby");
    assert_eq!(state[1]["content"]["membership"], "invite");
    // Sync reads the same stripped state.
    let shown = crate::service::sync::invite_state(&services, room, bob).unwrap();
    assert_eq!(shown.len(), 2);

    rooms
        .record_remote_rejection(room, bob, member("leave", bob.as_str(), "$leave"))
        .await
        .unwrap();
    assert!(rooms.pending_remote_invite(room, bob).unwrap().is_none());
    assert_eq!(
        rooms.rooms_of(bob).unwrap()[0].1.membership,
        MembershipState::Leave
    );
    assert!(
        rooms
            .remote_invite(room, bob)
            .unwrap()
            .unwrap()
            .leave
            .is_some()
    );

    rooms.forget(room, bob).await.unwrap();
    assert!(rooms.rooms_of(bob).unwrap().is_empty());
    assert!(rooms.remote_invite(room, bob).unwrap().is_none());
}
