//! The engine's one error type. Each variant says what failed and what the
//! operator should do next; the binary maps variants to exit codes.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    // The cause is the `source`, printed once by whoever prints the chain.
    #[error("cannot reach Redis at {url} (check the URL, that the server is up, and the credentials in REDIS_URL / --redis)")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis command failed while {during}; the run stopped between two atomic steps: rerun the same command to continue")]
    Redis {
        during: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("another run holds the lock: {holder}; it expires in {expires_in_ms} ms unless renewed. Wait for it to finish; a lock whose runner died frees itself when it expires")]
    Locked { holder: String, expires_in_ms: i64 },
    #[error("this run lost the runner lock (it was not renewed in time, or was taken over); it stopped between two atomic steps: rerun the same command to resume")]
    LockLost,
    #[error("{0}")]
    Refused(String),
    #[error("invalid Redis URL: {0}")]
    BadUrl(String),
    #[error("no grid-positions run is recorded in the journal on this server: run `keyshift migrate grid-positions` first")]
    NoRun,
    #[error("journal record {key} is unreadable ({detail}); it was not written by this version of keyshift. Inspect it before deleting anything")]
    BadJournal { key: String, detail: String },
}

impl EngineError {
    pub fn redis(during: &'static str) -> impl FnOnce(redis::RedisError) -> EngineError {
        move |source| EngineError::Redis { during, source }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
