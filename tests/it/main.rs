//! Black-box tests: each starts the real `conduit` binary on 127.0.0.1 with a free port and
//! a temporary sled directory, then drives it over HTTP with matrix-sdk (the library Element
//! X is built on) and, for error paths, with raw HTTP.

mod account;
mod admin;
mod backup;
mod backup_restore;
mod client_state;
mod connections;
mod dehydrated;
mod devices;
mod durability;
mod e2ee;
mod endpoints;
mod errcodes;
mod errors;
mod federation;
mod federation_directory;
mod federation_e2ee;
mod federation_edus;
mod federation_forks;
mod federation_invites;
mod federation_joins;
mod federation_keys;
mod federation_media;
mod federation_pdus;
mod federation_rooms;
mod filters;
mod full_disk;
mod fuzz;
mod harness;
mod keys;
mod last_seen;
mod media;
mod nio;
mod process;
mod profile;
mod push_rules;
mod rooms;
mod schema;
mod sliding_sync;
mod synapse;
mod synapse_admin;
mod turn;
mod uia;
