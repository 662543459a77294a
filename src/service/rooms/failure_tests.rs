//! A storage error is an error, never "missing" and never a verdict (`docs/room-core.md`
//! §9): on a store whose `get`s fail on demand ([`Db::failing`]), every get of an accept, a
//! local send into a forked room and the state lookups is made to fail in turn; each must
//! answer `Err(Storage)` with nothing stored, or — when no get failed — succeed as usual.

use ruma::{RoomVersionId, events::StateEventType, user_id};

use super::{
    Rooms,
    accept::{Outcome, Place, StateBefore},
    accept_tests::{RoomRemote, VERSIONS, message, rooms_on, state, timeline},
    backfill_tests::map_of,
    check::Verdict,
    redact_tests::redaction,
    remote_tests::{RemoteRoom, remote_room},
    tests::{alice_profile, options, text},
    verify::Verified,
};
use crate::{
    Error,
    storage::{Db, memory::Failure},
};

/// The most gets one operation is expected to make; a loop past it is a test bug.
const MAX_GETS: u64 = 3_000;

fn is_storage(error: &Error) -> bool {
    matches!(error, Error::Storage(_))
}

/// One accept to fail: what is accepted first, then the event under test.
struct Case {
    name: &'static str,
    setup: Vec<(Verified, Place, StateBefore)>,
    event: Verified,
    place: Place,
    given: StateBefore,
}

/// Accepts covering the paths of `accept`: steps 4 to 6 with a resolution of the current
/// state, a state given for a missing prev, a backfill, a redaction and a pending one.
fn cases(room: &RemoteRoom) -> Vec<Case> {
    let r = RoomRemote(room);
    let live = |event: &Verified| (event.clone(), Place::Live, StateBefore::default());
    let base: Vec<_> = room.events().into_iter().map(live).collect();
    let with = |extra: Vec<(Verified, Place, StateBefore)>| {
        let mut setup = base.clone();
        setup.extend(extra);
        setup
    };
    // A topic change, then a ban on the branch beside it: the ban runs steps 4 to 6 (its
    // state before is not the current state) and a resolution of the current state.
    let topic = state(
        &r,
        &room.carol_join,
        "m.room.topic",
        "",
        serde_json::json!({ "topic": "hello" }),
        &[room.tip()],
        &[&room.power_levels],
    );
    let ban = state(
        &r,
        &room.carol_join,
        "m.room.member",
        room.dave.as_str(),
        serde_json::json!({ "membership": "ban" }),
        &[room.tip()],
        &[&room.power_levels, &room.dave_join],
    );
    let a = message(&r, &room.dave_join, &[room.tip()], "a");
    let b = message(&r, &room.dave_join, &[&a], "b");
    let after_tip = StateBefore {
        fetched: vec![map_of(&[
            &room.create,
            &room.carol_join,
            &room.power_levels,
            &room.join_rules,
            &room.dave_join,
            &room.erin_join,
        ])],
    };
    let m = message(&r, &room.dave_join, &[room.tip()], "m");
    let red = redaction(
        room,
        &room.remote,
        &room.carol_join,
        &m.event_id,
        &[room.tip()],
    );
    vec![
        Case {
            name: "fork",
            setup: with(vec![live(&topic)]),
            event: ban,
            place: Place::Live,
            given: StateBefore::default(),
        },
        Case {
            name: "hole",
            setup: with(Vec::new()),
            event: b.clone(),
            place: Place::Live,
            given: after_tip.clone(),
        },
        Case {
            name: "backfill",
            setup: with(vec![(b, Place::Live, after_tip)]),
            event: a,
            place: Place::Backfill,
            given: StateBefore::default(),
        },
        Case {
            name: "redaction",
            setup: with(vec![live(&m)]),
            event: red.clone(),
            place: Place::Live,
            given: StateBefore::default(),
        },
        Case {
            name: "pending redaction",
            setup: with(vec![live(&red)]),
            event: m,
            place: Place::Live,
            given: StateBefore::default(),
        },
    ]
}

