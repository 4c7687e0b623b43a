//! The rollback both migrations share: find the runs, read what each wrote
//! from its journal in batches, plan each key's undo while listing what
//! changed since the migration, refuse to write over such changes unless
//! forced, undo in chunks, and mark the run rolled back. How one key is
//! read, judged and undone is the migration's own ([`RollbackSteps`]).
//!
//! Which runs ([`find_runs_of`]): every run of the migration that was not
//! rolled back and wrote something, newest first, the way verify judges
//! them; a later run that found nothing to do never hides an earlier one.
//! `--backup-stamp` names one run instead.

use std::time::Instant;

use redis::aio::ConnectionLike;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::run::journal::{self, runs_of, wrote_anything, RunRecord, RunState};
use crate::run::Finding;

/// Keys planned, and then undone, per round trip.
const BATCH: usize = 500;

#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// Roll back only the run whose backups carry this stamp (default:
    /// every run not rolled back that wrote something, newest first).
    pub backup_stamp: Option<String>,
    pub dry_run: bool,
    /// Roll back even over data changed since the migration.
    pub force: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub migration: &'static str,
    pub run_id: String,
    pub stamp: String,
    pub dry_run: bool,
    pub forced: bool,
    /// Users the run migrated.
    pub users: usize,
    pub restored: usize,
    /// Legacy TTL ran out since: new keys removed, nothing restored.
    pub expired: usize,
    /// Restored by an earlier, interrupted rollback of this run.
    pub already_done: usize,
    pub keys_deleted: i64,
    /// Data changed since the migration (what refuses a rollback without force).
    pub changed: Vec<Finding>,
    /// Users left as they are (backup gone, or changed and not forced).
    pub skipped: Vec<Finding>,
    pub elapsed_ms: u128,
}

impl RollbackReport {
    /// An empty report for a rollback of `run`.
    fn new(migration: &'static str, run: &RunRecord, opts: &RollbackOptions) -> Self {
        Self {
            migration,
            run_id: run.run_id.clone(),
            stamp: run.stamp.clone(),
            dry_run: opts.dry_run,
            forced: opts.force,
            users: 0,
            restored: 0,
            expired: 0,
            already_done: 0,
            keys_deleted: 0,
            changed: Vec::new(),
            skipped: Vec::new(),
            elapsed_ms: 0,
        }
    }

    /// Refuses to write over changes since the migration, unless forced or
    /// a dry run (which lists them).
    fn refuse_changes(&self, opts: &RollbackOptions) -> Result<()> {
        if !self.changed.is_empty() && !opts.force && !opts.dry_run {
            return Err(EngineError::Refused(format!(
                "run {}: {} change(s) since the migration would be lost, e.g. {}; review them (--dry-run lists them) and pass --force to roll back anyway",
                self.run_id,
                self.changed.len(),
                self.changed[0].detail
            )));
        }
        Ok(())
    }
}

/// Key of the hash recording which users a rollback of `run_id` restored.
pub fn rollback_journal_key(run_id: &str) -> String {
    format!("keyshift:run:{run_id}:rollback")
}

