//! Forks across servers (issue 12 item 5): two instances are cut off from each other (each
//! one stopped while the other acts), each adds an event to the same room from the same
//! point, and then they meet again. Each must take the other's event through the room core
//! and resolve the fork with state resolution v2 to the same state as the other: the full
//! state maps are compared, not just the changed entry.
//!
//! Three races, the spec's classic ones (server-server API, "Room State Resolution"; room
//! versions, "State resolution v2"):
//! 1. two topic changes by users with the power to change it: the later one wins on both
//!    sides (same mainline position, so `origin_server_ts` decides);
//! 2. a demotion racing the demoted user's topic change: power events are resolved first,
//!    so the demoted user's conflicting topic changes fail auth against the resolved power
//!    levels on both sides;
//! 3. a kick racing the kicked user's message: both sides agree the user is out, and the
//!    kicking server never shows the message (it fails auth against its current state:
//!    soft-failed).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    federation_rooms::{Homeserver, send_text, wait_for_message},
    harness::TestServer,
};

/// `(type, state_key)` → event id: a room's current state as `token`'s user sees it.
async fn state_map(
    server: &TestServer,
    token: &str,
    room_id: &str,
) -> BTreeMap<(String, String), String> {
    let (status, state) = server
        .call(token, Method::GET, &format!("/rooms/{room_id}/state"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    state
        .as_array()
        .expect("a list of state events")
        .iter()
        .map(|event| {
            (
                (
                    event["type"].as_str().unwrap().to_owned(),
                    event["state_key"].as_str().unwrap().to_owned(),
                ),
                event["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits (bounded: 30 s) until both servers hold `events` and agree on the whole state of
/// the room; returns that state.
async fn converged(
    (a, alice): (&TestServer, &str),
    (b, carol): (&TestServer, &str),
    room_id: &str,
    events: &[&str],
) -> BTreeMap<(String, String), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_a = state_map(a, alice, room_id).await;
        let on_b = state_map(b, carol, room_id).await;
        let mut known = true;
        for (server, token) in [(a, alice), (b, carol)] {
            for event in events {
                let (status, _) = server
                    .call(
                        token,
                        Method::GET,
                        &format!("/rooms/{room_id}/event/{event}"),
                        None,
                    )
                    .await;
                known &= status == StatusCode::OK;
            }
        }
        if known && on_a == on_b {
            return on_a;
        }
        assert!(
            Instant::now() < deadline,
            "the fork did not converge:\nA: {on_a:#?}\nB: {on_b:#?}\nA's log:\n{}\nB's log:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cuts A and B off from each other: `on_a` runs while B is down, then `on_b` while A is
/// down; both are running again when this returns, each with the other's event queued.
macro_rules! partitioned {
    ($a:expr, $b:expr, $on_a:expr, $on_b:expr) => {{
        $b.stop();
        let from_a = $on_a.await;
        $a.stop();
        $b.restart();
        let from_b = $on_b.await;
        // A sends its queue to B at start; B, hearing from A, retries its own at once.
        $a.restart();
        (from_a, from_b)
    }};
}

async fn put_state(
    server: &TestServer,
    token: &str,
    room_id: &str,
    kind: &str,
    content: Value,
) -> String {
    let (status, sent) = server
        .call(
            token,
            Method::PUT,
            &format!("/rooms/{room_id}/state/{kind}/"),
            Some(content),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

async fn state_content(
    server: &TestServer,
    token: &str,
    room_id: &str,
    kind: &str,
    state_key: &str,
) -> Value {
    let (status, content) = server
        .call(
            token,
            Method::GET,
            &format!("/rooms/{room_id}/state/{kind}/{state_key}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{content}");
    content
}

#[tokio::test]
async fn concurrent_changes_on_two_servers_converge_to_the_same_state() {
    let mut a = TestServer::start_federating();
    let mut b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    // Carol stays in the room on B throughout: B's view of the state is read as her.
    let carol = b.register("carol", "tr0ub4dor").await;
    let (status, created) = a
        .call(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "fork", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    for token in [&bob, &carol] {
        let (status, joined) = b
            .call(
                token,
                Method::POST,
                &format!("/join/%23fork:{}", a.server_name),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{joined}");
    }
    let bob_id = b.user_id("bob");
    let mut power = state_content(&a, &alice, &room_id, "m.room.power_levels", "").await;
    power["users"][&bob_id] = json!(50);
    let promoted = put_state(&a, &alice, &room_id, "m.room.power_levels", power.clone()).await;
    converged((&a, &alice), (&b, &carol), &room_id, &[&promoted]).await;

    // 1. Two topic changes from the same point: the later one wins on both sides.
    let (from_a, from_b) = partitioned!(
        a,
        b,
        put_state(
            &a,
            &alice,
            &room_id,
            "m.room.topic",
            json!({ "topic": "from A" })
        ),
        put_state(
            &b,
            &bob,
            &room_id,
            "m.room.topic",
            json!({ "topic": "from B" })
        )
    );
    let state = converged((&a, &alice), (&b, &carol), &room_id, &[&from_a, &from_b]).await;
    assert_eq!(state[&("m.room.topic".to_owned(), String::new())], from_b);
    for (server, token) in [(&a, &alice), (&b, &carol)] {
        let topic = state_content(server, token, &room_id, "m.room.topic", "").await;
        assert_eq!(topic["topic"], "from B", "on {}", server.server_name);
    }

    // 2. Bob is demoted on A while he changes the topic on B: power events are resolved
    //    first, and the topic, now conflicted between his two changes ("from B" on A's
    //    side, "too late" on B's), is checked against the resolved power levels, under which
    //    bob may not set it: both of his topic events fail, so neither is in the resolved
    //    state (room versions, "State resolution v2", "Iterative auth checks": an event is
    //    checked against the partially resolved state, its own auth events filling only
    //    the keys that state lacks). Both sides say the same.
    power["users"][&bob_id] = json!(0);
    let (demoted, late_topic) = partitioned!(
        a,
        b,
        put_state(&a, &alice, &room_id, "m.room.power_levels", power.clone()),
        put_state(
            &b,
            &bob,
            &room_id,
            "m.room.topic",
            json!({ "topic": "too late" })
        )
    );
    // Carol's message after the race: once A holds it, A has taken bob's topic change too
    // (B's events reach A in order).
    let after = send_text(&b, &carol, &room_id, "c1", "after the demotion").await;
    let state = converged((&a, &alice), (&b, &carol), &room_id, &[&demoted, &after]).await;
    assert_eq!(
        state[&("m.room.power_levels".to_owned(), String::new())],
        demoted
    );
    assert_eq!(state.get(&("m.room.topic".to_owned(), String::new())), None);
    for (server, token) in [(&a, &alice), (&b, &carol)] {
        let (status, topic) = server
            .call(
                token,
                Method::GET,
                &format!("/rooms/{room_id}/state/m.room.topic/"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{topic}");
        let levels = state_content(server, token, &room_id, "m.room.power_levels", "").await;
        assert_eq!(levels["users"][&bob_id], 0, "on {}", server.server_name);
    }
    let (status, _) = a
        .call(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/event/{late_topic}"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "A never shows a topic change that fails against its current state"
    );

    // 3. Bob is kicked on A while he sends a message on B: both agree he is out, and A
    //    never shows the message.
    let (kicked, _message) = partitioned!(
        a,
        b,
        async {
            let (status, body) = a
                .call(
                    &alice,
                    Method::POST,
                    &format!("/rooms/{room_id}/kick"),
                    Some(json!({ "user_id": bob_id, "reason": "race" })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            // The kick's event id: the newest membership event of bob's on A.
            state_map(&a, &alice, &room_id).await[&("m.room.member".to_owned(), bob_id.clone())]
                .clone()
        },
        send_text(&b, &bob, &room_id, "b1", "still here?")
    );
    let after = send_text(&b, &carol, &room_id, "c2", "after the kick").await;
    let state = converged((&a, &alice), (&b, &carol), &room_id, &[&kicked, &after]).await;
    assert_eq!(state[&("m.room.member".to_owned(), bob_id.clone())], kicked);
    for (server, token) in [(&a, &alice), (&b, &carol)] {
        let member = state_content(server, token, &room_id, "m.room.member", &bob_id).await;
        assert_eq!(member["membership"], "leave", "on {}", server.server_name);
    }
    // A shows carol's later message but not bob's: it arrived after the kick was known.
    wait_for_message(&a, &alice, &room_id, "after the kick").await;
    let (status, page) = a
        .call(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/messages?dir=b&limit=50"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let bodies: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert!(bodies.contains(&"after the kick"), "{page}");
    assert!(!bodies.contains(&"still here?"), "{page}");
}
