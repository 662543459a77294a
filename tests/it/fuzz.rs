//! Malformed input never reaches a panic: a bounded, seeded stream of broken and randomly
//! mutated JSON bodies, odd path parameters and odd query strings, sent to every route the
//! router knows (`conduit::api::route_list`, built from the same table as the router). No
//! answer may be a 5xx and the server's log may show no panic. The stream is the same on
//! every run (`FUZZ_SEED=<number>` explores another one).

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
        "https://127.0.0.1:1/_matrix/push/v1/notify".into(),
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
        "access_token",
        "org.matrix.msc2716.batch_id",
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
        "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1e400%7D%7D%7D",
        "%7B%22room%22%3A%7B%22rooms%22%3A%5B%22%21x%22%2C5%5D%2C%22not_rooms%22%3Anull%7D%7D",
        "%7B%22event_fields%22%3A%5B%22a.b.c%22%2C%22%22%2C%22.%22%2C%22%5C%5C.%22%5D%7D",
        "%7B%22room%22%3A%7B%22state%22%3A%7B%22lazy_load_members%22%3Atrue%2C%22include_redundant_members%22%3A%22yes%22%7D%7D%7D",
        "%7B%22presence%22%3A%7B%22types%22%3A%5B%5D%7D%2C%22account_data%22%3A%7B%22limit%22%3A0%7D%7D",
        "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22senders%22%3A%5B%22%40a%3Ab%22%5D%2C%22not_types%22%3A%5B%22%2A%22%5D%2C%22contains_url%22%3Atrue%7D%7D%7D",
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

/// Path parameters: a plausible value for the placeholder, or (one time in `odd`, if any) an
/// odd one.
fn path_value(rng: &mut Rng, name: &str, ids: &Ids, odd: Option<usize>) -> String {
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
    if odd.is_some_and(|odd| rng.below(odd) == 0) {
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
        "room_alias" | "alias" => "%23fuzz%3Alocalhost".into(),
        "room_id_or_alias" => {
            if rng.below(2) == 0 {
                encoded(&ids.room)
            } else {
                "%23fuzz%3Alocalhost".into()
            }
        }
        "event_id" => ids.event.replace('$', "%24"),
        "user_id" => encoded(&ids.user),
        "device_id" => ids.device.clone(),
        // Not `m.room.member` (the fuzzer would leave its room before the end).
        "event_type" | "type" => rng
            .pick(&[
                "m.room.message",
                "m.room.name",
                "m.room.topic",
                "m.room.canonical_alias",
                "m.room.join_rules",
                "m.room.history_visibility",
                "m.room.power_levels",
                "m.room.encryption",
                "m.room.pinned_events",
                "m.reaction",
            ])
            .to_string(),
        "state_key" => String::new(),
        "server" | "server_name" => "localhost".into(),
        "scope" => "global".into(),
        "kind" => rng
            .pick(&["override", "content", "room", "sender", "underride"])
            .to_string(),
        "rule_id" => rng.pick(&[".m.rule.master", "fuzzrule"]).to_string(),
        "field" => rng.pick(&["displayname", "avatar_url"]).to_string(),
        "receipt_type" => "m.read".into(),
        "rel_type" => "m.thread".into(),
        "version" => ids.backup.clone(),
        _ => format!("fuzz{}", rng.below(1000)),
    }
}

