//! Failures of the data API: one variant per failure, each saying what to
//! do next. Redis failures keep the engine's own error.

use thiserror::Error;

use crate::error::EngineError;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "not a position object ({reason}); pass one JSON object with a string instId free of ':'"
    )]
    InvalidPosition { reason: String },
    #[error("{what} {value:?} cannot be a key segment (empty or holds ':'); such keys are unknown to the schema and never written")]
    InvalidId { what: &'static str, value: String },
    #[error("{key} holds a value this API does not understand ({reason}); it was left as is. Inspect it (`keyshift migrate grid-positions --dry-run` reports it) before writing to it")]
    UnreadableLegacy { key: String, reason: String },
    #[error("{key} keeps positions keyed by instId and already holds {inst_id} as {held}; it cannot hold the {wanted} side too. Remove the {held} position first")]
    ObjectShapeHoldsOneSide {
        key: String,
        inst_id: String,
        held: &'static str,
        wanted: &'static str,
    },
    #[error("{key} changed under every one of {attempts} write attempts; nothing was written, retry later")]
    Contended { key: String, attempts: usize },
    #[error(
        "{key} field {level:?} holds {value:?}, not an order-placed flag (0 or 1); left as is"
    )]
    BadFlag {
        key: String,
        level: String,
        value: String,
    },
    #[error("the position hashes {index} names could not be read as text ({detail}); one holds a value that is not UTF-8, which no position written by keyshift or the stores does. Inspect them (HGETALL); nothing was changed")]
    UnreadableHashes { index: String, detail: String },
    #[error("a cached position must be JSON ({detail}); nothing was written")]
    NotJson { detail: String },
}

impl ApiError {
    /// A Redis failure during `during`, as the engine reports it.
    pub fn redis(during: &'static str) -> impl FnOnce(redis::RedisError) -> ApiError {
        move |source| ApiError::Engine(EngineError::Redis { during, source })
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// Checks an id that becomes one key segment.
pub(crate) fn check_id(what: &'static str, value: &str) -> ApiResult<()> {
    if crate::keys::is_id_segment(value) {
        Ok(())
    } else {
        Err(ApiError::InvalidId {
            what,
            value: value.to_owned(),
        })
    }
}
