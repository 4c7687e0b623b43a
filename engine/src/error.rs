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
    /// The server refused writes with OOM (maxmemory reached). Each user
    /// is written atomically (one script or one MULTI/EXEC: a script's
    /// first write is refused before it writes anything), so no user is
    /// half-migrated; the cause is summarised rather than chained, as a
    /// pipeline repeats it once per refused command.
    #[error("Redis is out of memory (maxmemory reached) while {during}: {refused}. Each user's step is atomic, so none is half-written: the run stopped between two atomic steps; raise maxmemory (CONFIG SET maxmemory) or free memory, then rerun the same command to continue")]
    OutOfMemory {
        during: &'static str,
        refused: String,
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
        move |source| match out_of_memory(&source) {
            Some(refused) => EngineError::OutOfMemory { during, refused },
            None => EngineError::Redis { during, source },
        }
    }
}

/// "N command(s) refused: OOM ..." when `e` is (or a pipeline holds) an
/// OOM refusal.
fn out_of_memory(e: &redis::RedisError) -> Option<String> {
    const OOM: &str = "command not allowed when used memory";
    if e.code() == Some("OOM") {
        return Some(format!(
            "OOM {}",
            e.detail().unwrap_or(OOM).trim_end_matches('.')
        ));
    }
    let refused = e.clone().into_server_errors()?;
    let oom: Vec<_> = refused
        .iter()
        .filter(|(_, err)| err.code() == "OOM")
        .collect();
    let (_, first) = oom.first()?;
    Some(format!(
        "{} command(s) refused: OOM {}",
        oom.len(),
        first.details().unwrap_or(OOM).trim_end_matches('.')
    ))
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(resp: &[u8]) -> redis::RedisError {
        match redis::parse_redis_value(resp).expect("RESP") {
            redis::Value::ServerError(e) => e.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn an_oom_refusal_says_maxmemory_and_what_to_do() {
        let oom = server_error(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n");
        let e = EngineError::redis("migrating users")(oom);
        let text = e.to_string();
        assert!(matches!(e, EngineError::OutOfMemory { .. }), "{text}");
        assert!(
            text.contains("out of memory (maxmemory reached) while migrating users"),
            "{text}"
        );
        assert!(
            text.contains("raise maxmemory") && text.contains("rerun the same command"),
            "{text}"
        );
        assert!(!text.contains("'maxmemory'.."), "{text}");
    }

    #[test]
    fn other_server_errors_stay_redis_errors() {
        let busy = server_error(b"-BUSY Redis is busy running a script\r\n");
        assert!(matches!(
            EngineError::redis("migrating users")(busy),
            EngineError::Redis { .. }
        ));
    }
}
