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
