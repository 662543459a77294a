//! A database written by an older build, opened by this one.
//!
//! `make_schema1_fixture` (ignored: run by hand, see `tests/fixtures/README.md`) drives the
//! services on a sled database the way clients would, then writes every tree to
//! `tests/fixtures/schema1.json` and what the services showed to `schema1-expect.json`.
//! `schema1_database_opens_unchanged` loads that dump into a fresh sled directory and checks
//! that this build shows exactly the same: timelines with their positions, every
//! pagination token, relations, threads, state, memberships, receipts, sync.
//!
//! Everything that reads positions goes through the helpers under "Positions" below, so a
//! change of the position type touches only them; the fixture records positions and tokens
//! as decimal strings, which are the tokens clients hold.

use std::{path::Path, sync::Arc, time::Duration};

use ruma::{
    OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId, events::AnySyncTimelineEvent,
    serde::Raw, user_id,
};
use serde_json::{Map, Value as JsonValue, json};

use super::STEPS;
use crate::{
    config::tests_support,
    service::{
        Services,
        filter::SyncFilter,
        rooms::{
            RoomInfo, Rooms,
            append::{NewEvent, Transaction},
            create::{CreateRoom, Preset},
            membership::MemberProfile,
        },
        sync::{SyncRequest, sync},
    },
    storage::{Db, SCHEMA_VERSION, StorageError, Store, dump, sled::SledStore},
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema1.json");
const EXPECT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/schema1-expect.json"
);
/// Events per `/messages` page in the recorded paginations.
const PAGE: usize = 7;
/// More than any fixture room holds.
const ALL: usize = 10_000;

// ---- Positions: the only code that knows the timeline API's position type. ----

use crate::service::rooms::pos::Pos;

/// Every event of the room, oldest first: `(position, event id)`.
fn timeline(rooms: &Rooms, info: &RoomInfo) -> Vec<(String, OwnedEventId)> {
    rooms
        .events_from(info, Pos::MIN, ALL)
        .unwrap()
        .into_iter()
        .map(|(count, pdu)| (count.to_string(), pdu.event_id))
        .collect()
}

/// The token a backwards `/messages` without `from` starts at for this room: just after its
/// newest event.
fn newest_token(info: &RoomInfo) -> String {
    (info.last_count + 1).to_string()
}

/// One `/messages` page from `token`, as the handler reads it: the events (newest first
/// backwards, oldest first forwards) and the `end` token (`None`: nothing further).
fn page(
    rooms: &Rooms,
    info: &RoomInfo,
    token: &str,
    backwards: bool,
) -> (Vec<OwnedEventId>, Option<String>) {
    let from: Pos = token.parse().expect("a decimal token");
    let events = if backwards {
        rooms.events_before(info, from, PAGE).unwrap()
    } else {
        rooms.events_from(info, from, PAGE).unwrap()
    };
    let end = match (backwards, events.last()) {
        (_, None) => None,
        (true, Some((count, _))) => Some(count.to_string()),
        (false, Some((count, _))) => Some(count.next().to_string()),
    };
    (
        events.into_iter().map(|(_, pdu)| pdu.event_id).collect(),
        end,
    )
}

/// Relations of `target`, newest first: `[position, rel_type, event type, event id]`.
fn relations(rooms: &Rooms, target: &ruma::EventId) -> Vec<JsonValue> {
    rooms
        .relations(target, None, false, ALL)
        .unwrap()
        .into_iter()
        .map(|relation| {
            json!([
                relation.pos.to_string(),
                relation.rel_type,
                relation.event_type,
                relation.event_id
            ])
        })
        .collect()
}

/// Thread roots with the position of their latest reply, most recent first.
fn thread_roots(rooms: &Rooms, room_id: &RoomId) -> Vec<JsonValue> {
    rooms
        .thread_roots(room_id)
        .unwrap()
        .into_iter()
        .map(|(root, latest)| json!([root, latest.to_string()]))
        .collect()
}

/// The position of a stored event.
fn position(rooms: &Rooms, event_id: &ruma::EventId) -> String {
    rooms.pos_of(event_id).unwrap().unwrap().to_string()
}

/// Positions compare as numbers.
fn position_value(position: &str) -> i128 {
    position.parse().unwrap()
}

// ---- What the services show. ----

