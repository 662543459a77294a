//! Server keys over HTTP: `/_matrix/key/v2/server` (fields and signature, after a rotation
//! too), `/_matrix/federation/v1/version`, and one server answering for another's keys as a
//! notary (`/_matrix/key/v2/query`), over TLS on 127.0.0.1 with `localhost:PORT` names.

use std::{collections::BTreeMap, path::Path, process::Stdio, time::SystemTime};

use reqwest::{Method, StatusCode};
use ruma::{
    CanonicalJsonObject,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet, verify_json},
};
use serde_json::{Value, json};

use crate::harness::TestServer;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `verify_keys` of a key response as a public key set.
fn verify_keys(keys: &Value) -> PublicKeySet {
    keys["verify_keys"]
        .as_object()
        .expect("verify_keys")
        .iter()
        .map(|(id, key)| {
            let key = Base64::parse(key["key"].as_str().unwrap()).expect("unpadded base64");
            assert_eq!(key.as_bytes().len(), 32, "an ed25519 key");
            (id.clone(), key)
        })
        .collect()
}

/// Checks `object`'s signatures by each of `signers` (and only theirs).
fn check_signed(object: &Value, signers: &[(&str, &PublicKeySet)]) {
    let mut object: CanonicalJsonObject = serde_json::from_value(object.clone()).unwrap();
    let ruma::CanonicalJsonValue::Object(signatures) = object.remove("signatures").unwrap() else {
        panic!("signatures is an object");
    };
    let mut map = PublicKeyMap::new();
    let mut kept = BTreeMap::new();
    for (name, keys) in signers {
        map.insert(name.to_string(), (*keys).clone());
        kept.insert(name.to_string(), signatures[*name].clone());
    }
    object.insert(
        "signatures".to_owned(),
        ruma::CanonicalJsonValue::Object(kept),
    );
    verify_json(&map, &object).expect("valid signatures");
}

/// The checks every `/_matrix/key/v2/server` answer must pass; returns its keys.
fn check_published(keys: &Value, server_name: &str) -> PublicKeySet {
    assert_eq!(keys["server_name"], server_name, "{keys}");
    let valid_until = keys["valid_until_ts"].as_u64().expect("valid_until_ts");
    // Synapse's choice: a day from now (at least the spec's hour).
    assert!(valid_until > now_ms() + DAY_MS - 60_000, "{keys}");
    assert!(valid_until <= now_ms() + DAY_MS, "{keys}");
    assert!(keys["old_verify_keys"].is_object(), "{keys}");
    let verify = verify_keys(keys);
    assert_eq!(verify.len(), 1, "{keys}");
    check_signed(keys, &[(server_name, &verify)]);
    verify
}

