//! Tests of the room core through the `Rooms` service on an in-memory database: createRoom,
//! signing and hashing, authorization, timelines, state at events, wake-ups and idempotent
//! sends. A child module of `rooms`, so it may read the raw stored PDUs.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomVersionId,
    UserId,
    api::{Direction, error::ErrorKind},
    device_id, event_id,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
    serde::Base64,
    server_name,
    signatures::{PublicKeyMap, Verified, reference_hash, verify_event},
    user_id,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    Rooms,
    append::{NewEvent, Transaction},
    create::{CreateRoom, Preset},
    membership::MemberProfile,
    pdu::{Pdu, room_id_from_create_event_id},
    pos::Pos,
    state::StateStore,
};
use crate::{
    Error, Result,
    service::{
        filter::{Walk, scan},
        server_keys::ServerKeys,
        stream::Stream,
    },
    storage::{Batch, Db},
};

pub(super) fn setup() -> (Db, Arc<ServerKeys>, Rooms) {
    let db = Db::memory();
    let keys = Arc::new(ServerKeys::load_or_generate(&db).unwrap());
    let stream = Arc::new(Stream::new(&db).unwrap());
    let rooms = Rooms::new(
        &db,
        server_name!("example.org").to_owned(),
        Arc::clone(&keys),
        stream,
    )
    .unwrap();
    (db, keys, rooms)
}

pub(super) fn options(version: RoomVersionId) -> CreateRoom {
    CreateRoom {
        version,
        preset: Preset::PrivateChat,
        creation_content: Map::new(),
        power_level_content_override: None,
        alias: None,
        initial_state: Vec::new(),
        name: Some("Club".to_owned()),
        topic: None,
        invite: Vec::new(),
        is_direct: false,
        publish: false,
    }
}

pub(super) fn alice_profile() -> MemberProfile {
    MemberProfile {
        displayname: Some("Alice".to_owned()),
        avatar_url: None,
    }
}

pub(super) async fn create(rooms: &Rooms, creator: &UserId, version: RoomVersionId) -> OwnedRoomId {
    rooms
        .create_room(creator, alice_profile(), options(version))
        .await
        .unwrap()
}

pub(super) fn text(body: &str) -> NewEvent {
    NewEvent::message(
        "m.room.message",
        json!({ "msgtype": "m.text", "body": body }),
    )
}

#[track_caller]
fn assert_forbidden<T: std::fmt::Debug>(result: Result<T>) {
    match result {
        Err(Error::Matrix {
            kind: ErrorKind::Forbidden,
            ..
        }) => {}
        other => panic!("expected M_FORBIDDEN, got {other:?}"),
    }
}

/// Every event of the room, oldest first.
pub(super) fn timeline(rooms: &Rooms, room_id: &ruma::RoomId) -> Vec<(Pos, Pdu)> {
    let info = rooms.existing(room_id).unwrap();
    rooms.events_from(&info, Pos::MIN, 10_000).unwrap()
}

/// The stored JSON of an event, as written by `append`.
fn stored_object(rooms: &Rooms, event_id: &EventId) -> CanonicalJsonObject {
    let id = rooms
        .pdu_id_of(event_id)
        .unwrap()
        .expect("event is indexed");
    let bytes = rooms.pdus.get(&id).unwrap().expect("PDU is stored");
    serde_json::from_slice(&bytes).expect("stored PDU is canonical JSON")
}

/// The stored JSON with what `append` adds after signing (`event_id`, `unsigned`) removed:
/// the PDU as it was signed.
fn signed_object(rooms: &Rooms, event_id: &EventId) -> CanonicalJsonObject {
    let mut object = stored_object(rooms, event_id);
    assert_eq!(
        object.remove("event_id"),
        Some(CanonicalJsonValue::String(event_id.to_string()))
    );
    object.remove("unsigned");
    object
}

fn public_key_map(key_id: String, public_key: [u8; 32]) -> PublicKeyMap {
    let mut set = BTreeMap::new();
    set.insert(key_id, Base64::new(public_key.to_vec()));
    let mut map = BTreeMap::new();
    map.insert("example.org".to_owned(), set);
    map
}

fn set(pairs: &[(u64, u64)]) -> BTreeMap<u64, u64> {
    pairs.iter().copied().collect()
}

// 1. createRoom

