//! [`GridPositionsStore`] for one Redis server. Each batch is written in
//! one WATCH/MULTI/EXEC on a dedicated connection (`transaction`); a batch
//! whose EXEC aborts because a writer touched one of its keys is written
//! again user by user with a Lua script, each user atomic on its own.

use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};

use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::error::{EngineError, Result};
use crate::grid_positions::store::{
    GridPositionsStore, PositionWrite, RollbackOutcome, RunContext, UserRollback, UserWrite,
    WriteOutcome,
};
use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::run::journal::{sha256_hex, Outcome};

const MIGRATE_USER: &str = include_str!("../../lua/migrate_user.lua");
const ROLLBACK_USER: &str = include_str!("../../lua/rollback_user.lua");

pub use crate::connection::{connect, RESPONSE_TIMEOUT_ENV};
use crate::connection::{connect_node, RedisConn};

mod transaction;

/// The most positions a user may have and still be written inside a
/// WATCH / MULTI / EXEC; a larger one is written by the per-user script.
/// WATCH of 1,000 keys took the server 4.5 ms on Redis 7.0 and grows with
/// the square of the keys; 200 keep one WATCH well under a millisecond.
const WATCHED_POSITIONS_MAX: usize = 200;

/// Dedicated connections for WATCH/MULTI/EXEC: a watch belongs to a
/// connection, so two batches never share one.
struct Pool {
    give: mpsc::UnboundedSender<MultiplexedConnection>,
    take: Mutex<mpsc::UnboundedReceiver<MultiplexedConnection>>,
}

#[derive(Clone)]
pub struct StandaloneStore {
    conn: RedisConn,
    /// Write every user with the per-user script, never a batch transaction.
    scripts_only: bool,
    pool: Arc<Pool>,
    migrate_sha: String,
    rollback_sha: String,
}

impl StandaloneStore {
    /// Transactions open at once: enough that the server always has the
    /// next one queued while the client plans.
    pub const DEFAULT_TRANSACTIONS: usize = 32;