/// The runs of `migration` a rollback applies to, newest first: the one
/// stamped `stamp` (`stamp_noun` names the stamp in the refusal), else
/// every run not rolled back whose journal holds an outcome `wrote` says
/// wrote something (`none`: the error when no run is recorded). Refused
/// when that leaves none: never a run already rolled back.
pub async fn find_runs_of<T, C>(
    conn: &C,
    migration: &str,
    stamp: Option<&str>,
    stamp_noun: &str,
    wrote: impl Fn(&T) -> bool,
    none: impl FnOnce() -> EngineError,
) -> Result<Vec<RunRecord>>
where
    T: DeserializeOwned,
    C: ConnectionLike + Clone + Send,
{
    let mut runs = runs_of(conn, migration).await?;
    runs.reverse();
    if let Some(s) = stamp {
        let run = runs.into_iter().find(|r| r.stamp == s).ok_or_else(|| {
            EngineError::Refused(format!(
                "no {migration} run has {stamp_noun} {s}; `keyshift status` lists the runs"
            ))
        })?;
        if run.state == RunState::RolledBack {
            return Err(EngineError::Refused(format!(
                "run {} was already rolled back",
                run.run_id
            )));
        }
        return Ok(vec![run]);
    }
    let Some(latest) = runs.first().map(|r| r.run_id.clone()) else {
        return Err(none());
    };
    let mut picked = Vec::new();
    let mut rolled_back = 0;
    for run in runs {
        if run.state == RunState::RolledBack {
            rolled_back += 1;
        } else if wrote_anything(conn, &run.run_id, &wrote).await? {
            picked.push(run);
        }
    }
    if picked.is_empty() {
        return Err(EngineError::Refused(if rolled_back > 0 {
            format!(
                "nothing to roll back: every {migration} run that wrote something was already rolled back (latest run {latest})"
            )
        } else {
            format!("nothing to roll back: no {migration} run wrote anything (latest run {latest})")
        }));
    }
    Ok(picked)
}

/// What one migration's rollback plugs into [`roll_back`].
#[allow(async_fn_in_trait)]
pub trait RollbackSteps {
    const MIGRATION: &'static str;
    /// The migration's journal outcome.
    type Outcome: DeserializeOwned;
    /// One key's planned undo.
    type Plan;

    /// Whether the run wrote something for this outcome: what there is to undo.
    fn wrote(outcome: &Self::Outcome) -> bool;
    /// Reads one batch of written keys and plans their undo; changes since
    /// the migration go to `report.changed`, keys that cannot be undone to
    /// `report.skipped`, keys an interrupted rollback did to `already_done`.
    async fn plan(
        &self,
        journal_key: &str,
        written: &[(String, Self::Outcome)],
        report: &mut RollbackReport,
    ) -> Result<Vec<Self::Plan>>;
    /// Undoes one chunk of planned keys (`force`: over changes too),
    /// tallying what happened into `report`.
    async fn undo(
        &self,
        journal_key: &str,
        plans: &[Self::Plan],
        force: bool,
        report: &mut RollbackReport,
    ) -> Result<()>;
    /// What the run record keeps of a finished rollback.
    fn summary(report: &RollbackReport, at: &str) -> serde_json::Value;
}

/// Rolls `runs` back one after the other, in the order given (newest
/// first, as [`find_runs_of`] gives them); `steps` makes each run's
/// [`RollbackSteps`]. With more than one run and neither a dry run nor
/// force, every run is first planned without writing, and any change
/// since a migration refuses the whole rollback before anything is
/// written. One report per run, in the same order.
pub async fn roll_back_runs<R, C>(
    steps: impl Fn(&RunRecord) -> R,
    conn: &C,
    runs: &[RunRecord],
    opts: &RollbackOptions,
) -> Result<Vec<RollbackReport>>
where
    R: RollbackSteps,
    C: ConnectionLike + Clone + Send,
{
    if runs.len() > 1 && !opts.dry_run && !opts.force {
        let dry = RollbackOptions {
            dry_run: true,
            ..opts.clone()
        };
        for run in runs {
            roll_back(&steps(run), conn, run, &dry)
                .await?
                .refuse_changes(opts)?;
        }
    }
    let mut reports = Vec::with_capacity(runs.len());
    for run in runs {
        reports.push(roll_back(&steps(run), conn, run, opts).await?);
    }
    Ok(reports)
}