async fn check_created_room(version: RoomVersionId) {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let room_id = create(&rooms, alice, version.clone()).await;
    let v12 = version == RoomVersionId::V12;

    let create_event = rooms
        .current_state_event(&room_id, &StateEventType::RoomCreate, "")
        .unwrap()
        .expect("m.room.create in the current state");
    assert_eq!(create_event.sender, alice);
    assert_eq!(
        create_event.content_str("room_version").as_deref(),
        Some(version.as_str())
    );
    assert_eq!(create_event.room_id(), room_id);
    if v12 {
        assert!(!room_id.as_str().contains(':'), "{room_id}");
        assert_eq!(
            room_id_from_create_event_id(&create_event.event_id),
            room_id
        );
        // The v12 create event has no room_id: it is implied by its own id.
        assert!(create_event.room_id_field.is_none());
        // Rooms v11+: `creator` is dropped from the content (the sender is the creator).
        assert_eq!(create_event.content_str("creator"), None);
    } else {
        assert!(room_id.as_str().ends_with(":example.org"), "{room_id}");
        assert_eq!(create_event.room_id_field.as_ref(), Some(&room_id));
        assert_eq!(
            create_event.content_str("creator").as_deref(),
            Some(alice.as_str())
        );
    }
    // The create event is the first: no state before it.
    let (before, _) = rooms.state_hashes(&create_event.event_id).unwrap().unwrap();
    assert_eq!(before, None);

    let member = rooms
        .current_state_event(&room_id, &StateEventType::RoomMember, alice.as_str())
        .unwrap()
        .expect("creator's membership");
    assert_eq!(member.content_str("membership").as_deref(), Some("join"));
    assert_eq!(member.content_str("displayname").as_deref(), Some("Alice"));
    assert_eq!(
        rooms.membership(&room_id, alice).unwrap(),
        Some(MembershipState::Join)
    );
    assert!(rooms.is_joined(&room_id, alice).unwrap());
    assert_eq!(
        rooms.members(&room_id).unwrap(),
        vec![(alice.to_owned(), MembershipState::Join)]
    );
    let rooms_of = rooms.rooms_of(alice).unwrap();
    assert_eq!(rooms_of.len(), 1);
    assert_eq!(rooms_of[0].0, room_id);
    assert_eq!(rooms_of[0].1.membership, MembershipState::Join);
    assert_eq!(
        rooms.pos_of(&member.event_id).unwrap(),
        Some(Pos::live(rooms_of[0].1.count).unwrap())
    );

    let power_levels = rooms
        .current_state_event(&room_id, &StateEventType::RoomPowerLevels, "")
        .unwrap()
        .expect("m.room.power_levels");
    let content = power_levels.content_value();
    let users = content["users"].as_object().expect("users map");
    if v12 {
        // Rooms v12: creators have infinite power and must not be listed.
        assert!(!users.contains_key(alice.as_str()), "{users:?}");
        assert_eq!(content["events"]["m.room.tombstone"], 150);
    } else {
        assert_eq!(users.get(alice.as_str()), Some(&json!(100)));
        assert_eq!(content["events"]["m.room.tombstone"], 100);
    }
    assert_eq!(content["invite"], 0);

    let join_rules = rooms
        .current_state_event(&room_id, &StateEventType::RoomJoinRules, "")
        .unwrap()
        .expect("m.room.join_rules");
    assert_eq!(
        join_rules.content_str("join_rule").as_deref(),
        Some("invite")
    );
    let history = rooms
        .current_state_event(&room_id, &StateEventType::RoomHistoryVisibility, "")
        .unwrap()
        .expect("m.room.history_visibility");
    assert_eq!(
        history.content_str("history_visibility").as_deref(),
        Some("shared")
    );
    let guest_access = rooms
        .current_state_event(&room_id, &StateEventType::RoomGuestAccess, "")
        .unwrap()
        .expect("m.room.guest_access");
    assert_eq!(
        guest_access.content_str("guest_access").as_deref(),
        Some("can_join")
    );
    let name = rooms
        .current_state_event(&room_id, &StateEventType::RoomName, "")
        .unwrap()
        .expect("m.room.name");
    assert_eq!(name.content_str("name").as_deref(), Some("Club"));
    assert_eq!(
        rooms
            .current_state_event(&room_id, &StateEventType::RoomTopic, "")
            .unwrap()
            .map(|pdu| pdu.event_id),
        None
    );

    // Exactly those seven state events, and nothing else.
    let info = rooms.existing(&room_id).unwrap();
    assert_eq!(info.version, version);
    let state = rooms.current_state(&info).unwrap();
    assert_eq!(state.len(), 7);
    assert_eq!(rooms.state_events(&state).unwrap().len(), 7);

    // The timeline: the spec's order, a linear chain of prev_events, depths 1..=7.
    let events = timeline(&rooms, &room_id);
    let kinds: Vec<String> = events.iter().map(|(_, pdu)| pdu.kind.to_string()).collect();
    assert_eq!(
        kinds,
        [
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.guest_access",
            "m.room.name",
        ]
    );
    for (index, (_, pdu)) in events.iter().enumerate() {
        assert_eq!(u64::from(pdu.depth), index as u64 + 1);
        match index {
            0 => assert!(pdu.prev_events.is_empty()),
            _ => assert_eq!(pdu.prev_events, vec![events[index - 1].1.event_id.clone()]),
        }
    }
    assert_eq!(
        Pos::live(info.last_count).unwrap(),
        events.last().unwrap().0
    );
    assert_eq!(info.depth, 7);
    assert_eq!(
        rooms.extremities(&room_id).unwrap(),
        vec![name.event_id.clone()]
    );

    // Auth events: power levels and the sender's membership always; the create event only
    // before rooms v12 (where the room id names it).
    assert!(name.auth_events.contains(&power_levels.event_id));
    assert!(name.auth_events.contains(&member.event_id));
    assert_eq!(name.auth_events.contains(&create_event.event_id), !v12);
    assert_eq!(
        member.auth_events.contains(&create_event.event_id),
        !v12,
        "{:?}",
        member.auth_events
    );
}

#[tokio::test]
async fn create_room_v12_names_the_room_after_the_create_event() {
    check_created_room(RoomVersionId::V12).await;
}

#[tokio::test]
async fn create_room_v10_has_a_server_room_id_and_creator_power() {
    check_created_room(RoomVersionId::V10).await;
}

#[tokio::test]
async fn create_room_rejects_unsupported_versions() {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let result = rooms
        .create_room(alice, alice_profile(), options(RoomVersionId::V1))
        .await;
    assert!(
        matches!(
            result,
            Err(Error::Matrix {
                kind: ErrorKind::UnsupportedRoomVersion,
                ..
            })
        ),
        "{result:?}"
    );
}

// 2. Signatures and hashes

