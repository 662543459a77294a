//! Client-server API handlers, one file per spec area. Each handler unpacks its
//! [`Ruma`](super::ruma::Ruma) request, calls services, and builds the ruma response.

pub mod account;
pub mod device;
pub mod discovery;
pub mod profile;
pub mod session;
