//! The keyring against a network that answers from a table, with hand-made keys.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
};

use ruma::{server_name, signatures::Ed25519KeyPair};
use serde_json::json;

use super::*;
use crate::service::server_keys::millis;

const DAY: u64 = 24 * 60 * 60 * 1000;

fn now() -> u64 {
    u64::from(MilliSecondsSinceUnixEpoch::now().get())
}

fn keypair(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).unwrap()
}

fn b64(key: &Ed25519KeyPair) -> String {
    Base64::<ruma::serde::base64::Standard, _>::new(key.public_key().to_vec()).encode()
}

fn id(key: &Ed25519KeyPair) -> OwnedServerSigningKeyId {
    format!("ed25519:{}", key.version()).try_into().unwrap()
}

/// A `/_matrix/key/v2/server` answer of `server` listing `listed`, signed by `signer`.
fn response(
    server: &str,
    listed: &Ed25519KeyPair,
    signer: &Ed25519KeyPair,
    valid_until: u64,
    old: &[(&Ed25519KeyPair, u64)],
) -> CanonicalJsonObject {
    let old: serde_json::Map<_, _> = old
        .iter()
        .map(|(key, expired)| {
            (
                id(key).to_string(),
                json!({ "key": b64(key), "expired_ts": expired }),
            )
        })
        .collect();
    let mut object: CanonicalJsonObject = serde_json::from_value(json!({
        "server_name": server,
        "verify_keys": { id(listed).as_str(): { "key": b64(listed) } },
        "old_verify_keys": old,
        "valid_until_ts": valid_until,
    }))
    .unwrap();
    ruma::signatures::sign_json(server, signer, &mut object).unwrap();
    object
}

fn raw(object: &CanonicalJsonObject) -> Raw<ServerSigningKeys> {
    raw_object(object).unwrap()
}

/// Answers from tables and counts the calls.
#[derive(Default)]
struct TableFetch {
    direct: Mutex<HashMap<String, CanonicalJsonObject>>,
    notary: Mutex<HashMap<String, Vec<CanonicalJsonObject>>>,
    direct_calls: AtomicUsize,
    notary_calls: AtomicUsize,
    /// Answers after a pause, so that concurrent lookups interleave.
    slow: bool,
}

impl TableFetch {
    fn serve(&self, server: &str, object: CanonicalJsonObject) {
        self.direct
            .lock()
            .unwrap()
            .insert(server.to_owned(), object);
    }
    fn notary_answers(&self, notary: &str, objects: Vec<CanonicalJsonObject>) {
        self.notary
            .lock()
            .unwrap()
            .insert(notary.to_owned(), objects);
    }
    fn direct_calls(&self) -> usize {
        self.direct_calls.load(Ordering::SeqCst)
    }
    fn notary_calls(&self) -> usize {
        self.notary_calls.load(Ordering::SeqCst)
    }
}

impl KeyFetch for TableFetch {
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<Raw<ServerSigningKeys>>> {
        self.direct_calls.fetch_add(1, Ordering::SeqCst);
        let found = self.direct.lock().unwrap().get(server.as_str()).map(raw);
        let slow = self.slow;
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            found.ok_or_else(|| Error::internal("unreachable"))
        })
    }

    fn notary_query<'a>(
        &'a self,
        notary: &'a ServerName,
        _criteria: &'a BTreeMap<OwnedServerName, BTreeMap<OwnedServerSigningKeyId, QueryCriteria>>,
    ) -> BoxFuture<'a, Result<Vec<Raw<ServerSigningKeys>>>> {
        self.notary_calls.fetch_add(1, Ordering::SeqCst);
        let found = self
            .notary
            .lock()
            .unwrap()
            .get(notary.as_str())
            .map(|objects| objects.iter().map(raw).collect());
        Box::pin(async move { found.ok_or_else(|| Error::internal("unreachable")) })
    }
}

struct Setup {
    keyring: Keyring,
    fetch: Arc<TableFetch>,
    own: Arc<ServerKeys>,
    db: Db,
}

