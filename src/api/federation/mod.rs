//! The server-server (federation) API: `/_matrix/federation/*` and `/_matrix/key/*`.
//!
//! Handlers here translate HTTP to service calls, like the client API's. The key
//! endpoints are not X-Matrix signed (their ruma metadata says `NoAuthentication`), so the
//! ordinary [`super::ruma::Ruma`] extractor serves them.

pub mod keys;
pub mod version;

use super::ruma::{RouterExt, Routes};

/// Every federation route.
pub fn routes() -> Routes {
    Routes::new()
        .ruma_route(version::get_server_version)
        .ruma_route(keys::get_server_keys)
        .ruma_route(keys::get_remote_server_keys)
        .ruma_route(keys::get_remote_server_keys_batch)
}
