//! keyshift-oracle: judges a migration by what is in Redis, written afresh
//! from DESIGN §1–§4 and sharing no code with any engine (Cargo shows it:
//! this crate does not depend on keyshift-engine).
//!
//! Judging is pure: the caller reads a before-image and an after-image
//! ([`image`]; a hash's fields are [`fields`], held in one buffer) and
//! [`grid::judge`] turns them into each invariant's verdict ([`verdict`]).
//! [`legacy`] is DESIGN §2's rule for one legacy value, [`keys`] DESIGN
//! §1's key names, [`order_placed`] Phase 1's judge, [`compare`] the
//! idempotent and rollback comparisons, and [`json`] a JSON reader that
//! keeps each value's source text, which the rules need.

pub mod compare;
pub mod fields;
pub mod grid;
pub mod image;
pub mod json;
pub mod keys;
pub mod legacy;
pub mod order_placed;
pub mod verdict;

pub use fields::Fields;
pub use grid::{judge as judge_grid_positions, GridOptions, BACKUP_TTL_MS};
pub use image::{sha256_hex, Before, Entry, Image, Value};
pub use verdict::{Judgement, Status, Tally, Verdict};
