//! Black-box tests: each starts the real `conduit` binary on 127.0.0.1 with a free port and
//! a temporary sled directory, then drives it over HTTP with matrix-sdk (the library Element
//! X is built on) and, for error paths, with raw HTTP.

mod account;
mod admin;
mod backup;
mod client_state;
mod dehydrated;
mod devices;
mod durability;
mod e2ee;
mod errcodes;
mod errors;
mod fuzz;
mod harness;
mod keys;
mod media;
mod process;
mod profile;
mod rooms;
mod sliding_sync;
mod turn;
