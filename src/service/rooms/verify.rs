//! The first checks on an event another server sent (server-server API, "Checks performed
//! on receipt of a PDU", steps 1 to 3), before anything about it is stored:
//!
//! 1. [`check_format`]: the room version's event format and the size limits; dropped on
//!    failure.
//! 2. and 3. [`check_signatures_and_hash`]: the signatures of the servers the spec requires
//!    (dropped on failure), then the content hash: on a mismatch the redacted copy replaces
//!    the event ("Validating hashes and signatures on received events").
//!
//! Both are pure: no storage, no network. The async caller first asks [`keys_needed`] which
//! servers' keys the signature check needs, fetches them through the keyring
//! (`federation::keys::Keyring::public_key_map`), then calls [`check_signatures_and_hash`].
//! Steps 4 to 6 (authorisation) need the room's events and happen when the event is accepted.

use std::{collections::BTreeSet, fmt};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomVersionId, UInt,
    room_version_rules::RoomVersionRules,
    signatures::{
        PublicKeyMap, VerificationError, reference_hash,
        required_server_signatures_to_verify_event, verify_event,
    },
    state_res::check_pdu_format,
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;

use super::{
    append::supported_room_version,
    build::MAX_EVENT_BYTES,
    pdu::{Pdu, room_id_from_create_event_id},
};

/// An event whose format, signatures and content hash are checked (or that we built).
#[derive(Clone, Debug)]
pub struct Verified {
    pub event_id: OwnedEventId,
    /// The room it belongs to: its `room_id`, or for a room-version-12 create event the room
    /// its id names (a v12 create event that carries a `room_id` anyway is not dropped here:
    /// the auth rules reject it, rooms v12 rule 1.2).
    pub room_id: OwnedRoomId,
    /// The signed event as it will be stored, without `event_id` and `unsigned`.
    pub object: CanonicalJsonObject,
    /// `object` with `event_id`, parsed.
    pub pdu: Pdu,
    /// The content hash did not match: `object` is the redacted copy.
    pub redacted_on_receipt: bool,
}

/// Why an event was dropped in steps 1 to 3. Never stored: the caller reports it in the
/// event's `/send` result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped(pub String);

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Dropped {}

fn dropped(reason: impl Into<String>) -> Dropped {
    Dropped(reason.into())
}

/// The rules of a room version this server handles (3 to 12); others are dropped: versions
/// 1 and 2 have another event format (ids chosen by the sender) and v1 another state
/// resolution, which this server does not implement.
fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules, Dropped> {
    version
        .rules()
        .filter(|_| supported_room_version(version))
        .ok_or_else(|| dropped(format!("unsupported room version {version}")))
}

/// The fields a stored event needs (see [`Pdu`]) beyond what ruma's format check looks at,
/// so that a well-formed event always parses as a [`Pdu`] later. Unknown fields are ignored.
#[derive(Deserialize)]
#[allow(dead_code)] // read only to be validated
struct Shape {
    sender: OwnedUserId,
    room_id: Option<OwnedRoomId>,
    content: serde_json::Map<String, serde_json::Value>,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    depth: UInt,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    redacts: Option<OwnedEventId>,
}

/// Step 1 and the size limits: `raw` is one PDU as another server sent it (an entry of a
/// transaction's `pdus`, or of a `/state`, `/event` or `/backfill` answer), in a room of
/// `version`. Returns the event as canonical JSON, without `event_id` and `unsigned`.
///
/// Takes the raw JSON, not a parsed object: turning it into canonical JSON is part of the
/// format check (floats and integers beyond ±(2^53 − 1) are not canonical JSON, so the event
/// could not be hashed or signed), and every caller holds raw JSON.
pub fn check_format(
    raw: &RawJsonValue,
    version: &RoomVersionId,
) -> Result<CanonicalJsonObject, Dropped> {
    let rules = rules_for(version)?;
    let mut object: CanonicalJsonObject = serde_json::from_str(raw.get())
        .map_err(|e| dropped(format!("not a canonical JSON object: {e}")))?;
    // Room versions 3+ have no `event_id` in the event: the id is the reference hash (rooms
    // v3, "Event IDs"). Some servers still send one; it is not trusted, only removed.
    if !rules.event_format.require_event_id {
        object.remove("event_id");
    }
    // `unsigned` is covered by neither the signatures nor the hashes (they are computed
    // without it), so whoever relayed the event could have put anything there
    // (`prev_content`, `redacted_because`, `m.relations`…). It is not part of the event:
    // what we show clients in `unsigned` is ours to compute.
    object.remove("unsigned");
    // Client-server API, "Size limits": the complete event, as canonical JSON with its
    // signatures, at most 65,536 bytes. Measured without the two fields above, which are not
    // part of the event. (ruma's `check_pdu_format` below refuses more than 65,535 bytes, so
    // an event of exactly 65,536 bytes is dropped too: one byte stricter than the spec.)
    let size = serde_json::to_vec(&object)
        .map_err(|e| dropped(format!("not serialisable: {e}")))?
        .len();
    if size > MAX_EVENT_BYTES {
        return Err(dropped(format!(
            "the event is larger than {MAX_EVENT_BYTES} bytes"
        )));
    }
    // The room version's event format: `type`, `sender`, `room_id` (not on a v12 create
    // event), `state_key` of at most 255 bytes; `prev_events` (≤ 20) and `auth_events`
    // (≤ 10) arrays; no create event among v12 auth events; a non-negative `depth`.
    check_pdu_format(&object, &rules.event_format).map_err(dropped)?;
    let shape = serde_json::to_value(&object)
        .and_then(serde_json::from_value::<Shape>)
        .map_err(|e| dropped(format!("invalid event: {e}")))?;
    if shape.room_id.is_none() && !is_create(&object) {
        // Already refused by ruma's check; kept so the invariant is visible here.
        return Err(dropped("missing `room_id`"));
    }
    Ok(object)
}

