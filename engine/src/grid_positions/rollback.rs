//! `rollback grid-positions`: restores each legacy key of a run from its
//! backup and deletes exactly the keys that run created, as the journal and
//! the backups say, never anything found by a glob. Before writing, it
//! looks for new-structure data changed since the migration (a hash that no
//! longer equals what the run wrote, an index member the run did not add,
//! a legacy key written again) and refuses without `force`, so nothing
//! written since is lost silently.

use std::collections::{BTreeSet, HashMap};

use redis::aio::ConnectionLike;

use crate::error::{EngineError, Result};
use crate::grid_positions::plan::{plan_value, PlanOptions, UserPlan};
use crate::grid_positions::store::{GridPositionsStore, RollbackOutcome, UserRollback};
use crate::grid_positions::MIGRATION;
use crate::keys::{migrating_sentinel, LegacyPositionsKey, META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::run::journal::{Outcome, RunRecord};
use crate::run::rollback::{
    find_run_of, pop_server_time_ms, remaining_ttl, roll_back, RollbackSteps,
};
pub use crate::run::rollback::{rollback_journal_key, RollbackOptions, RollbackReport};
use crate::run::Finding;

/// The run a rollback applies to.
pub async fn find_run<C: ConnectionLike + Clone + Send>(
    conn: &C,
    stamp: Option<&str>,
) -> Result<RunRecord> {
    find_run_of(conn, MIGRATION, stamp, "backup stamp", || {
        EngineError::NoRun
    })
    .await
}

pub async fn rollback_grid_positions<S, C>(
    store: &S,
    conn: &C,
    run: &RunRecord,
    opts: &RollbackOptions,
) -> Result<RollbackReport>
where
    S: GridPositionsStore,
    C: ConnectionLike + Clone + Send,
{
    roll_back(&Phase2Rollback { store, conn, run }, conn, run, opts).await
}

/// Phase 2's part of the shared rollback: a user is restored from its
/// backup, and the hashes and index the run wrote for it are deleted.
struct Phase2Rollback<'a, S, C> {
    store: &'a S,
    conn: &'a C,
    run: &'a RunRecord,
}

impl<S, C> RollbackSteps for Phase2Rollback<'_, S, C>
where
    S: GridPositionsStore,
    C: ConnectionLike + Clone + Send,
{
    const MIGRATION: &'static str = MIGRATION;
    type Outcome = Outcome;
    type Plan = UserRollback;

    fn wrote(outcome: &Outcome) -> bool {
        matches!(outcome, Outcome::Migrated { .. })
    }

    async fn plan(
        &self,
        journal_key: &str,
        written: &[(String, Outcome)],
        report: &mut RollbackReport,
    ) -> Result<Vec<UserRollback>> {
        let migrated: Vec<(String, i64, i64)> = written
            .iter()
            .filter_map(|(key, o)| match o {
                Outcome::Migrated { pttl, at, .. } => Some((key.clone(), *pttl, *at)),
                _ => None,
            })
            .collect();
        plan_batch(self.conn, self.run, journal_key, &migrated, report).await
    }

    async fn undo(
        &self,
        journal_key: &str,
        plans: &[UserRollback],
        force: bool,
        report: &mut RollbackReport,
    ) -> Result<()> {
        let users: Vec<UserRollback> = plans
            .iter()
            .cloned()
            .map(|u| UserRollback { force, ..u })
            .collect();
        let outcomes = self.store.rollback_users(journal_key, &users).await?;
        for (u, outcome) in users.iter().zip(outcomes) {
            match outcome {
                RollbackOutcome::Restored { deleted } => {
                    report.restored += 1;
                    report.keys_deleted += deleted;
                }
                RollbackOutcome::Expired { deleted } => {
                    report.expired += 1;
                    report.keys_deleted += deleted;
                }
                RollbackOutcome::Changed => report.skipped.push(finding(
                    &u.legacy_key,
                    "changed",
                    "the legacy key was written again while rolling back; left as it is",
                )),
                RollbackOutcome::NoBackup => report.skipped.push(finding(
                    &u.legacy_key,
                    "no_backup",
                    &format!("{} is gone; nothing restored", u.backup_key),
                )),
            }
        }
        Ok(())
    }

    fn summary(report: &RollbackReport, at: &str) -> serde_json::Value {
        serde_json::json!({
            "at": at,
            "restored": report.restored,
            "expired": report.expired,
            "keys_deleted": report.keys_deleted,
            "forced": report.forced,
            "skipped": report.skipped.len(),
        })
    }
}

