//! The harness's own failures (not Redis's nor the engine's); `exit`
//! maps them to exit codes. A leaf: it imports nothing of the crate.

/// Failures of the harness itself (not of Redis or the engine).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A write nobody confirmed.
    #[error("refused: {0}")]
    Refused(String),
    #[error("usage: {0}")]
    Usage(String),
}
