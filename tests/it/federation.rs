//! Federation (issue 11): with `allow_federation` off (the default) nothing of it is served
//! and client requests that need another server say so; with it on, requests from other
//! servers must carry a valid `X-Matrix` signature. Servers talk over TLS on 127.0.0.1 only.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

#[tokio::test]
async fn with_federation_off_nothing_is_served_and_remote_requests_are_refused() {
    let server = TestServer::start();
    for path in [
        "/_matrix/federation/v1/version",
        "/_matrix/federation/v1/query/profile?user_id=@a:localhost",
        "/_matrix/key/v2/server",
    ] {
        assert_error(
            &server.request(Method::GET, path, None, None).await,
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
        );
    }

    let alice = server.register("alice", "correct horse").await;
    let (_, created) = server
        .client_api(&alice, Method::POST, "/createRoom", Some(json!({})))
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let names_the_server = |response: &(StatusCode, Value)| {
        assert_error(response, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        let message = response.1["error"].as_str().unwrap();
        assert!(message.contains("other.example"), "{message}");
        assert!(message.contains("Federation is off"), "{message}");
    };

    // An invite of a remote user used to answer 200 and send nothing.
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                &format!("/rooms/{room}/invite"),
                Some(json!({ "user_id": "@bob:other.example" })),
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                "/createRoom",
                Some(json!({ "invite": ["@bob:other.example"] })),
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(&alice, Method::GET, "/profile/@bob:other.example", None)
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::GET,
                "/profile/@bob:other.example/displayname",
                None,
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::GET,
                "/directory/room/%23club:other.example",
                None,
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                "/join/%23club:other.example",
                Some(json!({})),
            )
            .await,
    );
    names_the_server(
        &server
            .client_api(
                &alice,
                Method::POST,
                "/join/!abc:other.example?via=other.example",
                Some(json!({})),
            )
            .await,
    );
    // A room nobody can be asked about is simply unknown.
    assert_error(
        &server
            .client_api(&alice, Method::POST, "/join/!nowhere", Some(json!({})))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Key queries and claims answer for local users and list the other server as failed.
    let (status, keys) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { "@bob:other.example": [], "@alice:localhost": [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["failures"]["other.example"]["status"], 403, "{keys}");
    assert!(
        keys["device_keys"]["@alice:localhost"].is_object(),
        "{keys}"
    );
    assert!(keys["device_keys"].get("@bob:other.example").is_none());
    let (status, claimed) = server
        .client_api(
            &alice,
            Method::POST,
            "/keys/claim",
            Some(json!({ "one_time_keys": { "@bob:other.example": { "DEV": "signed_curve25519" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(
        claimed["failures"]["other.example"]["status"], 403,
        "{claimed}"
    );
    assert_eq!(claimed["one_time_keys"], json!({}));
}

/// `federation_port`: a second HTTPS listener for other servers, answering the same paths.
#[tokio::test]
async fn a_federation_port_serves_federation_too() {
    let port = crate::harness::free_port();
    let server = TestServer::federating_with_env(&[("CONDUIT_FEDERATION_PORT", &port.to_string())]);
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id=@alice:{}",
        server.server_name
    );
    for base in [server.url.clone(), format!("https://127.0.0.1:{port}")] {
        let response = server
            .http()
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{base}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{base}");
    }
}

#[tokio::test]
async fn federation_requests_without_a_valid_signature_are_401() {
    let server = TestServer::start_federating();
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id=@alice:{}",
        server.server_name
    );
    let unauthorized = |response: (StatusCode, Value)| {
        assert_error(&response, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    };
    unauthorized(server.request(Method::GET, &path, None, None).await);
    // A bearer token is not a server's signature.
    unauthorized(
        server
            .request(Method::GET, &path, Some("token"), None)
            .await,
    );
    // Well-formed headers that do not hold: another destination, an origin whose keys
    // cannot be had (a loopback port nobody listens on: test traffic stays on 127.0.0.1), a
    // made-up signature, our own name as the origin.
    let ours = server.server_name.clone();
    let nobody = format!("localhost:{}", crate::harness::free_port());
    for header in [
        format!(
            r#"X-Matrix origin="{nobody}",destination="elsewhere.example",key="ed25519:a",sig="AAAA""#
        ),
        format!(r#"X-Matrix origin="{nobody}",destination="{ours}",key="ed25519:a",sig="AAAA""#),
        format!(r#"X-Matrix origin="{ours}",destination="{ours}",key="ed25519:a",sig="AAAA""#),
        "X-Matrix nonsense".to_owned(),
    ] {
        let response = server
            .http()
            .get(format!("{}{path}", server.url))
            .header("Authorization", header.as_str())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        unauthorized((status, body));
    }
}

/// Two of our servers over TLS on 127.0.0.1, each asking the other: profiles, an alias,
/// device keys and one-time keys. Every request between them is signed and checked (the
/// answering server fetches the asking server's key).
#[tokio::test]
async fn two_servers_answer_each_others_queries() {
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (a.user_id("alice"), b.user_id("bob"));

    let (status, body) = b
        .client_api(
            &bob,
            Method::PUT,
            &format!("/profile/{bob_id}/displayname"),
            Some(json!({ "displayname": "Bob from B" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, created) = b
        .client_api(
            &bob,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "club", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    let (_, whoami) = b.whoami(&bob).await;
    let bob_device = whoami["device_id"].as_str().unwrap().to_owned();
    let (status, body) = b
        .client_api(
            &bob,
            Method::POST,
            "/keys/upload",
            Some(json!({
                "device_keys": crate::keys::signed_device_keys(&bob_id, &bob_device),
                "one_time_keys": crate::keys::one_time_keys(2),
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Alice, on A, asks about Bob, on B.
    let (status, profile) = a
        .client_api(&alice, Method::GET, &format!("/profile/{bob_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}\n{}", b.log());
    assert_eq!(profile["displayname"], "Bob from B");
    let (status, name) = a
        .client_api(
            &alice,
            Method::GET,
            &format!("/profile/{bob_id}/displayname"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}");
    assert_eq!(name["displayname"], "Bob from B");
    // B's own "not found" comes back as it is.
    assert_error(
        &a.client_api(
            &alice,
            Method::GET,
            &format!("/profile/{}", b.user_id("nobody")),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, alias) = a
        .client_api(
            &alice,
            Method::GET,
            &format!("/directory/room/%23club:{}", b.server_name),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{alias}");
    assert_eq!(alias["room_id"], room_id.as_str());
    assert_eq!(alias["servers"], json!([b.server_name]));

    let (status, keys) = a
        .client_api(
            &alice,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { bob_id.as_str(): [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert!(
        keys.get("failures")
            .is_none_or(|failures| *failures == json!({})),
        "{keys}"
    );
    let device = &keys["device_keys"][bob_id.as_str()][bob_device.as_str()];
    assert_eq!(device["user_id"], bob_id.as_str(), "{keys}");
    assert!(device["signatures"][bob_id.as_str()].is_object(), "{keys}");
    assert!(
        device["unsigned"].get("device_display_name").is_none(),
        "device names stay on their server: {keys}"
    );
    let (status, claimed) = a
        .client_api(
            &alice,
            Method::POST,
            "/keys/claim",
            Some(json!({ "one_time_keys": { bob_id.as_str(): { bob_device.as_str(): "signed_curve25519" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    let keys_of_device = claimed["one_time_keys"][bob_id.as_str()][bob_device.as_str()]
        .as_object()
        .unwrap_or_else(|| panic!("a key claimed: {claimed}"));
    assert_eq!(keys_of_device.len(), 1);

    // And the other way: Bob asks about Alice.
    let (status, profile) = b
        .client_api(&bob, Method::GET, &format!("/profile/{alice_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["displayname"], "alice");

    // And Alice joins Bob's room by its alias, through B (rooms across servers are
    // tested in `federation_rooms`).
    let (status, joined) = a
        .client_api(
            &alice,
            Method::POST,
            &format!("/join/%23club:{}", b.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], room_id.as_str());
}

/// Our server and a real Synapse, both ways: each fetches the other's signing key, signs
/// its requests and checks the other's; profiles, an alias, device keys and one-time keys.
#[tokio::test]
async fn our_server_and_synapse_answer_each_others_queries() {
    let synapse = crate::synapse::Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (ours.user_id("alice"), synapse.user_id("bob"));

    // Synapse asks us: Bob looks up Alice's profile and our alias.
    let (status, body) = ours
        .client_api(
            &alice,
            Method::PUT,
            &format!("/profile/{alice_id}/displayname"),
            Some(json!({ "displayname": "Alice from conduit" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, created) = ours
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "radio", "preset": "public_chat" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (status, profile) = synapse
        .client_api(&bob, Method::GET, &format!("/profile/{alice_id}"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{profile}\nours:\n{}\nsynapse:\n{}",
        ours.log(),
        synapse.log()
    );
    assert_eq!(profile["displayname"], "Alice from conduit");
    let (status, alias) = synapse
        .client_api(
            &bob,
            Method::GET,
            &format!("/directory/room/%23radio:{}", ours.server_name),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{alias}");
    assert_eq!(alias["room_id"], created["room_id"]);

    // Alice's device keys, as Synapse's user sees them.
    let (_, whoami) = ours.whoami(&alice).await;
    let alice_device = whoami["device_id"].as_str().unwrap().to_owned();
    let (status, body) = ours
        .client_api(
            &alice,
            Method::POST,
            "/keys/upload",
            Some(json!({
                "device_keys": crate::keys::signed_device_keys(&alice_id, &alice_device),
                "one_time_keys": crate::keys::one_time_keys(1),
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, keys) = synapse
        .client_api(
            &bob,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { alice_id.as_str(): [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(
        keys["device_keys"][alice_id.as_str()][alice_device.as_str()]["device_id"],
        alice_device.as_str(),
        "{keys}\n{}",
        synapse.log()
    );
    let (status, claimed) = synapse
        .client_api(
            &bob,
            Method::POST,
            "/keys/claim",
            Some(json!({ "one_time_keys": { alice_id.as_str(): { alice_device.as_str(): "signed_curve25519" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert!(
        claimed["one_time_keys"][alice_id.as_str()][alice_device.as_str()].is_object(),
        "{claimed}"
    );

    // We ask Synapse: Bob's profile, and Bob's keys.
    let (status, profile) = ours
        .client_api(&alice, Method::GET, &format!("/profile/{bob_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}\n{}", ours.log());
    assert_eq!(profile["displayname"], "bob");
    let (status, keys) = ours
        .client_api(
            &alice,
            Method::POST,
            "/keys/query",
            Some(json!({ "device_keys": { bob_id.as_str(): [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert!(
        keys.get("failures")
            .is_none_or(|failures| *failures == json!({})),
        "{keys}"
    );
    assert!(keys["device_keys"][bob_id.as_str()].is_object(), "{keys}");
    // Synapse's "not found" for an unknown user passes through.
    assert_error(
        &ours
            .client_api(
                &alice,
                Method::GET,
                &format!("/profile/{}", synapse.user_id("nobody")),
                None,
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

/// Send-to-device messages for another server's users go through the outgoing queue: they
/// arrive, a repeated request is not delivered twice, and a message queued while the other
/// server is down survives `kill -9` of the sender and arrives once after the restart.
#[tokio::test]
async fn to_device_messages_cross_servers_through_a_queue_that_survives_kill_9() {
    let mut a = TestServer::start_federating();
    let mut b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let bob_id = b.user_id("bob");
    let (_, whoami) = b.whoami(&bob).await;
    let bob_device = whoami["device_id"].as_str().unwrap().to_owned();
    let (_, first) = b.client_api(&bob, Method::GET, "/sync", None).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    let send = |txn: &'static str, n: u64| {
        let (a, alice, bob_id, bob_device) = (&a, &alice, &bob_id, &bob_device);
        async move {
            let (status, body) = a
                .client_api(
                    alice,
                    Method::PUT,
                    &format!("/sendToDevice/m.test/{txn}"),
                    Some(json!({ "messages": { bob_id.as_str(): { bob_device.as_str(): { "n": n } } } })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    // Bob's syncs until `count` messages arrived (bounded), returning their `n`s.
    async fn receive(b: &TestServer, bob: &str, since: &mut String, count: usize) -> Vec<u64> {
        let mut got = Vec::new();
        for _ in 0..30 {
            let (status, sync) = b
                .client_api(
                    bob,
                    Method::GET,
                    &format!("/sync?since={since}&timeout=1000"),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{sync}");
            *since = sync["next_batch"].as_str().unwrap().to_owned();
            for event in sync["to_device"]["events"].as_array().into_iter().flatten() {
                assert_eq!(event["type"], "m.test");
                got.push(event["content"]["n"].as_u64().unwrap());
            }
            if got.len() >= count {
                break;
            }
        }
        got
    }

    // A server that is down (a loopback port nobody listens on) gets its own queue and
    // back-off: it must not hold up the message for B, sent in the same request.
    let ghost = format!("@ghost:localhost:{}", crate::harness::free_port());
    let (status, body) = a
        .client_api(
            &alice,
            Method::PUT,
            "/sendToDevice/m.test/t0",
            Some(json!({ "messages": {
                ghost.as_str(): { "GHOSTDEV": { "n": 0 } },
                bob_id.as_str(): { bob_device.as_str(): { "n": 0 } },
            } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(receive(&b, &bob, &mut since, 1).await, [0], "{}", a.log());

    send("t1", 1).await;
    send("t1", 1).await;
    assert_eq!(receive(&b, &bob, &mut since, 1).await, [1], "{}", a.log());

    // B goes down; the message waits in A's queue; A is killed with it in flight.
    assert!(b.stop().success());
    send("t2", 2).await;
    let failed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        a.log().lines().any(|line| {
            line.contains("federation transaction failed") && line.contains(&b.server_name)
        })
    });
    assert!(failed, "A tried B and failed: {}", a.log());
    a.kill9();
    b.restart();
    a.restart();
    let got = receive(&b, &bob, &mut since, 1).await;
    assert_eq!(got, [2], "delivered after the restart: {}", a.log());
    // Nothing more comes: exactly once.
    let (_, sync) = b
        .client_api(
            &bob,
            Method::GET,
            &format!("/sync?since={since}&timeout=1500"),
            None,
        )
        .await;
    assert!(
        sync["to_device"]["events"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{sync}"
    );
}

/// Other servers are reached at public addresses only, unless the admin allows a range:
/// without the allowlist, a server on loopback is refused before any connection.
#[tokio::test]
async fn other_servers_on_private_addresses_are_refused_unless_allowed() {
    let a = TestServer::federating_with_env(&[("CONDUIT_FEDERATION_IP_RANGE_ALLOWLIST", "[]")]);
    let b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    b.register("bob", "battery staple").await;
    let response = a
        .client_api(
            &alice,
            Method::GET,
            &format!("/profile/{}", b.user_id("bob")),
            None,
        )
        .await;
    assert_error(&response, StatusCode::BAD_GATEWAY, "M_UNKNOWN");
    let message = response.1["error"].as_str().unwrap();
    assert!(message.contains("not public"), "{message}");
    assert!(
        !b.log().contains("/_matrix/federation/v1/query/profile"),
        "B was never asked: {}",
        b.log()
    );
}

/// A request that names a real server and its real key id but is signed with another key
/// (an impostor): the receiver fetches the real key and refuses the request.
#[tokio::test]
async fn a_request_signed_with_the_wrong_key_is_401() {
    use ruma::{
        api::federation::authentication::{ServerSignaturesInput, XMatrix},
        signatures::Ed25519KeyPair,
    };
    let a = TestServer::start_federating();
    let b = TestServer::start_federating();
    let (_, keys) = a
        .request(Method::GET, "/_matrix/key/v2/server", None, None)
        .await;
    let key_id = keys["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let version = key_id.strip_prefix("ed25519:").unwrap().to_owned();
    let impostor = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version).unwrap();
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id=@alice:{}",
        b.server_name
    );
    let request = http::Request::get(path.as_str())
        .body(Vec::<u8>::new())
        .unwrap();
    let header = XMatrix::try_from_http_request(
        &request,
        ServerSignaturesInput::new(
            a.server_name.as_str().try_into().unwrap(),
            b.server_name.as_str().try_into().unwrap(),
            &impostor,
        ),
    )
    .unwrap();
    let response = b
        .http()
        .get(format!("{}{path}", b.url))
        .header("Authorization", http::HeaderValue::from(&header))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(&(status, body), StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
    assert_eq!(
        body_error(&b, &path, &header).await,
        "The X-Matrix signature is not valid.",
        "refused for the signature, not for a missing key"
    );
}

async fn body_error(
    server: &TestServer,
    path: &str,
    header: &ruma::api::federation::authentication::XMatrix,
) -> String {
    let response = server
        .http()
        .get(format!("{}{path}", server.url))
        .header("Authorization", http::HeaderValue::from(header))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// A server that comes back is sent what it missed as soon as it is heard from (its next
/// signed request), not when the back-off would have ended.
#[tokio::test]
async fn a_destination_heard_from_again_is_retried_at_once() {
    let a = TestServer::start_federating();
    let mut b = TestServer::start_federating();
    let alice = a.register("alice", "correct horse").await;
    let bob = b.register("bob", "battery staple").await;
    let (alice_id, bob_id) = (a.user_id("alice"), b.user_id("bob"));
    let (_, whoami) = b.whoami(&bob).await;
    let bob_device = whoami["device_id"].as_str().unwrap().to_owned();
    let (_, first) = b.client_api(&bob, Method::GET, "/sync", None).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    assert!(b.stop().success());
    let (status, body) = a
        .client_api(
            &alice,
            Method::PUT,
            "/sendToDevice/m.test/back",
            Some(json!({ "messages": { bob_id.as_str(): { bob_device.as_str(): { "n": 7 } } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let failed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        a.log().contains("federation transaction failed")
    });
    assert!(failed, "{}", a.log());
    b.restart();
    // B asks A something: a signed request, so A hears from B.
    let (status, profile) = b
        .client_api(&bob, Method::GET, &format!("/profile/{alice_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    let mut got = Vec::new();
    for _ in 0..30 {
        let (_, sync) = b
            .client_api(
                &bob,
                Method::GET,
                &format!("/sync?since={since}&timeout=1000"),
                None,
            )
            .await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        got.extend(
            sync["to_device"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|event| event["content"]["n"].as_u64().unwrap()),
        );
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, [7], "{}", a.log());
    assert!(
        a.log().contains("destination is back; retrying now"),
        "the back-off was ended by hearing from B: {}",
        a.log()
    );
}

/// A user of a real Synapse joins a public room here by its alias: Synapse asks our
/// directory, then `make_join` and `send_join` (v2). The join is in our room's state, and
/// Synapse counts its user as joined. (Events after the join, both ways, come with sending
/// room events to other servers and receiving them in `/send`.)
#[tokio::test]
async fn a_synapse_user_joins_a_room_here_by_alias() {
    let synapse = crate::synapse::Synapse::start().await;
    let ours = TestServer::start_federating();
    let alice = ours.register("alice", "correct horse").await;
    let bob = synapse.register("bob", "battery staple").await;
    let bob_id = synapse.user_id("bob");
    let (status, created) = ours
        .client_api(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({ "room_alias_name": "lobby", "preset": "public_chat", "name": "Lobby" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().unwrap().to_owned();
    for (txn, body) in ["before bob 1", "before bob 2"].into_iter().enumerate() {
        let (status, sent) = ours
            .client_api(
                &alice,
                Method::PUT,
                &format!("/rooms/{room_id}/send/m.room.message/t{txn}"),
                Some(json!({ "msgtype": "m.text", "body": body })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{sent}");
    }

    let (status, joined) = synapse
        .client_api(
            &bob,
            Method::POST,
            &format!("/join/%23lobby:{}", ours.server_name),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{joined}\nours:\n{}\nsynapse:\n{}",
        ours.log(),
        synapse.log()
    );
    assert_eq!(joined["room_id"], room_id.as_str());

    // Here: Bob's join is in the room's state, and Alice sees him among the members.
    let (status, member) = ours
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/state/m.room.member/{bob_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(member["membership"], "join");
    let (status, members) = ours
        .client_api(
            &alice,
            Method::GET,
            &format!("/rooms/{room_id}/joined_members"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"][bob_id.as_str()].is_object(), "{members}");

    // There: Synapse counts Bob as joined and knows the room's name from the state we sent.
    let (status, rooms) = synapse
        .client_api(&bob, Method::GET, "/joined_rooms", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rooms}");
    assert_eq!(rooms["joined_rooms"], json!([room_id]), "{rooms}");
    let (status, name) = synapse
        .client_api(
            &bob,
            Method::GET,
            &format!("/rooms/{room_id}/state/m.room.name"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{name}\n{}", synapse.log());
    assert_eq!(name["name"], "Lobby");

    // History from before the join: Synapse backfills it from us (`/backfill`, and the
    // state and events it needs to check what it gets) when Bob pages back.
    let mut bodies = Vec::new();
    for _ in 0..50 {
        let (status, page) = synapse
            .client_api(
                &bob,
                Method::GET,
                &format!("/rooms/{room_id}/messages?dir=b&limit=50"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        bodies = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
            .collect();
        if bodies.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        bodies,
        vec!["before bob 2", "before bob 1"],
        "ours:\n{}\nsynapse:\n{}",
        ours.log(),
        synapse.log()
    );
    let log = ours.log();
    assert!(log.contains("/_matrix/federation/v1/backfill/"), "{log}");

    // A version-10 room (the one above is version 12, our default) joins the same way; an
    // invite-only room is refused by our make_join, and Synapse passes the 403 on.
    for (alias, preset, version, allowed) in [
        ("older", "public_chat", "10", true),
        ("closed", "private_chat", "12", false),
    ] {
        let (status, created) = ours
            .client_api(
                &alice,
                Method::POST,
                "/createRoom",
                Some(
                    json!({ "room_alias_name": alias, "preset": preset, "room_version": version }),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{created}");
        let response = synapse
            .client_api(
                &bob,
                Method::POST,
                &format!("/join/%23{alias}:{}", ours.server_name),
                Some(json!({})),
            )
            .await;
        if allowed {
            assert_eq!(
                response.0,
                StatusCode::OK,
                "{}\n{}",
                response.1,
                synapse.log()
            );
            assert_eq!(response.1["room_id"], created["room_id"]);
        } else {
            assert_error(&response, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        }
    }

    // The read endpoints are for servers in the room only: unsigned requests are 401.
    let (status, body) = ours
        .request(
            Method::GET,
            &format!(
                "/_matrix/federation/v1/state_ids/{room_id}?event_id={}",
                urlencode(joined["room_id"].as_str().unwrap())
            ),
            None,
            None,
        )
        .await;
    assert_error(&(status, body), StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
