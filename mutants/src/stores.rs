//! The mutant engines at the seam: wrappers of the production stores that
//! alter the planned write, the write's result, or the rollback the way
//! each bug would, and, for the planner mutants, the broken planner the
//! runners' options take in the shipped one's place. The runners
//! (`migrate_grid_positions`, rollback, `migrate_order_placed`) are the
//! shipped ones, unchanged.

use std::time::Duration;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::error::{EngineError, Result};
use keyshift_engine::grid_positions::plan::{plan_value, Planner};
use keyshift_engine::grid_positions::store::cluster::GridStore;
use keyshift_engine::grid_positions::store::{
    GridPositionsStore, LegacyRead, RollbackOutcome, RunContext, UserRollback, UserWrite,
    WriteOutcome,
};
use keyshift_engine::order_placed::plan::{plan_key, KeyPlanner, KeyRead};
use keyshift_engine::order_placed::store::{
    KeyRollback, KeyWrite, OrderPlacedStore, WriteOutcome as KeyOutcome,
};
use keyshift_engine::order_placed::AnyOrderPlaced;
use keyshift_harness::gate::{Engines, Production};

use crate::catalogue::Mutant;
use crate::{glob, mutate, planner};

/// How long the read-then-delete mutant waits between the runner's read
/// and its own: the gap a slow client leaves, wide enough for writers to
/// land in it.
const READ_WRITE_GAP: Duration = Duration::from_millis(40);

/// [`Engines`] for one mutant: the production stores, wrapped.
#[derive(Debug, Clone, Copy)]
pub struct MutantEngines(pub Mutant);

impl Engines for MutantEngines {
    type Grid = MutantGrid;
    type OrderPlaced = MutantOrderPlaced;

    async fn grid(&self, url: &str, conn: &RedisConn) -> Result<MutantGrid> {
        Ok(MutantGrid {
            inner: Production.grid(url, conn).await?,
            conn: conn.clone(),
            mutant: self.0,
        })
    }

    async fn order_placed(&self, url: &str, conn: &RedisConn) -> Result<MutantOrderPlaced> {
        Ok(MutantOrderPlaced {
            inner: Production.order_placed(url, conn).await?,
            conn: conn.clone(),
            mutant: self.0,
        })
    }

    fn grid_planner(&self) -> Planner {
        match self.0 {
            Mutant::PlannerSignOnlySide => planner::sign_only_side,
            Mutant::PlannerClosedSkippedUncounted => planner::closed_skipped_uncounted,
            Mutant::PlannerNumbersThroughF64 => planner::numbers_through_f64,
            Mutant::PlannerObjectsNotUnderstood => planner::objects_not_understood,
            _ => plan_value,
        }
    }

    fn order_placed_planner(&self) -> KeyPlanner {
        match self.0 {
            Mutant::OrderPlacedEqualIgnoresValues => planner::equal_ignoring_values,
            _ => plan_key,
        }
    }
}

pub struct MutantGrid {
    inner: GridStore,
    conn: RedisConn,
    mutant: Mutant,
}

async fn query<T: redis::FromRedisValue>(
    conn: &RedisConn,
    pipe: &redis::Pipeline,
    during: &'static str,
) -> Result<T> {
    let mut c = conn.clone();
    pipe.query_async(&mut c)
        .await
        .map_err(EngineError::redis(during))
}

impl MutantGrid {
    /// The write as the bug plans it, before the store applies it.
    async fn plan(&self, users: &[UserWrite]) -> Result<Vec<UserWrite>> {
        let each = |f: fn(&UserWrite) -> UserWrite| users.iter().map(f).collect();
        Ok(match self.mutant {
            Mutant::SignOnlySide => each(mutate::sign_only_side),
            Mutant::FixedFieldList => each(mutate::fixed_field_list),
            Mutant::ClosedSkippedSilently => each(mutate::closed_skipped_silently),
            Mutant::ObjectValuesSkippedButDeleted => each(mutate::object_values_skipped),
            Mutant::ReadThenDelete => self.without_compare(users).await?,
            _ => users.to_vec(),
        })
    }

