//! Mutant engines: deliberately broken variants of the Phase 1, Phase 2
//! and rollback engines, each a real bug class, run through the gate's own
//! pipeline to prove its invariants catch them (issue 5). Test-only: the
//! keyshift binary never depends on this crate.
//!
//! - `catalogue`: the mutants, their bugs and the invariants that must catch them.
//! - `mutate`: the pure part (a correctly planned write turned into the buggy one).
//! - `planner`: the bugs inside the plan (the shipped planners, wrapped).
//! - `stores`: the production stores wrapped at the seam, and `MutantEngines`.
//! - `glob`: the rollback by glob three mutants share.
//! - `matrix`: the control and every mutant through the gate; the kill matrix.
//!
//! `fixtures/` holds the keys the generator does not make (glob-metacharacter
//! and prefix-neighbour user ids, an object-shaped value with a TTL, numbers
//! whose exact text an f64 would change, an order-placed hash whose target
//! holds the same levels with other flags).

pub mod catalogue;
mod glob;
pub mod matrix;
pub mod mutate;
pub mod planner;
pub mod stores;

pub use catalogue::Mutant;
pub use matrix::{run_matrix, MatrixConfig};
