//! The server-server API: what other servers ask of this one. Mounted only when
//! `allow_federation` is on; every request is `X-Matrix` signed and checked by the
//! [`super::ruma::Ruma`] extractor before a handler runs (the origin is in `Ruma::origin`).

pub mod query;
pub mod transactions;
pub mod user;

use super::ruma::{RouterExt, Routes};

/// The federation routes.
pub fn routes() -> Routes {
    Routes::new()
        .ruma_route(query::get_profile_information)
        .ruma_route(query::get_room_information)
        .ruma_route(user::get_devices)
        .ruma_route(user::get_keys)
        .ruma_route(user::claim_keys)
        .ruma_route(user::get_openid_userinfo)
        .ruma_route(transactions::send_transaction)
}
