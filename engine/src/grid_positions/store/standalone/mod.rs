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

/// `hash-max-listpack-entries` and `-value`, when CONFIG GET is allowed:
/// one round trip, by pattern (a server before 7.0 names neither).
async fn listpack_limits(conn: &RedisConn) -> Option<ListpackLimits> {
    let reply: Vec<(String, String)> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("hash-max-listpack-*")
        .query_async(&mut conn.clone())
        .await
        .ok()?;
    let get = |name: &str| reply.iter().find(|(n, _)| n == name)?.1.parse().ok();
    Some(ListpackLimits {
        entries: get("hash-max-listpack-entries")?,
        value: get("hash-max-listpack-value")?,
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
        let mut pipe = redis::pipe();
        for u in users {
            rollback_user_args(pipe.cmd("EVALSHA").arg(&self.rollback_sha), journal_key, u);
        }
        let replies = self.query_scripts(&pipe, "rolling back users").await?;
        replies.into_iter().map(parse_rollback_outcome).collect()
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

/// The metadata pairs [`hash_pairs`] adds after a position's fields.
const METADATA_PAIRS: usize = 2;

/// What a migration writes into a position hash: the planned field/value
/// pairs, then the metadata naming the run and the legacy key, by which
/// rollback, cleanup and the cluster's undo tell the run's hashes. Every
/// store writes a hash from this, as HSET arguments or a RESTORE payload.
pub(in crate::grid_positions::store) fn hash_pairs<'a>(
    p: &'a PositionWrite,
    ctx: &'a RunContext,
    legacy_key: &'a str,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    let fields = p.fields.iter().map(|(f, v)| (f.as_bytes(), v.as_bytes()));
    let metadata = [
        (META_MIGRATED_AT.as_bytes(), ctx.migrated_at.as_bytes()),
        (META_MIGRATED_FROM.as_bytes(), legacy_key.as_bytes()),
    ];
    fields.chain(metadata)
}

/// Adds [`hash_pairs`] to the last command of `pipe`, as HSET takes them.
pub(in crate::grid_positions::store) fn arg_hash_pairs(
    pipe: &mut redis::Pipeline,
    p: &PositionWrite,
    ctx: &RunContext,
    legacy_key: &str,
) {
    for (f, v) in hash_pairs(p, ctx, legacy_key) {
        pipe.arg(f).arg(v);
    }
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