#[tokio::test]
async fn key_server_publishes_signed_keys_and_the_version() {
    let server = TestServer::start_federating();
    let name = server.server_name.clone();
    let (status, keys) = server
        .request(Method::GET, "/_matrix/key/v2/server", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    check_published(&keys, &name);
    assert_eq!(keys["old_verify_keys"], json!({}));

    let (status, version) = server
        .request(Method::GET, "/_matrix/federation/v1/version", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{version}");
    assert_eq!(version["server"]["name"], "conduit");
    assert_eq!(version["server"]["version"], env!("CARGO_PKG_VERSION"));

    // As a notary, our own keys are answered directly.
    let (status, answer) = server
        .request(
            Method::GET,
            &format!("/_matrix/key/v2/query/{name}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["server_keys"].as_array().unwrap().len(), 1);
    check_published(&answer["server_keys"][0], &name);
    // A server that cannot be reached (a loopback port nobody listens on; test traffic
    // stays on 127.0.0.1): an empty list, not an error.
    let nobody = format!("localhost:{}", crate::harness::free_port());
    let (status, answer) = server
        .request(
            Method::POST,
            "/_matrix/key/v2/query",
            None,
            Some(json!({ "server_keys": { nobody.as_str(): {} } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["server_keys"], json!([]));
}

#[tokio::test]
async fn a_rotated_key_is_published_as_an_old_verify_key() {
    let mut server = TestServer::start_federating();
    let name = server.server_name.clone();
    let (_, before) = server
        .request(Method::GET, "/_matrix/key/v2/server", None, None)
        .await;
    let old_keys = check_published(&before, &name);
    let (old_id, old_key) = old_keys.iter().next().unwrap();

    assert!(server.stop().success());
    let rotated = server.admin(&["keys", "rotate"]);
    let output = String::from_utf8_lossy(&rotated.stdout);
    assert!(rotated.status.success(), "{output}");
    assert!(output.contains(&format!("old key: {old_id}")), "{output}");
    server.restart();

    let (status, after) = server
        .request(Method::GET, "/_matrix/key/v2/server", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Signed by the new key only.
    let new_keys = check_published(&after, &name);
    assert!(!new_keys.contains_key(old_id), "{after}");
    assert_eq!(
        after["signatures"][name.as_str()]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        new_keys.keys().collect::<Vec<_>>()
    );
    let old = &after["old_verify_keys"][old_id];
    assert_eq!(old["key"], old_key.encode(), "{after}");
    let expired = old["expired_ts"].as_u64().expect("expired_ts");
    assert!(
        expired <= now_ms() && expired > now_ms() - 60_000,
        "{after}"
    );
}

fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args([
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(made.success());
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// A port that was free a moment ago (the server must know its `localhost:PORT` name
/// before it binds).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_notary_answers_for_another_server_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    // B: the origin, on TLS, named by its address.
    let port_b = free_port();
    let name_b = format!("localhost:{port_b}");
    let mut origin = TestServer::with_env(&[
        ("CONDUIT_SERVER_NAME", &name_b),
        ("CONDUIT_PORT", &port_b.to_string()),
        ("CONDUIT_TLS_CERTS", &cert),
        ("CONDUIT_TLS_KEY", &key),
        ("CONDUIT_ALLOW_FEDERATION", "true"),
    ]);
    // A: the notary; it trusts the test certificate through the system store's override.
    let port_a = free_port();
    let name_a = format!("localhost:{port_a}");
    let notary = TestServer::with_env(&[
        ("CONDUIT_SERVER_NAME", &name_a),
        ("CONDUIT_PORT", &port_a.to_string()),
        ("SSL_CERT_FILE", &cert),
        ("CONDUIT_ALLOW_FEDERATION", "true"),
    ]);

    // B's keys, straight from B over HTTPS.
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .resolve("localhost", ([127, 0, 0, 1], port_b).into())
        .build()
        .unwrap();
    let direct: Value = https
        .get(format!("https://{name_b}/_matrix/key/v2/server"))
        .send()
        .await
        .expect("HTTPS to B")
        .json()
        .await
        .unwrap();
    let keys_b = check_published(&direct, &name_b);
    let (_, own_a) = notary
        .request(Method::GET, "/_matrix/key/v2/server", None, None)
        .await;
    let keys_a = check_published(&own_a, &name_a);

    // A fetches B's keys and signs the answer: both signatures verify.
    let (status, answer) = notary
        .request(
            Method::GET,
            &format!("/_matrix/key/v2/query/{name_b}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answers = answer["server_keys"].as_array().expect("server_keys");
    assert_eq!(answers.len(), 1, "{answer}");
    let relayed = &answers[0];
    assert_eq!(relayed["server_name"], name_b.as_str());
    assert_eq!(verify_keys(relayed), keys_b);
    check_signed(relayed, &[(&name_b, &keys_b), (&name_a, &keys_a)]);

    // The batch form, asking for B's key by id, once B is gone: answered from A's cache.
    assert!(origin.stop().success());
    let key_id = keys_b.keys().next().unwrap();
    let (status, answer) = notary
        .request(
            Method::POST,
            "/_matrix/key/v2/query",
            None,
            Some(json!({ "server_keys": { name_b.as_str(): { key_id: {} } } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let relayed = &answer["server_keys"][0];
    assert_eq!(verify_keys(relayed), keys_b, "{answer}");
    check_signed(relayed, &[(&name_b, &keys_b), (&name_a, &keys_a)]);
}

/// An HTTPS client that trusts the test certificate.
fn trusting(cert: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn keys_of_a_server_that_is_down_come_through_a_trusted_notary() {
    use std::sync::Arc;

    use conduit::{
        service::{
            federation::{
                client::FederationClient,
                keys::{KeyFetch, Keyring},
                resolve::Resolver,
            },
            server_keys::ServerKeys,
        },
        storage::Db,
    };
    use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedServerSigningKeyId};

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let tls = |name: &str, port: u16| {
        TestServer::with_env(&[
            ("CONDUIT_SERVER_NAME", name),
            ("CONDUIT_PORT", &port.to_string()),
            ("CONDUIT_TLS_CERTS", &cert),
            ("CONDUIT_TLS_KEY", &key),
            ("CONDUIT_ALLOW_FEDERATION", "true"),
            ("SSL_CERT_FILE", &cert),
        ])
    };
    let port_b = free_port();
    let name_b = format!("localhost:{port_b}");
    let mut origin = tls(&name_b, port_b);
    let port_a = free_port();
    let name_a = format!("localhost:{port_a}");
    let _notary = tls(&name_a, port_a);
    let https = trusting(&cert);

    // The notary learns B's keys while B is up; then B goes down.
    let direct: Value = https
        .get(format!("https://{name_b}/_matrix/key/v2/server"))
        .send()
        .await
        .expect("HTTPS to B")
        .json()
        .await
        .unwrap();
    let keys_b = check_published(&direct, &name_b);
    let (key_id, public) = keys_b.iter().next().unwrap();
    let primed: Value = https
        .get(format!("https://{name_a}/_matrix/key/v2/query/{name_b}"))
        .send()
        .await
        .expect("HTTPS to A")
        .json()
        .await
        .unwrap();
    assert_eq!(
        primed["server_keys"].as_array().unwrap().len(),
        1,
        "{primed}"
    );
    assert!(origin.stop().success());

    // A third server's keyring, trusting A: B itself cannot be reached, so it asks A, checks
    // A's signature (with A's keys, fetched from A) and B's own, and keeps the keys.
    let db = Db::memory();
    let own = Arc::new(ServerKeys::load_or_generate(&db).unwrap());
    let name_a: OwnedServerName = name_a.try_into().unwrap();
    // Fetching through the real federation client (resolution, signing, the address
    // check), allowed to reach loopback and to accept the test certificate.
    let loopback = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let client = FederationClient::new(
        "localhost:1".try_into().unwrap(),
        Arc::clone(&own),
        Arc::new(Resolver::system(false, loopback.clone()).unwrap()),
        false,
        loopback,
    )
    .unwrap();
    let keyring = Keyring::new(
        &db,
        "localhost:1".try_into().unwrap(),
        own,
        vec![name_a.clone()],
        true,
        Arc::new(client) as Arc<dyn KeyFetch>,
    )
    .unwrap();
    let name_b: OwnedServerName = name_b.try_into().unwrap();
    let key_id: OwnedServerSigningKeyId = key_id.as_str().try_into().unwrap();
    let found = keyring
        .verify_keys(
            &name_b,
            std::slice::from_ref(&key_id),
            Some(MilliSecondsSinceUnixEpoch::now()),
        )
        .await
        .unwrap();
    assert_eq!(found.get(key_id.as_str()), Some(public), "{found:?}");

    // And as a notary itself, it now answers for B from what it kept.
    let answers = keyring.notary_query_server(&name_b, None).await.unwrap();
    assert_eq!(answers.len(), 1);
}
