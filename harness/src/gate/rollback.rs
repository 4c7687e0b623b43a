//! The gate's second half for Phase 2: rollback must give back the
//! pre-migration keyspace (backups and journal aside, TTLs within a second),
//! a fresh migration, with writers running through it, must verify again
//! (the writers' users checked by no-lost-writes instead), and one more run
//! must write nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keyshift_engine::connection::RedisConn;
use keyshift_engine::error::EngineError;
use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::grid_positions::rollback::{
    rollback_grid_positions, RollbackOptions, RollbackReport,
};
use keyshift_engine::grid_positions::runner::{
    migrate_grid_positions, MigrateOptions, MigrationReport,
};
use keyshift_engine::grid_positions::store::GridPositionsStore;
use keyshift_engine::grid_positions::verify::{verify_grid_positions_scoped, Scope};
use keyshift_engine::keys::BackupKey;
use keyshift_engine::run::invariant::InvariantResult;
use keyshift_engine::run::journal::{is_journal_key, Outcome, RunRecord};

use super::phase2::{Before, Pre};
use super::{checks, not_journal, Engines, Gate, Source};
use crate::commands::locked;
use crate::digest::{compare, digest, Digest};
use crate::report::InvariantEntry;
use crate::writers::{self, HotPair, WritersConfig};

/// Users the writers keep writing through the gate's second migration.
const HOT_USERS: usize = 30;

/// How far a restored TTL may be from the TTL before the migration, once
/// the time between the two digests is accounted for.
const TTL_TOLERANCE_MS: i64 = 1_000;

const ROLLBACK_DESCRIPTION: &str = "migrate then rollback gives the pre-migration keyspace (backups and journal aside), TTLs within 1 s";

/// Writers to run through the second migration: the first is checked
/// strictly on every user (and rollback refuses over data changed since a
/// migration, so writers there would stop the rest of the gate).
pub struct GateWriters {
    pub url: String,
    pub pairs: Vec<HotPair>,
    pub cfg: WritersConfig,
    /// Acknowledged writes to wait for before and after the migration.
    pub writes: usize,
}

/// What the second half found.
pub struct Again {
    pub rollback: InvariantEntry,
    /// The second run's verify results (writers' users left out).
    pub verified: Vec<InvariantResult>,
    /// Notes for the verify entries that left users out.
    pub notes: Vec<(String, String)>,
    pub idempotent: InvariantEntry,
    pub no_lost_writes: InvariantEntry,
}

/// One `migrate grid-positions` under the runner lock, as the CLI runs it.
async fn migrate_locked<S: GridPositionsStore>(
    store: &S,
    conn: &RedisConn,
    opts: &MigrateOptions,
) -> keyshift_engine::Result<MigrationReport> {
    locked(
        conn,
        "gate: migrate grid-positions",
        migrate_grid_positions(store, opts, &|_| {}),
    )
    .await
}

impl Again {
    /// Folds the second run into the first run's entries (its verify
    /// results, and notes on those that left users out), then adds
    /// `rollback`, `idempotent` and `no-lost-writes`.
    pub fn merge_into(self, invariants: &mut Vec<InvariantEntry>) {
        for verified in self.verified {
            if let Some(entry) = invariants.iter_mut().find(|e| e.id == verified.id) {
                entry.absorb(verified);
            }
        }
        for (id, note) in self.notes {
            if let Some(entry) = invariants.iter_mut().find(|e| e.id == id) {
                entry.note = Some(format!("second run: {note}"));
            }
        }
        invariants.push(self.rollback);
        invariants.push(self.idempotent);
        invariants.push(self.no_lost_writes);
    }
}

impl<E: Engines> Gate<'_, E> {
    /// The second half on the gate's server, with writers on its hot users
    /// (the generator's, or the snapshot's legacy keys).
    pub(super) async fn rollback_then_migrate_again(&self, pre: &Pre) -> anyhow::Result<Again> {
        let legacy = match &self.source {
            Source::Seeded { generated, .. } => &generated.keyspace,
            Source::Snapshot(_) => &pre.snapshot_legacy,
        };
        let writers = GateWriters {
            url: self.server.url(),
            pairs: writers::hot_pairs(legacy, &self.exchanges, HOT_USERS, self.gen.seed),
            cfg: WritersConfig {
                seed: self.gen.seed,
                ..WritersConfig::default()
            },
            writes: HOT_USERS * 2,
        };
        let opts = self.migrate_options(false);
        rollback_then_migrate_again(&self.grid, &self.conn, pre.before(), &opts, &writers).await
    }
}