/// A route template with every `{placeholder}` as `*`: `/rooms/*/send/*/*`.
fn shape(template: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in template.chars() {
        match c {
            '{' => inside = true,
            '}' => {
                inside = false;
                out.push('*');
            }
            _ if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

/// A valid body for the routes that take one, to mutate one part at a time: these reach
/// past the first checks into the handlers and services.
fn seed(method: &Method, template: &str, ids: &Ids) -> Option<Value> {
    let (user, device, room, event) = (&ids.user, &ids.device, &ids.room, &ids.event);
    let friend = &ids.friend;
    let auth = json!({
        "type": "m.login.password", "session": "s",
        "identifier": { "type": "m.id.user", "user": "fuzzer" }, "password": PASSWORD,
    });
    let device_keys = json!({
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "abc", format!("ed25519:{device}"): "abc" },
        "signatures": { user: { format!("ed25519:{device}"): "sig" } },
    });
    let filter = json!({
        "room": {
            "timeline": { "limit": 10, "types": ["m.room.message"], "not_senders": [user] },
            "state": { "lazy_load_members": true, "include_redundant_members": false },
            "rooms": [room], "include_leave": true,
        },
        "presence": { "not_types": ["*"] }, "event_fields": ["content.body"],
        "event_format": "client",
    });
    let shape = shape(template);
    // The path after its prefix and version (`v3/`, or `unstable/<feature>/`).
    let tail = match shape
        .strip_prefix("/_matrix/client/")
        .or_else(|| shape.strip_prefix("/_matrix/media/"))
        .and_then(|versioned| versioned.split_once('/'))
    {
        Some(("unstable", rest)) if rest.split('/').next().is_some_and(|s| s.contains('.')) => {
            rest.split_once('/').map_or("", |(_, rest)| rest)
        }
        Some((_, rest)) => rest,
        None => &shape,
    };
    let seed = match (method.as_str(), tail) {
        ("POST", "createRoom") => json!({
            "name": "n", "topic": "t", "preset": "public_chat", "visibility": "private",
            "room_alias_name": "fuzzalias", "invite": [friend], "is_direct": false,
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "public" },
            }],
            "power_level_content_override": { "users_default": 0, "events": { "m.room.name": 50 } },
            "creation_content": { "m.federate": true }, "room_version": "12",
        }),
        ("PUT", "rooms/*/send/*/*") => json!({
            "msgtype": "m.text", "body": "hi", "format": "org.matrix.custom.html",
            "formatted_body": "<b>hi</b>",
            "m.relates_to": {
                "rel_type": "m.thread", "event_id": event, "is_falling_back": true,
                "m.in_reply_to": { "event_id": event },
            },
        }),
        ("PUT", "rooms/*/state/*/*" | "rooms/*/state/*" | "rooms/*/state/*/") => json!({
            // Everyone at 100, so that one mutation cannot lock the fuzzer out of its room.
            "users": { user: 100 }, "users_default": 100, "events": { "m.room.name": 50 },
            "ban": 50, "kick": 50, "redact": 50, "state_default": 50, "events_default": 0,
            "notifications": { "room": 50 }, "join_rule": "public", "name": "n",
            "alias": "#fuzz:localhost", "history_visibility": "shared", "membership": "join",
            "topic": "t", "algorithm": "m.megolm.v1.aes-sha2", "pinned": [event],
        }),
        ("POST", "login") => json!({
            "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "fuzzer" },
            "password": PASSWORD, "device_id": "D",
            "initial_device_display_name": "n", "refresh_token": true,
        }),
        ("POST", "register") => json!({
            "username": "fuzzreg", "password": "p", "auth": { "type": "m.login.dummy" },
            "device_id": "D", "inhibit_login": true,
        }),
        ("POST", "keys/upload") => json!({
            "device_keys": device_keys,
            "one_time_keys": { "signed_curve25519:AAAA": {
                "key": "k", "signatures": { user: { format!("ed25519:{device}"): "s" } },
            } },
            "fallback_keys": { "signed_curve25519:BBBB": { "key": "k", "fallback": true } },
        }),
        ("POST", "keys/query") => json!({ "device_keys": { user: [] }, "timeout": 100 }),
        ("POST", "keys/claim") => {
            json!({ "one_time_keys": { user: { device: "signed_curve25519" } }, "timeout": 100 })
        }
        ("POST", "keys/device_signing/upload") => json!({
            "master_key": { "user_id": user, "usage": ["master"], "keys": { "ed25519:abc": "abc" } },
            "self_signing_key": {
                "user_id": user, "usage": ["self_signing"], "keys": { "ed25519:def": "def" },
            },
            "auth": auth,
        }),
        ("POST", "keys/signatures/upload") => json!({ user: { device: device_keys } }),
        ("POST" | "PUT", "room_keys/version" | "room_keys/version/*") => json!({
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "version": ids.backup,
            "auth_data": { "public_key": "abc", "signatures": {} },
        }),
        ("PUT", "room_keys/keys" | "room_keys/keys/*" | "room_keys/keys/*/*") => {
            let session = json!({
                "first_message_index": 1, "forwarded_count": 0, "is_verified": true,
                "session_data": { "ephemeral": "e", "ciphertext": "c", "mac": "m" },
            });
            json!({
                "rooms": { room: { "sessions": { "s": session } } },
                "sessions": { "s": session },
                "first_message_index": 1, "forwarded_count": 0, "is_verified": true,
                "session_data": { "ephemeral": "e", "ciphertext": "c", "mac": "m" },
            })
        }
        ("POST", "search") => json!({ "search_categories": { "room_events": {
            "search_term": "hi", "keys": ["content.body"], "order_by": "recent",
            "filter": { "limit": 5, "rooms": [room] },
            "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
            "include_state": true, "groupings": { "group_by": [{ "key": "room_id" }] },
        } } }),
        ("POST", "user/*/filter") => filter,
        ("POST", "pushers/set") => json!({
            "pushkey": "k", "kind": "http", "app_id": "a", "app_display_name": "A",
            "device_display_name": "D", "lang": "en", "append": false,
            "data": { "url": "https://127.0.0.1:1/_matrix/push/v1/notify", "format": "event_id_only" },
        }),
        ("PUT", "pushrules/global/*/*/enabled") => json!({ "enabled": false }),
        ("PUT", "pushrules/global/*/*/actions") => {
            json!({ "actions": ["notify", { "set_tweak": "sound", "value": "default" }] })
        }
        ("PUT", "pushrules/*/*/*" | "pushrules/global/*/*") => json!({
            "actions": ["notify", { "set_tweak": "highlight", "value": true }],
            "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "x" }],
            "pattern": "x", "enabled": true,
        }),
        ("PUT", "sendToDevice/*/*") => json!({ "messages": { user: { "*": { "a": 1 } } } }),
        ("POST", "rooms/*/read_markers") => {
            json!({ "m.fully_read": event, "m.read": event, "m.read.private": event })
        }
        ("POST", "rooms/*/receipt/*/*") => json!({ "thread_id": "main" }),
        ("PUT", "rooms/*/typing/*") => json!({ "typing": true, "timeout": 30000 }),
        ("PUT", "presence/*/status") => json!({ "presence": "online", "status_msg": "x" }),
        // The one field the path names (mostly `displayname`).
        ("PUT", "profile/*/*") => json!({ "displayname": "x" }),
        ("PUT", "user/*/rooms/*/tags/*") => json!({ "order": 0.5 }),
        ("POST", "sync") => json!({
            "conn_id": "c",
            "lists": { "l": {
                "ranges": [[0, 10]], "timeline_limit": 5,
                "required_state": [["m.room.name", ""]], "filters": { "is_dm": false },
            } },
            "room_subscriptions": { room: { "timeline_limit": 1, "required_state": [["*", "*"]] } },
            "extensions": {
                "e2ee": { "enabled": true }, "to_device": { "enabled": true },
                "account_data": { "enabled": true }, "receipts": { "enabled": true },
                "typing": { "enabled": true },
            },
        }),
        ("POST", "rooms/*/report/*" | "rooms/*/report") => json!({ "reason": "r", "score": -50 }),
        ("POST", "rooms/*/invite" | "rooms/*/kick" | "rooms/*/ban" | "rooms/*/unban") => {
            json!({ "user_id": friend, "reason": "r" })
        }
        ("POST", "join/*" | "rooms/*/join" | "knock/*" | "rooms/*/leave" | "rooms/*/forget") => {
            json!({ "reason": "r", "third_party_signed": null })
        }
        ("POST", "logout" | "logout/all") => json!({}),
        ("POST", "/_synapse/admin/v1/register") => json!({
            "nonce": "n", "username": "fuzzadmin", "password": "p", "displayname": "d",
            "admin": false, "user_type": null, "mac": "00ff",
        }),
        ("POST", "rooms/*/upgrade") => json!({ "new_version": "11" }),
        ("POST", "/_matrix/key/v2/query") => json!({
            "server_keys": { "localhost": { "ed25519:abc": { "minimum_valid_until_ts": 1 } } },
        }),
        ("POST", "publicRooms") => json!({
            "limit": 10, "include_all_networks": true,
            "filter": { "generic_search_term": "x", "room_types": [null, "m.space"] },
        }),
        ("POST", "user_directory/search") => json!({ "search_term": "f", "limit": 10 }),
        ("PUT", "directory/room/*") => json!({ "room_id": room }),
        ("PUT", "directory/list/room/*") => json!({ "visibility": "public" }),
        ("PUT", "dehydrated_device") => {
            let mut keys = device_keys;
            keys["device_id"] = json!("DEHYDRATED");
            json!({
                "device_id": "DEHYDRATED", "initial_device_display_name": "x",
                "device_data": { "algorithm": "a" }, "device_keys": keys,
            })
        }
        ("POST", "dehydrated_device/*/events") => json!({ "next_batch": "x" }),
        ("POST", "delete_devices") => json!({ "devices": ["X"], "auth": auth }),
        ("PUT", "devices/*") => json!({ "display_name": "x" }),
        ("POST", "account/password") => {
            json!({ "new_password": "x", "logout_devices": false, "auth": auth })
        }
        ("POST", "account/deactivate") => json!({ "auth": auth, "erase": true }),
        ("PUT", "rooms/*/redact/*/*") => json!({ "reason": "x" }),
        ("PUT", "user/*/account_data/*" | "user/*/rooms/*/account_data/*") => {
            json!({ "ignored_users": { "@nobody:localhost": {} }, "a": [1, { "b": null }] })
        }
        ("POST", "user/*/openid/request_token") => json!({}),
        ("POST", "account/3pid/add") => {
            json!({ "client_secret": "secret", "sid": "sid", "auth": auth })
        }
        ("POST", "account/3pid/bind") => json!({
            "client_secret": "secret", "sid": "sid", "id_server": "id.example.org",
            "id_access_token": "token",
        }),
        ("POST", "account/3pid/delete" | "account/3pid/unbind") => {
            json!({ "medium": "email", "address": "a@example.org" })
        }
        ("POST", "account/3pid/email/requestToken") => json!({
            "client_secret": "secret", "email": "a@example.org", "send_attempt": 1,
        }),
        ("POST", "account/3pid/msisdn/requestToken") => json!({
            "client_secret": "secret", "country": "DE", "phone_number": "1234567",
            "send_attempt": 1,
        }),
        _ => return None,
    };
    Some(seed)
}