/// Rolls `run` back. Pass 1 reads everything and finds changes; pass 2
/// writes, only when there are none or the operator forced it. The run is
/// marked rolled back once every key was undone.
pub async fn roll_back<R, C>(
    steps: &R,
    conn: &C,
    run: &RunRecord,
    opts: &RollbackOptions,
) -> Result<RollbackReport>
where
    R: RollbackSteps,
    C: ConnectionLike + Clone + Send,
{
    let started = Instant::now();
    let mut report = RollbackReport::new(R::MIGRATION, run, opts);
    let journal_key = rollback_journal_key(&run.run_id);
    let outcomes_key = journal::outcomes_key(&run.run_id);
    let mut plans = Vec::new();
    journal::for_each_outcome_batch(conn, &outcomes_key, BATCH, async |batch| {
        let written: Vec<(String, R::Outcome)> =
            batch.into_iter().filter(|(_, o)| R::wrote(o)).collect();
        report.users += written.len();
        plans.extend(steps.plan(&journal_key, &written, &mut report).await?);
        Ok(())
    })
    .await?;
    report.refuse_changes(opts)?;
    if opts.dry_run {
        report.restored = plans.len();
    } else {
        for chunk in plans.chunks(BATCH) {
            steps
                .undo(&journal_key, chunk, opts.force, &mut report)
                .await?;
        }
        if report.skipped.is_empty() {
            let mut record = run.clone();
            record.state = RunState::RolledBack;
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            record.rollback = Some(R::summary(&report, &at));
            journal::save_run(conn, &record).await?;
        }
    }
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

/// The server's TIME, the last reply of a pipeline, in ms (the local clock
/// when it cannot be read).
pub fn pop_server_time_ms(replies: &mut Vec<redis::Value>) -> i64 {
    let (secs, micros): (i64, i64) = replies
        .pop()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or((chrono::Utc::now().timestamp(), 0));
    secs * 1000 + micros / 1000
}

/// The legacy TTL left now: -1 for none, 0 when it would have expired.
fn remaining_ttl(pttl: i64, at: i64, now_ms: i64) -> i64 {
    if pttl <= 0 {
        -1
    } else {
        (pttl - (now_ms - at)).max(0)
    }
}

/// The legacy key's absolute expiry (server ms): -1 for none, 0 when it
/// would have expired by `now_ms`.
pub fn expiry(pttl: i64, at: i64, now_ms: i64) -> i64 {
    match remaining_ttl(pttl, at, now_ms) {
        -1 => -1,
        0 => 0,
        _ => at + pttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_ttl_counts_down_and_expires() {
        assert_eq!(remaining_ttl(-1, 0, 10), -1);
        assert_eq!(remaining_ttl(10_000, 1_000, 4_000), 7_000);
        assert_eq!(remaining_ttl(10_000, 1_000, 20_000), 0);
    }

    #[test]
    fn the_expiry_is_absolute_until_it_has_passed() {
        assert_eq!(expiry(-1, 0, 10), -1);
        assert_eq!(expiry(10_000, 1_000, 4_000), 11_000);
        assert_eq!(expiry(10_000, 1_000, 20_000), 0);
    }

    #[test]
    fn changes_refuse_a_rollback_unless_forced_or_dry() {
        let run: RunRecord = serde_json::from_value(serde_json::json!({
            "run_id": "r", "migration": "m", "stamp": "s", "state": "done",
            "started_at": "t", "started_ms": 0, "finished_at": null,
            "skip_closed": false, "exchanges": [], "counts": null, "error": null
        }))
        .unwrap();
        let mut report = RollbackReport::new("m", &run, &RollbackOptions::default());
        assert!(report.refuse_changes(&RollbackOptions::default()).is_ok());
        report.changed.push(Finding {
            key: "k".into(),
            reason: "hash_changed".into(),
            detail: "changed".into(),
        });
        assert!(report.refuse_changes(&RollbackOptions::default()).is_err());
        let forced = RollbackOptions {
            force: true,
            ..RollbackOptions::default()
        };
        assert!(report.refuse_changes(&forced).is_ok());
        let dry = RollbackOptions {
            dry_run: true,
            ..RollbackOptions::default()
        };
        assert!(report.refuse_changes(&dry).is_ok());
    }
}
