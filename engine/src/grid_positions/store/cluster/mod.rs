//! [`GridPositionsStore`] for a Redis Cluster, and [`GridStore`]: the store
//! a [`RedisConn`] calls for (standalone or cluster), chosen in one place.
//!
//! On a cluster a user's keys (legacy key, backup, index set, position
//! hashes) hash to different slots, usually different primaries, so no
//! script or MULTI can cover them: the per-user step of the standalone
//! store becomes a sequence of idempotent single-key steps around a
//! compare-and-delete of the legacy key. Until that delete the legacy key
//! is the truth and every step before it may run again.
//!
//! The "migrating" marker (`keys::migrating_sentinel`, named after the run,
//! never a valid `{instId}:{side}` member) in a user's index set says "this
//! user is mid-migration": the dual-read store (`api::steps`) then follows
//! the legacy key while it exists and the new layout once it is gone, so
//! no moment reads as "no positions", and while the legacy key exists no
//! application writes the index or the hashes.
//!
//! Migrating one user (`migrate`), in this order, each step one pipelined
//! round trip for the whole batch (users with no position to migrate get
//! no index and no marker):
//! 1. Inspect: the legacy key's TTL read with its node's clock (an absolute
//!    expiry, so the new keys expire with it however long the steps take),
//!    the index's members, and who wrote each planned hash. Conflicts
//!    (nothing is written, as on one server): a planned hash that exists
//!    and is not this run's (`migrated_from`/`migrated_at` differ, or not a
//!    hash); an index beside the legacy key without this run's marker. An
//!    index with it is an earlier attempt of this run: ours to rewrite; its
//!    members the plan no longer has are read too (a second round trip,
//!    only then) and their hashes deleted in step 3 if still ours, a
//!    conflict if someone else's. A legacy key already gone (expired or
//!    deleted since the runner read it): nothing is written, the runner
//!    reads again.
//! 2. The backup, byte-identical, TTL 7 days (named by the run's stamp, so
//!    only this run writes it). First, so the legacy value can always be
//!    restored.
//! 3. Each position hash, whole (delete + HSET + expiry, one single-key
//!    script).
//! 4. The index, exactly: one single-key script deletes it and adds the
//!    planned members and the marker, with the expiry.
//! 5. The outcome `migrated` in the run's journal hash, before the delete:
//!    a run killed right after the delete still finds the user through its
//!    journal (resume, rollback, verify).
//! 6. Compare-and-delete of the legacy key (a script on its slot only):
//!    `deleted` iff it still holds the value planned, else `changed` (other
//!    value) or `gone` (absent).
//! 7. `deleted`: the marker is withdrawn (SREM); the new layout, with every
//!    application write made since the delete, is the user's. If only the
//!    key's TTL changed, the new keys and the outcome first take the TTL it
//!    had when deleted. `changed`: undo, and the runner reads, plans and
//!    tries again (after its retries it reports a conflict with nothing of
//!    the attempts left behind): each planned hash is deleted only if still
//!    ours (compare-and-delete on its metadata), then the marker and the
//!    members of exactly those hashes leave the index only if it still
//!    holds the marker; backup and outcome go. `gone` past the expiry the
//!    inspection read (within 50 ms): the new keys expire at that same
//!    instant, so they stay to go with it; the marker, backup and outcome
//!    go. `gone` otherwise (someone deleted the key): undone as `changed`.
//!
//! A run killed anywhere resumes with the same command: before step 6 the
//! legacy key is still there, SCAN finds the user again, and steps 1-6
//! repeat harmlessly (the marker says the index is the run's own); between
//! steps 6 and 7 the journal has the user, and the resumed run first
//! withdraws the marker of every user it finds with an outcome `migrated`
//! and no legacy key (`settle`).
//!
//! Rolling a user back (`rollback`): restore the legacy key from its backup
//! only if absent (SET NX, with the remaining TTL), then delete exactly the
//! hashes and index members the run created (its marker included, so an
//! interrupted user leaves no marker-only index), then record the user in
//! the rollback journal. A legacy key that already holds the backup's bytes
//! is the restore of an interrupted rollback, not a writer's change.
//! `cleanup-migration` removes, for users the run had not migrated, its
//! hashes, their members and its marker.
//!
//! What is still not atomic, honestly:
//! - undo after `gone` (deleted by someone): between the delete and the
//!   undo the dual-read store writes the new layout (marker, no legacy
//!   key). A hash it rewrote keeps its member (no longer ours); a planned
//!   position it upserts between the undo's hash delete and its index
//!   step (one round trip) loses its member: a hash without member,
//!   invisible to `all_positions`. Positions it adds under new members
//!   stay. The legacy key deleted by anyone but its expiry, mid-migration,
//!   is the only way in.
//! - the same deletion between steps 5 and 6 of a run killed there: the
//!   resumed run cannot tell it from a kill after its own delete and keeps
//!   the new layout (the user's positions come back).
//! - a kill between steps 3 and 4 followed by a writer changing the plan
//!   before the resume leaves a hash of the old plan that no index names
//!   (no marker recorded which); `verify` reports it.
//! - during a rollback, between the restore and the index removal, the
//!   dual-read store still serves (and writes) the new layout, and such a
//!   write is deleted with it.
//! - a marker left behind (a run stopped and never resumed) keeps readers
//!   on the legacy key while it exists; `verify` reports the marker.
//!
//! The journal, run records, lock and outcomes are single keys and work
//! unchanged.

mod inspect;
mod migrate;
mod rollback;
mod scripts;
mod settle;

use crate::connection::RedisConn;
use crate::error::Result;
use crate::grid_positions::store::standalone::StandaloneStore;
use crate::grid_positions::store::{
    GridPositionsStore, RollbackOutcome, RunContext, UserRollback, UserWrite, WriteOutcome,
};
use crate::run::journal::RunRecord;

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

/// The undo a refused compare-and-delete (step 7, `changed` or `gone`)
/// runs for `users`, every one of them. Public only so the harness can
/// replay an application write landing between a migration's delete and
/// its undo, a moment no timing reaches deterministically.
#[doc(hidden)]
pub async fn undo_attempts(conn: &RedisConn, ctx: &RunContext, users: &[UserWrite]) -> Result<()> {
    let sentinel = crate::keys::migrating_sentinel(&ctx.run_id);
    let all: Vec<usize> = (0..users.len()).collect();
    migrate::undo(conn, ctx, &sentinel, users, &all).await
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            GridStore::Standalone($s) => $call,
            GridStore::Cluster($s) => $call,
        }
    };
}

/// The Phase 2 store for whatever a connection reaches.
#[derive(Clone)]
pub enum GridStore {
    Standalone(StandaloneStore),
    Cluster(ClusterStore),
}

impl GridStore {
    /// The store for `conn`'s mode: a cluster store on a cluster, else a
    /// standalone store with a connection of its own to `url` for writes.
    pub async fn open(url: &str, conn: RedisConn) -> Result<Self> {
        if conn.is_cluster() {
            Ok(GridStore::Cluster(ClusterStore::new(conn)))
        } else {
            Ok(GridStore::Standalone(
                StandaloneStore::open(url, conn).await?,
            ))
        }
    }

    pub fn connection(&self) -> RedisConn {
        delegate!(self, s => s.connection())
    }
}

impl GridPositionsStore for GridStore {
    fn journal_conn(&self) -> &RedisConn {
        delegate!(self, s => s.journal_conn())
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
