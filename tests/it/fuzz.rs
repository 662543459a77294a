//! Malformed input never reaches a panic: a bounded, seeded stream of broken and randomly
//! mutated JSON bodies, odd path parameters and odd query strings, sent to every route the
//! router knows (`conduit::api::route_list`, built from the same table as the router). No
//! answer may be a 5xx and the server's log may show no panic.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, http};

/// A tiny deterministic PRNG (xorshift64*), so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Field names the client-server API uses, so mutated objects reach past the first check.
const FIELDS: &[&str] = &[
    "type",
    "body",
    "msgtype",
    "password",
    "identifier",
    "user",
    "auth",
    "session",
    "username",
    "device_id",
    "initial_device_display_name",
    "room_version",
    "name",
    "topic",
    "invite",
    "preset",
    "visibility",
    "room_alias_name",
    "creation_content",
    "initial_state",
    "power_level_content_override",
    "content",
    "reason",
    "score",
    "user_id",
    "displayname",
    "avatar_url",
    "device_keys",
    "one_time_keys",
    "fallback_keys",
    "master_key",
    "self_signing_key",
    "user_signing_key",
    "algorithm",
    "auth_data",
    "version",
    "rooms",
    "sessions",
    "messages",
    "presence",
    "status_msg",
    "typing",
    "timeout",
    "m.fully_read",
    "m.read",
    "thread_id",
    "event_id",
    "limit",
    "filter",
    "since",
    "server",
    "search_term",
    "search_categories",
    "room_events",
    "keys",
    "actions",
    "pattern",
    "conditions",
    "kind",
    "app_id",
    "pushkey",
    "data",
    "lang",
    "app_display_name",
    "device_display_name",
    "append",
    "room_id",
    "order",
    "lists",
    "ranges",
    "required_state",
    "timeline_limit",
    "extensions",
    "new_version",
    "logout_devices",
    "new_password",
    "devices",
    "erase",
    "room",
    "state",
    "timeline",
    "not_types",
    "types",
    "senders",
    "event_fields",
    "event_format",
    "account_data",
    "m.relates_to",
    "rel_type",
    "url",
    "info",
    "nonce",
    "mac",
    "admin",
    "token",
];

/// Strings with a meaning somewhere (ids, types, versions), and strings that break things.
/// No URL points anywhere but this machine.
fn strings(user: &str, room: &str, event: &str) -> Vec<String> {
    vec![
        String::new(),
        "m.login.password".into(),
        "m.login.token".into(),
        "m.login.dummy".into(),
        "m.id.user".into(),
        "m.text".into(),
        "m.room.message".into(),
        "m.room.member".into(),
        "m.room.canonical_alias".into(),
        "m.megolm.v1.aes-sha2".into(),
        "signed_curve25519".into(),
        "public_chat".into(),
        "join".into(),
        "leave".into(),
        "online".into(),
        "10".into(),
        "1".into(),
        "v1".into(),
        "f".into(),
        "b".into(),
        "s0_0".into(),
        "m.reference".into(),
        "m.thread".into(),
        "http".into(),
        "http://127.0.0.1:1/_matrix/push/v1/notify".into(),
        "mxc://localhost/x".into(),
        "mxc://".into(),
        "#alias:localhost".into(),
        "#:".into(),
        "@:localhost".into(),
        "!room".into(),
        "$".into(),
        "@nobody:localhost".into(),
        user.into(),
        room.into(),
        event.into(),
        "\0".into(),
        "a\0b".into(),
        "\u{feff}".into(),
        "\u{10ffff}".into(),
        "😀".repeat(50),
        "x".repeat(70 * 1024),
        "%00".into(),
        "../../etc/passwd".into(),
    ]
}

/// Nesting `depth` levels deep, as raw text (serde_json's own writer would recurse).
fn deep(depth: usize, object: bool) -> String {
    let (open, close) = if object { ("{\"a\":", "}") } else { ("[", "]") };
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}

/// JSON numbers (as text) that do not fit the types they are read into.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1e400",
    "-1e400",
    "18446744073709551616",
    "9007199254740992",
    "-9223372036854775809",
    "1.5",
    "1e-400",
    "4294967296",
    "2147483648",
];