#[tokio::test]
async fn a_storage_error_is_not_a_missing_event() {
    for version in VERSIONS {
        let room = remote_room(version);
        for case in cases(&room) {
            let name = case.name;
            for persistent in [false, true] {
                let mut n = 1;
                loop {
                    assert!(n < MAX_GETS, "{name}: no accept succeeded");
                    let (db, switch) = Db::failing();
                    let rooms = rooms_on(db);
                    for (event, place, given) in &case.setup {
                        let outcome = rooms
                            .accept(event.clone(), *place, given.clone())
                            .await
                            .unwrap();
                        assert!(matches!(outcome, Outcome::Committed(_)), "{name}");
                    }
                    let before = timeline(&rooms, &room);
                    switch.arm(Failure {
                        after: n,
                        tree: None,
                        persistent,
                    });
                    let result = rooms
                        .accept(case.event.clone(), case.place, case.given.clone())
                        .await;
                    switch.disarm();
                    match result {
                        Err(error) => {
                            assert!(switch.failed() > 0, "{name}, get #{n}: {error:?}");
                            assert!(is_storage(&error), "{name}, get #{n}: {error:?}");
                            assert!(
                                rooms.pdu(&case.event.event_id).unwrap().is_none(),
                                "{name}, get #{n}: stored"
                            );
                            assert_eq!(timeline(&rooms, &room), before, "{name}, get #{n}");
                        }
                        Ok(outcome) => {
                            assert_eq!(
                                switch.failed(),
                                0,
                                "{name}: get #{n} failed unseen: {outcome:?}"
                            );
                            let Outcome::Committed(committed) = outcome else {
                                panic!("{name}: {outcome:?}");
                            };
                            assert_eq!(committed.verdict, Verdict::Accepted, "{name}");
                            assert!(n > 20, "{name}: only {n} gets: nothing was injected");
                            break;
                        }
                    }
                    n += 1;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_storage_error_in_a_local_send_is_not_a_refusal() {
    let alice = user_id!("@alice:example.org");
    for persistent in [false, true] {
        let mut n = 1;
        loop {
            assert!(n < MAX_GETS, "no send succeeded");
            let (db, switch) = Db::failing();
            let rooms = rooms_on(db);
            let room_id = rooms
                .create_room(alice, alice_profile(), options(RoomVersionId::V12))
                .await
                .unwrap();
            let base = super::tests::timeline(&rooms, &room_id);
            let fork_point = base.last().unwrap().1.event_id.clone();
            rooms
                .send(&room_id, alice, text("one"), None)
                .await
                .unwrap();
            rooms
                .send_with_prev_events(&room_id, alice, text("beside"), vec![fork_point])
                .await
                .unwrap();
            assert_eq!(rooms.extremities(&room_id).unwrap().len(), 2);
            let before = super::tests::timeline(&rooms, &room_id).len();
            switch.arm(Failure {
                after: n,
                tree: None,
                persistent,
            });
            let result = rooms.send(&room_id, alice, text("merge"), None).await;
            switch.disarm();
            match result {
                Err(error) => {
                    assert!(switch.failed() > 0, "get #{n}: {error:?}");
                    assert!(is_storage(&error), "get #{n}: never a 403: {error:?}");
                    assert_eq!(
                        super::tests::timeline(&rooms, &room_id).len(),
                        before,
                        "get #{n}: nothing stored"
                    );
                    assert_eq!(rooms.extremities(&room_id).unwrap().len(), 2);
                }
                Ok(pdu) => {
                    assert_eq!(switch.failed(), 0, "get #{n} failed unseen");
                    assert_eq!(rooms.extremities(&room_id).unwrap(), vec![pdu.event_id]);
                    assert!(n > 50, "only {n} gets: the failures were not injected");
                    break;
                }
            }
            n += 1;
        }
    }
}

#[tokio::test]
async fn a_storage_error_in_a_state_lookup_is_an_error() {
    let alice = user_id!("@alice:example.org");
    let (db, switch) = Db::failing();
    let rooms: Rooms = rooms_on(db);
    let room_id = rooms
        .create_room(alice, alice_profile(), options(RoomVersionId::V10))
        .await
        .unwrap();
    let create = rooms
        .current_state_event(&room_id, &StateEventType::RoomCreate, "")
        .unwrap()
        .unwrap();
    for tree in [
        "roomid_info",
        "statekey_shortstatekey",
        "shorteventid_eventid",
        "eventid_pduid",
        "pduid_pdu",
    ] {
        switch.arm(Failure {
            after: 1,
            tree: Some(tree),
            persistent: true,
        });
        let found = rooms.current_state_event(&room_id, &StateEventType::RoomCreate, "");
        assert!(found.as_ref().is_err_and(is_storage), "{tree}: {found:?}");
        switch.disarm();
    }
    for tree in ["eventid_pduid", "pduid_pdu", "eventid_pdu"] {
        switch.arm(Failure {
            after: 1,
            tree: Some(tree),
            persistent: true,
        });
        // A placed event is read through `eventid_pduid` and `pduid_pdu`, an unknown one
        // through `eventid_pduid` and `eventid_pdu`.
        let found = rooms.pdu(&create.event_id);
        if tree != "eventid_pdu" {
            assert!(found.as_ref().is_err_and(is_storage), "{tree}: {found:?}");
        }
        let unknown = rooms.pdu_for_auth(ruma::event_id!("$unknown"));
        if tree != "pduid_pdu" {
            assert!(
                unknown.as_ref().is_err_and(is_storage),
                "{tree}: {unknown:?}"
            );
        }
        switch.disarm();
    }
}