/// Runs rollback, re-migration (with `writers` running through it) and a
/// last idempotent run.
async fn rollback_then_migrate_again<S: GridPositionsStore>(
    store: &S,
    conn: &RedisConn,
    before: Before<'_>,
    opts: &MigrateOptions,
    writers: &GateWriters,
) -> anyhow::Result<Again> {
    let run = latest_run(conn).await?;
    let rollback = match locked(
        conn,
        "gate: rollback grid-positions",
        rollback_grid_positions(store, conn, &run, &RollbackOptions::default()),
    )
    .await
    {
        Ok(r) => r,
        // A rollback that refuses (it finds the new keys unlike what the
        // run should have written) is the rollback invariant failing, not
        // the gate: the report still shows every other invariant.
        Err(e @ EngineError::Refused(_)) => return Ok(refused(&e, writers)),
        Err(e) => return Err(e.into()),
    };
    let rolled_back = rollback_invariant(conn, &run, &before, &rollback).await?;
    let (again, no_lost_writes) = migrate_with_writers(store, conn, opts, writers).await?;
    let mut second = verify_second_run(conn, &run, &again, rollback.restored, writers).await?;
    rerun_writer_conflicts(store, conn, opts, &mut second).await?;
    let idempotent = idempotent_run(store, conn, opts).await?;
    Ok(Again {
        rollback: rolled_back,
        verified: second.verified,
        notes: second.notes,
        idempotent,
        no_lost_writes,
    })
}

/// The keyspace after the rollback of `run` against the one before the
/// migration, every TTL of which has ticked down since.
async fn rollback_invariant(
    conn: &RedisConn,
    run: &RunRecord,
    before: &Before<'_>,
    rollback: &RollbackReport,
) -> anyhow::Result<InvariantEntry> {
    let ours = |k: &str| {
        is_journal_key(k)
            || BackupKey::parse(k, &run.exchanges).is_some_and(|b| b.stamp == run.stamp)
    };
    let elapsed = before.taken.elapsed();
    let started = Instant::now();
    let after = digest(conn, |k| !ours(k)).await?;
    let took = started.elapsed().max(before.took);
    let expected = shifted(&before.digest.filtered(|k| !ours(k)), elapsed);
    let diff = compare(
        &expected,
        &after,
        TTL_TOLERANCE_MS + took.as_millis() as i64,
    );
    let mut result = InvariantResult::new("rollback", ROLLBACK_DESCRIPTION);
    checks::fold_diff(&mut result, &diff, "after rollback");
    for f in rollback.changed.iter().chain(&rollback.skipped) {
        result.mismatch(|| format!("{}: {} — {}", f.key, f.reason, f.detail));
    }
    Ok(InvariantEntry::from_result(result))
}

/// Migrates again from the restored keyspace, the writers (when the
/// keyspace has users to carry them) writing throughout; returns the run's
/// report and `no-lost-writes`.
async fn migrate_with_writers<S: GridPositionsStore>(
    store: &S,
    conn: &RedisConn,
    opts: &MigrateOptions,
    w: &GateWriters,
) -> anyhow::Result<(MigrationReport, InvariantEntry)> {
    let migration = migrate_locked(store, conn, opts);
    if w.pairs.is_empty() {
        let why = "not run: the keyspace holds no user the migration would move";
        let entry = InvariantEntry::not_run(writers::ID, writers::DESCRIPTION, why);
        return Ok((migration.await?, entry));
    }
    let (again, history) =
        writers::around(&w.url, w.pairs.clone(), &w.cfg, w.writes, migration).await?;
    let entry = writers::no_lost_writes(conn, &history).await;
    Ok((again?, entry))
}

/// The second run's verify (the writers' users left out) and the legacy
/// keys the writers left in conflict.
struct SecondRun {
    verified: Vec<InvariantResult>,
    notes: Vec<(String, String)>,
    writer_conflicts: usize,
}