/// `seed` with one node changed, as JSON text: replaced by a value of the same kind (which
/// often still parses, and so reaches the handler), by any random value, or removed.
fn mutate(rng: &mut Rng, seed: &Value, pool: &[String]) -> Vec<u8> {
    const MARK: &str = "\u{1}mutation\u{1}";
    let mut body = seed.clone();
    let mut node = &mut body;
    // Walk down a random path, at least one step; stop at a random depth.
    let mut depth = 0;
    loop {
        let len = match &*node {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if len == 0 || (depth > 0 && rng.below(3) == 0) {
            break;
        }
        depth += 1;
        let index = rng.below(len);
        node = match node {
            Value::Object(map) => {
                if rng.below(6) == 0 {
                    let key = map.keys().nth(index).unwrap().clone();
                    map.remove(&key);
                    return body.to_string().into_bytes();
                }
                map.values_mut().nth(index).unwrap()
            }
            Value::Array(items) => &mut items[index],
            _ => unreachable!(),
        };
    }
    let replacement = if rng.below(2) == 0 {
        match &*node {
            Value::String(_) => json!(rng.pick(pool)).to_string(),
            Value::Number(_) => rng.pick(NUMBERS).to_string(),
            Value::Bool(b) => (!b).to_string(),
            Value::Object(_) => object(rng, pool, 1),
            Value::Array(_) | Value::Null => value(rng, pool, 1),
        }
    } else {
        value(rng, pool, 2)
    };
    *node = Value::String(MARK.into());
    body.to_string()
        .replacen(&json!(MARK).to_string(), &replacement, 1)
        .into_bytes()
}

struct Ids {
    user: String,
    device: String,
    /// Another user, to invite, kick and ban.
    friend: String,
    room: String,
    /// A key backup version.
    backup: String,
    event: String,
}

/// Fills `{placeholder}`s in a route template.
fn fill(rng: &mut Rng, template: &str, ids: &Ids, odd: Option<usize>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("closed placeholder");
        let name = rest[start + 1..end].trim_start_matches('*');
        out.push_str(&path_value(rng, name, ids, odd));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The order routes are fuzzed in: first those that leave the fuzzer's room, backup and
/// session as they are (so that the rest meets a member with a backup and a live token),
/// then, one kind after another, those that may undo them.
fn stage(method: &Method, path: &str) -> u8 {
    const LATE: &[(&str, &str)] = &[
        ("POST", "/room_keys/version"),
        ("DELETE", "/room_keys/version/{version}"),
        ("POST", "/upgrade"),
        ("POST", "/ban"),
        ("POST", "/kick"),
        ("POST", "/leave"),
        ("POST", "/forget"),
        ("POST", "/delete_devices"),
        ("POST", "/account/password"),
        ("DELETE", "/devices/{device_id}"),
        ("POST", "/logout"),
        ("POST", "/logout/all"),
        ("POST", "/account/deactivate"),
    ];
    LATE.iter()
        .position(|(late_method, end)| method.as_str() == *late_method && path.ends_with(end))
        .map_or(0, |position| position as u8 + 1)
}

/// The fuzzer's password, which the user-interactive auth in its valid bodies sends.
const PASSWORD: &str = "fuzz pass word";

/// Random bodies per route, and mutations of its valid body where it has one.
const RANDOM: usize = 6;
const MUTATIONS: usize = 40;

/// The fuzzer's account, with a room, a message, a friend and a key backup.
async fn setup(server: &TestServer) -> (String, Ids) {
    let token = server.register("fuzzer", PASSWORD).await;
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
    server.register("fuzzfriend", "friend pass word").await;
    let (status, backup) = server
        .client_api(
            &token,
            Method::POST,
            "/room_keys/version",
            Some(json!({
                "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                "auth_data": { "public_key": "abc", "signatures": {} },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{backup}");
    let ids = Ids {
        user: whoami["user_id"].as_str().unwrap().to_owned(),
        device: whoami["device_id"].as_str().unwrap().to_owned(),
        friend: "@fuzzfriend:localhost".to_owned(),
        room: room_id,
        backup: backup["version"].as_str().unwrap().to_owned(),
        event: sent["event_id"].as_str().unwrap().to_owned(),
    };
    (token, ids)
}

#[tokio::test]
async fn malformed_input_never_panics_or_fails_with_5xx() {
    let server = TestServer::start();
    let (token, ids) = setup(&server).await;
    let pool = strings(&ids.user, &ids.room, &ids.event);

    let mut routes = conduit::api::route_list();
    routes.sort_by_key(|(method, path)| stage(method, path));
    assert!(routes.len() > 100, "the router lists its routes");

    // Most routes that take a body have a valid one to mutate (the rest get random bodies).
    let seeded = routes
        .iter()
        .filter(|(method, path)| seed(method, path, &ids).is_some())
        .count();
    let unseeded: Vec<String> = routes
        .iter()
        .filter(|(method, path)| {
            (*method == Method::POST || *method == Method::PUT)
                && seed(method, path, &ids).is_none()
        })
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    eprintln!("{seeded} routes with a seed body; without one: {unseeded:#?}");
    assert!(seeded >= 60, "only {seeded} routes have a seed body");

    let fixed = fixed_bodies();
    let client = http();
    // CI always runs the same stream; `FUZZ_SEED=<number>` explores another one.
    let stream = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5EED_CAFE_F00D_D00D);
    let mut rng = Rng(stream.max(1));
    let mut failures = Vec::new();
    let (mut sent, mut accepted) = (0, 0);
    for (method, template) in &routes {
        let method = Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let uploads = template.starts_with("/_matrix/media/") && template.contains("/upload");
        // Every fixed body once (media uploads store each body: a few suffice), then random
        // ones, then the route's valid body (if it takes one) as is and mutated.
        let fixed_count = if uploads { 3 } else { fixed.len() };
        let seed = seed(&method, template, &ids);
        let mutations = if seed.is_some() { MUTATIONS } else { 0 };
        for round in 0..fixed_count + RANDOM + mutations {
            // The valid body goes with a plain path, query and token; its mutations mostly do
            // too, so that the body is what fails.
            let mutation = round.checked_sub(fixed_count + RANDOM);
            let body = match (fixed.get(round), &seed, mutation) {
                (Some(body), _, _) if round < fixed_count => body.clone(),
                (_, Some(seed), Some(0)) => seed.to_string().into_bytes(),
                (_, Some(seed), Some(_)) => mutate(&mut rng, seed, &pool),
                _ => random_body(&mut rng, &pool),
            };
            let odd = match mutation {
                Some(0) => None,
                Some(_) => Some(12),
                None => Some(3),
            };
            let mut path = fill(&mut rng, template, &ids, odd);
            let mut query = if odd.is_some_and(|odd| rng.below(odd) == 0) {
                random_query(&mut rng)
            } else {
                String::new()
            };
            // A long-poll must not wait: whatever else the query says, the timeout is 0.
            if template.contains("sync") {
                query.push_str("&timeout=0");
            }
            // Keys in a backup name its version in the query.
            if template.contains("/room_keys/keys") {
                query.push_str(&format!("&version={}", ids.backup));
            }
            if !query.is_empty() {
                path = format!("{path}?{query}");
            }
            let with_token = odd.is_none() || rng.below(12) != 0;
            let request = || {
                let request = client
                    .request(method.clone(), format!("{}{path}", server.url))
                    .header("content-type", "application/json")
                    .body(body.clone());
                if with_token {
                    request.bearer_auth(&token)
                } else {
                    request
                }
            };
            sent += 1;
            // A server that answers before reading the whole body (a bad path, a missing
            // token) closes the connection; the next request on it may fail before it is sent.
            // It is sent again, on a new connection.
            let response = match request().send().await {
                Ok(response) => Ok(response),
                Err(_) => request().send().await,
            };
            let response = match response {
                Ok(response) => response,
                // Closed while the body was still being written: no failure, as long as the
                // server still serves.
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
            if status.is_success() {
                accepted += 1;
            }
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
    // The server still serves (and has printed what the stream made it print).
    let (status, _) = server
        .request(Method::GET, "/_matrix/client/versions", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = server.log();
    let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .take(20)
        .collect();
    assert!(
        failures.is_empty() && panics.is_empty(),
        "{} of {sent} requests failed (FUZZ_SEED={stream}):\n{}\npanics in the log:\n{}\nerrors in the log:\n{}",
        failures.len(),
        failures.join("\n"),
        panics.join("\n"),
        errors.join("\n")
    );
    // The stream was what it claims to be: thousands of requests, of which many got past
    // the parser into the handlers.
    eprintln!("{sent} requests sent, {accepted} accepted");
    assert!(sent > 5000, "only {sent} requests sent");
    assert!(
        accepted > 1000,
        "only {accepted} of {sent} requests were accepted"
    );
}

/// Spec, "Standard error response": a body that is not JSON is `M_NOT_JSON`, and JSON of the
/// wrong shape is `M_BAD_JSON` (which also covers missing keys), both 400, on every route that
/// takes a JSON body, before anything else happens.
#[tokio::test]
async fn bodies_that_do_not_parse_are_400_with_the_spec_errcode() {
    // Federating, so the federation routes with a body are there too. (No body here
    // parses, so nothing makes the server contact another: traffic stays on 127.0.0.1.)
    let server = TestServer::start_federating();
    let (token, ids) = setup(&server).await;
    let client = server.http();
    let mut rng = Rng(1);
    let mut wrong = Vec::new();
    let mut checked = 0;
    let mut routes = conduit::api::route_list();
    routes.sort_by_key(|(method, path)| stage(method, path));
    for (method, template) in routes {
        let Some(seed) = seed(&method, &template, &ids) else {
            continue;
        };
        let mut path = fill(&mut rng, &template, &ids, None);
        if template.contains("/room_keys/keys") {
            path.push_str(&format!("?version={}", ids.backup));
        }
        // Serde reads a struct from an array too, field by field: `[{…}]` was accepted.
        for (body, errcode) in [
            ("{not json".to_owned(), "M_NOT_JSON"),
            ("{\"a\":1} trailing".to_owned(), "M_NOT_JSON"),
            (format!("[{seed}]"), "M_BAD_JSON"),
            ("null".to_owned(), "M_BAD_JSON"),
            ("\"{}\"".to_owned(), "M_BAD_JSON"),
        ] {
            let response = client
                .request(method.clone(), format!("{}{path}", server.url))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let json: Value = response.json().await.unwrap_or_default();
            checked += 1;
            if status != StatusCode::BAD_REQUEST || json["errcode"] != errcode {
                wrong.push(format!("{method} {template} {body:.40} -> {status} {json}"));
            }
        }
    }
    assert!(checked > 300, "only {checked} requests");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}