fn is_create(object: &CanonicalJsonObject) -> bool {
    matches!(object.get("type"), Some(CanonicalJsonValue::String(kind)) if kind == "m.room.create")
}

/// Which servers' keys [`check_signatures_and_hash`] needs for `object`, and the time the
/// keys must have been valid at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysNeeded {
    /// The servers whose signatures are required (ruma's
    /// `required_server_signatures_to_verify_event`): the sender's server (except on an
    /// invite made from a third-party invite, which another server may send: S2S
    /// "Validating hashes and signatures on received events"), and, in room versions 8+, the
    /// server of `content.join_authorised_via_users_server` on a restricted join.
    pub servers: BTreeSet<OwnedServerName>,
    /// `origin_server_ts` in room versions 5+ ("Signing key validity period"): keys that had
    /// expired by then do not count. `None` in versions 3 and 4.
    pub signed_at: Option<MilliSecondsSinceUnixEpoch>,
}

/// The keys to fetch before [`check_signatures_and_hash`], for an object from
/// [`check_format`]. Pass them to `Keyring::public_key_map(object, servers, signed_at)`.
pub fn keys_needed(
    object: &CanonicalJsonObject,
    version: &RoomVersionId,
) -> Result<KeysNeeded, Dropped> {
    let rules = rules_for(version)?;
    let servers = required_server_signatures_to_verify_event(object, &rules.signatures)
        .map_err(|e| dropped(format!("cannot tell whose signatures to check: {e}")))?;
    let signed_at = match object.get("origin_server_ts") {
        _ if !rules.enforce_key_validity => None,
        Some(CanonicalJsonValue::Integer(ts)) => Some(MilliSecondsSinceUnixEpoch(
            UInt::try_from(i64::from(*ts))
                .map_err(|_| dropped("`origin_server_ts` is negative"))?,
        )),
        _ => return Err(dropped("missing or invalid `origin_server_ts`")),
    };
    Ok(KeysNeeded { servers, signed_at })
}

/// Steps 2 and 3 for an object from [`check_format`]: the signatures of every server
/// [`keys_needed`] names, with `keys` (dropped when one is missing or does not verify), then
/// the content hash (a mismatch stores the redacted copy, which the signatures cover).
/// Computes the event id (the reference hash, rooms v3+) and parses the event.
pub fn check_signatures_and_hash(
    object: CanonicalJsonObject,
    version: &RoomVersionId,
    keys: &PublicKeyMap,
) -> Result<Verified, Dropped> {
    let rules = rules_for(version)?;
    // ruma checks every required server (see `KeysNeeded::servers`); named here first so a
    // missing key is reported as such.
    let needed = keys_needed(&object, version)?;
    for server in &needed.servers {
        if keys.get(server.as_str()).is_none_or(|set| set.is_empty()) {
            return Err(dropped(format!(
                "no keys of {server} to check its signature with"
            )));
        }
    }
    let verified = verify_event(keys, &object, &rules).map_err(|e| match e {
        VerificationError::NoSignaturesForEntity(server) => {
            dropped(format!("not signed by {server}"))
        }
        VerificationError::NoPublicKeysForEntity(server) => {
            dropped(format!("no keys of {server} to check its signature with"))
        }
        VerificationError::NoSupportedSignatureForEntity(server) => dropped(format!(
            "no signature of {server} by a key it publishes (valid at the event's time)"
        )),
        e => dropped(format!("bad signature: {e}")),
    })?;
    let (object, redacted_on_receipt) = match verified {
        ruma::signatures::Verified::All => (object, false),
        ruma::signatures::Verified::Signatures => {
            let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(|e| dropped(format!("cannot be redacted: {e}")))?;
            (redacted, true)
        }
    };
    // The reference hash covers the redacted form only, so a copy redacted here keeps the
    // event's id.
    let hash = reference_hash(&object, &rules)
        .map_err(|e| dropped(format!("cannot compute the event id: {e}")))?;
    let event_id = OwnedEventId::try_from(format!("${hash}"))
        .map_err(|e| dropped(format!("the reference hash is not an event id: {e}")))?;
    let mut stored = object.clone();
    stored.insert(
        "event_id".to_owned(),
        CanonicalJsonValue::String(event_id.to_string()),
    );
    let bytes = serde_json::to_vec(&stored).map_err(|e| dropped(format!("invalid event: {e}")))?;
    let pdu: Pdu =
        serde_json::from_slice(&bytes).map_err(|e| dropped(format!("invalid event: {e}")))?;
    let room_id = if rules.authorization.room_create_event_id_as_room_id
        && pdu.kind == ruma::events::TimelineEventType::RoomCreate
    {
        room_id_from_create_event_id(&event_id)
    } else {
        pdu.room_id_field
            .clone()
            .ok_or_else(|| dropped("missing `room_id`"))?
    };
    Ok(Verified {
        event_id,
        room_id,
        object,
        pdu,
        redacted_on_receipt,
    })
}

#[cfg(test)]
mod tests;
