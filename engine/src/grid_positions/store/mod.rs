//! The one seam between the Phase 2 engine and a Redis deployment. The
//! runner speaks only this trait, so a standalone server, a cluster and a
//! test double are implementations, not branches.

pub mod cluster;
pub mod standalone;

use crate::connection::RedisConn;
use redis::Value;

use crate::connection::scan::{self, TypedRead};
use crate::error::{EngineError, Result};
use crate::run::journal::RunRecord;

/// A legacy key as read in one batch.
#[derive(Debug, Clone)]
pub struct LegacyRead {
    pub key: String,
    /// Redis TYPE reply: `string`, `hash`, ..., or `none` when the key vanished.
    pub redis_type: String,
    /// The value, for string keys.
    pub value: Option<Vec<u8>>,
}

/// Everything one user's atomic migration writes.
#[derive(Debug, Clone)]
pub struct UserWrite {
    pub legacy_key: String,
    /// The legacy value the plan was made from, the bytes the runner read;
    /// the write happens only if the key still holds exactly this, so a
    /// concurrent writer never loses an update. The backup holds these
    /// bytes, and the journal's outcome their SHA-256 (`digest`).
    pub expected: Vec<u8>,
    pub backup_key: String,
    pub index_key: String,
    /// One entry per position: key, index member, fields (metadata excluded).
    pub positions: Vec<PositionWrite>,
    pub skipped_closed: usize,
}

#[derive(Debug, Clone)]
pub struct PositionWrite {
    pub key: String,
    pub member: String,
    pub fields: Vec<(String, String)>,
}

/// What the write of one user did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; `pttl_ms` is the legacy TTL carried over (-1: none).
    Migrated { pttl_ms: i64 },
    /// The legacy key changed since it was read: read and plan again.
    Changed,
    /// A key the migration would create already exists; nothing was written.
    Conflict { key: String },
}

/// Everything one user's rollback touches.
#[derive(Debug, Clone)]
pub struct UserRollback {
    pub legacy_key: String,
    pub backup_key: String,
    pub index_key: String,
    /// Exactly the hashes and index members the run created.
    pub hashes: Vec<String>,
    pub members: Vec<String>,
    /// When the legacy key expires, as an absolute server time (Unix ms);
    /// -1 for no TTL, 0 when it has expired already.
    /// Absolute, so the time between planning and writing does not
    /// lengthen the restored TTL.
    pub expires_at_ms: i64,
    /// Restore even over a legacy key written since the migration.
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackOutcome {
    /// Legacy key restored, `deleted` new keys removed.
    Restored { deleted: i64 },
    /// The legacy TTL ran out meanwhile: new keys removed, nothing restored.
    Expired { deleted: i64 },
    /// The legacy key exists again (a writer); nothing done without force.
    Changed,
    /// The backup is gone; nothing done.
    NoBackup,
}

/// Per-batch context of a run.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The run's id: a cluster store names its "migrating" index marker
    /// after it (`keys::migrating_sentinel`).
    pub run_id: String,
    /// Hash field name -> outcome JSON lives at this key.
    pub outcomes_key: String,
    pub migrated_at: String,
    pub backup_ttl_secs: u64,
}

#[allow(async_fn_in_trait)]
pub trait GridPositionsStore {
    /// One SCAN step over the keys matching `pattern` (already glob-escaped);
    /// through a cluster connection it visits every primary.
    /// Key names are raw bytes: one that is not UTF-8 is reported, not lost.
    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        let during = "scanning for legacy keys";
        scan::scan_step(self.journal_conn(), cursor, Some(pattern), count, during).await
    }
    /// Reads the type and (for strings) the value of each key, in order.
    async fn read_legacy(&self, keys: &[String]) -> Result<Vec<LegacyRead>> {
        let during = "reading legacy keys";
        let reads = scan::read_expecting(self.journal_conn(), keys, "GET", during).await?;
        keys.iter()
            .zip(reads)
            .map(|(key, read)| {
                let (redis_type, value) = match read {
                    TypedRead::Value(Value::BulkString(v)) => ("string".to_owned(), Some(v)),
                    TypedRead::Value(Value::Nil) => ("none".to_owned(), None),
                    TypedRead::OtherType(t) => (t, None),
                    TypedRead::Value(_) => {
                        return Err(EngineError::unexpected_reply(during, "GET reply"))
                    }
                };
                Ok(LegacyRead {
                    key: key.clone(),
                    redis_type,
                    value,
                })
            })
            .collect()
    }
    /// Applies each user's migration atomically with respect to writers of
    /// its legacy key; outcomes in input order.
    async fn migrate_users(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>>;
    /// Rolls each user back atomically; `journal_key` records who is done so
    /// an interrupted rollback resumes.
    async fn rollback_users(
        &self,
        journal_key: &str,
        users: &[UserRollback],
    ) -> Result<Vec<RollbackOutcome>>;
    /// The connection the SCAN, the legacy reads, the journal, run records
    /// and key count go through: a [`RedisConn`] serves them the same way
    /// on one server and on a cluster, so the trait writes them once here.
    fn journal_conn(&self) -> &RedisConn;
    /// Estimated total keys, for progress (DBSIZE; on a cluster redis-rs
    /// sums it over the primaries).
    async fn key_count(&self) -> Result<u64> {
        scan::key_count(self.journal_conn()).await
    }
    /// Finishes the users an interrupted run of `run` left between the
    /// last two steps of a per-user step that is not atomic (a cluster's),
    /// before a resumed run scans; returns how many. A store whose step is
    /// one atomic write has none.
    async fn settle_interrupted(&self, _run: &RunRecord) -> Result<usize> {
        Ok(0)
    }
}
