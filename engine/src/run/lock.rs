//! The runner lock: one writing run at a time per server. `SET NX PX`,
//! renewed while the run goes on, released by compare-and-delete so a
//! runner never releases a lock it no longer holds. A lock whose holder died
//! expires after its TTL and the next runner takes it.

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

pub const LOCK_KEY: &str = "keyshift:lock";
/// Default lock TTL; `KEYSHIFT_LOCK_TTL_MS` overrides it (tests use a short
/// one so a killed runner's lock frees quickly).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
pub const TTL_ENV: &str = "KEYSHIFT_LOCK_TTL_MS";

/// Who holds the lock, stored as its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub command: String,
    pub host: String,
    pub pid: u32,
    pub since: String,
    /// Makes the value unique to this acquisition.
    pub token: String,
}

impl Holder {
    pub fn new(command: &str) -> Self {
        let now = chrono::Utc::now();
        Self {
            command: command.to_owned(),
            host: std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            since: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            token: format!(
                "{:x}{:x}",
                now.timestamp_nanos_opt().unwrap_or(0),
                std::process::id()
            ),
        }
    }
}

pub fn ttl_from_env() -> Duration {
    std::env::var(TTL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms >= 100)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TTL)
}

/// Renews (KEYS[1], ARGV[2] ms) or releases the lock only while it still
/// holds this runner's value (ARGV[1]): never a lock another runner took
/// over after ours expired.
const RENEW: &str = include_str!("lua/renew_lock.lua");
const RELEASE: &str = include_str!("lua/release_lock.lua");

/// Runs `work` while holding the lock. Fails with [`EngineError::Locked`]
/// when another runner holds it, or when the lock is lost mid-run (the
/// work is then dropped between two atomic steps and stops).
pub async fn hold<C, T, F>(conn: &C, holder: &Holder, ttl: Duration, work: F) -> Result<T>
where
    C: ConnectionLike + Clone + Send,
    F: Future<Output = Result<T>>,
{
    let value = serde_json::to_string(holder).expect("holder serialises");
    let mut c = conn.clone();
    let acquired: Option<String> = redis::cmd("SET")
        .arg(LOCK_KEY)
        .arg(&value)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("taking the runner lock"))?;
    if acquired.is_none() {
        return Err(locked_by(conn).await);
    }
    let renew = async {
        loop {
            tokio::time::sleep(ttl / 3).await;
            let mut c = conn.clone();
            let renewed: i64 = redis::Script::new(RENEW)
                .key(LOCK_KEY)
                .arg(&value)
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut c)
                .await
                .map_err(EngineError::redis("renewing the runner lock"))?;
            if renewed == 0 {
                return Err::<T, _>(EngineError::LockLost);
            }
        }
    };
    let result = tokio::select! {
        // Renewal first: a run whose lock is gone must not start another step.
        biased;
        lost = renew => lost,
        r = work => r,
    };
    let mut c = conn.clone();
    let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
        .key(LOCK_KEY)
        .arg(&value)
        .invoke_async(&mut c)
        .await;
    if let Err(e) = released {
        // The lock expires on its own; the run's own result matters more.
        tracing::warn!("could not release the runner lock ({e}); it expires in {ttl:?}");
    }
    result
}

async fn locked_by<C: ConnectionLike + Clone + Send>(conn: &C) -> EngineError {
    let mut c = conn.clone();
    let current: Option<String> = redis::cmd("GET")
        .arg(LOCK_KEY)
        .query_async(&mut c)
        .await
        .ok()
        .flatten();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(LOCK_KEY)
        .query_async(&mut c)
        .await
        .unwrap_or(-2);
    let holder = current
        .as_deref()
        .and_then(|v| serde_json::from_str::<Holder>(v).ok())
        .map(|h| {
            format!(
                "`{}` (pid {} on {}) since {}",
                h.command, h.pid, h.host, h.since
            )
        })
        .unwrap_or_else(|| "another runner".into());
    EngineError::Locked {
        holder,
        expires_in_ms: pttl,
    }
}
