//! The room core with events another server made ([`super::accept`]): a room we did not
//! create, events out of order, a hole filled later, forks where a ban races a message,
//! rejected and soft-failed events, outliers. Every test runs for room versions 10 and 12.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    OwnedEventId, RoomVersionId,
    events::{StateEventType, room::member::MembershipState},
    server_name,
    state_res::StateMap,
};
use serde_json::{Value as JsonValue, json};

use super::{
    Rooms,
    accept::{Committed, Outcome, Place, StateBefore},
    check::Verdict,
    pair_key,
    pos::Pos,
    remote_tests::{RemoteRoom, remote_room},
    verify::Verified,
};
use crate::{
    service::{server_keys::ServerKeys, stream::Stream},
    storage::Db,
};

pub(super) const VERSIONS: [RoomVersionId; 2] = [RoomVersionId::V10, RoomVersionId::V12];

pub(super) fn rooms() -> Rooms {
    rooms_on(Db::memory())
}

/// `Rooms` on `db` (a failing store, for the storage-error tests).
pub(super) fn rooms_on(db: Db) -> Rooms {
    let keys = Arc::new(ServerKeys::load_or_generate(&db).unwrap());
    let stream = Arc::new(Stream::new(&db).unwrap());
    Rooms::new(&db, server_name!("example.org").to_owned(), keys, stream).unwrap()
}

/// `rooms` with `room` accepted as live events, in order.
pub(super) async fn with_room(version: RoomVersionId) -> (Rooms, RemoteRoom) {
    with_room_in(rooms(), version).await
}

/// [`with_room`] in the given `rooms`.
pub(super) async fn with_room_in(rooms: Rooms, version: RoomVersionId) -> (Rooms, RemoteRoom) {
    let room = remote_room(version);
    for event in room.events() {
        let committed = accepted(
            rooms
                .accept(event.clone(), Place::Live, StateBefore::default())
                .await
                .unwrap(),
        );
        assert_eq!(committed.verdict, Verdict::Accepted);
        assert!(committed.position.is_some());
    }
    (rooms, room)
}

pub(super) fn accepted(outcome: Outcome) -> Committed {
    match outcome {
        Outcome::Committed(committed) => committed,
        other => panic!("not committed: {other:?}"),
    }
}

pub(super) async fn live(rooms: &Rooms, event: &Verified) -> Committed {
    accepted(
        rooms
            .accept(event.clone(), Place::Live, StateBefore::default())
            .await
            .unwrap(),
    )
}

/// A message by `join`'s member, with `prevs`.
pub(super) fn message(
    room: &RoomRemote,
    join: &Verified,
    prevs: &[&Verified],
    body: &str,
) -> Verified {
    let r = &room.0;
    r.remote.verified(
        &r.remote.event(
            &r.version,
            Some(&r.room_id),
            &join.pdu.sender,
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": body }),
            prevs,
            &r.message_auths(join),
        ),
        &r.version,
    )
}

/// A state event.
#[allow(clippy::too_many_arguments)]
pub(super) fn state(
    room: &RoomRemote,
    sender_join: &Verified,
    kind: &str,
    state_key: &str,
    content: JsonValue,
    prevs: &[&Verified],
    extra_auths: &[&Verified],
) -> Verified {
    let r = &room.0;
    let mut auths: Vec<&Verified> = vec![&r.create, sender_join];
    auths.extend_from_slice(extra_auths);
    r.remote.verified(
        &r.remote.event(
            &r.version,
            Some(&r.room_id),
            &sender_join.pdu.sender,
            kind,
            Some(state_key),
            content,
            prevs,
            &auths,
        ),
        &r.version,
    )
}

/// Borrow helper so the builders read well.
pub(super) struct RoomRemote<'a>(pub &'a RemoteRoom);

pub(super) fn extremities(rooms: &Rooms, room: &RemoteRoom) -> BTreeSet<OwnedEventId> {
    rooms
        .extremities(&room.room_id)
        .unwrap()
        .into_iter()
        .collect()
}