fn setup_with(db: Db, trusted: &[&str], fetch_allowed: bool) -> Setup {
    let fetch = Arc::new(TableFetch::default());
    let own = Arc::new(ServerKeys::load_or_generate(&db).unwrap());
    let keyring = Keyring::new(
        &db,
        server_name!("us.test").to_owned(),
        Arc::clone(&own),
        trusted.iter().map(|s| (*s).try_into().unwrap()).collect(),
        fetch_allowed,
        Arc::clone(&fetch) as Arc<dyn KeyFetch>,
    )
    .unwrap();
    Setup {
        keyring,
        fetch,
        own,
        db,
    }
}

fn setup(trusted: &[&str]) -> Setup {
    setup_with(Db::memory(), trusted, true)
}

fn at(ms: u64) -> Option<MilliSecondsSinceUnixEpoch> {
    Some(millis(ms))
}

#[tokio::test]
async fn a_valid_response_is_accepted_then_cached_and_persisted() {
    let s = setup(&[]);
    let key = keypair("a1");
    s.fetch.serve(
        "them.test",
        response("them.test", &key, &key, now() + DAY, &[]),
    );
    let them = server_name!("them.test");
    let found = s
        .keyring
        .verify_keys(them, &[id(&key)], at(now()))
        .await
        .unwrap();
    assert_eq!(found[id(&key).as_str()].as_bytes(), key.public_key());
    assert_eq!(s.fetch.direct_calls(), 1);

    // Known and valid: no second fetch.
    let again = s
        .keyring
        .verify_keys(them, &[id(&key)], at(now()))
        .await
        .unwrap();
    assert_eq!(again, found);
    assert_eq!(s.fetch.direct_calls(), 1);
    // Nor for the same key named twice.
    s.keyring
        .verify_keys(them, &[id(&key), id(&key)], at(now()))
        .await
        .unwrap();
    assert_eq!(s.fetch.direct_calls(), 1);
    assert!(s.keyring.in_flight.lock().unwrap().is_empty());

    // Persisted: a new keyring on the same database does not fetch either.
    let restarted = setup_with(s.db.clone(), &[], true);
    let from_disk = restarted
        .keyring
        .verify_keys(them, &[id(&key)], at(now()))
        .await
        .unwrap();
    assert_eq!(from_disk, found);
    assert_eq!(restarted.fetch.direct_calls(), 0);
}

#[tokio::test]
async fn a_response_not_signed_by_the_key_it_lists_is_refused() {
    let s = setup(&[]);
    let listed = keypair("a1");
    let other = keypair("a1");
    s.fetch.serve(
        "them.test",
        response("them.test", &listed, &other, now() + DAY, &[]),
    );
    let found = s
        .keyring
        .verify_keys(server_name!("them.test"), &[id(&listed)], at(now()))
        .await
        .unwrap();
    assert!(found.is_empty());
    assert!(
        s.keyring
            .stored(server_name!("them.test"))
            .unwrap()
            .is_none()
    );

    // Nor one with no signature at all.
    let mut unsigned = response("them.test", &listed, &listed, now() + DAY, &[]);
    unsigned.remove("signatures");
    assert!(check_response(server_name!("them.test"), &raw(&unsigned), None).is_err());
}

#[test]
fn an_oversized_response_is_refused() {
    let key = keypair("a1");
    let mut object: CanonicalJsonObject = serde_json::from_value(json!({
        "server_name": "them.test",
        "verify_keys": { id(&key).as_str(): { "key": b64(&key) } },
        "valid_until_ts": now() + DAY,
        "padding": "x".repeat(MAX_KEY_RESPONSE),
    }))
    .unwrap();
    ruma::signatures::sign_json("them.test", &key, &mut object).unwrap();
    assert!(check_response(server_name!("them.test"), &raw(&object), None).is_err());
    object.remove("padding");
    object.remove("signatures");
    ruma::signatures::sign_json("them.test", &key, &mut object).unwrap();
    assert!(check_response(server_name!("them.test"), &raw(&object), None).is_ok());
}

#[tokio::test]
async fn a_response_for_another_server_is_refused() {
    let s = setup(&[]);
    let key = keypair("a1");
    s.fetch.serve(
        "them.test",
        response("evil.test", &key, &key, now() + DAY, &[]),
    );
    let found = s
        .keyring
        .verify_keys(server_name!("them.test"), &[id(&key)], at(now()))
        .await
        .unwrap();
    assert!(found.is_empty());
}

