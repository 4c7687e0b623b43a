//! keyshift's engine: what runs against production.
//!
//! - `keys`: the key grammar of DESIGN §1 (parse and build keys, escape globs).
//! - `plan`: the pure Phase 2 planner, legacy value -> hashes or quarantine.
pub mod keys;
pub mod plan;
