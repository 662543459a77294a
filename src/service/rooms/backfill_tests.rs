//! Events accepted as backfill ([`Place::Backfill`]): older history takes places before
//! everything held, tokens stay valid, and the room's present does not change. Every test
//! runs for room versions 10 and 12.

use ruma::{OwnedEventId, events::StateEventType, state_res::StateMap};

use super::{
    Rooms,
    accept::{Outcome, Place, StateBefore},
    accept_tests::{
        RoomRemote, VERSIONS, accepted, extremities, live, message, rooms, set, state_map_after,
        with_room,
    },
    check::Verdict,
    pos::Pos,
    remote_tests::{RemoteRoom, remote_room},
    verify::Verified,
};

/// The state map naming `events` (what `/state_ids` would answer).
pub(super) fn map_of(events: &[&Verified]) -> StateMap<OwnedEventId> {
    events
        .iter()
        .map(|event| {
            (
                (
                    StateEventType::from(event.pdu.kind.to_string()),
                    event.pdu.state_key.clone().expect("a state event"),
                ),
                event.event_id.clone(),
            )
        })
        .collect()
}

fn ids_before(rooms: &Rooms, room: &RemoteRoom, token: Pos) -> Vec<OwnedEventId> {
    let info = rooms.existing(&room.room_id).unwrap();
    rooms
        .events_before(&info, token, 100)
        .unwrap()
        .into_iter()
        .map(|(_, pdu)| pdu.event_id)
        .collect()
}

/// What a backfill must leave alone: the room's info and the membership indexes.
fn present(rooms: &Rooms, room: &RemoteRoom) -> serde_json::Value {
    let info = rooms.existing(&room.room_id).unwrap();
    let members: Vec<_> = [&room.carol, &room.dave, &room.erin]
        .into_iter()
        .map(|user| {
            (
                rooms.membership(&room.room_id, user).unwrap(),
                rooms
                    .membership_entry(&room.room_id, user)
                    .unwrap()
                    .map(|entry| entry.count),
            )
        })
        .collect();
    serde_json::json!({ "info": info, "members": format!("{members:?}") })
}

#[tokio::test]
async fn a_hole_is_filled_by_backfill() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let first = rooms.pos_of(&room.create.event_id).unwrap().unwrap();
        let a = message(&r, &room.dave_join, &[room.tip()], "a");
        let b = message(&r, &room.dave_join, &[&a], "b");
        let given = StateBefore {
            fetched: vec![state_map_after(&rooms, &room.tip().event_id)],
        };
        let b_done = accepted(rooms.accept(b.clone(), Place::Live, given).await.unwrap());
        assert_eq!(b_done.verdict, Verdict::Accepted);
        assert_eq!(
            rooms.backward_extremities(&room.room_id).unwrap(),
            vec![a.event_id.clone()]
        );
        let before = present(&rooms, &room);
        let newest_page = ids_before(&rooms, &room, Pos::MAX);
        let since = rooms.stream.position() + 1;

        let a_done = accepted(
            rooms
                .accept(a.clone(), Place::Backfill, StateBefore::default())
                .await
                .unwrap(),
        );
        assert_eq!(a_done.verdict, Verdict::Accepted);
        let a_pos = a_done.position.expect("a timeline place");
        assert!(
            !a_pos.is_live() && a_pos < first,
            "before the room's first event"
        );
        assert_eq!(rooms.pos_of(&a.event_id).unwrap(), Some(a_pos));
        assert!(
            rooms
                .backward_extremities(&room.room_id)
                .unwrap()
                .is_empty(),
            "the hole is closed"
        );
        assert_eq!(
            extremities(&rooms, &room),
            set(&[&b]),
            "a is history, never a tip; the old tip lies below b now"
        );
        assert_eq!(
            rooms.state_hashes(&a.event_id).unwrap().unwrap().1,
            rooms.state_hashes(&room.tip().event_id).unwrap().unwrap().1
        );
        assert_eq!(present(&rooms, &room), before, "the present is unchanged");
        for user in [&room.carol, &room.dave, &room.erin] {
            assert!(!rooms.stream.changed_for(user, since), "nobody is woken");
        }
        // From the newest token, the pages reach a last; from the first event, a alone.
        let mut all = newest_page.clone();
        all.push(a.event_id.clone());
        assert_eq!(ids_before(&rooms, &room, Pos::MAX), all);
        assert_eq!(ids_before(&rooms, &room, first), vec![a.event_id.clone()]);
        // Asked again: nothing changes.
        let again = rooms
            .accept(a.clone(), Place::Backfill, StateBefore::default())
            .await
            .unwrap();
        assert!(matches!(again, Outcome::AlreadyKnown(ref c) if c.position == Some(a_pos)));
    }
}

