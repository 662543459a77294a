//! Federation (server-server API): finding other servers ([`resolve`]), server signing
//! keys, ours and theirs ([`keys`]).
//!
//! Under construction for issue 11; nothing here is reachable from a request yet.

pub mod keys;
pub mod resolve;