/// A random JSON value, as text, at most `depth` levels deep.
fn value(rng: &mut Rng, pool: &[String], depth: usize) -> String {
    match rng.below(if depth == 0 { 6 } else { 9 }) {
        0 => "null".into(),
        1 => rng.pick(&["true", "false"]).to_string(),
        2 | 3 => rng.pick(NUMBERS).to_string(),
        4 | 5 => json!(rng.pick(pool)).to_string(),
        6 => {
            let n = rng.below(4);
            let items: Vec<String> = (0..n).map(|_| value(rng, pool, depth - 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => object(rng, pool, depth - 1),
    }
}

/// A random object of known field names with random values.
fn object(rng: &mut Rng, pool: &[String], depth: usize) -> String {
    let n = rng.below(6);
    let fields: Vec<String> = (0..n)
        .map(|_| {
            let key = if rng.below(8) == 0 {
                json!(rng.pick(pool)).to_string()
            } else {
                json!(rng.pick(FIELDS)).to_string()
            };
            format!("{key}:{}", value(rng, pool, depth))
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Bodies every route gets: each kind of malformed input the parser has to survive.
fn fixed_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "",
        "{}",
        "[]",
        "null",
        "5",
        "\"string\"",
        "{} trailing",
        "{\"a\":1,}",
        "{not json",
        "{\"type\":\"\\ud800\"}",
        "{\"body\":\"\\udc00x\",\"msgtype\":\"m.text\"}",
        "{\"\\u0000\":\"\\u0000\"}",
        "{\"limit\":1e400,\"timeout\":18446744073709551616}",
        "{\"type\":5,\"password\":[],\"identifier\":{}}",
        "{\"auth\":{\"type\":\"m.login.dummy\"}}",
        "{\"auth\":{}}",
        "{\"auth\":5}",
    ]
    .iter()
    .map(|body| body.as_bytes().to_vec())
    .collect();
    bodies.push(deep(10_000, false).into_bytes());
    bodies.push(deep(10_000, true).into_bytes());
    bodies.push(b"{\"body\":\"\xff\xfe\xc0\x80\",\"msgtype\":\"m.text\"}".to_vec());
    bodies.push(format!("{{\"type\":{}}}", json!("x".repeat(70 * 1024))).into_bytes());
    bodies
}

/// A random body: usually an object of known fields, sometimes broken on purpose.
fn random_body(rng: &mut Rng, pool: &[String]) -> Vec<u8> {
    let body = object(rng, pool, 3);
    match rng.below(10) {
        // Cut short.
        0 if body.len() > 2 => body.as_bytes()[..rng.below(body.len())].to_vec(),
        // Trailing garbage.
        1 => format!("{body}]").into_bytes(),
        // Wrapped in an array.
        2 => format!("[{body}]").into_bytes(),
        _ => body.into_bytes(),
    }
}

/// Query strings that do not parse, or parse to values out of range.
fn random_query(rng: &mut Rng) -> String {
    const KEYS: &[&str] = &[
        "limit",
        "from",
        "to",
        "dir",
        "filter",
        "since",
        "server",
        "via",
        "ts",
        "event_id",
        "include",
        "recurse",
        "max_depth",
        "suggested_only",
        "allow_remote",
        "width",
        "height",
        "method",
        "animated",
        "url",
        "membership",
        "not_membership",
        "at",
        "full_state",
        "set_presence",
        "version",
        "server_name",
        "user_id",
        "order_by",
        "next_batch",
    ];
    const VALUES: &[&str] = &[
        "",
        "-1",
        "0",
        "99999999999999999999999",
        "1e400",
        "b",
        "f",
        "x",
        "%00",
        "%FF%FE",
        "%ED%A0%80",
        "%7B",
        "%7B%7D",
        "%7B%22limit%22%3A-1%7D",
        "%5B%5D",
        "true",
        "yes",
        "scale",
        "crop",
        "s0_0",
        "%40nobody%3Alocalhost",
        "%21room",
        "join",
    ];
    let n = 1 + rng.below(3);
    let pairs: Vec<String> = (0..n)
        .map(|_| format!("{}={}", rng.pick(KEYS), rng.pick(VALUES)))
        .collect();
    pairs.join("&")
}

/// Path parameters: a plausible value for the placeholder, or an odd one.
fn path_value(rng: &mut Rng, name: &str, ids: &Ids) -> String {
    const ODD: &[&str] = &[
        "x",
        "%00",
        "%FF%FE",
        "%ED%A0%80",
        "..",
        "%2F",
        "%20",
        "!",
        "@",
        "$",
        "#",
        "%F0%9F%98%80",
    ];
    if rng.below(3) == 0 {
        return if rng.below(8) == 0 {
            "y".repeat(5000)
        } else {
            rng.pick(ODD).to_string()
        };
    }
    let encoded = |s: &str| {
        s.replace('!', "%21")
            .replace('@', "%40")
            .replace(':', "%3A")
    };
    match name {
        "room_id" => encoded(&ids.room),
        "room_id_or_alias" | "room_alias" | "alias" => {
            if rng.below(2) == 0 {
                encoded(&ids.room)
            } else {
                "%23fuzz%3Alocalhost".into()
            }
        }
        "event_id" => ids.event.replace('$', "%24"),
        "user_id" => encoded(&ids.user),
        "device_id" => ids.device.clone(),
        "event_type" | "type" => "m.room.message".into(),
        "state_key" => String::new(),
        "server" | "server_name" => "localhost".into(),
        "scope" => "global".into(),
        "kind" => "override".into(),
        "rule_id" => ".m.rule.master".into(),
        "receipt_type" => "m.read".into(),
        "rel_type" => "m.thread".into(),
        "version" => "1".into(),
        _ => format!("fuzz{}", rng.below(1000)),
    }
}

struct Ids {
    user: String,
    device: String,
    room: String,
    event: String,
}

/// Fills `{placeholder}`s in a route template.
fn fill(rng: &mut Rng, template: &str, ids: &Ids) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("closed placeholder");
        let name = rest[start + 1..end].trim_start_matches('*');
        out.push_str(&path_value(rng, name, ids));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Routes that end the session go last, so the token lives for the rest.
fn destructive(method: &Method, path: &str) -> bool {
    path.ends_with("/logout")
        || path.ends_with("/logout/all")
        || path.ends_with("/account/deactivate")
        || path.ends_with("/account/password")
        || (*method == Method::DELETE && path.contains("/devices/"))
        || path.ends_with("/delete_devices")
}

#[tokio::test]
async fn malformed_input_never_panics_or_fails_with_5xx() {
    let server = TestServer::start();
    let token = server.register("fuzzer", "fuzz pass word").await;
    let (_, whoami) = server.whoami(&token).await;
    let (status, room) = server
        .client_api(&token, Method::POST, "/createRoom", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{room}");
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let (status, sent) = server
        .client_api(
            &token,
            Method::PUT,
            &format!("/rooms/{room_id}/send/m.room.message/t0"),
            Some(json!({ "msgtype": "m.text", "body": "hi" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let ids = Ids {
        user: whoami["user_id"].as_str().unwrap().to_owned(),
        device: whoami["device_id"].as_str().unwrap().to_owned(),
        room: room_id,
        event: sent["event_id"].as_str().unwrap().to_owned(),
    };
    let pool = strings(&ids.user, &ids.room, &ids.event);

    let mut routes = conduit::api::route_list();
    routes.sort_by_key(|(method, path)| destructive(method, path));
    assert!(routes.len() > 100, "the router lists its routes");

    let fixed = fixed_bodies();
    let client = http();
    let mut rng = Rng(0x5EED_CAFE_F00D_D00D);
    let mut failures = Vec::new();
    let mut sent = 0;
    for (method, template) in &routes {
        let method = Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let uploads = template.contains("/upload");
        // Every fixed body once (uploads store each body: a few suffice), then random ones.
        let fixed_count = if uploads { 3 } else { fixed.len() };
        for round in 0..fixed_count + 6 {
            let body = match fixed.get(round) {
                Some(body) if round < fixed_count => body.clone(),
                _ => random_body(&mut rng, &pool),
            };
            let mut path = fill(&mut rng, template, &ids);
            let mut query = if rng.below(2) == 0 {
                random_query(&mut rng)
            } else {
                String::new()
            };
            // A long-poll must not wait: whatever else the query says, the timeout is 0.
            if template.contains("sync") {
                query.push_str("&timeout=0");
            }
            if !query.is_empty() {
                path = format!("{path}?{query}");
            }
            let mut request = client
                .request(method.clone(), format!("{}{path}", server.url))
                .header("content-type", "application/json")
                .body(body.clone());
            if rng.below(12) != 0 {
                request = request.bearer_auth(&token);
            }
            sent += 1;
            let response = match request.send().await {
                Ok(response) => response,
                // A server that answers before reading the whole body (a bad path, a missing
                // token) may close the connection while the body is still being written. That
                // is no failure, as long as the server still serves.
                Err(error) => {
                    let (status, _) = server
                        .request(Method::GET, "/_matrix/client/versions", None, None)
                        .await;
                    assert_eq!(status, StatusCode::OK, "after {method} {path}: {error}");
                    continue;
                }
            };
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status.is_server_error() {
                failures.push(format!(
                    "{status} {method} {path} body={:.200} -> {text:.300}",
                    String::from_utf8_lossy(&body)
                ));
            } else if status.is_client_error() {
                let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                // A user-interactive auth 401 carries `flows` instead of an errcode.
                let uia = status == StatusCode::UNAUTHORIZED && json["flows"].is_array();
                if !json["errcode"].is_string() && !uia {
                    failures.push(format!(
                        "{status} without a Matrix error body: {method} {path} -> {text:.300}"
                    ));
                }
            }
        }
    }
    let log = server.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    assert!(
        failures.is_empty() && panics.is_empty(),
        "{} of {sent} requests failed:\n{}\npanics in the log:\n{}",
        failures.len(),
        failures.join("\n"),
        panics.join("\n")
    );
    // The server still serves, and the stream was what it claims to be.
    assert!(sent > 2000, "only {sent} requests sent");
    let (status, _) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
}
