//! The one seam between the Phase 1 runner and a Redis deployment, as
//! [`crate::grid_positions::store`] is for Phase 2: the runner speaks only this trait.

use crate::connection::scan::{self, TypedRead};
use crate::connection::RedisConn;
use crate::error::{EngineError, Result};

use crate::order_placed::plan::{Fields, KeyRead};

mod any;
pub mod cluster;
pub mod standalone;

pub use any::AnyOrderPlaced;
pub use cluster::ClusterOrderPlaced;
pub use standalone::StandaloneOrderPlaced;

/// What one legacy key's write does, once planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Rename the legacy key to its (absent) target.
    Move,
    /// Delete the legacy key; its target holds the same hash.
    DropEqual,
}

/// One planned write. It happens only if the legacy key still holds exactly
/// `expected` and the target is still absent (`Move`) or still holds
/// `expected` (`DropEqual`), so a concurrent writer never loses an update.
#[derive(Debug, Clone)]
pub struct KeyWrite {
    pub legacy_key: String,
    pub target_key: String,
    pub kind: WriteKind,
    /// The legacy hash the plan was made from, sorted by field.
    pub expected: Fields,
    /// [`crate::order_placed::plan::fields_digest`] of `expected`, for the journal.
    pub digest: String,
}

/// What the write of one key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Renamed; `pttl_ms` is the TTL it carried (-1: none).
    Moved { pttl_ms: i64 },
    /// The legacy key was deleted, its equal target left as it was.
    Dropped,
    /// A key changed since it was read: read and plan again.
    Changed,
}

/// One key's rollback (see `rollback`).
#[derive(Debug, Clone)]
pub struct KeyRollback {
    pub target_key: String,
    pub legacy_key: String,
    /// Renamed by the run (else: dropped because the target was equal).
    pub moved: bool,
    /// For a dropped key: the legacy key's absolute expiry (server ms, the
    /// journal's `at` + `pttl`), -1 none, 0 when it had passed when planned.
    /// Absolute, so the restored key expires when the legacy key would
    /// have, however long the rollback took since it read the journal.
    pub expires_at_ms: i64,
    pub force: bool,
}

#[allow(async_fn_in_trait)]
pub trait OrderPlacedStore {
    /// Undoes each key's step atomically; answers `restored`, `expired`,
    /// `changed` or `no_target` per key, and records done keys in `journal_key`.
    async fn rollback_keys(&self, journal_key: &str, keys: &[KeyRollback]) -> Result<Vec<String>>;
    /// One SCAN step over the keys matching `pattern` (already glob-escaped).
    /// Key names are raw bytes: one that is not UTF-8 is reported, not lost.
    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        let during = "scanning for legacy order-placed keys";
        scan::scan_step(self.journal_conn(), cursor, Some(pattern), count, during).await
    }
    /// Reads each key: absent, a hash with its fields, or another type.
    async fn read_keys(&self, keys: &[String]) -> Result<Vec<KeyRead>> {
        read_order_placed(self.journal_conn(), keys).await
    }
    /// Applies each write atomically, recording `moved` / `dropped_equal`
    /// in `outcomes_key` in the same step; outcomes in input order.
    async fn apply(&self, outcomes_key: &str, writes: &[KeyWrite]) -> Result<Vec<WriteOutcome>>;
    /// The connection the SCAN, the reads, the journal, run records and key
    /// count go through: a [`RedisConn`] serves them the same way on one
    /// server and on a cluster, so the trait writes them once here.
    fn journal_conn(&self) -> &RedisConn;
    /// Estimated total keys, for progress.
    async fn key_count(&self) -> Result<u64> {
        scan::key_count(self.journal_conn()).await
    }
}

/// Reads each key as absent, a hash with its fields, or another type (one
/// pipeline of single-key reads: the same on a cluster).
async fn read_order_placed(conn: &RedisConn, keys: &[String]) -> Result<Vec<KeyRead>> {
    let during = "reading order-placed hashes";
    let reads = scan::read_expecting(conn, keys, "HGETALL", during).await?;
    reads
        .into_iter()
        .map(|read| match read {
            TypedRead::Value(v) => Ok(KeyRead::hash(
                redis::from_redis_value::<Fields>(v).map_err(|e| EngineError::Redis {
                    during: "decoding an order-placed hash",
                    source: e.into(),
                })?,
            )),
            // A key deleted or turned into a hash in between reads as
            // absent or as "hash": either way the plan it gives is
            // re-checked before any write.
            TypedRead::OtherType(t) if t == "none" => Ok(KeyRead::Absent),
            TypedRead::OtherType(redis_type) => Ok(KeyRead::Other { redis_type }),
        })
        .collect()
}