pub(super) fn set(ids: &[&Verified]) -> BTreeSet<OwnedEventId> {
    ids.iter().map(|event| event.event_id.clone()).collect()
}

pub(super) fn timeline(rooms: &Rooms, room: &RemoteRoom) -> Vec<OwnedEventId> {
    let info = rooms.existing(&room.room_id).unwrap();
    rooms
        .events_from(&info, Pos::MIN, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, pdu)| pdu.event_id)
        .collect()
}

pub(super) fn current(
    rooms: &Rooms,
    room: &RemoteRoom,
    kind: StateEventType,
    key: &str,
) -> Option<OwnedEventId> {
    rooms
        .current_state_event(&room.room_id, &kind, key)
        .unwrap()
        .map(|pdu| pdu.event_id)
}

/// The state after `event` as another server would give it (`/state_ids`).
pub(super) fn state_map_after(rooms: &Rooms, event: &OwnedEventId) -> StateMap<OwnedEventId> {
    let (_, after) = rooms.state_hashes(event).unwrap().unwrap();
    let set = rooms.state.load(after).unwrap();
    set.iter()
        .map(|(key, id)| {
            (
                rooms.short.state_key(*key).unwrap(),
                rooms.short.event_id(*id).unwrap(),
            )
        })
        .collect()
}

pub(super) fn power_levels(room: &RemoteRoom, dave_level: i64) -> JsonValue {
    let mut users = serde_json::Map::new();
    if room.version != RoomVersionId::V12 {
        users.insert(room.carol.to_string(), 100.into());
    }
    users.insert(room.erin.to_string(), 50.into());
    users.insert(room.dave.to_string(), dave_level.into());
    json!({
        "users": users, "users_default": 0, "events_default": 0, "state_default": 50,
        "ban": 50, "kick": 50, "redact": 50, "invite": 0,
        "events": { "m.room.power_levels": 100 },
    })
}

#[tokio::test]
async fn a_room_another_server_made_is_accepted() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        assert_eq!(
            timeline(&rooms, &room),
            room.events()
                .iter()
                .map(|e| e.event_id.clone())
                .collect::<Vec<_>>()
        );
        assert_eq!(extremities(&rooms, &room), set(&[room.tip()]));
        assert_eq!(
            rooms.membership(&room.room_id, &room.dave).unwrap(),
            Some(MembershipState::Join)
        );
        assert_eq!(rooms.existing(&room.room_id).unwrap().version, room.version);
        // Accepting an event again changes nothing.
        let again = rooms
            .accept(room.dave_join.clone(), Place::Live, StateBefore::default())
            .await
            .unwrap();
        assert!(matches!(again, Outcome::AlreadyKnown(_)));
        assert_eq!(timeline(&rooms, &room).len(), 6);
    }
}

#[tokio::test]
async fn a_child_before_its_parent_waits_for_it() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let a = message(&r, &room.dave_join, &[room.tip()], "a");
        let b = message(&r, &room.dave_join, &[&a], "b");
        let outcome = rooms
            .accept(b.clone(), Place::Live, StateBefore::default())
            .await
            .unwrap();
        let Outcome::Missing { auth, prev } = outcome else {
            panic!("b must wait for a: {outcome:?}");
        };
        assert!(auth.is_empty());
        assert_eq!(prev, vec![a.event_id.clone()]);
        assert!(rooms.pdu(&b.event_id).unwrap().is_none(), "nothing stored");
        assert_eq!(timeline(&rooms, &room).len(), 6);

        let a_done = live(&rooms, &a).await;
        let b_done = live(&rooms, &b).await;
        assert_eq!(b_done.verdict, Verdict::Accepted);
        assert!(b_done.position > a_done.position);
        assert_eq!(
            timeline(&rooms, &room)[6..],
            [a.event_id.clone(), b.event_id.clone()]
        );
        assert_eq!(extremities(&rooms, &room), set(&[&b]));
        assert_eq!(
            rooms.state_hashes(&b.event_id).unwrap().unwrap().1,
            rooms.state_hashes(&a.event_id).unwrap().unwrap().1
        );
    }
}

