//! keyshift's engine: what runs against production. No test harness code.
//!
//! - `keys`: the key grammar of DESIGN §1 (parse and build keys, escape globs).
//! - `plan`: the pure Phase 2 planner, legacy value -> hashes or quarantine.
//! - `store`: the one seam to a Redis deployment; `standalone` implements it
//!   for one server with a Lua script per user.
//! - `migrate`: the Phase 2 runner (SCAN, read, plan, write, report).
//! - `journal`: the run records and per-user outcomes kept in Redis, and
//!   starting or resuming a run; `lock`: the runner lock that keeps two
//!   writing runs apart; `keyspace`: the SCAN step and key count all share.
//! - `verify`: the invariants checked on a live server after a migration;
//!   `rollback`: undoing a run from its journal and backups; `cleanup`: the
//!   debris of an interrupted run.
//! - `schema`: the keyspace patterns as data (built-in TOML or `--schema FILE`);
//!   `validate` and `cleanup_legacy` classify a live keyspace with it.
//! - `order_placed`: Phase 1 (planner, store seam, standalone writer, runner, verify).
//! - `api`: the application's data layer, old and new (DESIGN §3).
//! - `error`: the engine's error type.
pub mod api;
pub mod cleanup;
pub mod cleanup_legacy;
pub mod error;
pub mod invariant;
pub mod journal;
pub mod keys;
pub mod keyspace;
pub mod lock;
pub mod migrate;
pub mod order_placed;
pub mod plan;
pub mod rollback;
pub mod schema;
pub mod standalone;
pub mod store;
pub mod validate;
pub mod verify;

pub use error::{EngineError, Result};

/// A Redis URL with any password replaced by `***`, for logs and reports.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let masked = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("***@{host}")
            }
        }
        None => authority.to_owned(),
    };
    match path {
        Some(p) => format!("{scheme}://{masked}/{p}"),
        None => format!("{scheme}://{masked}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_leave_redact_url() {
        assert_eq!(
            redact_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            redact_url("rediss://bot:s3cret@h:6380"),
            "rediss://bot:***@h:6380"
        );
        assert_eq!(redact_url("redis://s3cret@h"), "redis://***@h");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
