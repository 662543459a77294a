//! Redactions from other servers ([`super::redact`]) and relations to targets that arrive
//! late. Every test runs for room versions 10 and 12.

use ruma::{CanonicalJsonValue, OwnedEventId, OwnedUserId};
use serde_json::{Value as JsonValue, json};

use super::{
    Rooms,
    accept_tests::{RoomRemote, VERSIONS, accepted, live, message, with_room},
    check::Verdict,
    remote_tests::{Remote, RemoteRoom},
    verify::Verified,
};

/// A redaction of `target` by `sender_join`'s member, signed by `remote`.
pub(super) fn redaction(
    room: &RemoteRoom,
    remote: &Remote,
    sender_join: &Verified,
    target: &OwnedEventId,
    prevs: &[&Verified],
) -> Verified {
    let in_content = room
        .version
        .rules()
        .unwrap()
        .redaction
        .keep_room_redaction_redacts;
    let content = if in_content {
        json!({ "redacts": target, "reason": "spam" })
    } else {
        json!({ "reason": "spam" })
    };
    let mut object = remote.event(
        &room.version,
        Some(&room.room_id),
        &sender_join.pdu.sender,
        "m.room.redaction",
        None,
        content,
        prevs,
        &[&room.create, &room.power_levels, sender_join],
    );
    if !in_content {
        object.insert(
            "redacts".into(),
            CanonicalJsonValue::String(target.to_string()),
        );
        object = remote.sign(object, &room.version);
    }
    remote.verified(&object, &room.version)
}

fn body(rooms: &Rooms, event: &Verified) -> Option<String> {
    rooms
        .pdu(&event.event_id)
        .unwrap()
        .unwrap()
        .content_str("body")
}

fn redacted_because(rooms: &Rooms, event: &Verified) -> JsonValue {
    rooms.pdu_json(&event.event_id).unwrap().unwrap()["unsigned"]["redacted_because"]["event_id"]
        .clone()
}

/// `@zed:other.test` (power 0) joins the room; his server signs.
fn zed_joins(room: &RemoteRoom, other: &Remote, prev: &Verified) -> (OwnedUserId, Verified) {
    let zed = other.user("zed");
    let join = other.verified(
        &other.event(
            &room.version,
            Some(&room.room_id),
            &zed,
            "m.room.member",
            Some(zed.as_str()),
            json!({ "membership": "join" }),
            &[prev],
            &[&room.create, &room.join_rules, &room.power_levels],
        ),
        &room.version,
    );
    (zed, join)
}

#[tokio::test]
async fn a_remote_redaction_redacts_its_target() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let m = message(&r, &room.dave_join, &[room.tip()], "spam");
        live(&rooms, &m).await;
        let red = redaction(&room, &room.remote, &room.carol_join, &m.event_id, &[&m]);
        let done = live(&rooms, &red).await;
        assert_eq!(done.verdict, Verdict::Accepted);
        assert!(done.position.is_some(), "the redaction is in the timeline");
        assert_eq!(body(&rooms, &m), None, "the target is redacted");
        assert_eq!(redacted_because(&rooms, &m), json!(red.event_id));
        assert!(rooms.pos_of(&m.event_id).unwrap().is_some(), "in place");

        // A target held without a place (an outlier) is rewritten there, and stays redacted
        // when it later takes its place.
        let n = message(&r, &room.dave_join, &[&red], "more spam");
        accepted(
            rooms
                .accept_outliers(vec![n.clone()])
                .await
                .unwrap()
                .remove(0),
        );
        let red2 = redaction(&room, &room.remote, &room.carol_join, &n.event_id, &[&red]);
        live(&rooms, &red2).await;
        assert_eq!(body(&rooms, &n), None);
        assert!(rooms.pos_of(&n.event_id).unwrap().is_none());
        let n_done = live(&rooms, &n).await;
        assert_eq!(n_done.verdict, Verdict::Accepted);
        assert!(n_done.position.is_some());
        assert_eq!(body(&rooms, &n), None, "still redacted after it moved");
        assert_eq!(redacted_because(&rooms, &n), json!(red2.event_id));
    }
}

