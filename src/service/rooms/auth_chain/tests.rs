//! Auth-chain records against a plain walk of the DAG, on rooms with random forks.

use std::collections::BTreeSet;

use ruma::{OwnedEventId, OwnedUserId, RoomVersionId, api::error::ErrorKind, server_name, user_id};
use serde_json::{Map, json};

use super::*;
use crate::service::{
    rooms::{
        append::NewEvent,
        create::{CreateRoom, Preset},
        membership::MemberProfile,
    },
    server_keys::ServerKeys,
    stream::Stream,
};

fn rooms_on(db: &Db) -> Rooms {
    let keys = Arc::new(ServerKeys::load_or_generate(db).unwrap());
    let stream = Arc::new(Stream::new(db).unwrap());
    Rooms::new(db, server_name!("example.org").to_owned(), keys, stream).unwrap()
}

/// A deterministic pseudo-random sequence (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Every event reachable from `event` through `auth_events`, walked through the stored JSON
/// (what resolution did before the records).
fn full_walk(rooms: &Rooms, event: &OwnedEventId) -> BTreeSet<ShortEventId> {
    let mut seen = BTreeSet::new();
    let mut todo = rooms.pdu(event).unwrap().unwrap().auth_events;
    while let Some(id) = todo.pop() {
        if seen.insert(rooms.short.get_short_event_id(&id).unwrap().unwrap()) {
            todo.extend(rooms.pdu(&id).unwrap().unwrap().auth_events);
        }
    }
    seen
}

fn short(rooms: &Rooms, event: &OwnedEventId) -> ShortEventId {
    rooms.short.get_short_event_id(event).unwrap().unwrap()
}

/// A public room of alice (power 100), bob, carol and dave (50 each), then `steps` random
/// events by random members, each citing one to three random events among the extremities
/// and the ten newest events: messages, renames (member events on their own chain), power
/// level changes, topics, leaves and rejoins. Events the auth rules refuse are skipped.
async fn random_forks(
    db: &Db,
    version: RoomVersionId,
    seed: u64,
    steps: usize,
) -> Vec<OwnedEventId> {
    let rooms = rooms_on(db);
    let alice = user_id!("@alice:example.org");
    let others: Vec<OwnedUserId> = ["bob", "carol", "dave"]
        .iter()
        .map(|name| OwnedUserId::try_from(format!("@{name}:example.org")).unwrap())
        .collect();
    let v12 = version == RoomVersionId::V12;
    let mut users = Map::new();
    if !v12 {
        users.insert(alice.to_string(), 100.into());
    }
    for user in &others {
        users.insert(user.to_string(), 50.into());
    }
    let options = CreateRoom {
        version,
        preset: Preset::PublicChat,
        creation_content: Map::new(),
        power_level_content_override: json!({ "users": users }).as_object().cloned(),
        alias: None,
        initial_state: Vec::new(),
        name: None,
        topic: None,
        invite: Vec::new(),
        is_direct: false,
        publish: false,
    };
    let room = rooms
        .create_room(alice, MemberProfile::default(), options)
        .await
        .unwrap();
    for user in &others {
        rooms
            .join(&room, user, &MemberProfile::default(), None)
            .await
            .unwrap();
    }
    let mut everyone: Vec<OwnedUserId> = vec![alice.to_owned()];
    everyone.extend(others.iter().cloned());
    let mut rng = Rng(seed);
    let mut recent: Vec<OwnedEventId> = rooms.extremities(&room).unwrap();
    for step in 0..steps {
        let sender = &everyone[rng.below(everyone.len())];
        let event = match rng.below(6) {
            0 | 1 => NewEvent::message(
                "m.room.message",
                json!({ "msgtype": "m.text", "body": format!("step {step}") }),
            ),
            2 => NewEvent::state(
                "m.room.member",
                sender.as_str(),
                json!({ "membership": "join", "displayname": format!("{sender} {step}") }),
            ),
            3 => {
                let target = &everyone[rng.below(everyone.len())];
                let mut content = rooms
                    .current_state_event(&room, &"m.room.power_levels".into(), "")
                    .unwrap()
                    .unwrap()
                    .content_value();
                if !(v12 && target == alice) {
                    content["users"][target.as_str()] = (rng.below(4) as i64 * 20).into();
                }
                NewEvent::state("m.room.power_levels", "", content)
            }
            4 => NewEvent::state("m.room.topic", "", json!({ "topic": format!("{step}") })),
            _ => {
                let leave = rng.below(2) == 0;
                NewEvent::state(
                    "m.room.member",
                    sender.as_str(),
                    json!({ "membership": if leave { "leave" } else { "join" } }),
                )
            }
        };
        let mut pool = rooms.extremities(&room).unwrap();
        pool.extend(recent.iter().rev().take(10).cloned());
        let mut prevs = Vec::new();
        for _ in 0..=rng.below(3) {
            let prev = pool[rng.below(pool.len())].clone();
            if !prevs.contains(&prev) {
                prevs.push(prev);
            }
        }
        match rooms
            .send_with_prev_events(&room, sender, event, prevs)
            .await
        {
            Ok(pdu) => recent.push(pdu.event_id),
            Err(Error::Matrix {
                kind: ErrorKind::Forbidden,
                ..
            }) => {}
            Err(other) => panic!("step {step}: {other:?}"),
        }
    }
    let info = rooms.existing(&room).unwrap();
    rooms
        .events_from(&info, crate::service::rooms::Pos::MIN, 100_000)
        .unwrap()
        .into_iter()
        .map(|(_, pdu)| pdu.event_id)
        .collect()
}

