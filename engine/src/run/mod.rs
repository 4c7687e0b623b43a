//! What every migration's run shares: the journal of runs and per-key
//! outcomes kept in Redis, the runner lock, and the invariant results the
//! verifiers report, and the run loop and rollback both migrations plug
//! into (`runner`, `rollback`), and the checkpoints a fault harness stops
//! a run at (`checkpoint`).

pub mod checkpoint;
pub mod invariant;
pub mod journal;
pub mod lock;
pub mod rollback;
pub mod runner;

use serde::Serialize;

/// A key left for review, and why: a quarantine or conflict of a run, a
/// change that refuses a rollback, a key a rollback left as it is.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub key: String,
    pub reason: String,
    pub detail: String,
}

impl runner::Keyed for Finding {
    fn key(&self) -> &str {
        &self.key
    }
}