/// A room we joined late: the auth chain arrived as outliers, erin's join live with the
/// state after its prev event (dave's join) given; dave's join is a hole.
async fn joined_late(version: ruma::RoomVersionId) -> (Rooms, RemoteRoom) {
    let rooms = rooms();
    let room = remote_room(version);
    let chain: Vec<Verified> = room.events()[..5].iter().map(|e| (*e).clone()).collect();
    for outcome in rooms.accept_outliers(chain).await.unwrap() {
        assert_eq!(accepted(outcome).verdict, Verdict::Accepted);
    }
    let after_dave = map_of(&[
        &room.create,
        &room.carol_join,
        &room.power_levels,
        &room.join_rules,
        &room.dave_join,
    ]);
    let erin = accepted(
        rooms
            .accept(
                room.erin_join.clone(),
                Place::Live,
                StateBefore {
                    fetched: vec![after_dave],
                },
            )
            .await
            .unwrap(),
    );
    assert_eq!(erin.verdict, Verdict::Accepted);
    (rooms, room)
}

#[tokio::test]
async fn a_backfill_answer_keeps_its_order() {
    for version in VERSIONS {
        let (rooms, room) = joined_late(version).await;
        let erin_pos = rooms.pos_of(&room.erin_join.event_id).unwrap().unwrap();
        // As `/backfill` answers: newest first.
        let answer = vec![room.dave_join.clone(), room.join_rules.clone()];
        // Without the state below the oldest, nothing can be placed.
        let outcomes = rooms
            .accept_backfill(answer.clone(), Default::default())
            .await
            .unwrap();
        assert!(
            matches!(&outcomes[..], [
                Outcome::Missing { prev: dave_prev, .. },
                Outcome::Missing { prev: rules_prev, .. },
            ] if *dave_prev == [room.join_rules.event_id.clone()]
                && *rules_prev == [room.power_levels.event_id.clone()]),
            "{outcomes:?}"
        );
        assert!(rooms.pos_of(&room.dave_join.event_id).unwrap().is_none());
        // With it, both are placed, the older one first.
        let given = [(
            room.join_rules.event_id.clone(),
            StateBefore {
                fetched: vec![map_of(&[
                    &room.create,
                    &room.carol_join,
                    &room.power_levels,
                ])],
            },
        )]
        .into();
        let outcomes = rooms.accept_backfill(answer, given).await.unwrap();
        let positions: Vec<Pos> = outcomes
            .into_iter()
            .map(|outcome| {
                let committed = accepted(outcome);
                assert_eq!(committed.verdict, Verdict::Accepted);
                committed.position.unwrap()
            })
            .collect();
        assert!(
            positions[1] < positions[0] && positions[0] < erin_pos,
            "{positions:?}"
        );
        assert_eq!(
            ids_before(&rooms, &room, erin_pos),
            vec![
                room.dave_join.event_id.clone(),
                room.join_rules.event_id.clone()
            ]
        );
        assert_eq!(
            rooms.backward_extremities(&room.room_id).unwrap(),
            vec![room.power_levels.event_id.clone()]
        );
    }
}