async fn check_records_equal_a_full_walk(version: RoomVersionId, seed: u64) {
    let db = Db::memory();
    let events = random_forks(&db, version.clone(), seed, 150).await;
    assert!(
        events.len() > 100,
        "{version}: only {} events",
        events.len()
    );
    let rooms = rooms_on(&db);
    let merges = events
        .iter()
        .filter(|id| rooms.pdu(id).unwrap().unwrap().prev_events.len() > 1)
        .count();
    assert!(merges > 20, "{version}: only {merges} merges");

    // Cold: computed now, newest first (the walks go deep), and recorded.
    let rooms = rooms_on(&db);
    for event in events.iter().rev() {
        let expected: Vec<_> = full_walk(&rooms, event).into_iter().collect();
        let chain = rooms.auth_chain_of(short(&rooms, event)).unwrap();
        assert_eq!(&chain[..], &expected[..], "{version}: chain of {event}");
    }
    // From the records alone, in a fresh service (empty caches), oldest first.
    let rooms = rooms_on(&db);
    for event in &events {
        let event_short = short(&rooms, event);
        let record = rooms
            .auth_chains
            .record(event_short)
            .unwrap()
            .expect("recorded");
        assert!(record.level < MAX_LEVEL);
        let direct: Vec<_> = rooms
            .pdu(event)
            .unwrap()
            .unwrap()
            .auth_events
            .iter()
            .map(|id| short(&rooms, id))
            .collect();
        assert_eq!(record.direct, direct);
        assert_eq!(rooms.auth_events_short(event_short).unwrap(), direct);
        assert!(record.base == 0 || direct.contains(&record.base));
        assert!(record.added.windows(2).all(|pair| pair[0] < pair[1]));
        // What the commit path will write for the event is the same record.
        assert_eq!(
            rooms.record_for(&direct).unwrap(),
            Some(record.encode()),
            "{version}: record of {event}"
        );
        assert_eq!(Record::decode(&record.encode()), Some(record));
        let expected: Vec<_> = full_walk(&rooms, event).into_iter().collect();
        let chain = rooms.auth_chain_of(event_short).unwrap();
        assert_eq!(
            &chain[..],
            &expected[..],
            "{version}: recorded chain of {event}"
        );
    }
    // The conflicted subgraph (rooms v12) from the records' `direct` lists, against the
    // definition: conflicted events, and ancestors of one that reach one.
    let state_events: Vec<&OwnedEventId> = events
        .iter()
        .filter(|id| rooms.pdu(id).unwrap().unwrap().state_key.is_some())
        .collect();
    let mut rng = Rng(seed ^ 0xffff);
    let mut grew = 0;
    for _ in 0..20 {
        let mut conflicted: ruma::state_res::StateMap<Vec<OwnedEventId>> = Default::default();
        let mut chosen = BTreeSet::new();
        for _ in 0..2 + rng.below(5) {
            let id = state_events[rng.below(state_events.len())];
            let pdu = rooms.pdu(id).unwrap().unwrap();
            if chosen.insert(short(&rooms, id)) {
                conflicted
                    .entry((pdu.state_event_type(), pdu.state_key.unwrap()))
                    .or_default()
                    .push(id.clone());
            }
        }
        let subgraph: BTreeSet<OwnedEventId> = rooms
            .conflicted_subgraph(&conflicted, None)
            .unwrap()
            .into_iter()
            .collect();
        let mut expected: BTreeSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        for id in conflicted.values().flatten() {
            for ancestor in full_walk(&rooms, id) {
                let ancestor_id = rooms.short.event_id(ancestor).unwrap();
                if !full_walk(&rooms, &ancestor_id).is_disjoint(&chosen) {
                    expected.insert(ancestor_id);
                }
            }
        }
        assert_eq!(subgraph, expected, "{version}: conflicted subgraph");
        grew += usize::from(subgraph.len() > chosen.len());
    }
    assert!(
        grew > 0,
        "{version}: no subgraph beyond the conflicted events"
    );

    // A record written through a commit batch is read like a lazily computed one.
    let newest = events.last().unwrap();
    let newest_short = short(&rooms, newest);
    let record = rooms.auth_chains.record(newest_short).unwrap().unwrap();
    rooms
        .auth_chains
        .records
        .remove(&newest_short.to_be_bytes())
        .unwrap();
    let mut batch = Batch::new();
    let bytes = rooms.record_for(&record.direct).unwrap().unwrap();
    rooms
        .auth_chains
        .write_record(&mut batch, newest_short, bytes);
    db.apply(&batch).unwrap();
    let fresh = rooms_on(&db);
    assert_eq!(
        fresh.auth_chains.record(newest_short).unwrap(),
        Some(record)
    );
    let expected: Vec<_> = full_walk(&fresh, newest).into_iter().collect();
    assert_eq!(
        &fresh.auth_chain_of(newest_short).unwrap()[..],
        &expected[..]
    );
}

