//! Phase 2, `grid-positions` (DESIGN §2): each `{exchange}:positions:{uid}`
//! JSON value becomes one hash per position plus an index set, with a
//! byte-exact backup of the legacy value.
//!
//! - `plan`: the pure planner, legacy value -> hashes or quarantine;
//! - `store`: the one seam to a deployment; `standalone` writes a user
//!   inside one Lua script (`lua/migrate_users.lua`, a few users a call),
//!   `cluster` with per-user steps
//!   ending in a compare-and-delete, and `GridStore` picks one from the
//!   connection;
//! - `runner`: SCAN, read, plan, write, report;
//! - `verify`: the invariants on a live server after a run;
//! - `rollback`: undoing a run from its journal and backups;
//! - `debris`: `cleanup-migration`, the leftovers of an interrupted run.

pub mod debris;
pub mod plan;
pub mod rollback;
pub mod runner;
pub mod store;
pub mod verify;

use crate::run;

/// The migration's name in the journal and on the command line.
pub const MIGRATION: &str = "grid-positions";

/// The latest run of `grid-positions` recorded on this server.
pub async fn latest_run<C>(conn: &C) -> crate::Result<run::journal::RunRecord>
where
    C: redis::aio::ConnectionLike + Clone + Send,
{
    run::journal::latest_run_of(conn, MIGRATION)
        .await?
        .ok_or(crate::EngineError::NoRun)
}
