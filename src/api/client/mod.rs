//! Client-server API handlers, one file per spec area. Each handler unpacks its
//! [`Ruma`](super::ruma::Ruma) request, calls services, and builds the ruma response.

pub mod account;
pub mod account_data;
pub mod alias;
pub mod backup;
pub mod dehydrated;
pub mod device;
pub mod directory;
pub mod discovery;
pub mod keys;
pub mod media;
pub mod membership;
pub mod message;
pub mod notifications;
pub mod openid;
pub mod presence;
pub mod profile;
pub mod push;
pub mod receipt;
pub mod relations;
pub mod room;
pub mod search;
pub mod session;
pub mod space;
pub mod state;
pub mod sync;
pub mod thirdparty;
pub mod threepid;
pub mod to_device;
pub mod voip;