#[tokio::test]
async fn auth_chain_records_equal_a_full_walk() {
    check_records_equal_a_full_walk(RoomVersionId::V10, 0x5eed_1234_abcd_0001).await;
    check_records_equal_a_full_walk(RoomVersionId::V12, 0x5eed_1234_abcd_0002).await;
}

/// A user who renames themselves over and over builds a long line of member events, each
/// the base of the next: records stay diffs for fewer than `MAX_LEVEL` in a row, then a
/// snapshot starts a new line.
#[tokio::test]
async fn long_lines_of_records_are_cut_by_snapshots() {
    let db = Db::memory();
    let rooms = rooms_on(&db);
    let alice = user_id!("@alice:example.org");
    let options = CreateRoom {
        version: RoomVersionId::V10,
        preset: Preset::PublicChat,
        creation_content: Map::new(),
        power_level_content_override: None,
        alias: None,
        initial_state: Vec::new(),
        name: None,
        topic: None,
        invite: Vec::new(),
        is_direct: false,
        publish: false,
    };
    let room = rooms
        .create_room(alice, MemberProfile::default(), options)
        .await
        .unwrap();
    let mut renames = Vec::new();
    for n in 0..60 {
        let rename = NewEvent::state(
            "m.room.member",
            alice.as_str(),
            json!({ "membership": "join", "displayname": format!("alice {n}") }),
        );
        renames.push(
            rooms
                .send(&room, alice, rename, None)
                .await
                .unwrap()
                .event_id,
        );
    }
    let last = short(&rooms, renames.last().unwrap());
    let chain = rooms.auth_chain_of(last).unwrap();
    let expected: Vec<_> = full_walk(&rooms, renames.last().unwrap())
        .into_iter()
        .collect();
    assert_eq!(&chain[..], &expected[..]);
    let levels: Vec<u32> = renames
        .iter()
        .map(|id| {
            rooms
                .auth_chains
                .record(short(&rooms, id))
                .unwrap()
                .unwrap()
                .level
        })
        .collect();
    assert!(levels.iter().all(|level| *level < MAX_LEVEL));
    assert!(levels.contains(&(MAX_LEVEL - 1)), "{levels:?}");
    assert!(
        levels
            .windows(2)
            .any(|pair| pair[0] == MAX_LEVEL - 1 && pair[1] == 0),
        "{levels:?}"
    );
}