#[tokio::test]
async fn a_redaction_before_its_target_waits_for_it() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let m = message(&r, &room.dave_join, &[room.tip()], "secret");
        let red = redaction(
            &room,
            &room.remote,
            &room.carol_join,
            &m.event_id,
            &[room.tip()],
        );
        assert_eq!(live(&rooms, &red).await.verdict, Verdict::Accepted);
        assert!(rooms.pdu(&m.event_id).unwrap().is_none());
        let short_m = rooms
            .short
            .get_short_event_id(&m.event_id)
            .unwrap()
            .unwrap();
        let pending = |rooms: &Rooms| {
            rooms
                .pending_redactions
                .scan_prefix(&short_m.to_be_bytes())
                .count()
        };
        assert_eq!(pending(&rooms), 1, "waiting for its target");

        let m_done = live(&rooms, &m).await;
        assert_eq!(m_done.verdict, Verdict::Accepted);
        assert!(m_done.position.is_some());
        assert_eq!(body(&rooms, &m), None, "stored redacted");
        assert_eq!(m_done.pdu.content_str("body"), None);
        assert_eq!(redacted_because(&rooms, &m), json!(red.event_id));
        assert_eq!(pending(&rooms), 0, "done with");
    }
}

#[tokio::test]
async fn a_redaction_by_someone_without_power_leaves_the_target() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let other = Remote::named("other.test");
        let (zed, zed_join) = zed_joins(&room, &other, room.tip());
        assert_eq!(live(&rooms, &zed_join).await.verdict, Verdict::Accepted);
        let m = message(&r, &room.dave_join, &[&zed_join], "mine");
        live(&rooms, &m).await;

        // Zed (power 0, another server) redacts dave's message: stored, target unchanged.
        let red = redaction(&room, &other, &zed_join, &m.event_id, &[&m]);
        let done = live(&rooms, &red).await;
        assert_eq!(
            done.verdict,
            Verdict::Accepted,
            "accepted by the auth rules"
        );
        assert!(rooms.pdu(&red.event_id).unwrap().is_some());
        assert_eq!(body(&rooms, &m).as_deref(), Some("mine"));

        // The same before its target: the target arrives unchanged.
        let late = message(&r, &room.dave_join, &[&red], "late");
        let red_late = redaction(&room, &other, &zed_join, &late.event_id, &[&red]);
        live(&rooms, &red_late).await;
        live(&rooms, &late).await;
        assert_eq!(body(&rooms, &late).as_deref(), Some("late"));

        // Carol, with the redact level, may redact zed's message from another server.
        let zm = other.verified(
            &other.event(
                &room.version,
                Some(&room.room_id),
                &zed,
                "m.room.message",
                None,
                json!({ "msgtype": "m.text", "body": "zed's" }),
                &[&late],
                &[&room.create, &room.power_levels, &zed_join],
            ),
            &room.version,
        );
        live(&rooms, &zm).await;
        let red_carol = redaction(&room, &room.remote, &room.carol_join, &zm.event_id, &[&zm]);
        live(&rooms, &red_carol).await;
        assert_eq!(body(&rooms, &zm), None);
    }
}

#[tokio::test]
async fn a_relation_to_a_late_target_is_indexed() {
    for version in VERSIONS {
        let (rooms, room) = with_room(version).await;
        let r = RoomRemote(&room);
        let m = message(&r, &room.dave_join, &[room.tip()], "hello");
        let reaction = room.remote.verified(
            &room.remote.event(
                &room.version,
                Some(&room.room_id),
                &room.erin,
                "m.reaction",
                None,
                json!({ "m.relates_to": {
                    "rel_type": "m.annotation", "event_id": m.event_id, "key": "👍",
                } }),
                &[room.tip()],
                &room.message_auths(&room.erin_join),
            ),
            &room.version,
        );
        assert_eq!(live(&rooms, &reaction).await.verdict, Verdict::Accepted);
        assert_eq!(live(&rooms, &m).await.verdict, Verdict::Accepted);
        let children: Vec<OwnedEventId> = rooms
            .relations(&m.event_id, None, false, 10)
            .unwrap()
            .into_iter()
            .map(|relation| relation.event_id)
            .collect();
        assert_eq!(children, vec![reaction.event_id.clone()]);
    }
}