async fn check_signatures(version: RoomVersionId) {
    let (_db, keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let room_id = create(&rooms, alice, version.clone()).await;
    let message = rooms
        .send(&room_id, alice, text("signed"), None)
        .await
        .unwrap();
    // An event with `unsigned` (it replaces state).
    rooms
        .send(
            &room_id,
            alice,
            NewEvent::state("m.room.name", "", json!({ "name": "Renamed" })),
            None,
        )
        .await
        .unwrap();

    let rules = version.rules().unwrap();
    let keys_map = public_key_map(keys.key_id(), keys.keypair().public_key());

    let create_event = rooms
        .current_state_event(&room_id, &StateEventType::RoomCreate, "")
        .unwrap()
        .unwrap();
    let object = signed_object(&rooms, &create_event.event_id);
    assert!(object.contains_key("hashes"));
    assert!(object.contains_key("signatures"));
    assert_eq!(
        verify_event(&keys_map, &object, &rules).unwrap(),
        Verified::All
    );
    assert_eq!(
        create_event.event_id.as_str(),
        format!("${}", reference_hash(&object, &rules).unwrap())
    );

    // Every stored event of the room.
    let events = timeline(&rooms, &room_id);
    assert_eq!(events.len(), 9);
    for (_, pdu) in &events {
        let object = signed_object(&rooms, &pdu.event_id);
        assert_eq!(
            verify_event(&keys_map, &object, &rules).unwrap(),
            Verified::All,
            "{}",
            pdu.event_id
        );
        assert_eq!(
            pdu.event_id.as_str(),
            format!("${}", reference_hash(&object, &rules).unwrap())
        );
    }

    // A changed body keeps valid signatures (they cover the redacted form) but no longer
    // matches the content hash.
    let mut tampered = signed_object(&rooms, &message.event_id);
    let Some(CanonicalJsonValue::Object(content)) = tampered.get_mut("content") else {
        panic!("content is an object");
    };
    content.insert(
        "body".to_owned(),
        CanonicalJsonValue::String("forged".to_owned()),
    );
    assert_eq!(
        verify_event(&keys_map, &tampered, &rules).unwrap(),
        Verified::Signatures
    );

    // Another key under the same key id does not verify.
    let other = ServerKeys::load_or_generate(&Db::memory()).unwrap();
    let wrong = public_key_map(keys.key_id(), other.keypair().public_key());
    let object = signed_object(&rooms, &message.event_id);
    assert!(verify_event(&wrong, &object, &rules).is_err());
}

#[tokio::test]
async fn stored_events_are_signed_and_hashed_v12() {
    check_signatures(RoomVersionId::V12).await;
}

#[tokio::test]
async fn stored_events_are_signed_and_hashed_v10() {
    check_signatures(RoomVersionId::V10).await;
}

// 3. Authorization rules

async fn check_auth_rules(version: RoomVersionId) {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let room_id = create(&rooms, alice, version).await;

    // A stranger cannot send; nothing is stored.
    let info = rooms.existing(&room_id).unwrap();
    let position = rooms.stream.position();
    let extremities = rooms.extremities(&room_id).unwrap();
    assert_forbidden(rooms.send(&room_id, bob, text("x"), None).await);
    let after = rooms.existing(&room_id).unwrap();
    assert_eq!(after.last_count, info.last_count);
    assert_eq!(after.state_hash, info.state_hash);
    assert_eq!(after.depth, info.depth);
    assert_eq!(rooms.stream.position(), position);
    assert_eq!(rooms.extremities(&room_id).unwrap(), extremities);
    assert_eq!(timeline(&rooms, &room_id).len(), 7);

    // Nor join an invite-only room uninvited.
    assert_forbidden(
        rooms
            .join(&room_id, bob, &MemberProfile::default(), None)
            .await,
    );
    assert_eq!(rooms.membership(&room_id, bob).unwrap(), None);
    assert_eq!(
        rooms.existing(&room_id).unwrap().last_count,
        info.last_count
    );

    // Invited, they can.
    rooms
        .invite(&room_id, alice, bob, &MemberProfile::default(), None, false)
        .await
        .unwrap();
    assert_eq!(
        rooms.membership(&room_id, bob).unwrap(),
        Some(MembershipState::Invite)
    );
    // An invitee cannot post yet.
    assert_forbidden(rooms.send(&room_id, bob, text("early"), None).await);
    rooms
        .join(&room_id, bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    assert!(rooms.is_joined(&room_id, bob).unwrap());
    rooms
        .send(&room_id, bob, text("hello"), None)
        .await
        .unwrap();
    // Inviting a joined user is refused.
    assert_forbidden(
        rooms
            .invite(&room_id, alice, bob, &MemberProfile::default(), None, false)
            .await,
    );

    // Power level 0 cannot rename (m.room.name needs 50); the creator can.
    let before = rooms.existing(&room_id).unwrap();
    assert_forbidden(
        rooms
            .send(
                &room_id,
                bob,
                NewEvent::state("m.room.name", "", json!({ "name": "Bob's" })),
                None,
            )
            .await,
    );
    assert_eq!(
        rooms.existing(&room_id).unwrap().last_count,
        before.last_count
    );
    let name = rooms
        .current_state_event(&room_id, &StateEventType::RoomName, "")
        .unwrap()
        .unwrap();
    assert_eq!(name.content_str("name").as_deref(), Some("Club"));
    let renamed = rooms
        .send(
            &room_id,
            alice,
            NewEvent::state("m.room.name", "", json!({ "name": "Alice's" })),
            None,
        )
        .await
        .unwrap();
    let name = rooms
        .current_state_event(&room_id, &StateEventType::RoomName, "")
        .unwrap()
        .unwrap();
    assert_eq!(name.event_id, renamed.event_id);
    assert_eq!(name.content_str("name").as_deref(), Some("Alice's"));

    // Nor can a user without power ban the creator.
    assert_forbidden(rooms.ban(&room_id, bob, alice, None).await);

    // Banned: cannot join or send.
    rooms.ban(&room_id, alice, bob, Some("spam")).await.unwrap();
    assert_eq!(
        rooms.membership(&room_id, bob).unwrap(),
        Some(MembershipState::Ban)
    );
    assert_forbidden(
        rooms
            .join(&room_id, bob, &MemberProfile::default(), None)
            .await,
    );
    assert_forbidden(rooms.send(&room_id, bob, text("let me in"), None).await);
    assert_forbidden(
        rooms
            .invite(&room_id, alice, bob, &MemberProfile::default(), None, false)
            .await,
    );

    // Unbanned: back to `leave`, and the room is still invite-only.
    rooms.unban(&room_id, alice, bob, None).await.unwrap();
    assert_eq!(
        rooms.membership(&room_id, bob).unwrap(),
        Some(MembershipState::Leave)
    );
    assert_forbidden(rooms.unban(&room_id, alice, bob, None).await);
    assert_forbidden(
        rooms
            .join(&room_id, bob, &MemberProfile::default(), None)
            .await,
    );

    // Re-invited, they can join again.
    rooms
        .invite(&room_id, alice, bob, &MemberProfile::default(), None, false)
        .await
        .unwrap();
    rooms
        .join(&room_id, bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    assert!(rooms.is_joined(&room_id, bob).unwrap());
}

#[tokio::test]
async fn auth_rules_are_enforced_v12() {
    check_auth_rules(RoomVersionId::V12).await;
}

#[tokio::test]
async fn auth_rules_are_enforced_v10() {
    check_auth_rules(RoomVersionId::V10).await;
}

#[tokio::test]
async fn sending_to_an_unknown_room_is_not_found() {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let result = rooms
        .send(
            ruma::room_id!("!nowhere:example.org"),
            alice,
            text("x"),
            None,
        )
        .await;
    assert!(
        matches!(
            result,
            Err(Error::Matrix {
                kind: ErrorKind::NotFound,
                ..
            })
        ),
        "{result:?}"
    );
}

// 4. Timeline order and pagination

#[tokio::test]
async fn timeline_is_ordered_and_pages_both_ways() {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let room_id = create(&rooms, alice, RoomVersionId::V12).await;
    // A second room whose events interleave with the first's.
    let other_room = create(&rooms, alice, RoomVersionId::V12).await;

    let mut sent: Vec<OwnedEventId> = Vec::new();
    for n in 0..30 {
        let pdu = rooms
            .send(&room_id, alice, text(&format!("message {n}")), None)
            .await
            .unwrap();
        sent.push(pdu.event_id);
        if n % 3 == 0 {
            rooms
                .send(&other_room, alice, text(&format!("elsewhere {n}")), None)
                .await
                .unwrap();
        }
    }
    let counts: Vec<Pos> = sent
        .iter()
        .map(|id| rooms.pos_of(id).unwrap().expect("count of a stored event"))
        .collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] < pair[1]),
        "{counts:?}"
    );

    let info = rooms.existing(&room_id).unwrap();
    assert_eq!(Pos::live(info.last_count).unwrap(), counts[29]);
    assert!(rooms.stream.position() >= info.last_count);
    assert!(rooms.stream.position() >= rooms.existing(&other_room).unwrap().last_count);
    assert_eq!(rooms.extremities(&room_id).unwrap(), vec![sent[29].clone()]);

    // Backwards from the end: the ten newest, newest first.
    let newest = rooms.events_before(&info, Pos::MAX, 10).unwrap();
    assert_eq!(
        newest
            .iter()
            .map(|(_, pdu)| pdu.event_id.clone())
            .collect::<Vec<_>>(),
        sent[20..].iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        newest.iter().map(|(count, _)| *count).collect::<Vec<_>>(),
        counts[20..].iter().rev().copied().collect::<Vec<_>>()
    );
    assert!(newest.iter().all(|(_, pdu)| pdu.room_id() == room_id));
    // The next page continues exactly where the first stopped.
    let next = rooms
        .events_before(&info, newest.last().unwrap().0, 10)
        .unwrap();
    assert_eq!(
        next.iter()
            .map(|(_, pdu)| pdu.event_id.clone())
            .collect::<Vec<_>>(),
        sent[10..20].iter().rev().cloned().collect::<Vec<_>>()
    );

    // Forwards from the first message: the five oldest, oldest first.
    let oldest = rooms.events_from(&info, counts[0], 5).unwrap();
    assert_eq!(
        oldest
            .iter()
            .map(|(_, pdu)| pdu.event_id.clone())
            .collect::<Vec<_>>(),
        sent[..5].to_vec()
    );
    assert_eq!(
        oldest.iter().map(|(count, _)| *count).collect::<Vec<_>>(),
        counts[..5].to_vec()
    );
    let following = rooms
        .events_from(&info, oldest.last().unwrap().0.next(), 5)
        .unwrap();
    assert_eq!(
        following
            .iter()
            .map(|(_, pdu)| pdu.event_id.clone())
            .collect::<Vec<_>>(),
        sent[5..10].to_vec()
    );
    assert_eq!(
        following.first().map(|(_, pdu)| pdu.content_str("body")),
        Some(Some("message 5".to_owned()))
    );

    // Before the first message: only the room's own creation events, never the other room's.
    let history = rooms.events_before(&info, counts[0], 100).unwrap();
    assert_eq!(history.len(), 7);
    assert_eq!(
        history.last().unwrap().1.kind,
        TimelineEventType::RoomCreate
    );
    assert!(history.iter().all(|(_, pdu)| pdu.room_id() == room_id));
    // Past the end: nothing.
    assert!(
        rooms
            .events_from(&info, Pos::live(info.last_count).unwrap().next(), 10)
            .unwrap()
            .is_empty()
    );
    assert!(rooms.events_before(&info, Pos::MIN, 10).unwrap().is_empty());
    assert!(
        rooms
            .events_before(&info, Pos::live(0).unwrap(), 10)
            .unwrap()
            .is_empty()
    );

    // The whole room: 7 creation events and 30 messages, in count order.
    let all = timeline(&rooms, &room_id);
    assert_eq!(all.len(), 37);
    assert!(all.windows(2).all(|pair| pair[0].0 < pair[1].0));
    assert!(all.iter().all(|(_, pdu)| pdu.room_id() == room_id));
    assert_eq!(timeline(&rooms, &other_room).len(), 7 + 10);
}