    /// Read-then-delete: whatever the key holds now becomes the value the
    /// write "expects", so the store's compare always passes and the
    /// hashes planned from the earlier read replace a writer's update.
    async fn without_compare(&self, users: &[UserWrite]) -> Result<Vec<UserWrite>> {
        tokio::time::sleep(READ_WRITE_GAP).await;
        let mut pipe = redis::pipe();
        for u in users {
            pipe.get(&u.legacy_key);
        }
        let now: Vec<Option<Vec<u8>>> = query(&self.conn, &pipe, "re-reading legacy keys").await?;
        Ok(users
            .iter()
            .zip(now)
            .map(|(u, now)| UserWrite {
                expected: now.unwrap_or_else(|| u.expected.clone()),
                ..u.clone()
            })
            .collect())
    }

    /// What the bug does to a user's keys after the write.
    async fn after_write(&self, written: &[&UserWrite]) -> Result<()> {
        if written.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for u in written {
            match self.mutant {
                Mutant::BackupWithoutTtl => {
                    pipe.persist(&u.backup_key);
                }
                // The backup's GET ran after the DEL and found nothing.
                Mutant::DeleteBeforeBackup => {
                    pipe.del(&u.backup_key);
                }
                Mutant::LegacyTtlNotCarried => {
                    pipe.persist(&u.index_key);
                    for p in &u.positions {
                        pipe.persist(&p.key);
                    }
                }
                Mutant::IndexMissingMember => {
                    if let Some(first) = u.positions.first() {
                        pipe.srem(&u.index_key, &first.member);
                    }
                }
                _ => return Ok(()),
            }
        }
        query::<()>(&self.conn, &pipe, "applying the mutant's write").await
    }
}

impl GridPositionsStore for MutantGrid {
    fn journal_conn(&self) -> &RedisConn {
        self.inner.journal_conn()
    }

    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        self.inner.scan(cursor, pattern, count).await
    }

    async fn read_legacy(&self, keys: &[String]) -> Result<Vec<LegacyRead>> {
        self.inner.read_legacy(keys).await
    }

    async fn migrate_users(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        let users = self.plan(users).await?;
        let outcomes = self.inner.migrate_users(ctx, &users).await?;
        let written: Vec<&UserWrite> = users
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, WriteOutcome::Migrated { .. }))
            .map(|(u, _)| u)
            .collect();
        self.after_write(&written).await?;
        Ok(outcomes)
    }

    async fn rollback_users(
        &self,
        journal_key: &str,
        users: &[UserRollback],
    ) -> Result<Vec<RollbackOutcome>> {
        match self.mutant.glob_rollback() {
            Some(how) => glob::rollback_users(&self.conn, how, journal_key, users).await,
            None => self.inner.rollback_users(journal_key, users).await,
        }
    }
}

pub struct MutantOrderPlaced {
    inner: AnyOrderPlaced,
    conn: RedisConn,
    mutant: Mutant,
}

impl OrderPlacedStore for MutantOrderPlaced {
    fn journal_conn(&self) -> &RedisConn {
        self.inner.journal_conn()
    }

    async fn rollback_keys(&self, journal_key: &str, keys: &[KeyRollback]) -> Result<Vec<String>> {
        self.inner.rollback_keys(journal_key, keys).await
    }

    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        self.inner.scan(cursor, pattern, count).await
    }

    async fn read_keys(&self, keys: &[String]) -> Result<Vec<KeyRead>> {
        self.inner.read_keys(keys).await
    }

    async fn apply(&self, outcomes_key: &str, writes: &[KeyWrite]) -> Result<Vec<KeyOutcome>> {
        let outcomes = self.inner.apply(outcomes_key, writes).await?;
        if self.mutant == Mutant::OrderPlacedTtlDropped {
            // A copy of the fields to the target, without the PEXPIRE.
            let moved: Vec<&KeyWrite> = writes
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| matches!(o, KeyOutcome::Moved { .. }))
                .map(|(w, _)| w)
                .collect();
            if !moved.is_empty() {
                let mut pipe = redis::pipe();
                for w in moved {
                    pipe.persist(&w.target_key);
                }
                query::<()>(&self.conn, &pipe, "dropping order-placed TTLs").await?;
            }
        }
        Ok(outcomes)
    }
}
