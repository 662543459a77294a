//! The server-server (federation) API: `/_matrix/federation/*` and `/_matrix/key/*`, what
//! other servers ask of this one. Mounted only when `allow_federation` is on. Requests to
//! endpoints whose ruma metadata says `ServerSignatures` are `X-Matrix` checked by the
//! [`super::ruma::Ruma`] extractor before a handler runs (the origin is in `Ruma::origin`);
//! the key endpoints are not signed (`NoAuthentication`).

pub mod directory;
pub mod events;
pub mod keys;
pub mod media;
pub mod membership;
pub mod query;
pub mod transactions;
pub mod user;
pub mod version;

use ruma::ServerName;

use super::ruma::{RouterExt, Routes, Ruma};
use crate::{Error, Result};

/// Every federation route.
pub fn routes() -> Routes {
    Routes::new()
        .ruma_route(version::get_server_version)
        .ruma_route(keys::get_server_keys)
        .ruma_route(keys::get_remote_server_keys)
        .ruma_route(keys::get_remote_server_keys_batch)
        .ruma_route(query::get_profile_information)
        .ruma_route(query::get_room_information)
        .ruma_route(user::get_devices)
        .ruma_route(user::get_keys)
        .ruma_route(user::claim_keys)
        .ruma_route(user::get_openid_userinfo)
        .ruma_route(transactions::send_transaction)
        .ruma_route(membership::prepare_join_event)
        .ruma_route(membership::create_join_event)
        .ruma_route(membership::prepare_knock_event)
        .ruma_route(membership::create_knock_event)
        .ruma_route(membership::prepare_leave_event)
        .ruma_route(membership::create_leave_event)
        .ruma_route(membership::create_invite)
        .ruma_route(events::get_event)
        .ruma_route(events::get_room_state)
        .ruma_route(events::get_room_state_ids)
        .ruma_route(events::get_event_authorization)
        .ruma_route(events::get_missing_events)
        .ruma_route(events::get_backfill)
        .ruma_route(events::get_event_by_timestamp)
        .ruma_route(directory::get_public_rooms)
        .ruma_route(directory::get_public_rooms_filtered)
        .ruma_route(directory::get_hierarchy)
        .ruma_route(media::get_content)
        .ruma_route(media::get_content_thumbnail)
}

/// The server that signed a request (the `X-Matrix` check has run).
fn origin<T>(request: &Ruma<T>) -> Result<&ServerName> {
    request
        .origin
        .as_deref()
        .ok_or_else(|| Error::internal("federation request without an origin"))
}