    /// Connects `transactions` dedicated connections beside `conn`: the
    /// transactions that may be open at once.
    pub async fn open(url: &str, conn: RedisConn, transactions: usize) -> Result<Self> {
        let (give, take) = mpsc::unbounded_channel();
        for _ in 0..transactions.max(1) {
            give.send(connect_node(url).await?).expect("receiver alive");
        }
        let mut store = Self {
            conn,
            scripts_only: false,
            pool: Arc::new(Pool {
                give,
                take: Mutex::new(take),
            }),
            migrate_sha: redis::Script::new(MIGRATE_USER).get_hash().to_owned(),
            rollback_sha: redis::Script::new(ROLLBACK_USER).get_hash().to_owned(),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// Writes each user with the per-user Lua script only: slower, but one
    /// script call per user is all a server must allow (no MULTI/WATCH).
    pub fn scripts_only(mut self) -> Self {
        self.scripts_only = true;
        self
    }

    /// One transaction on a pooled connection, or the script when EXEC aborts.
    async fn migrate_chunk(
        &self,
        ctx: &RunContext,
        chunk: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        let mut conn = self
            .pool
            .take
            .lock()
            .await
            .recv()
            .await
            .expect("pool sender alive");
        let result = transaction::migrate_batch(&mut conn, ctx, chunk).await;
        match &result {
            // An unanswered server: the run stops (exit 4), and asking it
            // to DISCARD would only wait out the timeout twice more.
            Err(e) if e.is_unreachable() => {}
            Err(_) => {
                // Leave no MULTI or WATCH behind on a pooled connection.
                let _ = redis::cmd("DISCARD").query_async::<()>(&mut conn).await;
                let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
                let _ = self.pool.give.send(conn);
            }
            Ok(_) => {
                let _ = self.pool.give.send(conn);
            }
        }
        match result? {
            Some(decisions) => self.settle(ctx, chunk, decisions).await,
            None => self.migrate_users_by_script(ctx, chunk).await,
        }
    }

    /// Turns a committed transaction's decisions into outcomes, sending the
    /// users it left to the script.
    async fn settle(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
        decisions: Vec<transaction::Decision>,
    ) -> Result<Vec<WriteOutcome>> {
        let by_script: Vec<UserWrite> = users
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| **d == transaction::Decision::ByScript)
            .map(|(u, _)| u.clone())
            .collect();
        let mut scripted = self
            .migrate_users_by_script(ctx, &by_script)
            .await?
            .into_iter();
        Ok(decisions
            .into_iter()
            .map(|d| match d {
                transaction::Decision::Write { pttl } => WriteOutcome::Migrated { pttl_ms: pttl },
                transaction::Decision::Done(o) => o,
                transaction::Decision::ByScript => {
                    scripted.next().expect("one outcome per scripted user")
                }
            })
            .collect())
    }

    /// The per-user Lua path: every user atomic on its own.
    async fn migrate_users_by_script(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        let args =
            |pipe: &mut redis::Pipeline, user: &UserWrite| migrate_user_args(pipe, ctx, user);
        self.script_per_user(
            &self.migrate_sha,
            users,
            "migrating users",
            args,
            parse_write_outcome,
        )
        .await
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
        for src in [MIGRATE_USER, ROLLBACK_USER] {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query_async(&mut self.conn)
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
        let mut conn = self.conn.clone();
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

impl GridPositionsStore for StandaloneStore {
    fn journal_conn(&self) -> &RedisConn {
        &self.conn
    }

    async fn migrate_users(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        if self.scripts_only {
            return self.migrate_users_by_script(ctx, users).await;
        }
        // A large user goes to the script alone, one round trip each:
        // WATCH over its keys would cost the server the square of them
        // (a 5,000-position user: 225 ms in one WATCH; 20,000: 3 s), and
        // a pipeline of large scripts runs back to back without letting
        // another client in between.
        let (large, small): (Vec<usize>, Vec<usize>) =
            (0..users.len()).partition(|&i| users[i].positions.len() > WATCHED_POSITIONS_MAX);
        let small_users: Vec<UserWrite> = small.iter().map(|&i| users[i].clone()).collect();
        let chunks = small_users
            .chunks(transaction::USERS_PER_TRANSACTION)
            .map(|chunk| self.migrate_chunk(ctx, chunk));
        let done = futures_util::future::try_join_all(chunks).await?;
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; users.len()];
        for (i, outcome) in small.into_iter().zip(done.into_iter().flatten()) {
            outcomes[i] = Some(outcome);
        }
        for i in large {
            let one = self.migrate_users_by_script(ctx, std::slice::from_ref(&users[i]));
            outcomes[i] = one.await?.pop();
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("one outcome per user"))
            .collect())
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

/// `migrate_user.lua`'s keys and arguments for `user` (the layout is in
/// the script's header).
fn migrate_user_args(pipe: &mut redis::Pipeline, ctx: &RunContext, user: &UserWrite) {
    pipe.arg(4 + user.positions.len())
        .arg(&user.legacy_key)
        .arg(&ctx.outcomes_key)
        .arg(&user.backup_key)
        .arg(&user.index_key);
    for p in &user.positions {
        pipe.arg(&p.key);
    }
    pipe.arg(&user.expected)
        .arg(ctx.backup_ttl_secs)
        .arg(user.skipped_closed)
        .arg(sha256_hex(&user.expected));
    for p in &user.positions {
        // The metadata travels with the fields so the script sets each
        // hash with one HSET.
        pipe.arg(&p.member).arg(p.fields.len() + METADATA_PAIRS);
        arg_hash_pairs(pipe, p, ctx, &user.legacy_key);
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

fn parse_write_outcome(reply: Value) -> Result<WriteOutcome> {
    let Value::Array(parts) = reply else {
        return Err(unexpected("migrate reply"));
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match (parts.first().and_then(text).as_deref(), parts.get(1)) {
        (Some("migrated"), Some(Value::Int(pttl))) => Ok(WriteOutcome::Migrated { pttl_ms: *pttl }),
        (Some("changed"), _) => Ok(WriteOutcome::Changed),
        (Some("conflict"), Some(key)) => Ok(WriteOutcome::Conflict {
            key: text(key).unwrap_or_default(),
        }),
        _ => Err(unexpected("migrate reply")),
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