#[tokio::test]
async fn expired_keys_only_verify_what_was_signed_before_they_expired() {
    let s = setup(&[]);
    let current = keypair("new");
    let old = keypair("old");
    let expired_at = now() - DAY;
    // The server's keys ran out an hour ago; its old key expired a day ago.
    let valid_until = now() - 60 * 60 * 1000;
    s.fetch.serve(
        "them.test",
        response(
            "them.test",
            &current,
            &current,
            valid_until,
            &[(&old, expired_at)],
        ),
    );
    let them = server_name!("them.test");
    let ids = [id(&current), id(&old)];

    // A new event: neither key is usable (one fetch was made, nothing newer came).
    let found = s.keyring.verify_keys(them, &ids, at(now())).await.unwrap();
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(s.fetch.direct_calls(), 1);

    // Signed while the current key was valid, after the old one expired.
    let found = s
        .keyring
        .verify_keys(them, &ids, at(expired_at + 1))
        .await
        .unwrap();
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        vec![id(&current).as_str()]
    );

    // Signed before the old key expired: both.
    let found = s
        .keyring
        .verify_keys(them, &ids, at(expired_at - 1))
        .await
        .unwrap();
    assert_eq!(found.len(), 2);

    // Room versions 1 to 4 ignore validity.
    let found = s.keyring.verify_keys(them, &ids, None).await.unwrap();
    assert_eq!(found.len(), 2);

    // Within the cooldown the server is not asked again.
    assert_eq!(s.fetch.direct_calls(), 1);
}

#[tokio::test]
async fn valid_until_ts_is_capped_at_seven_days() {
    let s = setup(&[]);
    let key = keypair("a1");
    s.fetch.serve(
        "them.test",
        response("them.test", &key, &key, now() + 365 * DAY, &[]),
    );
    let them = server_name!("them.test");
    let in_six_days = s
        .keyring
        .verify_keys(them, &[id(&key)], at(now() + 6 * DAY))
        .await
        .unwrap();
    assert_eq!(in_six_days.len(), 1);
    let in_eight_days = s
        .keyring
        .verify_keys(them, &[id(&key)], at(now() + 8 * DAY))
        .await
        .unwrap();
    assert!(in_eight_days.is_empty());
}

#[tokio::test]
async fn notary_answers_are_checked() {
    let origin_key = keypair("o1");
    let notary_key = keypair("n1");
    let forger = keypair("n1");
    let notary_published = response("notary.test", &notary_key, &notary_key, now() + DAY, &[]);

    // Signed by the origin and by the notary: accepted, after the direct fetch failed.
    let s = setup(&["notary.test"]);
    s.fetch.serve("notary.test", notary_published.clone());
    let mut answer = response("them.test", &origin_key, &origin_key, now() + DAY, &[]);
    ruma::signatures::sign_json("notary.test", &notary_key, &mut answer).unwrap();
    s.fetch.notary_answers("notary.test", vec![answer.clone()]);
    let found = s
        .keyring
        .verify_keys(server_name!("them.test"), &[id(&origin_key)], at(now()))
        .await
        .unwrap();
    assert_eq!(
        found[id(&origin_key).as_str()].as_bytes(),
        origin_key.public_key()
    );
    // One direct attempt at the origin, one at the notary for its own keys.
    assert_eq!(s.fetch.direct_calls(), 2);
    assert_eq!(s.fetch.notary_calls(), 1);

    // The notary's signature made with another key: refused.
    let s = setup(&["notary.test"]);
    s.fetch.serve("notary.test", notary_published.clone());
    let mut forged = response("them.test", &origin_key, &origin_key, now() + DAY, &[]);
    ruma::signatures::sign_json("notary.test", &forger, &mut forged).unwrap();
    s.fetch.notary_answers("notary.test", vec![forged]);
    let found = s
        .keyring
        .verify_keys(server_name!("them.test"), &[id(&origin_key)], at(now()))
        .await
        .unwrap();
    assert!(found.is_empty());

    // Signed by the notary, but the origin's self-signature is by another key: refused.
    let s = setup(&["notary.test"]);
    s.fetch.serve("notary.test", notary_published.clone());
    let mut not_self_signed = response("them.test", &origin_key, &forger, now() + DAY, &[]);
    ruma::signatures::sign_json("notary.test", &notary_key, &mut not_self_signed).unwrap();
    s.fetch.notary_answers("notary.test", vec![not_self_signed]);
    let found = s
        .keyring
        .verify_keys(server_name!("them.test"), &[id(&origin_key)], at(now()))
        .await
        .unwrap();
    assert!(found.is_empty());

    // A notary whose own keys cannot be had is not believed.
    let s = setup(&["notary.test"]);
    s.fetch.notary_answers("notary.test", vec![answer]);
    let found = s
        .keyring
        .verify_keys(server_name!("them.test"), &[id(&origin_key)], at(now()))
        .await
        .unwrap();
    assert!(found.is_empty());
    assert_eq!(s.fetch.notary_calls(), 0);
}

