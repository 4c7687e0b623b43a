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
    expiry, find_runs_of, pop_server_time_ms, roll_back, roll_back_runs, RollbackSteps,
};
pub use crate::run::rollback::{rollback_journal_key, RollbackOptions, RollbackReport};
use crate::run::Finding;

/// The runs a rollback applies to, newest first: the one stamped `stamp`,
/// else every run not rolled back that migrated a user
/// ([`find_runs_of`]).
pub async fn find_runs<C: ConnectionLike + Clone + Send>(
    conn: &C,
    stamp: Option<&str>,
) -> Result<Vec<RunRecord>> {
    find_runs_of(conn, MIGRATION, stamp, "backup stamp", wrote, || {
        EngineError::NoRun
    })
    .await
}

/// Rolls back one run.
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
    let steps = Phase2Rollback {
        store,
        conn,
        run: run.clone(),
    };
    roll_back(&steps, conn, run, opts).await
}

/// Rolls back `runs` in the order given (newest first, as [`find_runs`]
/// gives them), one report each; see [`roll_back_runs`].
pub async fn rollback_grid_positions_runs<S, C>(
    store: &S,
    conn: &C,
    runs: &[RunRecord],
    opts: &RollbackOptions,
) -> Result<Vec<RollbackReport>>
where
    S: GridPositionsStore,
    C: ConnectionLike + Clone + Send,
{
    let steps = |run: &RunRecord| Phase2Rollback {
        store,
        conn,
        run: run.clone(),
    };
    roll_back_runs(steps, conn, runs, opts).await
}

/// What a run wrote for a user: its hashes, index and backup.
fn wrote(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Migrated { .. })
}

/// Phase 2's part of the shared rollback: a user is restored from its
/// backup, and the hashes and index the run wrote for it are deleted.
struct Phase2Rollback<'a, S, C> {
    store: &'a S,
    conn: &'a C,
    run: RunRecord,
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
        wrote(outcome)
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
        plan_batch(self.conn, &self.run, journal_key, &migrated, report).await
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

/// One migrated user as the rollback's first read found it.
struct UserState {
    legacy: LegacyPositionsKey,
    key: String,
    backup: String,
    /// Legacy TTL when migrated (-1: none) and the server time then.
    pttl: i64,
    at: i64,
    backup_value: Option<Vec<u8>>,
    legacy_exists: bool,
    members: BTreeSet<String>,
    /// An earlier, interrupted rollback recorded this user as done.
    done: bool,
}

/// A user whose undo is planned once its hashes are checked.
struct PlannedUser {
    state: UserState,
    /// The index members the run added (its marker included).
    ours: BTreeSet<String>,
    /// Each hash the run wrote, with the fields it wrote there.
    hashes: Vec<(String, Vec<(String, String)>)>,
}

/// Reads one batch of migrated users and plans their rollback.
async fn plan_batch<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    journal_key: &str,
    migrated: &[(String, i64, i64)],
    report: &mut RollbackReport,
) -> Result<Vec<UserRollback>> {
    let (users, now_ms) = read_users(conn, run, journal_key, migrated).await?;
    let restored = restored_already(conn, &users).await?;
    let planned: Vec<PlannedUser> = users
        .into_iter()
        .filter_map(|user| judge_user(user, run, &restored, report))
        .collect();
    check_hashes(conn, planned, run, &restored, now_ms, report).await
}

/// One pipeline: each user's backup, whether its legacy key exists, its
/// index members and its rollback-journal entry, then the server's TIME.
async fn read_users<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    journal_key: &str,
    migrated: &[(String, i64, i64)],
) -> Result<(Vec<UserState>, i64)> {
    let mut pipe = redis::pipe();
    let mut keys = Vec::with_capacity(migrated.len());
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
        keys.push((legacy, backup));
    }
    pipe.cmd("TIME");
    let mut c = conn.clone();
    let mut replies: Vec<redis::Value> = pipe
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("reading backups for the rollback"))?;
    let now_ms = pop_server_time_ms(&mut replies);
    let users = keys
        .into_iter()
        .zip(migrated)
        .zip(replies.chunks_exact(4))
        .map(|(((legacy, backup), (key, pttl, at)), r)| UserState {
            legacy,
            key: key.clone(),
            backup,
            pttl: *pttl,
            at: *at,
            backup_value: redis::from_redis_value_ref(&r[0]).ok().flatten(),
            legacy_exists: redis::from_redis_value_ref(&r[1]).unwrap_or(false),
            members: redis::from_redis_value_ref(&r[2]).unwrap_or_default(),
            done: redis::from_redis_value_ref::<Option<String>>(&r[3])
                .ok()
                .flatten()
                .is_some(),
        })
        .collect();
    Ok((users, now_ms))
}

