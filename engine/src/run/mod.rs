//! What every migration's run shares: the journal of runs and per-key
//! outcomes kept in Redis, the runner lock, and the invariant results the
//! verifiers report.

pub mod invariant;
pub mod journal;
pub mod lock;
