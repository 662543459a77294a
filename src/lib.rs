//! # conduit: a lightweight Matrix homeserver
//!
//! # Layout
//! - [`config`]: figment loading of `conduit.toml` + `CONDUIT_*` into a validated `Config`.
//! - [`server`]: serve a bound listener (plain or TLS) until shutdown, then flush.
//! - [`api`]: the router, the `Ruma<T>` extractor, and one handler file per spec area.
//! - [`service`]: the Matrix logic; each service owns its trees and makes writes durable:
//!   users, devices, registration, UIA, rooms (events, state core, resolution, membership,
//!   visibility, relations, upgrades), stream and sync, account data, typing and receipts,
//!   push (notification counts, `/notifications`) and pusher delivery, OpenID tokens,
//!   presence, to-device messages, server signing keys (ours and other servers').
//! - [`storage`]: the key-value trait, sled and in-memory backends, typed tables.
//! - [`crypto`]: tokens, digests, password hashing.
//! - [`cli`]: the `conduit user …`, `media …` and `keys …` administration commands.
//! - [`backup`]: `conduit export`, `import`, `backup` and `restore`; [`admin_socket`]: how
//!   `conduit backup` asks a running server to write the backup.
//! - [`error`]: the one error type and its mapping to Matrix errors.
//!
//! Calls go `api → service → storage`, never back. `ARCHITECTURE.md` has the full map.

pub mod admin_socket;
pub mod api;
pub mod backup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod error;
pub mod server;
pub mod service;
pub mod storage;

pub use error::{Error, Result};