/// Stores a copy of `template` under another id, content and timestamp as a backfilled event,
/// the way `/backfill` will: one commit, whose position, negated, is the event's place. The
/// state hashes are the template's, so visibility treats it as the template.
fn backfill_copy(
    rooms: &Rooms,
    room_id: &ruma::RoomId,
    template: &EventId,
    id: &str,
    content: JsonValue,
    ts: u64,
) -> (OwnedEventId, Pos) {
    let event_id = OwnedEventId::try_from(id).unwrap();
    let mut object = stored_object(rooms, template);
    object.insert("event_id".into(), CanonicalJsonValue::String(id.to_owned()));
    object.insert(
        "content".into(),
        serde_json::from_value(content.clone()).unwrap(),
    );
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(ts.try_into().unwrap()),
    );
    let bytes = serde_json::to_vec(&object).unwrap();
    let short_room_id = rooms.existing(room_id).unwrap().short_room_id;
    let template_short = rooms.short.get_short_event_id(template).unwrap().unwrap();
    let hashes = rooms
        .statehashes
        .get(&template_short.to_be_bytes())
        .unwrap()
        .unwrap();
    let (_, pos) = rooms
        .stream
        .commit(|position, batch| {
            let pos = Pos::backfilled(position)?;
            let id = super::pdu_id(short_room_id, pos);
            batch.insert(&*rooms.pdus, id.to_vec(), bytes);
            batch.insert(
                &*rooms.eventid_pduid,
                event_id.as_bytes().to_vec(),
                id.to_vec(),
            );
            let short = rooms.short.short_event_id(&event_id)?;
            batch.insert(&*rooms.statehashes, short.to_be_bytes().to_vec(), hashes);
            rooms.index_relation(batch, room_id, "m.room.message", &event_id, &content, pos)?;
            Ok(pos)
        })
        .unwrap();
    (event_id, pos)
}

pub(super) fn ids(events: &[(Pos, Pdu)]) -> Vec<OwnedEventId> {
    events.iter().map(|(_, pdu)| pdu.event_id.clone()).collect()
}