/// Everything the fixture checks about one room, as JSON.
async fn observe_room(services: &Arc<Services>, room_id: &RoomId) -> JsonValue {
    let rooms = &services.rooms;
    let info = rooms.existing(room_id).unwrap();
    let timeline = timeline(rooms, &info);

    // Every page of a backwards walk from the newest event, and a forwards page from each
    // token the walk handed out.
    let mut pages = Vec::new();
    let mut token = Some(newest_token(&info));
    while let Some(from) = token {
        let (events, end) = page(rooms, &info, &from, true);
        pages.push(json!({ "from": from, "dir": "b", "events": events, "end": end }));
        let (events, forward_end) = page(rooms, &info, &from, false);
        pages.push(json!({ "from": from, "dir": "f", "events": events, "end": forward_end }));
        token = end;
    }

    let mut related = Map::new();
    for (_, event_id) in &timeline {
        let found = relations(rooms, event_id);
        if !found.is_empty() {
            related.insert(event_id.to_string(), found.into());
        }
    }

    let mut state: Vec<JsonValue> = rooms
        .state_events(&rooms.current_state(&info).unwrap())
        .unwrap()
        .into_iter()
        .map(|pdu| json!([pdu.kind.to_string(), pdu.state_key, pdu.event_id]))
        .collect();
    state.sort_by_key(|entry| entry.to_string());

    let members: Vec<JsonValue> = rooms
        .members(room_id)
        .unwrap()
        .into_iter()
        .map(|(user, membership)| json!([user, membership.to_string()]))
        .collect();
    let mut receipts = Map::new();
    for (user, _) in rooms.members(room_id).unwrap() {
        let events = services
            .ephemeral
            .read_receipt_events(room_id, &user)
            .unwrap();
        receipts.insert(user.to_string(), json!(events));
    }
    let mut extremities = rooms.extremities(room_id).unwrap();
    extremities.sort();

    // Content as stored: the redacted event's is empty.
    let contents: Map<String, JsonValue> = timeline
        .iter()
        .map(|(_, event_id)| {
            let pdu = rooms.pdu(event_id).unwrap().unwrap();
            (event_id.to_string(), pdu.content_value())
        })
        .collect();

    json!({
        "room_id": room_id,
        "version": info.version,
        "info": info,
        "timeline": timeline.iter().map(|(pos, id)| json!([pos, id])).collect::<Vec<_>>(),
        "pages": pages,
        "relations": related,
        "thread_roots": thread_roots(rooms, room_id),
        "state": state,
        "members": members,
        "receipts": receipts,
        "extremities": extremities,
        "contents": contents,
    })
}

/// A user's memberships as the per-user index has them.
fn memberships(services: &Services, user: &UserId) -> JsonValue {
    services
        .rooms
        .rooms_of(user)
        .unwrap()
        .into_iter()
        .map(|(room, entry)| json!([room, entry.membership.to_string(), entry.count.to_string()]))
        .collect()
}

fn sync_request<'a>(
    user: &'a UserId,
    device: &'a ruma::DeviceId,
    since: Option<u64>,
) -> SyncRequest<'a> {
    SyncRequest {
        user_id: user,
        device_id: device,
        since,
        full_state: false,
        timeout: Duration::ZERO,
        filter: SyncFilter::default(),
    }
}

fn event_ids(events: &[Raw<AnySyncTimelineEvent>]) -> Vec<String> {
    events
        .iter()
        .map(|event| event.get_field::<String>("event_id").unwrap().unwrap())
        .collect()
}

/// An initial sync's joined rooms: each timeline's events, `limited` and `prev_batch`.
async fn initial_sync(
    services: &Arc<Services>,
    user: &UserId,
    device: &ruma::DeviceId,
) -> JsonValue {
    let response = sync(services, sync_request(user, device, None))
        .await
        .unwrap();
    let rooms: Map<String, JsonValue> = response
        .rooms
        .join
        .iter()
        .map(|(room_id, joined)| {
            (
                room_id.to_string(),
                json!({
                    "events": event_ids(&joined.timeline.events),
                    "limited": joined.timeline.limited,
                    "prev_batch": joined.timeline.prev_batch,
                }),
            )
        })
        .collect();
    json!({ "next_batch": response.next_batch, "join": rooms })
}

/// Everything the fixture checks (the content of `schema1-expect.json` but the accounts).
async fn observe(services: &Arc<Services>, room_ids: &[OwnedRoomId]) -> JsonValue {
    let mut rooms = Vec::new();
    for room_id in room_ids {
        rooms.push(observe_room(services, room_id).await);
    }
    json!({
        "rooms": rooms,
        "memberships": {
            "@alice:example.org": memberships(services, user_id!("@alice:example.org")),
            "@bob:example.org": memberships(services, user_id!("@bob:example.org")),
        },
    })
}