#[tokio::test]
async fn a_hole_is_filled_without_moving_the_tip() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let a = message(&r, &room.dave_join, &[room.tip()], "a");
        let b = message(&r, &room.dave_join, &[&a], "b");
        // The state after a (a message) is the state after the tip, as another server
        // would report it.
        let given = StateBefore {
            fetched: vec![state_map_after(&rooms, &room.tip().event_id)],
        };
        let b_done = accepted(rooms.accept(b.clone(), Place::Live, given).await.unwrap());
        assert_eq!(b_done.verdict, Verdict::Accepted);
        // Whether a descends from the tip is not known until a arrives: both stay.
        assert_eq!(extremities(&rooms, &room), set(&[room.tip(), &b]));
        let hole = pair_key(room.room_id.as_str(), a.event_id.as_str());
        assert!(rooms.backward_extremities.get(&hole).unwrap().is_some());

        let a_done = live(&rooms, &a).await;
        assert_eq!(a_done.verdict, Verdict::Accepted);
        assert!(a_done.position > b_done.position, "arrival order");
        assert_eq!(
            extremities(&rooms, &room),
            set(&[&b]),
            "b cites a: a is no tip, and a covers the old tip"
        );
        assert!(
            rooms.backward_extremities.get(&hole).unwrap().is_none(),
            "closed"
        );
        // The next event cites only b.
        let c = message(&r, &room.dave_join, &[&b], "c");
        assert_eq!(live(&rooms, &c).await.verdict, Verdict::Accepted);
        assert_eq!(extremities(&rooms, &room), set(&[&c]));
    }
}

fn ban(r: &RoomRemote, prevs: &[&Verified]) -> Verified {
    let room = r.0;
    state(
        r,
        &room.carol_join,
        "m.room.member",
        room.dave.as_str(),
        json!({ "membership": "ban" }),
        prevs,
        &[&room.power_levels, &room.dave_join],
    )
}

#[tokio::test]
async fn a_message_after_a_ban_it_did_not_see_is_soft_failed() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let ban = ban(&r, &[room.tip()]);
        let m = message(&r, &room.dave_join, &[room.tip()], "from dave");
        assert_eq!(live(&rooms, &ban).await.verdict, Verdict::Accepted);
        let before = rooms.stream.position();
        let m_done = live(&rooms, &m).await;
        assert_eq!(m_done.verdict, Verdict::SoftFailed);
        assert_eq!(m_done.position, None);
        assert!(rooms.pos_of(&m.event_id).unwrap().is_none());
        assert!(
            rooms.client_pdu(&m.event_id).unwrap().is_none(),
            "never shown"
        );
        assert!(rooms.pdu(&m.event_id).unwrap().is_some(), "but stored");
        assert!(
            rooms.state_hashes(&m.event_id).unwrap().is_some(),
            "with its state"
        );
        assert_eq!(rooms.verdict(&m.event_id).unwrap(), Verdict::SoftFailed);
        assert_eq!(extremities(&rooms, &room), set(&[&ban]));
        assert_eq!(
            rooms.membership(&room.room_id, &room.dave).unwrap(),
            Some(MembershipState::Ban)
        );
        assert!(
            !rooms.stream.changed_for(&room.carol, before + 1),
            "a soft-failed event wakes nobody"
        );
        assert!(!timeline(&rooms, &room).contains(&m.event_id));
        // Asked again, the same verdict.
        let again = rooms
            .accept(m.clone(), Place::Live, StateBefore::default())
            .await
            .unwrap();
        assert!(matches!(
            again,
            Outcome::AlreadyKnown(Committed {
                verdict: Verdict::SoftFailed,
                ..
            })
        ));
    }
}

