//! Reads over the whole keyspace that the stores, `verify`, `validate` and
//! the cleanups share: one SCAN step, and the key count for progress bars.

use redis::aio::ConnectionLike;
use redis::FromRedisValue;

use crate::error::{EngineError, Result};

/// One SCAN step from `cursor`, over the keys matching `pattern` (already
/// glob-escaped) or over every key; `K` is `String` or raw `Vec<u8>` names.
pub async fn scan_step<K: FromRedisValue, C: ConnectionLike + Clone + Send>(
    conn: &C,
    cursor: u64,
    pattern: Option<&str>,
    count: usize,
    during: &'static str,
) -> Result<(u64, Vec<K>)> {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor);
    if let Some(pattern) = pattern {
        cmd.arg("MATCH").arg(pattern);
    }
    let mut c = conn.clone();
    cmd.arg("COUNT")
        .arg(count)
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis(during))
}

/// Keys on the server (`DBSIZE`), for a progress bar.
pub async fn key_count<C: ConnectionLike + Clone + Send>(conn: &C) -> Result<u64> {
    let mut c = conn.clone();
    redis::cmd("DBSIZE")
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("counting keys"))
}

/// What a typed read found for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedRead {
    /// The read command's reply (`Nil` for a missing key under GET).
    Value(redis::Value),
    /// The key holds another type: its TYPE reply (`none` if it vanished
    /// between the two round trips).
    OtherType(String),
}

/// Reads every key with `read` (GET, HGETALL, ...) in one pipeline. A key
/// of another type answers WRONGTYPE; only those few are asked their TYPE,
/// in a second round trip.
pub async fn read_expecting<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &[String],
    read: &str,
    during: &'static str,
) -> Result<Vec<TypedRead>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in keys {
        pipe.cmd(read).arg(key);
    }
    let mut c = conn.clone();
    let replies: Vec<redis::RedisResult<redis::Value>> = pipe
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis(during))?;
    let mut reads = Vec::with_capacity(keys.len());
    let mut wrong_type = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        reads.push(match reply {
            Ok(v) => TypedRead::Value(v),
            Err(e) if e.code() == Some("WRONGTYPE") => {
                wrong_type.push(i);
                TypedRead::OtherType(String::new())
            }
            Err(source) => return Err(EngineError::Redis { during, source }),
        });
    }
    if !wrong_type.is_empty() {
        let mut pipe = redis::pipe();
        for &i in &wrong_type {
            pipe.cmd("TYPE").arg(&keys[i]);
        }
        let types: Vec<String> = pipe
            .query_async(&mut c)
            .await
            .map_err(EngineError::redis("reading key types"))?;
        for (i, t) in wrong_type.into_iter().zip(types) {
            reads[i] = TypedRead::OtherType(t);
        }
    }
    Ok(reads)
}
