//! A database written by an older build, opened by the binary: the schema-1 fixture
//! (`tests/fixtures/schema1.json`, see its README) is loaded into the database directory of
//! a stopped server, which upgrades it at start and must serve the old `/messages` tokens
//! as before.

use conduit::storage::dump::{Dump, load_into_directory};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::TestServer;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[tokio::test]
async fn a_schema1_database_serves_its_old_tokens() {
    let dump = Dump::parse(&fixture("schema1.json")).expect("the fixture parses");
    let expect: Value = serde_json::from_slice(&fixture("schema1-expect.json")).unwrap();

    // A server for the fixture's name; its new database is replaced by the fixture.
    let mut server = TestServer::with_env(&[("CONDUIT_SERVER_NAME", "example.org")]);
    // Its own database is thrown away, so how it stops does not matter.
    server.kill9();
    for entry in std::fs::read_dir(server.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    load_into_directory(server.data_dir(), 8 << 20, &dump).unwrap();
    server.restart();
    assert!(
        server.log().contains("database upgraded"),
        "{}",
        server.log()
    );

    let token = expect["accounts"]["@alice:example.org"]["access_token"]
        .as_str()
        .unwrap();
    for (index, room) in expect["rooms"].as_array().unwrap().iter().enumerate() {
        let room_id = room["room_id"].as_str().unwrap();
        for page in room["pages"].as_array().unwrap() {
            let (from, dir) = (
                page["from"].as_str().unwrap(),
                page["dir"].as_str().unwrap(),
            );
            let path = format!("/rooms/{room_id}/messages?dir={dir}&from={from}&limit=7");
            let (status, body) = server.client_api(token, Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            let events: Vec<&Value> = body["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|event| &event["event_id"])
                .collect();
            let expected: Vec<&Value> = page["events"].as_array().unwrap().iter().collect();
            assert_eq!(events, expected, "{path}");
            // The server leaves `end` out once the start of the room is reached.
            if !body["end"].is_null() {
                assert_eq!(body["end"], page["end"], "{path}");
            }
        }

        // A new message comes first on the newest page, before the old newest event.
        let (status, sent) = server
            .client_api(
                token,
                Method::PUT,
                &format!("/rooms/{room_id}/send/m.room.message/after-upgrade-{index}"),
                Some(serde_json::json!({ "msgtype": "m.text", "body": "after the upgrade" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        let path = format!("/rooms/{room_id}/messages?dir=b&limit=2");
        let (status, body) = server.client_api(token, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["chunk"][0]["event_id"], sent["event_id"]);
        assert_eq!(body["chunk"][1]["event_id"], room["pages"][0]["events"][0]);
    }
}