#[tokio::test]
async fn a_message_before_a_racing_ban_stays_and_the_ban_wins_the_state() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let ban = ban(&r, &[room.tip()]);
        let m = message(&r, &room.dave_join, &[room.tip()], "from dave");
        assert_eq!(live(&rooms, &m).await.verdict, Verdict::Accepted);
        assert_eq!(live(&rooms, &ban).await.verdict, Verdict::Accepted);
        let tl = timeline(&rooms, &room);
        assert_eq!(tl[6..], [m.event_id.clone(), ban.event_id.clone()]);
        assert_eq!(extremities(&rooms, &room), set(&[&ban, &m]));
        assert_eq!(
            current(
                &rooms,
                &room,
                StateEventType::RoomMember,
                room.dave.as_str()
            ),
            Some(ban.event_id.clone())
        );
        assert_eq!(
            rooms.membership(&room.room_id, &room.dave).unwrap(),
            Some(MembershipState::Ban)
        );
        // Carol's next event takes both branches in.
        let d = message(&r, &room.carol_join, &[&ban, &m], "merge");
        assert_eq!(live(&rooms, &d).await.verdict, Verdict::Accepted);
        assert_eq!(extremities(&rooms, &room), set(&[&d]));
        // Dave, banned in the state before it, is rejected.
        let x = message(&r, &room.dave_join, &[&d], "still here?");
        let x_done = live(&rooms, &x).await;
        assert!(
            matches!(x_done.verdict, Verdict::Rejected(_)),
            "{:?}",
            x_done.verdict
        );
        assert!(!timeline(&rooms, &room).contains(&x.event_id));
        assert_eq!(extremities(&rooms, &room), set(&[&d]));
    }
}

#[tokio::test]
async fn a_rejected_event_can_be_a_prev_but_not_an_auth_event() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        // Dave (power 0) gives himself 100: refused by his own auth events (step 4).
        let grab = state(
            &r,
            &room.dave_join,
            "m.room.power_levels",
            "",
            power_levels(&room, 100),
            &[room.tip()],
            &[&room.power_levels],
        );
        let grab_done = live(&rooms, &grab).await;
        assert!(matches!(grab_done.verdict, Verdict::Rejected(_)));
        assert_eq!(grab_done.position, None);
        assert!(rooms.client_pdu(&grab.event_id).unwrap().is_none());
        assert!(
            rooms
                .pdu_for_auth(&grab.event_id)
                .unwrap()
                .unwrap()
                .rejected
        );
        assert_eq!(
            current(&rooms, &room, StateEventType::RoomPowerLevels, ""),
            Some(room.power_levels.event_id.clone())
        );
        assert_eq!(
            extremities(&rooms, &room),
            set(&[room.tip()]),
            "consumed nothing"
        );

        // Carol's message citing it as a prev event is fine; its state is the one before.
        let y = message(&r, &room.carol_join, &[&grab], "after the grab");
        assert_eq!(live(&rooms, &y).await.verdict, Verdict::Accepted);
        assert_eq!(
            extremities(&rooms, &room),
            set(&[&y]),
            "the old tip is covered"
        );
        assert_eq!(
            current(&rooms, &room, StateEventType::RoomPowerLevels, ""),
            Some(room.power_levels.event_id.clone())
        );

        // Citing it as an auth event is not.
        let z = r.0.remote.verified(
            &r.0.remote.event(
                &r.0.version,
                Some(&room.room_id),
                &room.dave,
                "m.room.message",
                None,
                json!({ "msgtype": "m.text", "body": "I am in charge" }),
                &[&y],
                &[&room.create, &grab, &room.dave_join],
            ),
            &r.0.version,
        );
        let z_done = live(&rooms, &z).await;
        assert!(
            matches!(z_done.verdict, Verdict::Rejected(_)),
            "{:?}",
            z_done.verdict
        );
        assert_eq!(extremities(&rooms, &room), set(&[&y]));
    }
}

