//! [`GridPositionsStore`] for a Redis Cluster, and [`GridStore`]: the store
//! a [`RedisConn`] calls for (standalone or cluster), chosen in one place.
//!
//! On a cluster a user's keys (legacy key, backup, index set, position
//! hashes) hash to different slots, usually different primaries, so no
//! script or MULTI can cover them: the per-user step of the standalone
//! store becomes a sequence of idempotent steps whose last one is a
//! compare-and-delete of the legacy key. Until that last step the legacy
//! key is the truth and every step before it may run again.
//!
//! Migrating one user (`migrate`), in this order, each step one pipelined
//! round trip for the whole batch:
//! 1. Inspect: the legacy key's TTL read with its node's clock (an absolute
//!    expiry, so the new keys expire with it however long the steps take),
//!    and the targets. A position hash that exists and was not written by
//!    this run (its `migrated_from`/`migrated_at` differ, or it is not a
//!    hash), or an index set beside the legacy key, is a conflict: nothing
//!    is written, as on one server. Hashes left by an earlier attempt of
//!    this run are ours to rewrite.
//! 2. The backup, byte-identical, TTL 7 days (named by the run's stamp, so
//!    only this run writes it). First, so the legacy value can always be
//!    restored.
//! 3. Each position hash, whole (delete + HSET + expiry, one single-key
//!    script). No index names them yet, so no reader sees them.
//! 4. The outcome `migrated` in the run's journal hash, before the delete:
//!    a run killed right after the delete still finds the user through its
//!    journal (resume, rollback, verify).
//! 5. Compare-and-delete of the legacy key (a script on its slot only):
//!    delete iff it still holds the value planned. A writer that changed it
//!    meanwhile wins: everything the attempt wrote (hashes, backup,
//!    outcome) is removed, unseen by any reader, and the runner reads, plans
//!    and tries again; after its retries it reports a conflict with nothing
//!    of the attempts left behind. If only the key's TTL changed, the new
//!    keys and the outcome take the TTL it had when deleted.
//! 6. The index set, last: SADD of the planned members with the expiry. It
//!    is what makes the dual-read store serve the new layout, and it adds,
//!    so a position the application wrote to the new layout between steps
//!    5 and 6 (it sees no legacy key and no index: a new user) stays.
//!
//! A run killed anywhere resumes with the same command: before step 5 the
//! legacy key is still there, SCAN finds the user again, and steps 1-5
//! repeat harmlessly; between steps 5 and 6 the journal has the user, and
//! the resumed run first adds the index of every user it finds with an
//! outcome `migrated`, no legacy key, no index and this run's hashes
//! (`settle`), planning the members again from the backup.
//!
//! Rolling a user back (`rollback`): restore the legacy key from its backup
//! only if absent (SET NX, with the remaining TTL), then delete exactly the
//! hashes and index members the run created, then record the user in the
//! rollback journal. A legacy key that already holds the backup's bytes is
//! the restore of an interrupted rollback, not a writer's change.
//!
//! What differs from one server: between steps 5 and 6 the user has neither
//! layout, so a read answers "no positions" for that moment (writes are
//! kept, see step 6); during a rollback, between the restore and the index
//! removal, the dual-read store still serves (and writes) the new layout,
//! and such a write is deleted with it. A killed attempt whose plan then
//! changed (a writer, before the resume) can leave a hash of the old plan
//! that no index names; `verify` reports it. The journal, run records,
//! lock and outcomes are single keys and work unchanged.

mod migrate;
mod rollback;
mod scripts;
mod settle;

use crate::connection::RedisConn;
use crate::error::Result;
use crate::journal::RunRecord;
use crate::keyspace::{self, TypedRead};
use crate::standalone::StandaloneStore;
use crate::store::{
    GridPositionsStore, LegacyRead, RollbackOutcome, RunContext, UserRollback, UserWrite,
    WriteOutcome,
};

/// The Phase 2 store for a Redis Cluster (see the module doc).
#[derive(Clone)]
pub struct ClusterStore {
    conn: RedisConn,
}

impl ClusterStore {
    pub fn new(conn: RedisConn) -> Self {
        Self { conn }
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }
}

impl GridPositionsStore for ClusterStore {
    fn journal_conn(&self) -> &RedisConn {
        &self.conn
    }

    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<String>)> {
        let during = "scanning for legacy keys";
        keyspace::scan_step(&self.conn, cursor, Some(pattern), count, during).await
    }

    async fn read_legacy(&self, keys: &[String]) -> Result<Vec<LegacyRead>> {
        let reads =
            keyspace::read_expecting(&self.conn, keys, "GET", "reading legacy keys").await?;
        Ok(keys
            .iter()
            .zip(reads)
            .map(|(key, read)| {
                let (redis_type, value) = match read {
                    TypedRead::Value(redis::Value::BulkString(v)) => ("string".to_owned(), Some(v)),
                    TypedRead::OtherType(t) => (t, None),
                    TypedRead::Value(_) => ("none".to_owned(), None),
                };
                LegacyRead {
                    key: key.clone(),
                    redis_type,
                    value,
                }
            })
            .collect())
    }

    async fn migrate_users(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        migrate::migrate_users(&self.conn, ctx, users).await
    }

    async fn rollback_users(
        &self,
        journal_key: &str,
        users: &[UserRollback],
    ) -> Result<Vec<RollbackOutcome>> {
        rollback::rollback_users(&self.conn, journal_key, users).await
    }

    async fn settle_interrupted(&self, run: &RunRecord) -> Result<usize> {
        settle::settle_interrupted(&self.conn, run).await
    }
}

/// The Phase 2 store for whatever a connection reaches.
#[derive(Clone)]
pub enum GridStore {
    Standalone(StandaloneStore),
    Cluster(ClusterStore),
}

impl GridStore {
    /// The store for `conn`'s mode: a cluster store on a cluster, else a
    /// standalone store with `transactions` dedicated connections to `url`.
    pub async fn open(url: &str, conn: RedisConn, transactions: usize) -> Result<Self> {
        if conn.is_cluster() {
            Ok(GridStore::Cluster(ClusterStore::new(conn)))
        } else {
            Ok(GridStore::Standalone(
                StandaloneStore::open(url, conn, transactions).await?,
            ))
        }
    }

    pub fn connection(&self) -> RedisConn {
        match self {
            GridStore::Standalone(s) => s.connection(),
            GridStore::Cluster(s) => s.connection(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            GridStore::Standalone($s) => $call,
            GridStore::Cluster($s) => $call,
        }
    };
}

impl GridPositionsStore for GridStore {
    fn journal_conn(&self) -> &RedisConn {
        delegate!(self, s => s.journal_conn())
    }

    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<String>)> {
        delegate!(self, s => s.scan(cursor, pattern, count).await)
    }
    async fn read_legacy(&self, keys: &[String]) -> Result<Vec<LegacyRead>> {
        delegate!(self, s => s.read_legacy(keys).await)
    }
    async fn migrate_users(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        delegate!(self, s => s.migrate_users(ctx, users).await)
    }
    async fn rollback_users(
        &self,
        journal_key: &str,
        users: &[UserRollback],
    ) -> Result<Vec<RollbackOutcome>> {
        delegate!(self, s => s.rollback_users(journal_key, users).await)
    }
    async fn settle_interrupted(&self, run: &RunRecord) -> Result<usize> {
        delegate!(self, s => s.settle_interrupted(run).await)
    }
}