/// The second run must verify as the first did, the writers' users aside,
/// and account for every key the rollback of `first` restored.
async fn verify_second_run(
    conn: &RedisConn,
    first: &RunRecord,
    again: &MigrationReport,
    restored: usize,
    writers: &GateWriters,
) -> anyhow::Result<SecondRun> {
    let run2 = latest_run(conn).await?;
    let scope = Scope {
        left_out: writers::legacy_keys(&writers.pairs),
    };
    let scoped = verify_grid_positions_scoped(conn, &run2, &scope, &|_| {}).await?;
    let notes = scoped
        .report
        .invariants
        .iter()
        .filter_map(|i| scoped.note(&i.id).map(|n| (i.id.clone(), n)))
        .collect();
    // A conflict is a legacy key changed under the run by a writer (on a
    // cluster, where a user's steps span slots, the compare-and-delete
    // refuses it): fine for the writers' own keys, left for a rerun.
    let outcomes2: BTreeMap<String, Outcome> = checks::read_outcomes(conn, &run2.run_id).await?;
    let conflicts: Vec<&String> = outcomes2
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Conflict { .. }))
        .map(|(k, _)| k)
        .collect();
    let stray: Vec<&&String> = conflicts
        .iter()
        .filter(|k| !scope.left_out.contains(k.as_str()))
        .collect();
    let count_check = if run2.run_id == first.run_id {
        Err("the second migration wrote no run of its own".to_string())
    } else if !stray.is_empty() {
        Err(format!(
            "the second migration reports conflicts on keys no writer wrote: {stray:?}"
        ))
    } else {
        accounted(again.totals.keys_migrated, conflicts.len(), restored)
    };
    let mut verified = scoped.report.invariants;
    for v in &mut verified {
        v.check(count_check.clone());
    }
    Ok(SecondRun {
        verified,
        notes,
        writer_conflicts: conflicts.len(),
    })
}

/// Every key the rollback restored is migrated again, or in conflict with
/// a writer.
fn accounted(migrated: usize, conflicts: usize, restored: usize) -> Result<(), String> {
    if migrated + conflicts == restored {
        return Ok(());
    }
    Err(format!(
        "the second migration migrated {migrated} keys ({conflicts} conflicts of writers' keys), the rollback restored {restored}"
    ))
}

/// The writers' conflicts are left for a rerun: an operator reruns, and
/// so does the gate, now that the writers have stopped. It must migrate
/// exactly those keys; only then is there nothing left to do.
async fn rerun_writer_conflicts<S: GridPositionsStore>(
    store: &S,
    conn: &RedisConn,
    opts: &MigrateOptions,
    second: &mut SecondRun,
) -> anyhow::Result<()> {
    let writer_conflicts = second.writer_conflicts;
    if writer_conflicts == 0 {
        return Ok(());
    }
    let rerun = migrate_locked(store, conn, opts).await?;
    let rerun_check = if rerun.totals.keys_migrated == writer_conflicts {
        Ok(())
    } else {
        Err(format!(
            "the rerun after the writers stopped migrated {} keys, but the writers left {writer_conflicts} in conflict",
            rerun.totals.keys_migrated
        ))
    };
    for v in &mut second.verified {
        v.check(rerun_check.clone());
    }
    Ok(())
}

/// And once more: nothing left to do, nothing written.
async fn idempotent_run<S: GridPositionsStore>(
    store: &S,
    conn: &RedisConn,
    opts: &MigrateOptions,
) -> anyhow::Result<InvariantEntry> {
    let third_at = Instant::now();
    let before_third = digest(conn, not_journal).await?;
    let third = migrate_locked(store, conn, opts).await?;
    let after_third = digest(conn, not_journal).await?;
    let slack = checks::slack_since(third_at);
    Ok(checks::idempotent(
        &compare(&before_third, &after_third, slack),
        &third,
    ))
}

/// The entries of a rollback that refused to run: `rollback` fails with
/// the refusal, and the runs after it are not attempted.
fn refused(e: &EngineError, writers: &GateWriters) -> Again {
    let mut result = InvariantResult::new("rollback", ROLLBACK_DESCRIPTION);
    result.mismatch(|| format!("the rollback refused: {e}"));
    let idempotent = InvariantEntry::not_run(
        "idempotent",
        "a second run writes nothing",
        "not run: the rollback before it refused",
    );
    let no_lost_writes = InvariantEntry::not_run(
        writers::ID,
        writers::DESCRIPTION,
        &format!(
            "not run: the writers ({} pairs) write through the second migration, which the refused rollback prevented",
            writers.pairs.len()
        ),
    );
    Again {
        rollback: InvariantEntry::from_result(result),
        verified: Vec::new(),
        notes: Vec::new(),
        idempotent,
        no_lost_writes,
    }
}

/// A digest as it should read `elapsed` later: every TTL that much lower.
fn shifted(d: &Digest, elapsed: Duration) -> Digest {
    let mut out = d.clone();
    for k in out.keys.values_mut() {
        if let Some(t) = k.ttl_ms.as_mut() {
            *t -= elapsed.as_millis() as i64;
        }
    }
    out
}
