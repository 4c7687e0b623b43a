//! `rollback order-placed`: undoes each Phase 1 step of a run as the
//! journal records it. Phase 1 keeps no backups because it loses nothing
//! to undo: a moved key is renamed back (its TTL travels with it); a legacy
//! key dropped because its target was equal is copied back from the target,
//! with the TTL it had left. Before writing, a target that no longer holds
//! what the run recorded (its digest), or a legacy key written again, is
//! listed and refuses the rollback without `force`.

use redis::aio::ConnectionLike;

use crate::error::{EngineError, Result};
use crate::keys::OrderPlacedKey;
use crate::run::journal::{OrderPlacedOutcome, RunRecord};
use crate::run::rollback::{
    expiry, find_runs_of, pop_server_time_ms, roll_back, roll_back_runs, RollbackOptions,
    RollbackReport, RollbackSteps,
};
use crate::run::Finding;

use super::plan::fields_digest;
use super::store::{KeyRollback, OrderPlacedStore};
use super::MIGRATION;

/// The order-placed runs a rollback applies to, newest first: the one
/// stamped `stamp`, else every run not rolled back that moved or dropped
/// a key ([`find_runs_of`]).
pub async fn find_runs<C: ConnectionLike + Clone + Send>(
    conn: &C,
    stamp: Option<&str>,
) -> Result<Vec<RunRecord>> {
    find_runs_of(conn, MIGRATION, stamp, "stamp", wrote, || {
        EngineError::Refused("no order-placed run is recorded on this server".into())
    })
    .await
}

/// Rolls back one run.
pub async fn rollback_order_placed<S, C>(
    store: &S,
    conn: &C,
    run: &RunRecord,
    opts: &RollbackOptions,
) -> Result<RollbackReport>
where
    S: OrderPlacedStore,
    C: ConnectionLike + Clone + Send,
{
    let steps = Phase1Rollback {
        store,
        conn,
        run: run.clone(),
    };
    roll_back(&steps, conn, run, opts).await
}

/// Rolls back `runs` in the order given (newest first, as [`find_runs`]
/// gives them), one report each; see [`roll_back_runs`].
pub async fn rollback_order_placed_runs<S, C>(
    store: &S,
    conn: &C,
    runs: &[RunRecord],
    opts: &RollbackOptions,
) -> Result<Vec<RollbackReport>>
where
    S: OrderPlacedStore,
    C: ConnectionLike + Clone + Send,
{
    let steps = |run: &RunRecord| Phase1Rollback {
        store,
        conn,
        run: run.clone(),
    };
    roll_back_runs(steps, conn, runs, opts).await
}

/// What a run wrote for a key: moved it, or dropped it for an equal target.
fn wrote(outcome: &OrderPlacedOutcome) -> bool {
    matches!(
        outcome,
        OrderPlacedOutcome::Moved { .. } | OrderPlacedOutcome::DroppedEqual { .. }
    )
}

/// Phase 1's part of the shared rollback: a moved key is renamed back, a
/// dropped one copied back from its target.
struct Phase1Rollback<'a, S, C> {
    store: &'a S,
    conn: &'a C,
    run: RunRecord,
}

impl<S, C> RollbackSteps for Phase1Rollback<'_, S, C>
where
    S: OrderPlacedStore,
    C: ConnectionLike + Clone + Send,
{
    const MIGRATION: &'static str = MIGRATION;
    type Outcome = OrderPlacedOutcome;
    type Plan = KeyRollback;

    fn wrote(outcome: &OrderPlacedOutcome) -> bool {
        wrote(outcome)
    }

    async fn plan(
        &self,
        journal_key: &str,
        written: &[(String, OrderPlacedOutcome)],
        report: &mut RollbackReport,
    ) -> Result<Vec<KeyRollback>> {
        plan_batch(self.conn, &self.run, journal_key, written, report).await
    }

    async fn undo(
        &self,
        journal_key: &str,
        plans: &[KeyRollback],
        force: bool,
        report: &mut RollbackReport,
    ) -> Result<()> {
        let keys: Vec<KeyRollback> = plans
            .iter()
            .cloned()
            .map(|k| KeyRollback { force, ..k })
            .collect();
        let states = self.store.rollback_keys(journal_key, &keys).await?;
        for (k, state) in keys.iter().zip(states) {
            match state.as_str() {
                "restored" => report.restored += 1,
                "expired" => report.expired += 1,
                other => report.skipped.push(Finding {
                    key: k.legacy_key.clone(),
                    reason: other.to_owned(),
                    detail: format!("left as it is ({other}) while rolling back"),
                }),
            }
        }
        Ok(())
    }

    fn summary(report: &RollbackReport, at: &str) -> serde_json::Value {
        serde_json::json!({
            "at": at,
            "restored": report.restored,
            "expired": report.expired,
            "forced": report.forced,
        })
    }
}

