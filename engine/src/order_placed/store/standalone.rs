//! [`OrderPlacedStore`] for one Redis server: one Lua script per key,
//! pipelined a batch at a time.
//!
//! Why a script per key: the decision (the legacy hash still as planned,
//! the target still absent or still equal) compares two hashes' contents,
//! which a script does server-side in the same atomic step as RENAME / DEL;
//! the target's absence must be checked in that step because RENAME
//! overwrites. A script here makes four or five calls per key with short
//! arguments, so grouping keys per call (as Phase 2 does, whose arguments
//! are whole hashes) has little to win.

use crate::connection::RedisConn;
use redis::Value;

use crate::error::{EngineError, Result};

use super::{KeyRollback, KeyWrite, OrderPlacedStore, WriteKind, WriteOutcome};

const MOVE_ORDER_PLACED: &str = include_str!("../lua/move_order_placed.lua");
const ROLLBACK_ORDER_PLACED: &str = include_str!("../lua/rollback_order_placed.lua");

#[derive(Clone)]
pub struct StandaloneOrderPlaced {
    conn: RedisConn,
    sha: String,
}

impl StandaloneOrderPlaced {
    /// Wraps a connection from [`crate::grid_positions::store::standalone::connect`] and loads the
    /// move script.
    pub async fn open(conn: RedisConn) -> Result<Self> {
        let store = Self {
            conn,
            sha: redis::Script::new(MOVE_ORDER_PLACED).get_hash().to_owned(),
        };
        store.load_script().await?;
        Ok(store)
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    async fn load_script(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(MOVE_ORDER_PLACED)
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(EngineError::redis("loading the order-placed move script"))
    }
}

impl OrderPlacedStore for StandaloneOrderPlaced {
    fn journal_conn(&self) -> &RedisConn {
        &self.conn
    }

    async fn rollback_keys(&self, journal_key: &str, keys: &[KeyRollback]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Rollbacks are rare: plain EVAL spares a script cache to keep loaded.
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("EVAL")
                .arg(ROLLBACK_ORDER_PLACED)
                .arg(3)
                .arg(&k.target_key)
                .arg(&k.legacy_key)
                .arg(journal_key)
                .arg(if k.moved { "moved" } else { "dropped" })
                .arg(k.expires_at_ms)
                .arg(if k.force { "force" } else { "check" });
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn)
            .await
            .map_err(EngineError::redis("rolling back order-placed keys"))
    }

    async fn apply(&self, outcomes_key: &str, writes: &[KeyWrite]) -> Result<Vec<WriteOutcome>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for w in writes {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&self.sha)
                .arg(3)
                .arg(&w.legacy_key)
                .arg(&w.target_key)
                .arg(outcomes_key)
                .arg(match w.kind {
                    WriteKind::Move => "move",
                    WriteKind::DropEqual => "drop",
                })
                .arg(&w.digest)
                .arg(w.expected.len());
            for (f, v) in &w.expected {
                cmd.arg(f).arg(v);
            }
        }
        let mut conn = self.conn.clone();
        let replies = match pipe.query_async::<Vec<Value>>(&mut conn).await {
            // The server lost its scripts (restart, SCRIPT FLUSH): every
            // EVALSHA failed, so nothing ran; load and send once more.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_script().await?;
                pipe.query_async(&mut conn).await
            }
            other => other,
        }
        .map_err(EngineError::redis("moving order-placed keys"))?;
        replies.into_iter().map(parse_outcome).collect()
    }
}

fn parse_outcome(reply: Value) -> Result<WriteOutcome> {
    let bad = || {
        EngineError::unexpected_reply(
            "decoding the order-placed move script's reply",
            format!("{reply:?}"),
        )
    };
    let Value::Array(parts) = &reply else {
        return Err(bad());
    };
    let state = match parts.first() {
        Some(Value::BulkString(b)) => b.as_slice(),
        _ => return Err(bad()),
    };
    match (state, parts.get(1)) {
        (b"moved", Some(Value::Int(pttl))) => Ok(WriteOutcome::Moved { pttl_ms: *pttl }),
        (b"dropped", _) => Ok(WriteOutcome::Dropped),
        (b"changed", _) => Ok(WriteOutcome::Changed),
        _ => Err(bad()),
    }
}