// ---- Making the fixture. ----

/// Services on the sled database in `dir/db`, with the configuration's paths in `dir`.
fn services_in(dir: &Path) -> Arc<Services> {
    let db = Db::open_sled(&dir.join("db"), 8 << 20, STEPS).unwrap();
    let mut config = tests_support::config();
    config.database_path = dir.to_owned();
    Services::build(config, db).unwrap()
}

fn text(body: &str) -> NewEvent {
    NewEvent::message(
        "m.room.message",
        json!({ "msgtype": "m.text", "body": body }),
    )
}

fn profile(name: &str) -> MemberProfile {
    MemberProfile {
        displayname: Some(name.to_owned()),
        avatar_url: None,
    }
}

async fn post(
    services: &Services,
    room_id: &RoomId,
    sender: &UserId,
    event: NewEvent,
) -> OwnedEventId {
    services
        .send_event(room_id, sender, event, None)
        .await
        .unwrap()
        .event_id
}

/// One room of the fixture: created by alice, joined by bob, `messages` messages, a topic
/// change, an edit, a reaction, a thread reply, a redaction, a fork and its merge, receipts;
/// bob leaves at the end when `bob_leaves`.
async fn fill_room(
    services: &Arc<Services>,
    version: RoomVersionId,
    messages: usize,
    bob_leaves: bool,
    alice_device: &ruma::DeviceId,
) -> OwnedRoomId {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let rooms = &services.rooms;
    let room_id = rooms
        .create_room(
            alice,
            profile("Alice"),
            CreateRoom {
                version: version.clone(),
                preset: Preset::PublicChat,
                creation_content: Map::new(),
                power_level_content_override: None,
                alias: None,
                initial_state: Vec::new(),
                name: Some(format!("Fixture v{version}")),
                topic: Some("Before".to_owned()),
                invite: Vec::new(),
                is_direct: false,
                publish: false,
            },
        )
        .await
        .unwrap();
    rooms
        .join(&room_id, bob, &profile("Bob"), None)
        .await
        .unwrap();

    let mut sent = Vec::new();
    for n in 0..messages {
        let (sender, transaction) = if n % 3 == 2 {
            (bob, None)
        } else {
            (alice, Some(format!("v{version}-m{n}")))
        };
        let pdu = services
            .send_event(
                &room_id,
                sender,
                text(&format!("message {n}")),
                transaction.as_deref().map(|txn_id| Transaction {
                    device_id: alice_device,
                    txn_id,
                }),
            )
            .await
            .unwrap();
        sent.push(pdu.event_id);
    }
    let send = |sender, event| post(services, &room_id, sender, event);
    // A state change.
    send(
        alice,
        NewEvent::state("m.room.topic", "", json!({ "topic": "After" })),
    )
    .await;
    // An edit of bob's first message.
    let edited = &sent[2];
    send(
        bob,
        NewEvent::message(
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": "* message 2, edited",
                "m.new_content": { "msgtype": "m.text", "body": "message 2, edited" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": edited },
            }),
        ),
    )
    .await;
    // A reaction.
    send(
        bob,
        NewEvent::message(
            "m.reaction",
            json!({ "m.relates_to": {
                "rel_type": "m.annotation", "event_id": &sent[0], "key": "👍"
            } }),
        ),
    )
    .await;
    // A thread reply.
    let root = &sent[1];
    let reply = send(
        bob,
        NewEvent::message(
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": "in the thread",
                "m.relates_to": {
                    "rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                    "m.in_reply_to": { "event_id": root },
                },
            }),
        ),
    )
    .await;
    // A redaction.
    let mut redaction = NewEvent::message("m.room.redaction", json!({ "reason": "oops" }));
    redaction.redacts = Some(sent[3].clone());
    send(alice, redaction).await;
    // A fork: an event whose only prev is an older one, then a message that merges both
    // branches (its prevs are both extremities; the state is resolved where they meet).
    let fork_point = sent[messages - 2].clone();
    rooms
        .send_with_prev_events(
            &room_id,
            alice,
            NewEvent::state("m.room.name", "", json!({ "name": "Forked name" })),
            vec![fork_point],
        )
        .await
        .unwrap();
    let merge = send(alice, text("after the fork")).await;
    // Receipts: bob's main one, alice's private one, and one in the thread.
    let members = [alice, bob];
    let ephemeral = &services.ephemeral;
    ephemeral
        .set_receipt(&room_id, bob, "m.read", None, merge.clone(), members)
        .await
        .unwrap();
    ephemeral
        .set_receipt(&room_id, alice, "m.read.private", None, merge, members)
        .await
        .unwrap();
    ephemeral
        .set_receipt(
            &room_id,
            alice,
            "m.read",
            Some(root.as_str()),
            reply,
            members,
        )
        .await
        .unwrap();
    if bob_leaves {
        rooms.leave(&room_id, bob, bob, Some("bye")).await.unwrap();
    }
    room_id
}