async fn plan_batch<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    journal_key: &str,
    steps: &[(String, OrderPlacedOutcome)],
    report: &mut RollbackReport,
) -> Result<Vec<KeyRollback>> {
    let mut pipe = redis::pipe();
    let mut targets = Vec::with_capacity(steps.len());
    for (legacy, _) in steps {
        let key = OrderPlacedKey::parse(legacy, &run.exchanges).ok_or_else(|| {
            EngineError::BadJournal {
                key: journal_key.to_owned(),
                detail: format!("{legacy} is not a legacy order-placed key"),
            }
        })?;
        let target = key.target_key();
        pipe.hgetall(&target)
            .cmd("DUMP")
            .arg(legacy)
            .hget(journal_key, legacy)
            .cmd("DUMP")
            .arg(&target);
        targets.push(target);
    }
    pipe.cmd("TIME");
    let mut c = conn.clone();
    let mut replies: Vec<redis::Value> = pipe.query_async(&mut c).await.map_err(
        EngineError::redis("reading order-placed targets for the rollback"),
    )?;
    let now_ms = pop_server_time_ms(&mut replies);
    let mut out = Vec::new();
    for (((legacy, outcome), target), r) in steps.iter().zip(targets).zip(replies.chunks_exact(4)) {
        if redis::from_redis_value_ref::<Option<String>>(&r[2])
            .ok()
            .flatten()
            .is_some()
        {
            report.already_done += 1;
            continue;
        }
        let fields: Vec<(Vec<u8>, Vec<u8>)> =
            redis::from_redis_value_ref(&r[0]).unwrap_or_default();
        // A legacy key identical to the target is this rollback's own copy
        // on a cluster, made before a kill (`super::store::cluster`): not a write
        // since the migration, and the rerun finishes it without --force.
        let legacy_dump: Option<Vec<u8>> = redis::from_redis_value_ref(&r[1]).unwrap_or(None);
        let target_dump: Option<Vec<u8>> = redis::from_redis_value_ref(&r[3]).unwrap_or(None);
        let legacy_exists = legacy_dump.is_some() && legacy_dump != target_dump;
        let (moved, digest, pttl, at) = match outcome {
            OrderPlacedOutcome::Moved {
                digest, pttl, at, ..
            } => (true, digest, *pttl, *at),
            OrderPlacedOutcome::DroppedEqual {
                digest, pttl, at, ..
            } => (false, digest, *pttl, *at),
            _ => continue,
        };
        let finding = |reason: &str, detail: String| Finding {
            key: legacy.clone(),
            reason: reason.to_owned(),
            detail,
        };
        if fields.is_empty() {
            // A target that carried the legacy TTL and expired is not a change.
            if !(moved && pttl > 0 && now_ms - at >= pttl) {
                report.skipped.push(finding(
                    "no_target",
                    format!("{target} is gone; nothing to restore"),
                ));
            }
            continue;
        }
        if fields_digest(&fields) != *digest {
            report.changed.push(finding(
                "target_changed",
                format!("{target} no longer holds what the run moved"),
            ));
        }
        if legacy_exists {
            report.changed.push(finding(
                "legacy_rewritten",
                format!("{legacy} was written again after the migration"),
            ));
        }
        out.push(KeyRollback {
            target_key: target,
            legacy_key: legacy.clone(),
            moved,
            expires_at_ms: expiry(pttl, at, now_ms),
            force: false,
        });
    }
    Ok(out)
}