#[tokio::test]
async fn a_soft_failed_event_takes_part_when_cited() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        // Carol raises dave to 50, so a topic change by him passes the state before it ...
        let raise = state(
            &r,
            &room.carol_join,
            "m.room.power_levels",
            "",
            power_levels(&room, 50),
            &[room.tip()],
            &[&room.power_levels],
        );
        assert_eq!(live(&rooms, &raise).await.verdict, Verdict::Accepted);
        // ... then bans him.
        let ban = state(
            &r,
            &room.carol_join,
            "m.room.member",
            room.dave.as_str(),
            json!({ "membership": "ban" }),
            &[&raise],
            &[&raise, &room.dave_join],
        );
        assert_eq!(live(&rooms, &ban).await.verdict, Verdict::Accepted);
        // Dave's topic change on top of the raise only: soft-failed.
        let topic = state(
            &r,
            &room.dave_join,
            "m.room.topic",
            "",
            json!({ "topic": "mine now" }),
            &[&raise],
            &[&raise],
        );
        let topic_done = live(&rooms, &topic).await;
        assert_eq!(topic_done.verdict, Verdict::SoftFailed);
        let (_, after) = rooms.state_hashes(&topic.event_id).unwrap().unwrap();
        let short_topic = rooms
            .short
            .get_short_event_id(&topic.event_id)
            .unwrap()
            .unwrap();
        assert!(
            rooms
                .state
                .load(after)
                .unwrap()
                .values()
                .any(|id| *id == short_topic),
            "its state after includes it"
        );
        assert_eq!(current(&rooms, &room, StateEventType::RoomTopic, ""), None);

        // Carol's event citing both: the ban is applied first (a power event), and the
        // topic then fails the iterative auth checks.
        let d = message(&r, &room.carol_join, &[&ban, &topic], "merge");
        assert_eq!(live(&rooms, &d).await.verdict, Verdict::Accepted);
        assert_eq!(extremities(&rooms, &room), set(&[&d]));
        assert_eq!(current(&rooms, &room, StateEventType::RoomTopic, ""), None);
        assert_eq!(
            current(
                &rooms,
                &room,
                StateEventType::RoomMember,
                room.dave.as_str()
            ),
            Some(ban.event_id.clone())
        );
    }
}

#[tokio::test]
async fn outliers_have_no_place_until_they_arrive() {
    for version in VERSIONS {
        let rooms = rooms();
        let room = remote_room(version);
        // An auth chain, newest first: accept_outliers puts it in order.
        let chain: Vec<Verified> = room.events()[..4]
            .iter()
            .rev()
            .map(|e| (*e).clone())
            .collect();
        let outcomes = rooms.accept_outliers(chain).await.unwrap();
        for outcome in &outcomes {
            let committed = accepted(outcome.clone());
            assert_eq!(committed.verdict, Verdict::Accepted);
            assert_eq!(committed.position, None);
        }
        for event in &room.events()[..4] {
            assert!(rooms.pdu(&event.event_id).unwrap().is_some());
            assert!(rooms.pos_of(&event.event_id).unwrap().is_none());
            assert!(rooms.state_hashes(&event.event_id).unwrap().is_none());
        }
        assert!(rooms.info(&room.room_id).unwrap().is_none(), "no room yet");
        // An event whose auth events are unknown is missing them.
        let r = RoomRemote(&room);
        let lonely = message(&r, &room.dave_join, &[room.tip()], "who am I?");
        let outcomes = rooms.accept_outliers(vec![lonely.clone()]).await.unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::Missing { auth, .. } if *auth == [room.dave_join.event_id.clone()]),
            "{outcomes:?}"
        );
        assert!(rooms.pdu(&lonely.event_id).unwrap().is_none());

        // Then the room arrives live: each outlier moves to the timeline.
        for event in room.events() {
            assert_eq!(live(&rooms, event).await.verdict, Verdict::Accepted);
        }
        for event in room.events() {
            assert!(rooms.pos_of(&event.event_id).unwrap().is_some());
            assert!(
                rooms
                    .outliers
                    .get(event.event_id.as_bytes())
                    .unwrap()
                    .is_none()
            );
        }
        assert_eq!(timeline(&rooms, &room).len(), 6);
    }
}