#[tokio::test]
async fn backfilled_events_sort_first_and_tokens_stay_valid() {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let room_id = create(&rooms, alice, RoomVersionId::V12).await;
    let m1 = rooms
        .send(&room_id, alice, text("one"), None)
        .await
        .unwrap();
    let m2 = rooms
        .send(&room_id, alice, text("two"), None)
        .await
        .unwrap();
    let thread = |body: &str, root: &EventId| {
        json!({
            "msgtype": "m.text",
            "body": body,
            "m.relates_to": { "rel_type": "m.thread", "event_id": root },
        })
    };
    let r1 = rooms
        .send(
            &room_id,
            alice,
            NewEvent::message("m.room.message", thread("live reply", &m1.event_id)),
            None,
        )
        .await
        .unwrap();
    let r1_pos = rooms.pos_of(&r1.event_id).unwrap().unwrap();
    let info = rooms.existing(&room_id).unwrap();
    let live = timeline(&rooms, &room_id);
    assert_eq!(live.len(), 7 + 3);
    // A client paged back to the room's oldest event: its token is that event's position.
    let token = live[0].0;
    assert_eq!(live[0].1.kind, TimelineEventType::RoomCreate);
    assert!(rooms.events_before(&info, token, 10).unwrap().is_empty());

    // Two backfills: the later one is older history and sorts first.
    let (b1, b1_pos) = backfill_copy(
        &rooms,
        &room_id,
        &m1.event_id,
        "$backfilled1",
        thread("old reply", &m1.event_id),
        1,
    );
    let (b2, b2_pos) = backfill_copy(
        &rooms,
        &room_id,
        &m1.event_id,
        "$backfilled2",
        thread("older reply", &m2.event_id),
        0,
    );
    assert!(b2_pos < b1_pos && b1_pos < Pos::live(0).unwrap());
    assert!(!b1_pos.is_live() && !b2_pos.is_live());
    assert_eq!(rooms.pos_of(&b1).unwrap(), Some(b1_pos));
    assert_eq!(rooms.pdu_id_of(&b1).unwrap().unwrap().len(), 24);
    assert_eq!(
        rooms
            .pdu(&b1)
            .unwrap()
            .unwrap()
            .content_str("body")
            .as_deref(),
        Some("old reply")
    );
    // Nothing live moved.
    for (pos, pdu) in &live {
        assert_eq!(rooms.pos_of(&pdu.event_id).unwrap(), Some(*pos));
    }

    // A backwards walk from the end reaches them last, a forward walk from the start first.
    let all = rooms.events_before(&info, Pos::MAX, 100).unwrap();
    assert_eq!(all.len(), 12);
    assert_eq!(ids(&all[10..]), vec![b1.clone(), b2.clone()]);
    assert_eq!(
        ids(&rooms.events_from(&info, Pos::MIN, 3).unwrap()),
        vec![b2.clone(), b1.clone(), live[0].1.event_id.clone()]
    );
    // The token taken before they arrived now pages back to them, one page at a time too.
    assert_eq!(
        ids(&rooms.events_before(&info, token, 10).unwrap()),
        vec![b1.clone(), b2.clone()]
    );
    let walk = |from: Pos| Walk {
        dir: Direction::Backward,
        from,
        bound: None,
        limit: 1,
        max_read: 10,
    };
    let page = scan(&rooms, &info, walk(token), |_, _| Ok(true)).unwrap();
    assert_eq!(ids(&page.events), vec![b1.clone()]);
    let page = scan(&rooms, &info, walk(page.last_read.unwrap()), |_, _| {
        Ok(true)
    })
    .unwrap();
    assert_eq!(ids(&page.events), vec![b2.clone()]);
    let page = scan(&rooms, &info, walk(page.last_read.unwrap()), |_, _| {
        Ok(true)
    })
    .unwrap();
    assert!(page.events.is_empty() && page.exhausted);
    // Forwards from a backfilled position crosses into the live events; the boundary 0
    // splits the halves.
    assert_eq!(
        ids(&rooms.events_from(&info, b1_pos.next(), 1).unwrap()),
        vec![live[0].1.event_id.clone()]
    );
    assert_eq!(
        ids(&rooms
            .events_before(&info, Pos::live(0).unwrap(), 10)
            .unwrap()),
        vec![b1.clone(), b2.clone()]
    );
    assert_eq!(
        ids(&rooms
            .events_from(&info, Pos::live(0).unwrap(), 100)
            .unwrap()),
        ids(&live)
    );

    // Relations page across the boundary; a backfilled reply does not replace a newer
    // latest reply, and is the latest of a thread that has no other.
    let children = |from: Option<Pos>, forward: bool| -> Vec<OwnedEventId> {
        rooms
            .relations(&m1.event_id, from, forward, 10)
            .unwrap()
            .into_iter()
            .map(|relation| relation.event_id)
            .collect()
    };
    assert_eq!(children(None, false), vec![r1.event_id.clone(), b1.clone()]);
    assert_eq!(children(Some(r1_pos), false), vec![b1.clone()]);
    assert_eq!(children(None, true), vec![b1.clone(), r1.event_id.clone()]);
    assert_eq!(
        children(Some(b1_pos.next()), true),
        vec![r1.event_id.clone()]
    );
    assert_eq!(
        rooms.thread_roots(&room_id).unwrap(),
        vec![(m1.event_id.clone(), r1_pos), (m2.event_id.clone(), b2_pos)]
    );

    // Jumping to a date searches the backfilled half too.
    let mut visibility = rooms.visibility(&room_id, alice).unwrap();
    let at = |ts: u64, direction: Direction, visibility: &mut _| {
        rooms
            .event_at_timestamp(&room_id, ts, direction, visibility)
            .unwrap()
            .map(|(pos, pdu)| (pos, pdu.event_id))
    };
    assert_eq!(
        at(0, Direction::Forward, &mut visibility),
        Some((b2_pos, b2.clone()))
    );
    assert_eq!(
        at(1, Direction::Backward, &mut visibility),
        Some((b1_pos, b1.clone()))
    );
    assert_eq!(
        at(2, Direction::Forward, &mut visibility),
        Some((live[0].0, live[0].1.event_id.clone()))
    );
}

// 5. State before and after events

