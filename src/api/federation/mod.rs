//! The server-server (federation) API: `/_matrix/federation/*` and `/_matrix/key/*`, what
//! other servers ask of this one. Mounted only when `allow_federation` is on. Requests to
//! endpoints whose ruma metadata says `ServerSignatures` are `X-Matrix` checked by the
//! [`super::ruma::Ruma`] extractor before a handler runs (the origin is in `Ruma::origin`);
//! the key endpoints are not signed (`NoAuthentication`).

pub mod keys;
pub mod query;
pub mod rooms;
pub mod transactions;
pub mod user;
pub mod version;

use super::ruma::{RouterExt, Routes};

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
        .ruma_route(rooms::make_join)
        .ruma_route(rooms::send_join)
        .ruma_route(rooms::get_event)
        .ruma_route(rooms::get_room_state)
        .ruma_route(rooms::get_room_state_ids)
        .ruma_route(rooms::get_event_authorization)
        .ruma_route(rooms::get_missing_events)
        .ruma_route(rooms::get_backfill)
}
