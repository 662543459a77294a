//! Push rules through raw HTTP, the way matrix-nio 0.26 calls them (the access token in the
//! query, every path segment percent-encoded): every endpoint for every kind, the
//! server-default `.m.rule.*` ids, `before`/`after`, the errors, and `m.push_rules` in
//! `/sync` (client-server API, "Push Rules: API" and "Push Rules: Events").

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error};

/// A segment percent-encoded as Python's `urllib.parse.quote(segment, safe="")` does.
fn quote(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A push-rule request as matrix-nio sends it: `/pushrules/global/{kind}/{rule}[/{attr}]`
/// with the token as `access_token` and `query` appended.
async fn nio(
    server: &TestServer,
    token: &str,
    method: Method,
    (kind, rule_id): (&str, &str),
    attr: Option<&str>,
    query: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut path = format!(
        "/_matrix/client/v3/pushrules/global/{}/{}",
        quote(kind),
        quote(rule_id)
    );
    if let Some(attr) = attr {
        path.push('/');
        path.push_str(attr);
    }
    path.push_str(&format!("?access_token={token}{query}"));
    server.request(method, &path, None, body).await
}

/// The rule ids of one kind, in priority order.
async fn rule_ids(server: &TestServer, token: &str, kind: &str) -> Vec<String> {
    let (status, rules) = server
        .client_api(token, Method::GET, "/pushrules/", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rules}");
    rules["global"][kind]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|rule| rule["rule_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `m.push_rules` from a sync's global account data.
fn push_rules_in(sync: &Value) -> Option<&Value> {
    sync["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|event| event["type"] == "m.push_rules")
        .map(|event| &event["content"])
}

fn rule<'a>(rules: &'a Value, kind: &str, rule_id: &str) -> &'a Value {
    rules["global"][kind]
        .as_array()
        .and_then(|rules| rules.iter().find(|rule| rule["rule_id"] == rule_id))
        .unwrap_or_else(|| panic!("no {kind} rule {rule_id} in {rules}"))
}

#[tokio::test]
async fn server_default_rules_can_be_read_enabled_and_given_actions() {
    let server = TestServer::start();
    let token = server.register("dora", "pw pw pw").await;
    for kind in ["override", "underride"] {
        let defaults = rule_ids(&server, &token, kind).await;
        assert!(
            defaults.iter().all(|id| id.starts_with('.')),
            "{defaults:?}"
        );
        assert!(!defaults.is_empty());
        for rule_id in defaults {
            let (status, rule) = nio(
                &server,
                &token,
                Method::GET,
                (kind, &rule_id),
                None,
                "",
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{rule_id}: {rule}");
            assert_eq!(rule["rule_id"], rule_id.as_str());
            assert_eq!(rule["default"], true);
            let was_enabled = rule["enabled"].as_bool().unwrap();

            let toggled = json!({ "enabled": !was_enabled });
            let response = nio(
                &server,
                &token,
                Method::PUT,
                (kind, &rule_id),
                Some("enabled"),
                "",
                Some(toggled),
            )
            .await;
            assert_eq!(response.0, StatusCode::OK, "{rule_id}: {}", response.1);
            let (_, enabled) = nio(
                &server,
                &token,
                Method::GET,
                (kind, &rule_id),
                Some("enabled"),
                "",
                None,
            )
            .await;
            assert_eq!(enabled, json!({ "enabled": !was_enabled }), "{rule_id}");

            let actions = json!(["notify", { "set_tweak": "sound", "value": "ping" }]);
            let response = nio(
                &server,
                &token,
                Method::PUT,
                (kind, &rule_id),
                Some("actions"),
                "",
                Some(json!({ "actions": actions })),
            )
            .await;
            assert_eq!(response.0, StatusCode::OK, "{rule_id}: {}", response.1);
            let (status, read) = nio(
                &server,
                &token,
                Method::GET,
                (kind, &rule_id),
                Some("actions"),
                "",
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{rule_id}: {read}");
            assert_eq!(read, json!({ "actions": actions }), "{rule_id}");

            // Still a server-default rule: it cannot be replaced or deleted.
            let replace = json!({ "actions": [], "conditions": [] });
            assert_error(
                &nio(
                    &server,
                    &token,
                    Method::PUT,
                    (kind, &rule_id),
                    None,
                    "",
                    Some(replace),
                )
                .await,
                StatusCode::BAD_REQUEST,
                "M_INVALID_PARAM",
            );
            assert_error(
                &nio(
                    &server,
                    &token,
                    Method::DELETE,
                    (kind, &rule_id),
                    None,
                    "",
                    None,
                )
                .await,
                StatusCode::NOT_FOUND,
                "M_NOT_FOUND",
            );
            let (_, rule) = nio(
                &server,
                &token,
                Method::GET,
                (kind, &rule_id),
                None,
                "",
                None,
            )
            .await;
            assert_eq!(rule["default"], true, "{rule}");
            assert_eq!(rule["enabled"], !was_enabled, "{rule}");
            assert_eq!(rule["actions"], actions, "{rule}");
        }
    }
}

#[tokio::test]
async fn every_kind_supports_every_endpoint() {
    let server = TestServer::start();
    let token = server.register("kim", "pw pw pw").await;
    let condition = json!([{ "kind": "event_match", "key": "content.body", "pattern": "kim" }]);
    let cases = [
        (
            "override",
            "no_bots",
            json!({ "actions": [], "conditions": condition }),
        ),
        (
            "underride",
            "quiet",
            json!({ "actions": ["notify"], "conditions": condition }),
        ),
        (
            "content",
            "cake",
            json!({ "actions": ["notify"], "pattern": "cake*" }),
        ),
        ("room", "!ROOM:localhost", json!({ "actions": ["notify"] })),
        ("sender", "@bot:localhost", json!({ "actions": [] })),
    ];
    for (kind, rule_id, body) in cases {
        let response = nio(
            &server,
            &token,
            Method::PUT,
            (kind, rule_id),
            None,
            "",
            Some(body.clone()),
        )
        .await;
        assert_eq!(response.0, StatusCode::OK, "{kind}: {}", response.1);
        assert_eq!(response.1, json!({}));

        let (status, rule) = nio(
            &server,
            &token,
            Method::GET,
            (kind, rule_id),
            None,
            "",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{kind}: {rule}");
        assert_eq!(rule["rule_id"], rule_id);
        assert_eq!(rule["default"], false);
        assert_eq!(rule["enabled"], true, "new rules are enabled");
        assert_eq!(rule["actions"], body["actions"]);
        if kind == "content" {
            assert_eq!(rule["pattern"], "cake*");
        }
        // A user-defined rule comes before the server-default rules of its kind.
        let ids = rule_ids(&server, &token, kind).await;
        let at = ids.iter().position(|id| id == rule_id).unwrap();
        let first_default = ids
            .iter()
            .position(|id| id.starts_with('.') && id != ".m.rule.master");
        assert!(
            first_default.is_none_or(|default| at < default),
            "{kind}: {ids:?}"
        );

        let off = json!({ "enabled": false });
        let response = nio(
            &server,
            &token,
            Method::PUT,
            (kind, rule_id),
            Some("enabled"),
            "",
            Some(off),
        )
        .await;
        assert_eq!(response.0, StatusCode::OK, "{kind}: {}", response.1);
        let (_, enabled) = nio(
            &server,
            &token,
            Method::GET,
            (kind, rule_id),
            Some("enabled"),
            "",
            None,
        )
        .await;
        assert_eq!(enabled["enabled"], false, "{kind}");

        let actions = json!(["notify", { "set_tweak": "highlight" }]);
        let response = nio(
            &server,
            &token,
            Method::PUT,
            (kind, rule_id),
            Some("actions"),
            "",
            Some(json!({ "actions": actions })),
        )
        .await;
        assert_eq!(response.0, StatusCode::OK, "{kind}: {}", response.1);
        let (_, read) = nio(
            &server,
            &token,
            Method::GET,
            (kind, rule_id),
            Some("actions"),
            "",
            None,
        )
        .await;
        assert_eq!(read["actions"], actions, "{kind}");

        // Replacing the rule keeps it disabled (spec: only creation enables).
        let response = nio(
            &server,
            &token,
            Method::PUT,
            (kind, rule_id),
            None,
            "",
            Some(body),
        )
        .await;
        assert_eq!(response.0, StatusCode::OK, "{kind}: {}", response.1);
        let (_, enabled) = nio(
            &server,
            &token,
            Method::GET,
            (kind, rule_id),
            Some("enabled"),
            "",
            None,
        )
        .await;
        assert_eq!(enabled["enabled"], false, "{kind}");

        let response = nio(
            &server,
            &token,
            Method::DELETE,
            (kind, rule_id),
            None,
            "",
            None,
        )
        .await;
        assert_eq!(response.0, StatusCode::OK, "{kind}: {}", response.1);
        assert_error(
            &nio(
                &server,
                &token,
                Method::GET,
                (kind, rule_id),
                None,
                "",
                None,
            )
            .await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
}

#[tokio::test]
async fn before_and_after_place_user_rules() {
    let server = TestServer::start();
    let token = server.register("bea", "pw pw pw").await;
    let put = |rule_id: &'static str, query: &'static str| {
        let server = &server;
        let token = token.clone();
        async move {
            let body = json!({ "actions": ["notify"], "pattern": rule_id });
            nio(
                server,
                &token,
                Method::PUT,
                ("content", rule_id),
                None,
                query,
                Some(body),
            )
            .await
        }
    };
    assert_eq!(put("a", "").await.0, StatusCode::OK);
    // Without before/after a new rule is the most important of the user's rules.
    assert_eq!(put("b", "").await.0, StatusCode::OK);
    assert_eq!(rule_ids(&server, &token, "content").await, ["b", "a"]);
    assert_eq!(put("c", "&after=a").await.0, StatusCode::OK);
    assert_eq!(rule_ids(&server, &token, "content").await, ["b", "a", "c"]);
    assert_eq!(put("d", "&before=a").await.0, StatusCode::OK);
    assert_eq!(
        rule_ids(&server, &token, "content").await,
        ["b", "d", "a", "c"]
    );
    // Moving an existing rule.
    assert_eq!(put("b", "&after=c").await.0, StatusCode::OK);
    assert_eq!(
        rule_ids(&server, &token, "content").await,
        ["d", "a", "c", "b"]
    );

    // Overrides: user rules go after `.m.rule.master` and before the other defaults.
    let body = json!({ "actions": [], "conditions": [] });
    for (rule_id, query) in [("x", ""), ("y", "&after=x"), ("w", "&before=x")] {
        let response = nio(
            &server,
            &token,
            Method::PUT,
            ("override", rule_id),
            None,
            query,
            Some(body.clone()),
        )
        .await;
        assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    }
    let ids = rule_ids(&server, &token, "override").await;
    assert_eq!(ids[..4], [".m.rule.master", "w", "x", "y"], "{ids:?}");

    // Unknown or server-default neighbours: 400, nothing added.
    for query in [
        "&before=nope",
        "&after=nope",
        "&before=.m.rule.message",
        "&after=.m.rule.master",
    ] {
        let kind = if query.contains("master") {
            "override"
        } else {
            "underride"
        };
        let body = json!({ "actions": [], "conditions": [] });
        let response = nio(
            &server,
            &token,
            Method::PUT,
            (kind, "placed"),
            None,
            query,
            Some(body),
        )
        .await;
        assert_error(&response, StatusCode::BAD_REQUEST, "M_UNKNOWN");
        assert!(
            !rule_ids(&server, &token, kind)
                .await
                .contains(&"placed".to_owned())
        );
    }
}

#[tokio::test]
async fn push_rule_errors() {
    let server = TestServer::start();
    let token = server.register("erin", "pw pw pw").await;
    let body = json!({ "actions": ["notify"], "pattern": "x", "conditions": [] });

    // Unknown rules.
    for (method, attr, body) in [
        (Method::GET, None, None),
        (Method::DELETE, None, None),
        (Method::GET, Some("enabled"), None),
        (
            Method::PUT,
            Some("enabled"),
            Some(json!({ "enabled": true })),
        ),
        (Method::GET, Some("actions"), None),
        (Method::PUT, Some("actions"), Some(json!({ "actions": [] }))),
    ] {
        for kind in ["override", "content", "room", "sender", "underride"] {
            let response = nio(
                &server,
                &token,
                method.clone(),
                (kind, "missing"),
                attr,
                "",
                body.clone(),
            )
            .await;
            assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        }
        // A kind the spec does not know.
        let response = nio(
            &server,
            &token,
            method.clone(),
            ("postbox", "missing"),
            attr,
            "",
            body.clone(),
        )
        .await;
        assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    }
    let response = nio(
        &server,
        &token,
        Method::PUT,
        ("postbox", "x"),
        None,
        "",
        Some(body.clone()),
    )
    .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // Reserved and malformed rule ids, and bodies that do not fit the kind.
    for (kind, rule_id) in [
        ("override", ".mine"),
        ("content", "a/b"),
        ("content", "a\\b"),
    ] {
        let response = nio(
            &server,
            &token,
            Method::PUT,
            (kind, rule_id),
            None,
            "",
            Some(body.clone()),
        )
        .await;
        assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    }
    let response = nio(
        &server,
        &token,
        Method::PUT,
        ("content", "nopattern"),
        None,
        "",
        Some(json!({ "actions": [] })),
    )
    .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    // The rule id of a room rule is the room's id, of a sender rule the user's id.
    let response = nio(
        &server,
        &token,
        Method::PUT,
        ("room", "lobby"),
        None,
        "",
        Some(body.clone()),
    )
    .await;
    assert_error(&response, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // Server-default rules cannot be deleted; they stay.
    let response = nio(
        &server,
        &token,
        Method::DELETE,
        ("override", ".m.rule.master"),
        None,
        "",
        None,
    )
    .await;
    assert_error(&response, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert!(
        rule_ids(&server, &token, "override")
            .await
            .contains(&".m.rule.master".to_owned())
    );

    // `m.push_rules` is read through account data, and set only through this API.
    let path = "/user/@erin:localhost/account_data/m.push_rules";
    let (status, content) = server.client_api(&token, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(
        rule(&content, "override", ".m.rule.master")["default"],
        true
    );
    let response = server
        .client_api(&token, Method::PUT, path, Some(json!({ "global": {} })))
        .await;
    assert_eq!(response.0, StatusCode::METHOD_NOT_ALLOWED, "{}", response.1);
}

#[tokio::test]
async fn sync_carries_push_rules_initially_and_after_each_change() {
    let server = TestServer::start();
    let token = server.register("syd", "pw pw pw").await;

    // The initial sync has the whole rule set, though the user never changed a rule.
    let (status, sync) = server.client_api(&token, Method::GET, "/sync", None).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    let rules = push_rules_in(&sync).unwrap_or_else(|| panic!("no m.push_rules: {sync}"));
    assert_eq!(rule(rules, "override", ".m.rule.master")["enabled"], false);
    assert_eq!(rule(rules, "underride", ".m.rule.message")["default"], true);
    let (_, all) = server
        .client_api(&token, Method::GET, "/pushrules/", None)
        .await;
    assert_eq!(*rules, all, "the same rule set as GET /pushrules/");
    let (status, global) = server
        .client_api(&token, Method::GET, "/pushrules/global/", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{global}");
    assert_eq!(
        global, all["global"],
        "GET /pushrules/global/ is the global scope"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Nothing changed: an incremental sync does not repeat it.
    let (_, quiet) = server
        .client_api(&token, Method::GET, &format!("/sync?since={since}"), None)
        .await;
    assert!(push_rules_in(&quiet).is_none(), "{quiet}");

    // A long-poll ends as soon as a rule changes, with the new rule set.
    let poll = {
        let url = format!(
            "{}/_matrix/client/v3/sync?since={since}&timeout=20000",
            server.url
        );
        let token = token.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = crate::harness::http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sync");
            let body: Value = response.json().await.expect("JSON");
            (started.elapsed(), body)
        })
    };
    let response = nio(
        &server,
        &token,
        Method::PUT,
        ("override", ".m.rule.master"),
        Some("enabled"),
        "",
        Some(json!({ "enabled": true })),
    )
    .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    let (waited, sync) = poll.await.unwrap();
    assert!(
        waited < Duration::from_secs(15),
        "the change woke the long-poll: {waited:?}"
    );
    let rules = push_rules_in(&sync).unwrap_or_else(|| panic!("no m.push_rules: {sync}"));
    assert_eq!(
        rule(rules, "override", ".m.rule.master")["enabled"],
        true,
        "{rules}"
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Adding, changing and deleting a rule each show up in the next sync.
    let body = json!({ "actions": ["notify"], "pattern": "tea" });
    let changes = [
        (Method::PUT, None, Some(body)),
        (Method::PUT, Some("actions"), Some(json!({ "actions": [] }))),
        (Method::DELETE, None, None),
    ];
    let mut since = since;
    for (method, attr, body) in changes {
        let response = nio(
            &server,
            &token,
            method.clone(),
            ("content", "tea"),
            attr,
            "",
            body,
        )
        .await;
        assert_eq!(response.0, StatusCode::OK, "{}", response.1);
        let (_, sync) = server
            .client_api(&token, Method::GET, &format!("/sync?since={since}"), None)
            .await;
        let rules = push_rules_in(&sync).unwrap_or_else(|| panic!("no m.push_rules: {sync}"));
        let tea = rules["global"]["content"]
            .as_array()
            .and_then(|rules| rules.iter().find(|rule| rule["rule_id"] == "tea"));
        match (method, attr) {
            (Method::DELETE, _) => assert!(tea.is_none(), "{rules}"),
            (_, Some("actions")) => assert_eq!(tea.unwrap()["actions"], json!([])),
            _ => assert_eq!(tea.unwrap()["pattern"], "tea"),
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
}

/// `m.push_rules` from a sliding sync's `account_data` extension.
fn push_rules_in_extension(sync: &Value) -> Option<&Value> {
    sync["extensions"]["account_data"]["global"]
        .as_array()?
        .iter()
        .find(|event| event["type"] == "m.push_rules")
        .map(|event| &event["content"])
}

#[tokio::test]
async fn sliding_sync_carries_push_rules_initially_and_after_a_change() {
    let server = TestServer::start();
    let token = server.register("sly", "pw pw pw").await;
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let body = json!({
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
        "extensions": { "account_data": { "enabled": true } }
    });
    let sync = |pos: Option<String>| {
        let server = &server;
        let token = token.clone();
        let body = body.clone();
        async move {
            let query = pos.map_or_else(String::new, |pos| format!("?pos={pos}&timeout=0"));
            let (status, sync) = server
                .request(
                    Method::POST,
                    &format!("{path}{query}"),
                    Some(&token),
                    Some(body),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{sync}");
            sync
        }
    };

    // A new connection has the whole rule set, though the user never changed a rule.
    let first = sync(None).await;
    let rules = push_rules_in_extension(&first).unwrap_or_else(|| panic!("none: {first}"));
    assert_eq!(rule(rules, "override", ".m.rule.master")["enabled"], false);
    let pos = first["pos"].as_str().unwrap().to_owned();
    let quiet = sync(Some(pos.clone())).await;
    assert!(push_rules_in_extension(&quiet).is_none(), "{quiet}");
    let pos = quiet["pos"].as_str().map_or(pos, str::to_owned);

    let enable = json!({ "enabled": true });
    let response = nio(
        &server,
        &token,
        Method::PUT,
        ("override", ".m.rule.master"),
        Some("enabled"),
        "",
        Some(enable),
    )
    .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    let changed = sync(Some(pos)).await;
    let rules = push_rules_in_extension(&changed).unwrap_or_else(|| panic!("none: {changed}"));
    assert_eq!(rule(rules, "override", ".m.rule.master")["enabled"], true);
}