#[tokio::test]
async fn state_hashes_track_state_changes_only() {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let room_id = create(&rooms, alice, RoomVersionId::V12).await;

    let name = rooms
        .send(
            &room_id,
            alice,
            NewEvent::state("m.room.name", "", json!({ "name": "Renamed" })),
            None,
        )
        .await
        .unwrap();
    let message = rooms
        .send(&room_id, alice, text("after the rename"), None)
        .await
        .unwrap();

    let (name_before, name_after) = rooms.state_hashes(&name.event_id).unwrap().unwrap();
    let name_before = name_before.expect("the room had state before the rename");
    assert_ne!(name_before, name_after);

    let short = rooms
        .short
        .get_short_event_id(&name.event_id)
        .unwrap()
        .unwrap();
    let name_key = rooms
        .short
        .get_short_state_key(&StateEventType::RoomName, "")
        .unwrap()
        .unwrap();
    let before_set = rooms.state.load(name_before).unwrap();
    let after_set = rooms.state.load(name_after).unwrap();
    assert!(!before_set.values().any(|event| *event == short));
    assert!(after_set.values().any(|event| *event == short));
    assert_eq!(after_set.get(&name_key), Some(&short));
    assert_eq!(before_set.len(), after_set.len());
    assert_eq!(
        rooms.state.changed(Some(name_before), name_after).unwrap(),
        vec![(name_key, short)]
    );

    // The state before held the old name, and the new event says whom it replaced.
    let old = rooms
        .state_event(&before_set, &StateEventType::RoomName, "")
        .unwrap()
        .unwrap();
    assert_eq!(old.content_str("name").as_deref(), Some("Club"));
    let unsigned: JsonValue =
        serde_json::from_str(name.unsigned.as_ref().expect("unsigned").get()).unwrap();
    assert_eq!(unsigned["replaces_state"], old.event_id.as_str());
    assert_eq!(unsigned["prev_content"]["name"], "Club");
    assert_eq!(unsigned["prev_sender"], alice.as_str());

    // A message changes no state.
    let (message_before, message_after) = rooms.state_hashes(&message.event_id).unwrap().unwrap();
    assert_eq!(message_before, Some(message_after));
    assert_eq!(message_after, name_after);
    assert_eq!(
        message.unsigned.as_ref().map(|raw| raw.get().to_owned()),
        None
    );
    assert_eq!(rooms.existing(&room_id).unwrap().state_hash, name_after);

    assert_eq!(rooms.state_hashes(event_id!("$unknown")).unwrap(), None);
}

#[test]
fn forked_state_sets_are_stored_independently() {
    let (db, _keys, rooms) = setup();
    let mut batch = Batch::new();
    let parent = rooms
        .state
        .save(&mut batch, None, set(&[(1, 10), (2, 20), (3, 30)]))
        .unwrap();
    // Two successors of one parent, disagreeing on key 2; `b` also adds key 4.
    let a = rooms
        .state
        .save(&mut batch, Some(parent), set(&[(1, 10), (2, 21), (3, 30)]))
        .unwrap();
    let b = rooms
        .state
        .save(
            &mut batch,
            Some(parent),
            set(&[(1, 10), (2, 22), (3, 30), (4, 40)]),
        )
        .unwrap();
    assert_ne!(a, b);
    assert_ne!(a, parent);
    db.apply(&batch).unwrap();

    // Fresh stores (empty caches) read the diffs back from storage, in either order.
    let fresh = StateStore::new(&db).unwrap();
    assert_eq!(
        *fresh.load(b).unwrap(),
        set(&[(1, 10), (2, 22), (3, 30), (4, 40)])
    );
    assert_eq!(*fresh.load(a).unwrap(), set(&[(1, 10), (2, 21), (3, 30)]));
    assert_eq!(
        *fresh.load(parent).unwrap(),
        set(&[(1, 10), (2, 20), (3, 30)])
    );
    let fresh = StateStore::new(&db).unwrap();
    assert_eq!(*fresh.load(a).unwrap(), set(&[(1, 10), (2, 21), (3, 30)]));
    assert_eq!(
        *fresh.load(b).unwrap(),
        set(&[(1, 10), (2, 22), (3, 30), (4, 40)])
    );

    assert_eq!(fresh.changed(Some(a), b).unwrap(), vec![(2, 22), (4, 40)]);
    assert_eq!(fresh.changed(Some(parent), a).unwrap(), vec![(2, 21)]);
    assert_eq!(
        fresh.changed(None, a).unwrap(),
        vec![(1, 10), (2, 21), (3, 30)]
    );
    assert!(fresh.changed(Some(b), b).unwrap().is_empty());

    // Building on one branch leaves the other untouched.
    let mut batch = Batch::new();
    let c = fresh
        .save(&mut batch, Some(a), set(&[(1, 11), (2, 21), (3, 30)]))
        .unwrap();
    db.apply(&batch).unwrap();
    let fresh = StateStore::new(&db).unwrap();
    assert_eq!(*fresh.load(c).unwrap(), set(&[(1, 11), (2, 21), (3, 30)]));
    assert_eq!(
        *fresh.load(b).unwrap(),
        set(&[(1, 10), (2, 22), (3, 30), (4, 40)])
    );
    assert_eq!(*fresh.load(a).unwrap(), set(&[(1, 10), (2, 21), (3, 30)]));
    assert_eq!(fresh.changed(Some(b), c).unwrap(), vec![(1, 11), (2, 21)]);
}

// 6. Wake-ups

