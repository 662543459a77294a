//! The schema upgrades ([`Migration`]s) that [`Db::open_sled`] runs on an older database.
//! Storage knows no Matrix, so the steps are defined here, beside the services whose trees
//! they read. Each step is idempotent: a crash during one runs it again at the next start.
//!
//! [`Db::open_sled`]: crate::storage::Db::open_sled

use crate::storage::Migration;

/// Every upgrade step, in version order; the last one's `to` is
/// [`crate::storage::SCHEMA_VERSION`].
pub static STEPS: &[Migration] = &[];

#[cfg(test)]
mod tests;