#[tokio::test]
async fn backfill_sorts_before_and_tokens_stay_valid() {
    for version in VERSIONS {
        let (rooms, room) = joined_late(version).await;
        let r = RoomRemote(&room);
        let m1 = message(&r, &room.erin_join, &[&room.erin_join], "one");
        let m2 = message(&r, &room.erin_join, &[&m1], "two");
        live(&rooms, &m1).await;
        live(&rooms, &m2).await;
        assert_eq!(
            rooms.backward_extremities(&room.room_id).unwrap(),
            vec![room.dave_join.event_id.clone()]
        );
        // Every token a client may hold, and the page it gives.
        let mut tokens: Vec<Pos> = [&room.erin_join, &m1, &m2]
            .iter()
            .map(|event| rooms.pos_of(&event.event_id).unwrap().unwrap())
            .collect();
        tokens.push(Pos::MAX);
        let pages: Vec<Vec<OwnedEventId>> = tokens
            .iter()
            .map(|token| ids_before(&rooms, &room, *token))
            .collect();
        let before = present(&rooms, &room);
        let since = rooms.stream.position() + 1;

        // Dave's join: its prev event (the join rules) is held without state, so its state
        // is needed first.
        let outcome = rooms
            .accept(
                room.dave_join.clone(),
                Place::Backfill,
                StateBefore::default(),
            )
            .await
            .unwrap();
        assert!(
            matches!(&outcome, Outcome::Missing { auth, prev }
                if auth.is_empty() && *prev == [room.join_rules.event_id.clone()]),
            "{outcome:?}"
        );
        assert!(rooms.pos_of(&room.dave_join.event_id).unwrap().is_none());
        let after_join_rules = map_of(&[
            &room.create,
            &room.carol_join,
            &room.power_levels,
            &room.join_rules,
        ]);
        let dave = accepted(
            rooms
                .accept(
                    room.dave_join.clone(),
                    Place::Backfill,
                    StateBefore {
                        fetched: vec![after_join_rules],
                    },
                )
                .await
                .unwrap(),
        );
        assert_eq!(dave.verdict, Verdict::Accepted);
        let dave_pos = dave.position.unwrap();
        assert!(dave_pos < tokens[0]);
        assert!(
            rooms
                .outliers
                .get(room.dave_join.event_id.as_bytes())
                .unwrap()
                .is_none(),
            "the outlier moved"
        );
        assert_eq!(
            rooms.backward_extremities(&room.room_id).unwrap(),
            vec![room.join_rules.event_id.clone()]
        );

        // The next backfill is older still and sorts first.
        let after_power = map_of(&[&room.create, &room.carol_join, &room.power_levels]);
        let rules = accepted(
            rooms
                .accept(
                    room.join_rules.clone(),
                    Place::Backfill,
                    StateBefore {
                        fetched: vec![after_power],
                    },
                )
                .await
                .unwrap(),
        );
        let rules_pos = rules.position.unwrap();
        assert!(rules_pos < dave_pos);
        assert_eq!(
            rooms.backward_extremities(&room.room_id).unwrap(),
            vec![room.power_levels.event_id.clone()]
        );

        // Every earlier token pages the same events, then the backfilled ones.
        for (token, page) in tokens.iter().zip(&pages) {
            let mut expected = page.clone();
            expected.push(room.dave_join.event_id.clone());
            expected.push(room.join_rules.event_id.clone());
            assert_eq!(ids_before(&rooms, &room, *token), expected, "from {token}");
        }
        assert_eq!(
            ids_before(&rooms, &room, dave_pos),
            vec![room.join_rules.event_id.clone()]
        );
        // Nothing a sync shows changed: no room info, membership or notifier change.
        assert_eq!(present(&rooms, &room), before);
        for user in [&room.carol, &room.dave, &room.erin] {
            assert!(
                !rooms.stream.changed_for(user, since),
                "{user} is not woken"
            );
        }
        assert_eq!(extremities(&rooms, &room), set(&[&m2]));
    }
}