#[tokio::test]
async fn our_own_keys_come_from_server_keys() {
    let s = setup(&[]);
    let ours: OwnedServerSigningKeyId = s.own.key_id().try_into().unwrap();
    let found = s
        .keyring
        .verify_keys(
            server_name!("us.test"),
            std::slice::from_ref(&ours),
            at(now()),
        )
        .await
        .unwrap();
    assert_eq!(
        found[ours.as_str()].as_bytes(),
        s.own.keypair().public_key()
    );
    assert_eq!(s.fetch.direct_calls(), 0);
}

fn criteria(
    server: &str,
) -> BTreeMap<OwnedServerName, BTreeMap<OwnedServerSigningKeyId, QueryCriteria>> {
    BTreeMap::from([(server.try_into().unwrap(), BTreeMap::new())])
}

#[tokio::test]
async fn the_notary_endpoint_adds_our_signature_and_answers_from_the_cache() {
    let s = setup(&[]);
    let key = keypair("a1");
    s.fetch.serve(
        "them.test",
        response("them.test", &key, &key, now() + DAY, &[]),
    );
    let answers = s
        .keyring
        .notary_query(&criteria("them.test"))
        .await
        .unwrap();
    assert_eq!(answers.len(), 1);
    let object: CanonicalJsonObject = serde_json::from_str(answers[0].json().get()).unwrap();
    let map = PublicKeyMap::from([
        (
            "them.test".to_owned(),
            PublicKeySet::from([(id(&key).to_string(), Base64::new(key.public_key().to_vec()))]),
        ),
        ("us.test".to_owned(), s.own.public_keys(None)),
    ]);
    verify_json(&map, &object).unwrap();
    // What a requesting server checks: the origin's and our signature.
    check_response(
        server_name!("them.test"),
        &answers[0],
        Some((server_name!("us.test"), &s.own.public_keys(None))),
    )
    .unwrap();
    assert_eq!(s.fetch.direct_calls(), 1);

    // Answered from the cache the second time.
    let again = s
        .keyring
        .notary_query(&criteria("them.test"))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(s.fetch.direct_calls(), 1);

    // Our own keys, directly; an unreachable server, nothing.
    let mut both = criteria("us.test");
    both.extend(criteria("gone.test"));
    let answers = s.keyring.notary_query(&both).await.unwrap();
    assert_eq!(answers.len(), 1);
    let ours = answers[0].deserialize().unwrap();
    assert_eq!(ours.server_name, "us.test");

    // Too many servers at once.
    let many: BTreeMap<_, _> = (0..=MAX_QUERY_SERVERS)
        .map(|i| {
            (
                OwnedServerName::try_from(format!("s{i}.test")).unwrap(),
                BTreeMap::new(),
            )
        })
        .collect();
    assert!(s.keyring.notary_query(&many).await.is_err());
}

