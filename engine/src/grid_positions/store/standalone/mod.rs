//! [`GridPositionsStore`] for one Redis server: each user's migration is
//! atomic because it runs inside one Lua script (`migrate`, with
//! `lua/migrate_users.lua`), which covers a small group of users per call,
//! and each position hash is written as one RESTORE of a payload made here
//! (`dump`) where the server allows it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redis::Value;

use crate::error::{EngineError, Result};
use crate::grid_positions::store::{
    GridPositionsStore, PositionWrite, RollbackOutcome, RunContext, UserRollback, UserWrite,
    WriteOutcome,
};
use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::run::journal::{sha256_hex, Outcome};

const MIGRATE_USERS: &str = include_str!("../../lua/migrate_users.lua");
const ROLLBACK_USER: &str = include_str!("../../lua/rollback_user.lua");

pub use crate::connection::{connect, RESPONSE_TIMEOUT_ENV};
use crate::connection::{connect_node, RedisConn};

pub mod dump;
mod migrate;

use dump::ListpackLimits;

#[derive(Clone)]
pub struct StandaloneStore {
    /// SCAN, the legacy reads, the journal and rollback.
    conn: RedisConn,
    /// The migration's script calls, on a connection of their own: the
    /// server answers a connection's commands in order, so the next
    /// batch's reads would otherwise wait behind this batch's writes, and
    /// the client would plan nothing while the server writes.
    writes: RedisConn,
    migrate_sha: String,
    rollback_sha: String,
    /// Hashes go as RESTORE payloads; cleared for good once the server
    /// refuses one (an ACL without RESTORE, a server older than Redis 7.0:
    /// the payloads say RDB version 10). The refusal undoes its user, so
    /// trying is safe and needs no INFO, which ACL users may lack.
    restore: Arc<AtomicBool>,
    /// The server's listpack limits for hashes, when CONFIG GET is allowed;
    /// without them every hash goes as a plain RDB hash.
    listpack: Option<ListpackLimits>,
}

impl StandaloneStore {
    /// Connects the write connection, loads the scripts and reads the
    /// server's listpack limits for hashes.
    pub async fn open(url: &str, conn: RedisConn) -> Result<Self> {
        let mut store = Self {
            conn,
            writes: connect_node(url).await?.into(),
            migrate_sha: redis::Script::new(MIGRATE_USERS).get_hash().to_owned(),
            rollback_sha: redis::Script::new(ROLLBACK_USER).get_hash().to_owned(),
            restore: Arc::new(AtomicBool::new(true)),
            listpack: None,
        };
        store.load_scripts().await?;
        store.listpack = listpack_limits(&store.conn).await;
        Ok(store)
    }

    /// Writes every hash with HSET inside the script, never RESTORE: the
    /// path a server without RESTORE gets; tests run both.
    pub fn without_restore(self) -> Self {
        self.restore.store(false, Ordering::Relaxed);
        self
    }

    /// One call of the script `sha` per user, all in one pipeline: `args`
    /// adds a user's key count, keys and arguments, `decode` reads its
    /// reply. Outcomes in user order.
    async fn script_per_user<U, T>(
        &self,
        sha: &str,
        users: &[U],
        during: &'static str,
        args: impl Fn(&mut redis::Pipeline, &U),
        decode: fn(Value) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut pipe = redis::pipe();
        for user in users {
            args(pipe.cmd("EVALSHA").arg(sha), user);
        }
        let replies = self.query_scripts(&pipe, during).await?;
        replies.into_iter().map(decode).collect()
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    async fn load_scripts(&mut self) -> Result<()> {
        for src in [MIGRATE_USERS, ROLLBACK_USER] {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query_async(&mut self.writes)
                .await
                .map_err(EngineError::redis("loading the migration scripts"))?;
        }
        Ok(())
    }

    /// Runs a pipeline; if the server lost its scripts (restart, SCRIPT
    /// FLUSH) they are loaded again and the pipeline sent once more. Every
    /// EVALSHA of the first attempt failed, so nothing runs twice. An empty
    /// pipeline (a batch with no user) sends nothing.
    async fn query_scripts(
        &self,
        pipe: &redis::Pipeline,
        during: &'static str,
    ) -> Result<Vec<Value>> {
        if pipe.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.writes.clone();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut again = self.clone();
                again.load_scripts().await?;
                pipe.query_async(&mut conn)
                    .await
                    .map_err(EngineError::redis(during))
            }
            other => other.map_err(EngineError::redis(during)),
        }
    }
}