fn finding(key: &str, reason: &str, detail: &str) -> Finding {
    Finding {
        key: key.to_owned(),
        reason: reason.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Reads one batch of migrated users and plans their rollback.
async fn plan_batch<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    journal_key: &str,
    migrated: &[(String, i64, i64)],
    report: &mut RollbackReport,
) -> Result<Vec<UserRollback>> {
    let mut pipe = redis::pipe();
    let mut users = Vec::with_capacity(migrated.len());
    for (key, ..) in migrated {
        let legacy = LegacyPositionsKey::parse(key, &run.exchanges).ok_or_else(|| {
            EngineError::BadJournal {
                key: journal_key.to_owned(),
                detail: format!("{key} is not a legacy positions key"),
            }
        })?;
        let backup = legacy.backup_key(&run.stamp);
        pipe.get(&backup)
            .exists(key)
            .smembers(legacy.index_key())
            .hget(journal_key, key);
        users.push((legacy, backup));
    }
    pipe.cmd("TIME");
    let mut c = conn.clone();
    let mut replies: Vec<redis::Value> = pipe
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("reading backups for the rollback"))?;
    let now_ms = pop_server_time_ms(&mut replies);
    let restored = restored_already(conn, &users, migrated, &replies).await?;
    let opts = PlanOptions {
        skip_closed: run.skip_closed,
    };
    let mut planned = Vec::new();
    for (((legacy, backup), (key, pttl, at)), r) in
        users.into_iter().zip(migrated).zip(replies.chunks_exact(4))
    {
        let value: Option<Vec<u8>> = redis::from_redis_value_ref(&r[0]).ok().flatten();
        let legacy_exists: bool = redis::from_redis_value_ref(&r[1]).unwrap_or(false);
        let members: BTreeSet<String> = redis::from_redis_value_ref(&r[2]).unwrap_or_default();
        let done: Option<String> = redis::from_redis_value_ref(&r[3]).ok().flatten();
        if done.is_some() {
            report.already_done += 1;
            continue;
        }
        let Some(value) = value else {
            report.skipped.push(finding(
                key,
                "no_backup",
                &format!("{backup} is gone; nothing can be restored"),
            ));
            continue;
        };
        let UserPlan::Migrate(plan) = plan_value(&value, opts) else {
            report.skipped.push(finding(
                key,
                "unreadable_backup",
                &format!("{backup} no longer plans as a migrated value"),
            ));
            continue;
        };
        if legacy_exists && !restored.contains(key.as_str()) {
            report.changed.push(finding(
                key,
                "legacy_rewritten",
                &format!("{key} was written again after the migration"),
            ));
        }
        let mut ours: BTreeSet<String> = plan.positions.iter().map(|p| p.index_member()).collect();
        // A cluster run interrupted mid-user left its "migrating" marker in
        // the index: the run's own, so removed with its members (else a
        // marker-only index would outlive the rollback).
        if !ours.is_empty() {
            ours.insert(migrating_sentinel(&run.run_id));
        }
        // What an interrupted rollback already removed is not a change.
        let resumed = restored.contains(key.as_str());
        for extra in members.difference(&ours).filter(|_| !resumed) {
            report.changed.push(finding(
                key,
                "index_member_added",
                &format!(
                    "{} holds {extra:?}, which the run did not add",
                    legacy.index_key()
                ),
            ));
        }
        let hashes: Vec<(String, Vec<(String, String)>)> = plan
            .positions
            .into_iter()
            .map(|p| (legacy.position_key(&p.index_member()), p.fields))
            .collect();
        planned.push((legacy, backup, key.clone(), *pttl, *at, ours, hashes));
    }
    // Every hash the run wrote must still be exactly what it wrote.
    let mut pipe = redis::pipe();
    for (.., hashes) in &planned {
        for (k, _) in hashes {
            pipe.hgetall(k);
        }
    }
    let current: Vec<HashMap<String, String>> = if planned.iter().all(|p| p.6.is_empty()) {
        Vec::new()
    } else {
        let mut c = conn.clone();
        pipe.query_async(&mut c)
            .await
            .map_err(EngineError::redis("reading hashes for the rollback"))?
    };
    let mut current = current.into_iter();
    let mut out = Vec::with_capacity(planned.len());
    for (legacy, backup, key, pttl, at, ours, hashes) in planned {
        let resumed = restored.contains(key.as_str());
        for (hash_key, fields) in &hashes {
            let actual = current.next().unwrap_or_default();
            if resumed && actual.is_empty() {
                continue;
            }
            if let Err(why) = wrote_exactly(&actual, fields, &key, &run.started_at) {
                report
                    .changed
                    .push(finding(&key, "hash_changed", &format!("{hash_key}: {why}")));
            }
        }
        out.push(UserRollback {
            legacy_key: key,
            backup_key: backup,
            index_key: legacy.index_key(),
            hashes: hashes.into_iter().map(|(k, _)| k).collect(),
            members: ours.into_iter().collect(),
            expires_at_ms: expiry(pttl, at, now_ms),
            force: false,
        });
    }
    Ok(out)
}

