//! Incoming PDUs through `receive_transaction`, with a room made on `remote.test` whose
//! keys the keyring finds: accepted, stored redacted on a bad content hash, rejected,
//! dropped on a bad signature, ignored for unknown rooms, and nothing stored when what an
//! event needs cannot be fetched (federation is off here, so nothing is).

use std::{collections::BTreeMap, sync::Arc};

use futures_util::future::BoxFuture;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedServerName, OwnedServerSigningKeyId, RoomVersionId, ServerName,
    api::federation::discovery::{
        ServerSigningKeys, get_remote_server_keys_batch::v2::QueryCriteria,
    },
    serde::{Base64, Raw},
    server_name,
};
use serde_json::{json, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    service::{
        Services,
        federation::keys::{KeyFetch, Keyring},
        rooms::{
            accept::{Place, StateBefore},
            check::Verdict,
            remote_tests::{RemoteRoom, remote_room},
        },
    },
    storage::Db,
};

/// Serves `remote.test`'s key document.
struct RemoteKeys(CanonicalJsonObject);

impl KeyFetch for RemoteKeys {
    fn server_keys<'a>(
        &'a self,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<Raw<ServerSigningKeys>>> {
        let found = (server == "remote.test")
            .then(|| Raw::from_json(serde_json::value::to_raw_value(&self.0).expect("JSON")));
        Box::pin(async move { found.ok_or_else(|| Error::internal("unreachable")) })
    }

    fn notary_query<'a>(
        &'a self,
        _notary: &'a ServerName,
        _criteria: &'a BTreeMap<OwnedServerName, BTreeMap<OwnedServerSigningKeyId, QueryCriteria>>,
    ) -> BoxFuture<'a, Result<Vec<Raw<ServerSigningKeys>>>> {
        Box::pin(async { Err(Error::internal("no notaries")) })
    }
}

/// Services that know `room` (accepted as live events) and find `remote.test`'s keys.
async fn setup(version: RoomVersionId) -> (Arc<Services>, RemoteRoom) {
    let db = Db::memory();
    let mut services = Services::build(crate::config::tests_support::config(), db.clone()).unwrap();
    let room = remote_room(version);
    let key = &room.remote.key;
    let now = u64::from(MilliSecondsSinceUnixEpoch::now().get());
    let mut document: CanonicalJsonObject = serde_json::from_value(json!({
        "server_name": "remote.test",
        "verify_keys": { format!("ed25519:{}", key.version()): {
            "key": Base64::<ruma::serde::base64::Standard, _>::new(key.public_key().to_vec()).encode()
        } },
        "old_verify_keys": {},
        "valid_until_ts": now + 24 * 60 * 60 * 1000,
    }))
    .unwrap();
    ruma::signatures::sign_json("remote.test", key, &mut document).unwrap();
    let keyring = Keyring::new(
        &db,
        server_name!("example.org").to_owned(),
        Arc::clone(&services.server_keys),
        Vec::new(),
        true,
        Arc::new(RemoteKeys(document)),
    )
    .unwrap();
    Arc::get_mut(&mut services).expect("not shared yet").keyring = keyring;
    for event in room.events() {
        services
            .rooms
            .accept(event.clone(), Place::Live, StateBefore::default())
            .await
            .unwrap();
    }
    (services, room)
}

fn raw(object: &CanonicalJsonObject) -> Box<RawJsonValue> {
    serde_json::value::to_raw_value(object).unwrap()
}

fn message(room: &RemoteRoom, body: &str) -> CanonicalJsonObject {
    room.remote.event(
        &room.version,
        Some(&room.room_id),
        &room.dave,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": body }),
        &[room.tip()],
        &room.message_auths(&room.dave_join),
    )
}

async fn send(
    services: &Services,
    txn: &str,
    pdus: &[CanonicalJsonObject],
) -> BTreeMap<OwnedEventId, std::result::Result<(), String>> {
    let raws: Vec<_> = pdus.iter().map(raw).collect();
    services
        .receive_transaction(server_name!("remote.test"), txn, &raws, &[])
        .await
        .unwrap()
}

fn id_of(room: &RemoteRoom, object: &CanonicalJsonObject) -> OwnedEventId {
    let hash = ruma::signatures::reference_hash(object, &room.version.rules().unwrap()).unwrap();
    OwnedEventId::try_from(format!("${hash}")).unwrap()
}

#[tokio::test]
async fn a_valid_pdu_is_accepted_into_the_timeline() {
    for version in [RoomVersionId::V10, RoomVersionId::V12] {
        let (services, room) = setup(version).await;
        let event = message(&room, "hello from remote.test");
        let id = id_of(&room, &event);
        let results = send(&services, "t1", std::slice::from_ref(&event)).await;
        assert_eq!(results.get(&id), Some(&Ok(())), "{results:?}");
        assert!(
            services.rooms.pos_of(&id).unwrap().is_some(),
            "in the timeline"
        );
        assert_eq!(
            services.rooms.extremities(&room.room_id).unwrap(),
            vec![id.clone()]
        );
        // The same transaction again: applied once.
        let again = send(&services, "t1", &[event]).await;
        assert!(again.is_empty());
    }
}