/// `hash-max-listpack-entries` and `-value`, when CONFIG GET is allowed.
async fn listpack_limits(conn: &RedisConn) -> Option<ListpackLimits> {
    let get = async |name: &str| -> Option<usize> {
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut conn.clone())
            .await
            .ok()?;
        reply.get(1)?.parse().ok()
    };
    Some(ListpackLimits {
        entries: get("hash-max-listpack-entries").await?,
        value: get("hash-max-listpack-value").await?,
    })
}

impl GridPositionsStore for StandaloneStore {
    fn journal_conn(&self) -> &RedisConn {
        &self.conn
    }

    async fn migrate_users(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        self.migrate_in_groups(ctx, users).await
    }

    async fn rollback_users(
        &self,
        journal_key: &str,
        users: &[UserRollback],
    ) -> Result<Vec<RollbackOutcome>> {
        let args =
            |pipe: &mut redis::Pipeline, u: &UserRollback| rollback_user_args(pipe, journal_key, u);
        self.script_per_user(
            &self.rollback_sha,
            users,
            "rolling back users",
            args,
            parse_rollback_outcome,
        )
        .await
    }
}

/// `rollback_user.lua`'s keys and arguments for `u`.
fn rollback_user_args(pipe: &mut redis::Pipeline, journal_key: &str, u: &UserRollback) {
    pipe.arg(4 + u.hashes.len())
        .arg(&u.legacy_key)
        .arg(&u.backup_key)
        .arg(&u.index_key)
        .arg(journal_key)
        .arg(&u.hashes)
        .arg(u.expires_at_ms)
        .arg(if u.force { "force" } else { "check" })
        .arg(&u.members);
}

/// The metadata pairs [`arg_hash_pairs`] adds after a position's fields.
const METADATA_PAIRS: usize = 2;

/// Adds what a migration writes into a position hash to the last command
/// of `pipe`: the planned field/value pairs, then the metadata naming the
/// run and the legacy key, by which rollback, cleanup and the cluster's
/// undo tell the run's hashes. Every store writes a hash through this.
pub(in crate::grid_positions::store) fn arg_hash_pairs(
    pipe: &mut redis::Pipeline,
    p: &PositionWrite,
    ctx: &RunContext,
    legacy_key: &str,
) {
    for (f, v) in &p.fields {
        pipe.arg(f).arg(v);
    }
    pipe.arg(META_MIGRATED_AT)
        .arg(&ctx.migrated_at)
        .arg(META_MIGRATED_FROM)
        .arg(legacy_key);
}

/// The journal's `migrated` outcome of `u`, as JSON: its legacy TTL
/// `pttl` (ms) as read at server time `at` (ms), and the digest of the
/// legacy value as the runner read it, the bytes the backup holds.
pub(in crate::grid_positions::store) fn migrated_outcome(
    u: &UserWrite,
    pttl: i64,
    at: i64,
) -> String {
    let outcome = Outcome::Migrated {
        positions: u.positions.len(),
        skipped: u.skipped_closed,
        pttl,
        at,
        digest: sha256_hex(&u.expected),
    };
    serde_json::to_string(&outcome).expect("outcome serialises")
}

fn parse_rollback_outcome(reply: Value) -> Result<RollbackOutcome> {
    let (state, detail): (String, Value) =
        redis::from_redis_value(reply).map_err(|_| unexpected("rollback reply"))?;
    let deleted = redis::from_redis_value::<i64>(detail).unwrap_or(0);
    Ok(match state.as_str() {
        "restored" => RollbackOutcome::Restored { deleted },
        "expired" => RollbackOutcome::Expired { deleted },
        "changed" => RollbackOutcome::Changed,
        "no_backup" => RollbackOutcome::NoBackup,
        _ => return Err(unexpected("rollback reply")),
    })
}

/// A script reply of another shape than its script returns.
pub(in crate::grid_positions::store) fn unexpected(what: &str) -> EngineError {
    EngineError::unexpected_reply("decoding a script reply", what)
}