#[tokio::test]
async fn sending_touches_joined_members() {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let carol = user_id!("@carol:example.org");
    let dave = user_id!("@dave:example.org");
    let room_id = create(&rooms, alice, RoomVersionId::V12).await;
    rooms
        .invite(&room_id, alice, bob, &MemberProfile::default(), None, false)
        .await
        .unwrap();
    rooms
        .join(&room_id, bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    // Carol is only invited; the invite itself concerns her.
    let invite = rooms
        .invite(
            &room_id,
            alice,
            carol,
            &MemberProfile::default(),
            None,
            false,
        )
        .await
        .unwrap();
    let invite_count = rooms.pos_of(&invite.event_id).unwrap().unwrap().get() as u64;
    assert_eq!(rooms.stream.notifier.last_change(carol), Some(invite_count));

    let message = rooms.send(&room_id, alice, text("hi"), None).await.unwrap();
    let count = rooms.pos_of(&message.event_id).unwrap().unwrap().get() as u64;
    assert!(rooms.stream.position() >= count);
    for member in [alice, bob] {
        assert_eq!(
            rooms.stream.notifier.last_change(member),
            Some(count),
            "{member}"
        );
        assert!(rooms.stream.changed_for(member, count), "{member}");
        assert!(!rooms.stream.changed_for(member, count + 1), "{member}");
    }
    // Not joined: a message does not concern her.
    assert_eq!(rooms.stream.notifier.last_change(carol), Some(invite_count));
    assert!(!rooms.stream.changed_for(carol, count));
    // Never seen since start: nothing new after start.
    assert_eq!(rooms.stream.notifier.last_change(dave), None);
    assert!(!rooms.stream.changed_for(dave, count));
}

// 7. Idempotent sends

#[tokio::test]
async fn transaction_ids_map_to_events_per_device() {
    let (_db, _keys, rooms) = setup();
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let room_id = create(&rooms, alice, RoomVersionId::V12).await;
    let device = device_id!("DEV");

    assert_eq!(rooms.txn_event(alice, device, "t1").unwrap(), None);
    let pdu = rooms
        .send(
            &room_id,
            alice,
            text("once"),
            Some(Transaction {
                device_id: device,
                txn_id: "t1",
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        rooms.txn_event(alice, device, "t1").unwrap(),
        Some(pdu.event_id.clone())
    );
    assert_eq!(rooms.txn_event(alice, device, "t2").unwrap(), None);
    assert_eq!(
        rooms.txn_event(alice, device_id!("OTHER"), "t1").unwrap(),
        None
    );
    assert_eq!(rooms.txn_event(bob, device, "t1").unwrap(), None);

    assert_eq!(
        rooms.transaction_id_for(&pdu.event_id, device).unwrap(),
        Some("t1".to_owned())
    );
    assert_eq!(
        rooms
            .transaction_id_for(&pdu.event_id, device_id!("OTHER"))
            .unwrap(),
        None
    );
    // A device whose id is a prefix of the sender's is another device.
    assert_eq!(
        rooms
            .transaction_id_for(&pdu.event_id, device_id!("DE"))
            .unwrap(),
        None
    );

    let plain = rooms
        .send(&room_id, alice, text("no transaction"), None)
        .await
        .unwrap();
    assert_eq!(
        rooms.transaction_id_for(&plain.event_id, device).unwrap(),
        None
    );
    // The mapping survives later sends.
    assert_eq!(
        rooms.txn_event(alice, device, "t1").unwrap(),
        Some(pdu.event_id)
    );
}

// Forked DAGs: two branches from one fork point, as federation brings them, resolved with
// ruma's state resolution (v2 for room version 10, v2.1 for version 12).

/// A public room where alice has full power, bob 50 and carol 40; 50 may change power levels.
async fn forked_room(version: RoomVersionId) -> (Rooms, OwnedRoomId, OwnedEventId) {
    let (_db, _keys, rooms) = setup();
    let (alice, bob, carol) = (
        user_id!("@alice:example.org"),
        user_id!("@bob:example.org"),
        user_id!("@carol:example.org"),
    );
    let v12 = version == RoomVersionId::V12;
    let mut users = Map::new();
    if !v12 {
        users.insert(alice.to_string(), 100.into());
    }
    users.insert(bob.to_string(), 50.into());
    users.insert(carol.to_string(), 40.into());
    let mut opts = options(version);
    opts.preset = Preset::PublicChat;
    let overrides = json!({ "users": users, "events": { "m.room.power_levels": 50 } });
    opts.power_level_content_override = overrides.as_object().cloned();
    let room = rooms
        .create_room(alice, alice_profile(), opts)
        .await
        .unwrap();
    rooms
        .join(&room, bob, &MemberProfile::default(), None)
        .await
        .unwrap();
    rooms
        .join(&room, carol, &MemberProfile::default(), None)
        .await
        .unwrap();
    let extremities = rooms.extremities(&room).unwrap();
    assert_eq!(extremities.len(), 1);
    (rooms, room, extremities[0].clone())
}

fn power_levels_with(rooms: &Rooms, room: &ruma::RoomId, user: &UserId, level: i64) -> JsonValue {
    let mut content = rooms
        .current_state_event(room, &StateEventType::RoomPowerLevels, "")
        .unwrap()
        .unwrap()
        .content_value();
    content["users"][user.as_str()] = level.into();
    content
}

async fn check_conflicting_power_levels(version: RoomVersionId) {
    let (rooms, room, fork) = forked_room(version).await;
    let (alice, bob, carol) = (
        user_id!("@alice:example.org"),
        user_id!("@bob:example.org"),
        user_id!("@carol:example.org"),
    );
    // Branch A: alice demotes bob. Branch B, from the same point: bob demotes carol.
    let demote_bob = power_levels_with(&rooms, &room, bob, 0);
    let demote_carol = power_levels_with(&rooms, &room, carol, 0);
    let a = rooms
        .send_with_prev_events(
            &room,
            alice,
            NewEvent::state("m.room.power_levels", "", demote_bob),
            vec![fork.clone()],
        )
        .await
        .unwrap();
    let b = rooms
        .send_with_prev_events(
            &room,
            bob,
            NewEvent::state("m.room.power_levels", "", demote_carol),
            vec![fork.clone()],
        )
        .await
        .expect("bob may change power levels at the fork point");
    let mut tips = rooms.extremities(&room).unwrap();
    tips.sort();
    let mut expected = vec![a.event_id.clone(), b.event_id.clone()];
    expected.sort();
    assert_eq!(tips, expected, "two forward extremities");

    // Resolution applies the more powerful sender's change first; bob's then fails the auth
    // rules, having lost his power: bob ends at 0, carol keeps 40.
    let resolved = rooms
        .current_state_event(&room, &StateEventType::RoomPowerLevels, "")
        .unwrap()
        .unwrap();
    assert_eq!(resolved.event_id, a.event_id);
    assert_eq!(resolved.content_value()["users"][carol.as_str()], 40);
    assert_eq!(resolved.content_value()["users"][bob.as_str()], 0);
    // The resolved state is enforced: bob can no longer change power levels.
    let retry = power_levels_with(&rooms, &room, carol, 0);
    assert_forbidden(
        rooms
            .send(
                &room,
                bob,
                NewEvent::state("m.room.power_levels", "", retry),
                None,
            )
            .await,
    );

    // A merge event names both tips; afterwards there is one extremity again, and the state
    // before the merge is the resolved one.
    let merge = rooms
        .send(&room, alice, text("merged"), None)
        .await
        .unwrap();
    let mut prevs = merge.prev_events.clone();
    prevs.sort();
    assert_eq!(prevs, expected);
    assert_eq!(
        rooms.extremities(&room).unwrap(),
        vec![merge.event_id.clone()]
    );
    let (before, _) = rooms.state_hashes(&merge.event_id).unwrap().unwrap();
    let before = rooms.state.load(before.unwrap()).unwrap();
    let pl_key = rooms
        .short
        .get_short_state_key(&StateEventType::RoomPowerLevels, "")
        .unwrap()
        .unwrap();
    assert_eq!(
        before.get(&pl_key),
        Some(
            &rooms
                .short
                .get_short_event_id(&a.event_id)
                .unwrap()
                .unwrap()
        )
    );
}

#[tokio::test]
async fn conflicting_power_level_changes_resolve_v10() {
    check_conflicting_power_levels(RoomVersionId::V10).await;
}

#[tokio::test]
async fn conflicting_power_level_changes_resolve_v12() {
    check_conflicting_power_levels(RoomVersionId::V12).await;
}

async fn check_ban_racing_join(version: RoomVersionId) {
    let (rooms, room, fork) = forked_room(version).await;
    let (alice, dave) = (
        user_id!("@alice:example.org"),
        user_id!("@dave:example.org"),
    );
    // Branch A: alice bans dave. Branch B, from the same point: dave joins the public room.
    let ban = NewEvent::state(
        "m.room.member",
        dave.as_str(),
        json!({ "membership": "ban" }),
    );
    rooms
        .send_with_prev_events(&room, alice, ban, vec![fork.clone()])
        .await
        .unwrap();
    let join = NewEvent::state(
        "m.room.member",
        dave.as_str(),
        json!({ "membership": "join" }),
    );
    rooms
        .send_with_prev_events(&room, dave, join, vec![fork])
        .await
        .expect("the join was valid at the fork point");

    // The ban wins: it comes first in the power ordering, and the join then fails against it.
    let member = rooms
        .current_state_event(&room, &StateEventType::RoomMember, dave.as_str())
        .unwrap()
        .unwrap();
    assert_eq!(member.content_str("membership").as_deref(), Some("ban"));
    assert_eq!(
        rooms.membership(&room, dave).unwrap(),
        Some(MembershipState::Ban),
        "indexes follow the resolution"
    );
    assert_forbidden(rooms.send(&room, dave, text("I am in?"), None).await);
}

#[tokio::test]
async fn a_ban_beats_a_racing_join_v10() {
    check_ban_racing_join(RoomVersionId::V10).await;
}

#[tokio::test]
async fn a_ban_beats_a_racing_join_v12() {
    check_ban_racing_join(RoomVersionId::V12).await;
}

/// `depth` is one more than the largest among an event's `prev_events` (server-server API,
/// "PDUs"), not the room's largest depth plus one: a branch from an older point starts
/// lower, and the event that merges two branches follows the longer one.
#[tokio::test]
async fn depth_follows_the_prev_events() {
    let (rooms, room, fork) = forked_room(RoomVersionId::V11).await;
    let (alice, bob) = (user_id!("@alice:example.org"), user_id!("@bob:example.org"));
    let fork_depth = u64::from(rooms.pdu(&fork).unwrap().unwrap().depth);
    // The long branch: three messages on top of the fork point.
    let mut long = fork.clone();
    for n in 0..3 {
        let pdu = rooms
            .send_with_prev_events(&room, alice, text(&format!("long {n}")), vec![long])
            .await
            .unwrap();
        assert_eq!(u64::from(pdu.depth), fork_depth + 1 + n);
        long = pdu.event_id;
    }
    // The short branch, from the fork point again: its depth is the fork's plus one.
    let short = rooms
        .send_with_prev_events(&room, bob, text("short"), vec![fork.clone()])
        .await
        .unwrap();
    assert_eq!(u64::from(short.depth), fork_depth + 1);
    assert_eq!(rooms.existing(&room).unwrap().depth, fork_depth + 3);
    // The next event has both tips as prev events and follows the longer.
    let merge = rooms.send(&room, alice, text("merge"), None).await.unwrap();
    assert_eq!(merge.prev_events.len(), 2);
    assert_eq!(u64::from(merge.depth), fork_depth + 4);
}

/// Rooms v3+ "Event format": an event cites at most 20 `prev_events`. With more forward
/// extremities a local event cites the 20 deepest; the others stay extremities and are
/// resolved into the current state, and the next event takes them in.
#[tokio::test]
async fn a_local_event_cites_at_most_twenty_prev_events() {
    let (rooms, room, fork) = forked_room(RoomVersionId::V11).await;
    let alice = user_id!("@alice:example.org");
    // 24 branches from the fork point; two of them one event longer (deeper).
    let mut deep = Vec::new();
    for n in 0..24 {
        let tip = rooms
            .send_with_prev_events(
                &room,
                alice,
                text(&format!("branch {n}")),
                vec![fork.clone()],
            )
            .await
            .unwrap();
        if n < 2 {
            let longer = rooms
                .send_with_prev_events(&room, alice, text("longer"), vec![tip.event_id])
                .await
                .unwrap();
            deep.push(longer.event_id);
        }
    }
    assert_eq!(rooms.extremities(&room).unwrap().len(), 24);
    let first = rooms
        .send(&room, alice, text("merge 1"), None)
        .await
        .unwrap();
    assert_eq!(first.prev_events.len(), 20);
    for id in &deep {
        assert!(first.prev_events.contains(id), "the deepest are cited");
    }
    // 24 - 20 + 1.
    assert_eq!(rooms.extremities(&room).unwrap().len(), 5);
    let second = rooms
        .send(&room, alice, text("merge 2"), None)
        .await
        .unwrap();
    assert_eq!(second.prev_events.len(), 5);
    assert_eq!(rooms.extremities(&room).unwrap(), vec![second.event_id]);
}

#[test]
fn room_info_is_stored_compactly_and_json_of_earlier_builds_still_reads() {
    use super::RoomInfo;
    let info = RoomInfo {
        version: ruma::RoomVersionId::V12,
        short_room_id: 7,
        state_hash: u64::MAX - 1,
        last_count: 1234,
        depth: 99,
        bump_count: 1200,
    };
    let stored = info.encode();
    assert_eq!(
        stored.len(),
        41 + 2,
        "a format byte, five numbers, the version"
    );
    let back = RoomInfo::decode(&stored).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&info).unwrap()
    );
    let json = serde_json::to_vec(&info).unwrap();
    let old = RoomInfo::decode(&json).unwrap();
    assert_eq!(
        serde_json::to_value(&old).unwrap(),
        serde_json::to_value(&info).unwrap()
    );
    assert!(RoomInfo::decode(&stored[..30]).is_err(), "cut short");
    let mut unknown = stored.clone();
    unknown.truncate(41);
    unknown.extend_from_slice(b"not a version!");
    assert!(RoomInfo::decode(&unknown).is_err());
}