#[tokio::test]
async fn a_pdu_with_a_wrong_content_hash_is_stored_redacted() {
    let (services, room) = setup(RoomVersionId::V10).await;
    let mut event = message(&room, "the original");
    // Changed after signing: the signature (over the redacted form) still holds, the
    // content hash does not.
    let Some(CanonicalJsonValue::Object(content)) = event.get_mut("content") else {
        panic!("content");
    };
    content.insert("body".into(), CanonicalJsonValue::String("tampered".into()));
    let id = id_of(&room, &event);
    let results = send(&services, "t1", &[event]).await;
    assert_eq!(results.get(&id), Some(&Ok(())));
    let stored = services.rooms.pdu(&id).unwrap().unwrap();
    assert_eq!(stored.content_value(), json!({}), "redacted");
}

#[tokio::test]
async fn a_pdu_that_fails_auth_is_rejected_and_never_shown() {
    let (services, room) = setup(RoomVersionId::V10).await;
    // Dave (power 0) makes himself admin.
    let grab = room.remote.event(
        &room.version,
        Some(&room.room_id),
        &room.dave,
        "m.room.power_levels",
        Some(""),
        json!({ "users": { room.dave.as_str(): 100 } }),
        &[room.tip()],
        &[&room.create, &room.power_levels, &room.dave_join],
    );
    let id = id_of(&room, &grab);
    let results = send(&services, "t1", &[grab]).await;
    assert!(
        matches!(results.get(&id), Some(Err(reason)) if reason.starts_with("rejected")),
        "{results:?}"
    );
    assert!(matches!(
        services.rooms.verdict(&id).unwrap(),
        Verdict::Rejected(_)
    ));
    assert!(services.rooms.client_pdu(&id).unwrap().is_none());
    assert!(services.rooms.pos_of(&id).unwrap().is_none());
    // The room is unharmed: the next valid event is accepted on top of the old tip.
    let next = message(&room, "still fine");
    let next_id = id_of(&room, &next);
    assert_eq!(
        send(&services, "t2", &[next]).await.get(&next_id),
        Some(&Ok(()))
    );
}

#[tokio::test]
async fn a_pdu_with_a_bad_signature_is_dropped() {
    let (services, room) = setup(RoomVersionId::V10).await;
    let impostor = crate::service::rooms::remote_tests::Remote::with_key(
        crate::service::rooms::remote_tests::new_key("r1"),
    );
    let event = impostor.event(
        &room.version,
        Some(&room.room_id),
        &room.dave,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "not really dave" }),
        &[room.tip()],
        &room.message_auths(&room.dave_join),
    );
    let id = id_of(&room, &event);
    let results = send(&services, "t1", &[event]).await;
    assert!(matches!(results.get(&id), Some(Err(_))), "{results:?}");
    assert!(services.rooms.pdu(&id).unwrap().is_none(), "nothing stored");
}

#[tokio::test]
async fn pdus_for_unknown_rooms_and_unfillable_gaps_store_nothing() {
    let (services, room) = setup(RoomVersionId::V10).await;
    // A room this server is not in.
    let other = remote_room(RoomVersionId::V10);
    let foreign = other.remote.event(
        &other.version,
        Some(ruma::room_id!("!elsewhere:remote.test")),
        &other.dave,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "?" }),
        &[other.tip()],
        &other.message_auths(&other.dave_join),
    );
    // A message whose prev event nobody can fetch (federation is off here).
    let unseen = message(&room, "the one before");
    let unseen_verified = room.remote.verified(&unseen, &room.version);
    let after_gap = room.remote.event(
        &room.version,
        Some(&room.room_id),
        &room.dave,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "after a gap" }),
        &[&unseen_verified],
        &room.message_auths(&room.dave_join),
    );
    let gap_id = id_of(&room, &after_gap);
    let results = send(&services, "t1", &[foreign, after_gap]).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(matches!(results.get(&gap_id), Some(Err(_))));
    assert!(services.rooms.pdu(&gap_id).unwrap().is_none());
    assert_eq!(
        services.rooms.extremities(&room.room_id).unwrap(),
        vec![room.tip().event_id.clone()]
    );
}

#[tokio::test]
async fn pdus_from_a_server_the_room_acl_denies_are_dropped() {
    let (services, room) = setup(RoomVersionId::V10).await;
    let acl = room.remote.verified(
        &room.remote.event(
            &room.version,
            Some(&room.room_id),
            &room.carol,
            "m.room.server_acl",
            Some(""),
            json!({ "allow": ["*"], "deny": ["remote.test"], "allow_ip_literals": false }),
            &[room.tip()],
            &[&room.create, &room.power_levels, &room.carol_join],
        ),
        &room.version,
    );
    services
        .rooms
        .accept(acl.clone(), Place::Live, StateBefore::default())
        .await
        .unwrap();
    let event = room.remote.event(
        &room.version,
        Some(&room.room_id),
        &room.dave,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "after the ACL" }),
        &[&acl],
        &room.message_auths(&room.dave_join),
    );
    let id = id_of(&room, &event);
    let results = send(&services, "t1", &[event]).await;
    assert!(
        matches!(results.get(&id), Some(Err(reason)) if reason.contains("ACL")),
        "{results:?}"
    );
    assert!(services.rooms.pdu(&id).unwrap().is_none());
}
