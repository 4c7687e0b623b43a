//! Phase 1, `order-placed` (DESIGN §2): each legacy grid order-placed hash
//! `{exchange}:user:{uid}:symbol:{symbol}:order_placed` moves to
//! `orders:{...}` with its type, fields and remaining TTL; an equal target
//! drops the legacy key; a differing target leaves both for review; a
//! legacy key that is not a hash is quarantined. Built like Phase 2:
//!
//! - `plan`: the pure decision per key, and the digest the journal keeps;
//! - `store`: the seam to a deployment; `standalone` implements it for one
//!   server with one Lua script per key (`lua/move_order_placed.lua`),
//!   `cluster` for a Redis Cluster with ordered single-key steps (legacy
//!   key and target live in different slots), and [`AnyOrderPlaced`]
//!   picks one from the connection;
//! - `migrate`: the runner (SCAN, read, plan, write, report);
//! - `verify`: the counts, fields and ttl invariants after a run;
//! - `rollback`: undoing a run (rename back, or copy back a dropped key).
//!
//! Journal: per legacy key an [`crate::run::journal::OrderPlacedOutcome`] in
//! the run's outcome hash; `moved` / `dropped_equal` carry a SHA-256 of
//! the legacy hash (no backup is kept: the target *is* the legacy hash).

pub mod plan;
pub mod rollback;
pub mod runner;
pub mod store;
pub mod verify;

/// The migration's name in the journal and on the command line.
pub const MIGRATION: &str = "order-placed";

pub use runner::{migrate_order_placed, OrderPlacedOptions, OrderPlacedReport};
pub use store::{AnyOrderPlaced, ClusterOrderPlaced, StandaloneOrderPlaced};
pub use verify::verify_order_placed;
