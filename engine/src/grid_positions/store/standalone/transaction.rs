//! The fast path of the standalone writer: a whole batch of users in one
//! WATCH / MULTI / EXEC on a dedicated connection, with native commands
//! only. EXEC aborts if any watched key (a legacy key or any key the batch
//! would create) changed since the reads, so a concurrent writer never
//! loses an update; the caller then falls back to the per-user Lua script.
//! Measured on Redis 7.0: the script's per-command and argument overheads
//! roughly double the server time per user, which this path avoids.

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::{arg_hash_pairs, migrated_outcome};
use crate::error::{EngineError, Result};
use crate::grid_positions::store::{RunContext, UserWrite, WriteOutcome};

/// Redis checks each newly watched key against the connection's watch list,
/// so WATCH costs grow with the square of the keys in one transaction, while
/// each transaction adds its own round trip and MULTI/EXEC. Measured with
/// `keyshift bench --migration` at 100k users (server CPU seconds against
/// the write floor's, same run): 8 users 1.98x, 4 users 1.87x, 2 users 2.07x.
pub const USERS_PER_TRANSACTION: usize = 4;

/// What the transaction decided for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Written by the transaction (once EXEC succeeded), TTL carried over.
    Write { pttl: i64 },
    /// Settled without a write.
    Done(WriteOutcome),
    /// A key it would create exists: the per-user script decides and
    /// reports which.
    ByScript,
}

/// Runs one batch; `Ok(None)` when EXEC aborted because a watched key changed.
pub async fn migrate_batch(
    conn: &mut MultiplexedConnection,
    ctx: &RunContext,
    users: &[UserWrite],
) -> Result<Option<Vec<Decision>>> {
    let (decided, now_ms) = read_under_watch(conn, users).await?;
    if !decided.iter().any(|d| matches!(d, Decision::Write { .. })) {
        redis::cmd("UNWATCH")
            .query_async::<()>(conn)
            .await
            .map_err(EngineError::redis("releasing a watch"))?;
        return Ok(Some(decided));
    }
    // Round trip 2: every write of the batch, atomically.
    let mut tx = redis::pipe();
    tx.cmd("MULTI");
    for (u, d) in users.iter().zip(&decided) {
        if let Decision::Write { pttl } = d {
            write_user(&mut tx, ctx, u, *pttl, now_ms);
        }
    }
    tx.cmd("EXEC");
    let replies: Vec<Value> = tx
        .query_async(conn)
        .await
        .map_err(EngineError::redis("writing a batch"))?;
    match replies.last() {
        Some(Value::Nil) => Ok(None),
        Some(Value::Array(_)) => Ok(Some(decided)),
        _ => Err(bad_reply("EXEC")),
    }
}

/// Round trip 1: watches every key the batch reads or would create, then
/// reads under the watch; the decisions and the server's clock (ms).
async fn read_under_watch(
    conn: &mut MultiplexedConnection,
    users: &[UserWrite],
) -> Result<(Vec<Decision>, i64)> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut watch = redis::cmd("WATCH");
    for u in users {
        watch
            .arg(&u.legacy_key)
            .arg(&u.backup_key)
            .arg(&u.index_key);
        for p in &u.positions {
            watch.arg(&p.key);
        }
    }
    pipe.add_command(watch);
    for u in users {
        pipe.get(&u.legacy_key).pttl(&u.legacy_key);
        let exists = pipe.cmd("EXISTS").arg(&u.backup_key).arg(&u.index_key);
        for p in &u.positions {
            exists.arg(&p.key);
        }
    }
    pipe.cmd("TIME");
    let replies: Vec<redis::RedisResult<Value>> = pipe
        .query_async(conn)
        .await
        .map_err(EngineError::redis("reading a batch under WATCH"))?;
    let mut replies = replies.into_iter();
    replies
        .next()
        .transpose()
        .map_err(EngineError::redis("watching a batch"))?;
    let decided = users
        .iter()
        .map(|u| {
            let value = replies.next().and_then(|r| r.ok());
            let pttl: i64 = int(replies.next());
            let existing = int(replies.next());
            decide(u, value, pttl, existing)
        })
        .collect();
    let (secs, micros): (i64, i64) = replies
        .next()
        .and_then(|r| r.ok())
        .and_then(|v| redis::from_redis_value(v).ok())
        .ok_or_else(|| bad_reply("TIME"))?;
    Ok((decided, secs * 1000 + micros / 1000))
}

/// The decision for `u` from its legacy value, the value's PTTL and how
/// many of the keys it would create exist.
fn decide(u: &UserWrite, value: Option<Value>, pttl: i64, existing: i64) -> Decision {
    match value {
        Some(Value::BulkString(v)) if v == u.expected && existing == 0 => Decision::Write { pttl },
        // The script path names the key that is in the way.
        Some(Value::BulkString(v)) if v == u.expected => Decision::ByScript,
        _ => Decision::Done(WriteOutcome::Changed),
    }
}

/// Queues one user's whole migration in the transaction: hashes, index,
/// backup, the delete of the legacy key, and the outcome.
fn write_user(tx: &mut redis::Pipeline, ctx: &RunContext, u: &UserWrite, pttl: i64, now_ms: i64) {
    // An absolute expiry carries the TTL over exactly, however long the
    // round trips took.
    let expire_at = (pttl > 0).then(|| now_ms + pttl);
    for p in &u.positions {
        arg_hash_pairs(tx.cmd("HSET").arg(&p.key), p, ctx, &u.legacy_key);
        if let Some(at) = expire_at {
            tx.cmd("PEXPIREAT").arg(&p.key).arg(at);
        }
    }
    if !u.positions.is_empty() {
        let cmd = tx.cmd("SADD").arg(&u.index_key);
        for p in &u.positions {
            cmd.arg(&p.member);
        }
        if let Some(at) = expire_at {
            tx.cmd("PEXPIREAT").arg(&u.index_key).arg(at);
        }
    }
    tx.cmd("SET")
        .arg(&u.backup_key)
        .arg(&u.expected)
        .arg("EX")
        .arg(ctx.backup_ttl_secs);
    tx.cmd("DEL").arg(&u.legacy_key);
    tx.cmd("HSET")
        .arg(&ctx.outcomes_key)
        .arg(&u.legacy_key)
        .arg(migrated_outcome(u, pttl, now_ms));
}

fn int(reply: Option<redis::RedisResult<Value>>) -> i64 {
    match reply {
        Some(Ok(Value::Int(i))) => i,
        _ => -2,
    }
}

fn bad_reply(what: &str) -> EngineError {
    EngineError::unexpected_reply("decoding a transaction reply", what)
}