/// Writes the schema-1 fixture. Run it by hand on a schema-1 build only (see
/// `tests/fixtures/README.md`); the committed files are what the other tests read.
#[tokio::test]
#[ignore = "writes tests/fixtures/schema1*.json; run by hand (tests/fixtures/README.md)"]
async fn make_schema1_fixture() {
    assert_eq!(
        SCHEMA_VERSION, 1,
        "a schema-1 fixture can only be made by a schema-1 build"
    );
    let dir = tempfile::tempdir().unwrap();
    let services = services_in(dir.path());
    let mut accounts = Map::new();
    let mut devices = Vec::new();
    for user in [user_id!("@alice:example.org"), user_id!("@bob:example.org")] {
        services
            .users
            .create(
                user,
                Some(format!("{} password", user.localpart())),
                false,
                None,
            )
            .await
            .unwrap();
        let (device, token) = services
            .devices
            .login(user, None, Some("fixture".to_owned()))
            .await
            .unwrap();
        accounts.insert(
            user.to_string(),
            json!({ "device_id": device, "access_token": token }),
        );
        devices.push(device);
    }
    let room_ids = [
        fill_room(&services, RoomVersionId::V10, 20, false, &devices[0]).await,
        fill_room(&services, RoomVersionId::V12, 10, true, &devices[0]).await,
    ];
    let mut expect = observe(&services, &room_ids).await;
    expect["sync"] = initial_sync(&services, user_id!("@alice:example.org"), &devices[0]).await;
    expect["accounts"] = accounts.into();
    expect["schema_version"] = SCHEMA_VERSION.into();
    services.db.flush_blocking().unwrap();
    let dump = services.db.dump().unwrap();
    std::fs::write(FIXTURE, dump.to_json()).unwrap();
    std::fs::write(
        EXPECT,
        serde_json::to_string_pretty(&expect).unwrap() + "\n",
    )
    .unwrap();
}

// ---- Opening it. ----

fn fixture() -> (dump::Dump, JsonValue) {
    let dump = dump::Dump::parse(&std::fs::read(FIXTURE).unwrap()).unwrap();
    let expect = serde_json::from_slice(&std::fs::read(EXPECT).unwrap()).unwrap();
    (dump, expect)
}