/// Legacy keys that exist again holding their backup's exact bytes: on a
/// cluster the rollback restores the key before it deletes the new keys,
/// so a rollback interrupted in between left them so. Not a writer's change.
async fn restored_already<C: ConnectionLike + Clone + Send>(
    conn: &C,
    users: &[(LegacyPositionsKey, String)],
    migrated: &[(String, i64, i64)],
    replies: &[redis::Value],
) -> Result<BTreeSet<String>> {
    let mut candidates = Vec::new();
    let mut backups = Vec::new();
    for (((_, _), (key, ..)), r) in users.iter().zip(migrated).zip(replies.chunks_exact(4)) {
        let exists: bool = redis::from_redis_value_ref(&r[1]).unwrap_or(false);
        let backup: Option<Vec<u8>> = redis::from_redis_value_ref(&r[0]).ok().flatten();
        if let (true, Some(backup)) = (exists, backup) {
            candidates.push(key.clone());
            backups.push(backup);
        }
    }
    let reads = crate::connection::scan::read_expecting(
        conn,
        &candidates,
        "GET",
        "reading legacy keys for the rollback",
    )
    .await?;
    Ok(candidates
        .into_iter()
        .zip(backups)
        .zip(reads)
        .filter_map(|((key, backup), read)| match read {
            crate::connection::scan::TypedRead::Value(redis::Value::BulkString(v))
                if v == backup =>
            {
                Some(key)
            }
            _ => None,
        })
        .collect())
}

/// The legacy key's absolute expiry (server ms): -1 for none, 0 when it
/// would have expired by `now_ms`.
fn expiry(pttl: i64, at: i64, now_ms: i64) -> i64 {
    match remaining_ttl(pttl, at, now_ms) {
        -1 => -1,
        0 => 0,
        _ => at + pttl,
    }
}

/// Whether a hash is exactly what the run wrote.
fn wrote_exactly(
    actual: &HashMap<String, String>,
    fields: &[(String, String)],
    legacy_key: &str,
    migrated_at: &str,
) -> std::result::Result<(), String> {
    if actual.is_empty() {
        return Err("deleted since the migration".into());
    }
    let expected: HashMap<&str, &str> = fields
        .iter()
        .map(|(f, v)| (f.as_str(), v.as_str()))
        .chain([
            (META_MIGRATED_AT, migrated_at),
            (META_MIGRATED_FROM, legacy_key),
        ])
        .collect();
    if actual.len() != expected.len() {
        return Err(format!(
            "{} fields now, the run wrote {}",
            actual.len(),
            expected.len()
        ));
    }
    for (f, v) in &expected {
        match actual.get(*f) {
            Some(a) if a == v => {}
            Some(a) => return Err(format!("field {f:?} is {a:?}, the run wrote {v:?}")),
            None => return Err(format!("field {f:?} is gone")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_is_absolute_until_it_has_passed() {
        assert_eq!(expiry(-1, 0, 10), -1);
        assert_eq!(expiry(10_000, 1_000, 4_000), 11_000);
        assert_eq!(expiry(10_000, 1_000, 20_000), 0);
    }

    #[test]
    fn a_hash_is_ours_only_when_every_field_is_as_written() {
        let fields = vec![("pos".to_owned(), "1".to_owned())];
        let mut actual: HashMap<String, String> = [
            ("pos", "1"),
            (META_MIGRATED_AT, "t"),
            (META_MIGRATED_FROM, "okx:positions:1"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        assert!(wrote_exactly(&actual, &fields, "okx:positions:1", "t").is_ok());
        actual.insert("pos".into(), "2".into());
        assert!(wrote_exactly(&actual, &fields, "okx:positions:1", "t").is_err());
        actual.insert("pos".into(), "1".into());
        actual.insert("extra".into(), "x".into());
        assert!(wrote_exactly(&actual, &fields, "okx:positions:1", "t").is_err());
        assert!(wrote_exactly(&HashMap::new(), &fields, "okx:positions:1", "t").is_err());
    }
}