/// Plans one user's undo from its backup, listing in `report` what changed
/// since the migration; `None` when there is nothing to undo.
fn judge_user(
    user: UserState,
    run: &RunRecord,
    restored: &BTreeSet<String>,
    report: &mut RollbackReport,
) -> Option<PlannedUser> {
    let key = user.key.as_str();
    if user.done {
        report.already_done += 1;
        return None;
    }
    let Some(value) = &user.backup_value else {
        let detail = format!("{} is gone; nothing can be restored", user.backup);
        report.skipped.push(finding(key, "no_backup", &detail));
        return None;
    };
    let opts = PlanOptions {
        skip_closed: run.skip_closed,
    };
    let UserPlan::Migrate(plan) = plan_value(value, opts) else {
        let detail = format!("{} no longer plans as a migrated value", user.backup);
        report
            .skipped
            .push(finding(key, "unreadable_backup", &detail));
        return None;
    };
    // What an interrupted rollback already restored or removed is not a change.
    let resumed = restored.contains(key);
    if user.legacy_exists && !resumed {
        let detail = format!("{key} was written again after the migration");
        report
            .changed
            .push(finding(key, "legacy_rewritten", &detail));
    }
    let mut ours: BTreeSet<String> = plan.positions.iter().map(|p| p.index_member()).collect();
    // A cluster run interrupted mid-user left its "migrating" marker in
    // the index: the run's own, so removed with its members (else a
    // marker-only index would outlive the rollback).
    if !ours.is_empty() {
        ours.insert(migrating_sentinel(&run.run_id));
    }
    for extra in user.members.difference(&ours).filter(|_| !resumed) {
        let index = user.legacy.index_key();
        let detail = format!("{index} holds {extra:?}, which the run did not add");
        report
            .changed
            .push(finding(key, "index_member_added", &detail));
    }
    let hashes = plan
        .positions
        .into_iter()
        .map(|p| (user.legacy.position_key(&p.index_member()), p.fields))
        .collect();
    Some(PlannedUser {
        state: user,
        ours,
        hashes,
    })
}

/// Every hash the run wrote must still be exactly what it wrote; a change
/// goes to `report`. Returns each user's undo.
async fn check_hashes<C: ConnectionLike + Clone + Send>(
    conn: &C,
    planned: Vec<PlannedUser>,
    run: &RunRecord,
    restored: &BTreeSet<String>,
    now_ms: i64,
    report: &mut RollbackReport,
) -> Result<Vec<UserRollback>> {
    let mut pipe = redis::pipe();
    for (hash_key, _) in planned.iter().flat_map(|p| &p.hashes) {
        pipe.hgetall(hash_key);
    }
    let current: Vec<HashMap<String, String>> = if planned.iter().all(|p| p.hashes.is_empty()) {
        Vec::new()
    } else {
        let mut c = conn.clone();
        pipe.query_async(&mut c)
            .await
            .map_err(EngineError::redis("reading hashes for the rollback"))?
    };
    let mut current = current.into_iter();
    let mut out = Vec::with_capacity(planned.len());
    for PlannedUser {
        state,
        ours,
        hashes,
    } in planned
    {
        let key = state.key;
        let resumed = restored.contains(key.as_str());
        for (hash_key, fields) in &hashes {
            let actual = current.next().unwrap_or_default();
            if resumed && actual.is_empty() {
                continue;
            }
            if let Err(why) = wrote_exactly(&actual, fields, &key, &run.started_at) {
                let detail = format!("{hash_key}: {why}");
                report.changed.push(finding(&key, "hash_changed", &detail));
            }
        }
        out.push(UserRollback {
            index_key: state.legacy.index_key(),
            legacy_key: key,
            backup_key: state.backup,
            hashes: hashes.into_iter().map(|(k, _)| k).collect(),
            members: ours.into_iter().collect(),
            expires_at_ms: expiry(state.pttl, state.at, now_ms),
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
    users: &[UserState],
) -> Result<BTreeSet<String>> {
    let (candidates, backups): (Vec<String>, Vec<&Vec<u8>>) = users
        .iter()
        .filter(|u| u.legacy_exists)
        .filter_map(|u| Some((u.key.clone(), u.backup_value.as_ref()?)))
        .unzip();
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
                if &v == backup =>
            {
                Some(key)
            }
            _ => None,
        })
        .collect())
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
