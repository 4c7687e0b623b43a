//! [`GridPositionsStore`] for one Redis server. Each batch is written in
//! one WATCH/MULTI/EXEC on a dedicated connection (`transaction`); a batch
//! whose EXEC aborts because a writer touched one of its keys is written
//! again user by user with a Lua script, each user atomic on its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::error::{EngineError, Result};
use crate::journal::{run_key, runs_key, RunRecord};
use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::store::{GridPositionsStore, LegacyRead, RunContext, UserWrite, WriteOutcome};

const READ_LEGACY: &str = include_str!("../lua/read_legacy.lua");
const MIGRATE_USER: &str = include_str!("../lua/migrate_user.lua");

/// Large pipelines legitimately take seconds; redis-rs's default (500 ms)
/// would abort a healthy run.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a multiplexed connection with keyshift's timeouts.
pub async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url).map_err(|e| EngineError::BadUrl(e.to_string()))?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|source| EngineError::Unreachable {
            url: crate::redact_url(url),
            source,
        })
}

mod transaction;

/// Dedicated connections for WATCH/MULTI/EXEC: a watch belongs to a
/// connection, so two batches never share one.
struct Pool {
    give: mpsc::UnboundedSender<MultiplexedConnection>,
    take: Mutex<mpsc::UnboundedReceiver<MultiplexedConnection>>,
}

#[derive(Clone)]
pub struct StandaloneStore {
    conn: MultiplexedConnection,
    pool: Arc<Pool>,
    read_sha: String,
    migrate_sha: String,
}

impl StandaloneStore {
    /// Connects `transactions` dedicated connections beside `conn` (one per
    /// batch in flight).
    pub async fn open(url: &str, conn: MultiplexedConnection, transactions: usize) -> Result<Self> {
        let (give, take) = mpsc::unbounded_channel();
        for _ in 0..transactions.max(1) {
            give.send(connect(url).await?).expect("receiver alive");
        }
        let mut store = Self {
            conn,
            pool: Arc::new(Pool {
                give,
                take: Mutex::new(take),
            }),
            read_sha: redis::Script::new(READ_LEGACY).get_hash().to_owned(),
            migrate_sha: redis::Script::new(MIGRATE_USER).get_hash().to_owned(),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// The per-user Lua path: every user atomic on its own.
    async fn migrate_users_by_script(&self, ctx: &RunContext, users: &[UserWrite]) -> Result<Vec<WriteOutcome>> {
        let mut pipe = redis::pipe();
        for user in users {
            let cmd = pipe.cmd("EVALSHA").arg(&self.migrate_sha).arg(4 + user.positions.len());
            cmd.arg(&user.legacy_key)
                .arg(&ctx.outcomes_key)
                .arg(&user.backup_key)
                .arg(&user.index_key);
            for p in &user.positions {
                cmd.arg(&p.key);
            }
            cmd.arg(&user.expected).arg(ctx.backup_ttl_secs).arg(user.skipped_closed);
            for p in &user.positions {
                // The metadata travels with the fields so the script sets
                // each hash with one HSET.
                cmd.arg(&p.member).arg(p.fields.len() + 2);
                for (f, v) in &p.fields {
                    cmd.arg(f).arg(v);
                }
                cmd.arg(META_MIGRATED_AT)
                    .arg(&ctx.migrated_at)
                    .arg(META_MIGRATED_FROM)
                    .arg(&user.legacy_key);
            }
        }
        let replies = self.query_scripts(&pipe, "migrating users").await?;
        replies.into_iter().map(parse_write_outcome).collect()
    }

    pub fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    async fn load_scripts(&mut self) -> Result<()> {
        for src in [READ_LEGACY, MIGRATE_USER] {
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
    /// EVALSHA of the first attempt failed, so nothing runs twice.
    async fn query_scripts(&self, pipe: &redis::Pipeline, during: &'static str) -> Result<Vec<Value>> {
        let mut conn = self.conn.clone();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut again = self.clone();
                again.load_scripts().await?;
                pipe.query_async(&mut conn).await.map_err(EngineError::redis(during))
            }
            other => other.map_err(EngineError::redis(during)),
        }
    }
}

impl GridPositionsStore for StandaloneStore {
    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<String>)> {
        let mut conn = self.conn.clone();
        redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(EngineError::redis("scanning for legacy keys"))
    }

    async fn read_legacy(&self, keys: &[String]) -> Result<Vec<LegacyRead>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA").arg(&self.read_sha).arg(keys.len()).arg(keys);
        let mut replies = self.query_scripts(&pipe, "reading legacy keys").await?;
        let Some(Value::Array(items)) = replies.pop() else {
            return Err(unexpected("read_legacy reply"));
        };
        keys.iter()
            .zip(items)
            .map(|(key, item)| {
                let Value::Array(parts) = item else {
                    return Err(unexpected("read_legacy item"));
                };
                let mut parts = parts.into_iter();
                let redis_type = match parts.next() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Value::SimpleString(s)) => s,
                    _ => return Err(unexpected("read_legacy type")),
                };
                let value = match parts.next() {
                    Some(Value::BulkString(b)) => Some(b),
                    _ => None,
                };
                Ok(LegacyRead {
                    key: key.clone(),
                    redis_type,
                    value,
                })
            })
            .collect()
    }

    async fn migrate_users(&self, ctx: &RunContext, users: &[UserWrite]) -> Result<Vec<WriteOutcome>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.take.lock().await.recv().await.expect("pool sender alive");
        let mut outcomes = Vec::with_capacity(users.len());
        let mut result = Ok(());
        for chunk in users.chunks(transaction::USERS_PER_TRANSACTION) {
            match transaction::migrate_batch(&mut conn, ctx, chunk).await {
                Ok(Some(done)) => outcomes.extend(done),
                Ok(None) => match self.migrate_users_by_script(ctx, chunk).await {
                    Ok(done) => outcomes.extend(done),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
                Err(e) => {
                    // Leave no MULTI or WATCH behind on a pooled connection.
                    let _ = redis::cmd("DISCARD").query_async::<()>(&mut conn).await;
                    let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
                    result = Err(e);
                    break;
                }
            }
        }
        let _ = self.pool.give.send(conn);
        result.map(|()| outcomes)
    }


    async fn record_outcomes(&self, ctx: &RunContext, outcomes: &[(String, String)]) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(&ctx.outcomes_key)
            .arg(outcomes)
            .query_async::<()>(&mut conn)
            .await
            .map_err(EngineError::redis("recording outcomes in the journal"))
    }

    async fn save_run(&self, run: &RunRecord) -> Result<()> {
        let json = serde_json::to_string(run).expect("run record serialises");
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .set(run_key(&run.run_id), json)
            .zadd(runs_key(&run.migration), &run.run_id, run.started_ms)
            .query_async::<()>(&mut conn)
            .await
            .map_err(EngineError::redis("saving the run record"))
    }

    async fn key_count(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .map_err(EngineError::redis("counting keys"))
    }
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

fn unexpected(what: &str) -> EngineError {
    EngineError::Redis {
        during: "decoding a script reply",
        source: redis::RedisError::from((redis::ErrorKind::Client, "unexpected reply shape", what.to_owned())),
    }
}