#[test]
fn auth_chain_cache_is_bounded() {
    let mut cache: Fifo<u64> = Fifo::new(100, 10);
    let mut rng = Rng(42);
    for key in 0..1_000u64 {
        let len = 1 + rng.below(30);
        let chain: Chain = (0..len as u64).collect::<Vec<_>>().into();
        cache.insert(key, chain, 0);
        let (entries, ids) = cache.size();
        assert!(entries <= 10 && ids <= 100, "{entries} entries, {ids} ids");
        assert!(cache.get(&key).is_some(), "the newest is kept");
        assert_eq!(
            ids,
            cache
                .chains
                .values()
                .map(|(chain, _)| chain.len())
                .sum::<usize>()
        );
    }
    // FIFO: the oldest go first.
    assert!(cache.get(&0).is_none());
    // A chain larger than the whole budget is not kept, and evicts nothing.
    let before = cache.size();
    cache.insert(5_000, (0..101u64).collect::<Vec<_>>().into(), 0);
    assert!(cache.get(&5_000).is_none());
    assert_eq!(cache.size(), before);

    // The service's caches are created with the documented bounds.
    let rooms = rooms_on(&Db::memory());
    let cache = rooms.auth_chains.cache.lock().unwrap();
    assert_eq!(
        (cache.max_ids, cache.max_entries),
        (CACHE_IDS, CACHE_ENTRIES)
    );
    let memo = rooms.auth_chains.state_memo.lock().unwrap();
    assert_eq!(memo.max_entries, STATE_MEMO_ENTRIES);
}

/// An auth event that is not stored makes the chain an error (a smaller chain would make
/// resolution wrong), and the record of an event citing it is not made.
#[tokio::test]
async fn a_missing_auth_event_is_an_error_not_a_shorter_chain() {
    let db = Db::memory();
    let events = random_forks(&db, RoomVersionId::V10, 7, 0).await;
    // Every event's record was written with it: forget them all, as in a database made
    // before records existed, where chains are computed on first use.
    let records = db.tree("shorteventid_authchain").unwrap();
    let keys: Vec<Vec<u8>> = records
        .scan_prefix(b"")
        .map(|entry| entry.unwrap().0)
        .collect();
    for key in keys {
        records.remove(&key).unwrap();
    }
    let rooms = rooms_on(&db);
    let last = events.last().unwrap();
    let pdu = rooms.pdu(last).unwrap().unwrap();
    let auth: Vec<_> = pdu.auth_events.iter().map(|id| short(&rooms, id)).collect();
    // Forget one of its auth events.
    let gone = &pdu.auth_events[0];
    rooms.eventid_pduid.remove(gone.as_bytes()).unwrap();
    assert!(rooms.auth_chain_of(short(&rooms, last)).is_err());
    assert_eq!(rooms.record_for(&auth).unwrap(), None);
    assert!(
        rooms
            .auth_chains
            .record(short(&rooms, last))
            .unwrap()
            .is_none()
    );
}