#[tokio::test]
async fn nothing_is_fetched_when_federation_is_off() {
    let s = setup_with(Db::memory(), &["notary.test"], false);
    let key = keypair("a1");
    s.fetch.serve(
        "them.test",
        response("them.test", &key, &key, now() + DAY, &[]),
    );
    let found = s
        .keyring
        .verify_keys(server_name!("them.test"), &[id(&key)], at(now()))
        .await
        .unwrap();
    assert!(found.is_empty());
    assert!(
        s.keyring
            .notary_query(&criteria("them.test"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.fetch.direct_calls() + s.fetch.notary_calls(), 0);
}

#[test]
fn the_memory_cache_is_bounded() {
    let mut cache = Cache::default();
    let stored = Arc::new(StoredKeys {
        keys: BTreeMap::new(),
        response: serde_json::value::to_raw_value(&json!({})).unwrap(),
        valid_until_ts: 0,
    });
    for i in 0..CACHE_SERVERS + 10 {
        let server = OwnedServerName::try_from(format!("s{i}.test")).unwrap();
        cache.put(&server, Arc::clone(&stored));
        cache.attempted(&server);
    }
    assert_eq!(cache.servers.len(), CACHE_SERVERS);
    assert!(cache.attempts.len() <= CACHE_SERVERS);
    assert!(!cache.servers.contains_key(server_name!("s0.test")));
}

#[tokio::test]
async fn public_key_map_finds_the_keys_an_object_names() {
    let s = setup(&[]);
    let key = keypair("a1");
    s.fetch.serve(
        "them.test",
        response("them.test", &key, &key, now() + DAY, &[]),
    );
    let mut object: CanonicalJsonObject =
        serde_json::from_value(json!({ "sender": "@a:them.test", "body": "signed" })).unwrap();
    ruma::signatures::sign_json("them.test", &key, &mut object).unwrap();
    let map = s
        .keyring
        .public_key_map(&object, [server_name!("them.test")], at(now()))
        .await
        .unwrap();
    verify_json(&map, &object).unwrap();
    assert_eq!(
        signature_key_ids(&object, server_name!("them.test")),
        vec![id(&key)]
    );
    assert!(signature_key_ids(&object, server_name!("other.test")).is_empty());
}

#[tokio::test]
async fn two_lookups_that_need_each_others_notary_do_not_wait_for_each_other() {
    let db = Db::memory();
    let fetch = Arc::new(TableFetch {
        slow: true,
        ..TableFetch::default()
    });
    let keyring = Keyring::new(
        &db,
        server_name!("us.test").to_owned(),
        Arc::new(ServerKeys::load_or_generate(&db).unwrap()),
        vec![
            server_name!("x.test").to_owned(),
            server_name!("n.test").to_owned(),
        ],
        true,
        Arc::clone(&fetch) as Arc<dyn KeyFetch>,
    )
    .unwrap();
    let wanted: OwnedServerSigningKeyId = "ed25519:a1".try_into().unwrap();
    let both = async {
        tokio::join!(
            keyring.verify_keys(
                server_name!("x.test"),
                std::slice::from_ref(&wanted),
                at(now())
            ),
            keyring.verify_keys(
                server_name!("n.test"),
                std::slice::from_ref(&wanted),
                at(now())
            ),
        )
    };
    let (x, n) = tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .expect("no deadlock");
    assert!(x.unwrap().is_empty());
    assert!(n.unwrap().is_empty());
    assert!(keyring.in_flight.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_remote_event_verifies_with_the_keys_the_keyring_finds() {
    use crate::service::rooms::{
        remote_tests::remote_room,
        verify::{check_format, check_signatures_and_hash, keys_needed},
    };
    let s = setup(&[]);
    let room = remote_room(ruma::RoomVersionId::V10);
    let key = &room.remote.key;
    s.fetch.serve(
        "remote.test",
        response("remote.test", key, key, now() + DAY, &[]),
    );
    let raw = serde_json::value::to_raw_value(&room.power_levels.object).unwrap();
    let object = check_format(&raw, &room.version).unwrap();
    let needed = keys_needed(&object, &room.version).unwrap();
    let map = s
        .keyring
        .public_key_map(
            &object,
            needed.servers.iter().map(|server| &**server),
            needed.signed_at,
        )
        .await
        .unwrap();
    let verified = check_signatures_and_hash(object, &room.version, &map).unwrap();
    assert_eq!(verified.event_id, room.power_levels.event_id);
    assert_eq!(s.fetch.direct_calls(), 1);
}
