//! The engine's one error type. Each variant says what failed and what the
//! operator should do next; the binary maps variants to exit codes.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    // The cause is the `source`, printed once by whoever prints the chain.
    // The advice depends on the URL (TLS or not) and on what failed.
    #[error("cannot reach Redis at {url} ({})", unreachable_advice(.url, &.source.to_string()))]
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
    /// The server's ACL refused a command (NOPERM). Said before anything
    /// else: the user, not the data, is what to fix.
    #[error("the Redis user has no permission for a command keyshift sends while {during}: {denied}. Writing commands (migrate, rollback, cleanup-legacy, cleanup-migration) need the grants of docs/acl/keyshift-migrate.acl; validate, verify and status those of docs/acl/keyshift-readonly.acl (docs/security.md). Each user's step is atomic: rerun with such a user to continue")]
    NoPermission {
        during: &'static str,
        denied: String,
    },
    /// A cluster SCAN met slots on the move (`connection::scan_raw`): it
    /// cannot promise to have seen every key, so the run stops rather than
    /// finish with keys unseen. Whatever was not done is still on the
    /// legacy layout, where a later SCAN finds it.
    #[error("the cluster was being resharded while keyshift scanned it ({detail}) while {during}, so the scan may have missed keys that changed primary; the run stopped between two atomic steps and nothing was skipped silently: rerun the same command once the resharding is done (it scans again and picks up every key still to do)")]
    Resharded {
        during: &'static str,
        detail: String,
    },
    #[error("another run holds the lock: {holder}; it expires in {expires_in_ms} ms unless renewed. Wait for it to finish; a lock whose runner died frees itself when it expires")]
    Locked { holder: String, expires_in_ms: i64 },
    #[error("this run lost the runner lock (it was not renewed in time, or was taken over); it stopped between two atomic steps: rerun the same command to resume")]
    LockLost,
    #[error("{0}")]
    Refused(String),
    #[error("invalid Redis URL: {0}")]
    BadUrl(String),
    /// A `KEYSHIFT_TLS_*` setting that cannot be used (engine/src/tls.rs).
    #[error("TLS setting {setting}: {problem}; {fix}")]
    Tls {
        setting: String,
        problem: String,
        fix: String,
    },
    #[error("no grid-positions run is recorded in the journal on this server: run `keyshift migrate grid-positions` first")]
    NoRun,
    #[error("journal record {key} is unreadable ({detail}); it was not written by this version of keyshift. Inspect it before deleting anything")]
    BadJournal { key: String, detail: String },
}

impl EngineError {
    /// A reply whose shape keyshift did not expect while `during`; `what`
    /// names the reply (or shows it).
    pub fn unexpected_reply(during: &'static str, what: impl Into<String>) -> EngineError {
        EngineError::Redis {
            during,
            source: redis::RedisError::from((
                redis::ErrorKind::Client,
                "unexpected reply shape",
                what.into(),
            )),
        }
    }

    /// The server did not answer (a timeout, a broken or refused
    /// connection), as opposed to answering with an error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            EngineError::Unreachable { .. } => true,
            EngineError::Redis { source, .. } => {
                source.is_timeout() || source.is_io_error() || source.is_connection_dropped()
            }
            _ => false,
        }
    }

    pub fn redis(during: &'static str) -> impl FnOnce(redis::RedisError) -> EngineError {
        move |source| {
            if let Some(denied) = no_permission(&source) {
                return EngineError::NoPermission { during, denied };
            }
            if source.code() == Some(RESHARDED_CODE) {
                let detail = source.detail().unwrap_or("slots moved").to_owned();
                return EngineError::Resharded { during, detail };
            }
            match out_of_memory(&source) {
                Some(refused) => EngineError::OutOfMemory { during, refused },
                None => EngineError::Redis { during, source },
            }
        }
    }
}

/// The code of the error a cluster SCAN step fails with when slots moved
/// under it (`connection::scan_raw`); [`EngineError::redis`] turns it into
/// [`EngineError::Resharded`].
pub const RESHARDED_CODE: &str = "KEYSHIFT_RESHARDED";

/// What to check next when a connection to `url` (already redacted)
/// failed with `error`: TLS advice for a `rediss://` URL.
pub(crate) fn unreachable_advice(url: &str, error: &str) -> &'static str {
    let lower = error.to_ascii_lowercase();
    if lower.contains("authentication failed") || lower.contains("wrongpass") {
        return "the server refused the user name or password: check the credentials in REDIS_URL / --redis (user:password@, URL-escaped)";
    }
    if !url.starts_with("rediss://") && !url.starts_with("rediss+") {
        return "check the URL, that the server is up, and the credentials in REDIS_URL / --redis";
    }
    if lower.contains("certificaterequired") || lower.contains("handshakefailure") {
        "the server wants a client certificate: set KEYSHIFT_TLS_CLIENT_CERT and KEYSHIFT_TLS_CLIENT_KEY to its PEM files"
    } else if lower.contains("certificate") {
        "the server's TLS certificate was not trusted: set KEYSHIFT_TLS_CA_CERT to the PEM file of the CA that signed it, and connect by a host name or IP address the certificate names"
    } else if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
        "that port did not answer TLS: use the server's tls-port with rediss://, or redis:// for a plain port"
    } else {
        "check the URL (rediss:// needs the server's tls-port), that the server is up, the TLS files in KEYSHIFT_TLS_CA_CERT / KEYSHIFT_TLS_CLIENT_CERT / KEYSHIFT_TLS_CLIENT_KEY, and the credentials in REDIS_URL / --redis"
    }
}

/// The ACL's refusal ("NOPERM this user has no permissions to run the
/// 'script|load' command") when `e` is, or a pipeline or script holds, one.
fn no_permission(e: &redis::RedisError) -> Option<String> {
    let detail = |d: Option<&str>| format!("NOPERM {}", d.unwrap_or("").trim_end_matches('.'));
    if e.code() == Some("NOPERM") {
        return Some(detail(e.detail()));
    }
    // A script's refused call comes back inside its error text.
    if let Some(at) = e.detail().and_then(|d| d.find("NOPERM ")) {
        return Some(
            e.detail().expect("found in it")[at..]
                .trim_end_matches('.')
                .to_owned(),
        );
    }
    let refused = e.clone().into_server_errors()?;
    let (_, first) = refused.iter().find(|(_, err)| err.code() == "NOPERM")?;
    Some(detail(first.details()))
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
    fn an_acl_refusal_names_the_shipped_users() {
        let noperm = server_error(
            b"-NOPERM this user has no permissions to run the 'script|load' command\r\n",
        );
        let e = EngineError::redis("loading the migration scripts")(noperm);
        let text = e.to_string();
        assert!(matches!(e, EngineError::NoPermission { .. }), "{text}");
        assert!(text.contains("'script|load'"), "{text}");
        assert!(
            text.contains("docs/acl/keyshift-migrate.acl")
                && text.contains("keyshift-readonly.acl"),
            "{text}"
        );
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