#[tokio::test]
async fn schema1_database_opens_unchanged() {
    let (dump, expect) = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    dump::load_into_directory(&path, 8 << 20, &dump).unwrap();
    assert_eq!(expect["schema_version"], 1);
    let services = services_in(dir.path());
    // Upgraded by the steps.
    assert_eq!(SCHEMA_VERSION, 3);
    assert_eq!(services.db.schema_version().unwrap(), 3);

    // Everything the old build showed, this one shows too, section by section.
    let room_ids: Vec<OwnedRoomId> = expect["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|room| serde_json::from_value(room["room_id"].clone()).unwrap())
        .collect();
    assert_eq!(room_ids.len(), 2);
    // Step 3 moved every room's forward extremities into one value, leaving none behind.
    for room_id in &room_ids {
        let extremities = services.rooms.extremities(room_id).unwrap();
        assert_eq!(extremities.len(), 1, "{room_id}: {extremities:?}");
    }
    {
        let old = services.db.tree("roomid_extremity").unwrap();
        assert!(old.iter_from(b"", false).next().is_none());
    }
    let seen = observe(&services, &room_ids).await;
    for (index, room) in expect["rooms"].as_array().unwrap().iter().enumerate() {
        for (key, value) in room.as_object().unwrap() {
            assert_eq!(&seen["rooms"][index][key], value, "room {index}: {key}");
        }
    }
    assert_eq!(seen["memberships"], expect["memberships"]);

    // The accounts' access tokens still work; sync shows the same timelines, and a sync
    // from the old `next_batch` finds nothing new.
    let alice = user_id!("@alice:example.org");
    let device: ruma::OwnedDeviceId =
        serde_json::from_value(expect["accounts"][alice.as_str()]["device_id"].clone()).unwrap();
    let token = expect["accounts"][alice.as_str()]["access_token"]
        .as_str()
        .unwrap();
    assert_eq!(
        services.devices.authenticate(token).unwrap(),
        Some((alice.to_owned(), device.clone()))
    );
    assert_eq!(
        initial_sync(&services, alice, &device).await["join"],
        expect["sync"]["join"]
    );
    let since: u64 = expect["sync"]["next_batch"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let later = sync(&services, sync_request(alice, &device, Some(since)))
        .await
        .unwrap();
    for (room_id, joined) in &later.rooms.join {
        assert!(joined.timeline.events.is_empty(), "news in {room_id}");
    }

    // A new event lands after every old one (ids continue above the dump's), and the
    // newest page shows it first, then the old newest events.
    for (index, room_id) in room_ids.iter().enumerate() {
        let old_timeline = expect["rooms"][index]["timeline"].as_array().unwrap();
        let old_newest = old_timeline.last().unwrap()[0].as_str().unwrap();
        let new = post(&services, room_id, alice, text("after the upgrade")).await;
        let new_position = position(&services.rooms, &new);
        assert!(position_value(&new_position) > position_value(old_newest));
        assert!(position_value(&new_position) > i128::from(dump.next_id));
        let info = services.rooms.existing(room_id).unwrap();
        let (events, _) = page(&services.rooms, &info, &newest_token(&info), true);
        let old_first_page = &expect["rooms"][index]["pages"][0]["events"];
        assert_eq!(events[0], new);
        assert_eq!(
            json!(events[1..]),
            json!(old_first_page.as_array().unwrap()[..PAGE - 1])
        );
    }

    // Opening it again changes nothing.
    services.db.flush_blocking().unwrap();
    let before = services.db.dump().unwrap().trees;
    drop(services);
    let db = Db::open_sled(&path, 8 << 20, STEPS).unwrap();
    assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(
        db.dump().unwrap().trees == before,
        "a second open wrote something"
    );
}

/// The fixture with one `eventid_pduid` value replaced, loaded into `dir/db`; opening it
/// must fail and leave it at version 1.
fn upgrade_refused(value: &str) -> StorageError {
    let (mut dump, _) = fixture();
    dump.trees.get_mut("eventid_pduid").unwrap()[5][1] = value.to_owned();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    dump::load_into_directory(&path, 8 << 20, &dump).unwrap();
    let error = Db::open_sled(&path, 8 << 20, STEPS)
        .err()
        .expect("the upgrade is refused");
    let store = SledStore::open(&path, 8 << 20).unwrap();
    let version = store
        .open_tree("global")
        .unwrap()
        .get(b"schema_version")
        .unwrap();
    assert_eq!(
        version,
        Some(1u64.to_be_bytes().to_vec()),
        "still version 1"
    );
    error
}

#[test]
fn a_pdu_id_of_the_wrong_length_stops_the_upgrade() {
    assert!(matches!(
        upgrade_refused("00000000000000040000000000000003ff"),
        StorageError::Corrupt {
            tree: "eventid_pduid",
            ..
        }
    ));
}

#[test]
fn a_pdu_id_without_its_event_stops_the_upgrade() {
    assert!(matches!(
        upgrade_refused("00000000000000040000000000000002"),
        StorageError::Corrupt {
            tree: "pduid_pdu",
            ..
        }
    ));
}

// ---- A store that fails on demand (§9 of docs/room-core.md), through the services. ----

#[tokio::test]
async fn a_failing_read_is_an_error_not_a_missing_event() {
    let (db, switch) = Db::failing();
    let services = Services::build(tests_support::config(), db).unwrap();
    let alice = user_id!("@alice:example.org");
    let room_id = services
        .rooms
        .create_room(
            alice,
            profile("Alice"),
            CreateRoom {
                version: RoomVersionId::V12,
                preset: Preset::PrivateChat,
                creation_content: Map::new(),
                power_level_content_override: None,
                alias: None,
                initial_state: Vec::new(),
                name: None,
                topic: None,
                invite: Vec::new(),
                is_direct: false,
                publish: false,
            },
        )
        .await
        .unwrap();
    let event = post(&services, &room_id, alice, text("hello")).await;
    switch.arm(crate::storage::memory::Failure {
        after: 1,
        tree: Some("pduid_pdu"),
        persistent: false,
    });
    assert!(matches!(
        services.rooms.pdu(&event),
        Err(crate::Error::Storage(StorageError::Backend(_)))
    ));
    assert_eq!(switch.failed(), 1);
    assert!(services.rooms.pdu(&event).unwrap().is_some());
}
