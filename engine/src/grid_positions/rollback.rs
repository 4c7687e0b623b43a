//! `rollback grid-positions`: restores each legacy key of a run from its
//! backup and deletes exactly the keys that run created, as the journal and
//! the backups say, never anything found by a glob. Before writing, it
//! looks for new-structure data changed since the migration (a hash that no
//! longer equals what the run wrote, an index member the run did not add,
//! a legacy key written again) and refuses without `force`, so nothing
//! written since is lost silently.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::grid_positions::plan::{plan_value, PlanOptions, UserPlan};
use crate::grid_positions::runner::{Finding, MIGRATION};
use crate::grid_positions::store::{GridPositionsStore, RollbackOutcome, UserRollback};
use crate::keys::{migrating_sentinel, LegacyPositionsKey, META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::run::journal::{runs_of, scan_outcomes, Outcome, RunRecord, RunState};

const BATCH: usize = 500;

#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// Roll back the run whose backups carry this stamp (default: the latest run).
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

/// Key of the hash recording which users a rollback of `run_id` restored.
pub fn rollback_journal_key(run_id: &str) -> String {
    format!("keyshift:run:{run_id}:rollback")
}

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

/// The run of `migration` a rollback applies to: the one stamped `stamp`
/// (`stamp_noun` names the stamp in the refusal), else the latest (`none`:
/// the error when there is none); never one already rolled back.
pub(crate) async fn find_run_of<C: ConnectionLike + Clone + Send>(
    conn: &C,
    migration: &str,
    stamp: Option<&str>,
    stamp_noun: &str,
    none: impl FnOnce() -> EngineError,
) -> Result<RunRecord> {
    let runs = runs_of(conn, migration).await?;
    let run = match stamp {
        Some(s) => runs.into_iter().find(|r| r.stamp == s).ok_or_else(|| {
            EngineError::Refused(format!(
                "no {migration} run has {stamp_noun} {s}; `keyshift status` lists the runs"
            ))
        })?,
        None => runs.into_iter().next().ok_or_else(none)?,
    };
    if run.state == RunState::RolledBack {
        return Err(EngineError::Refused(format!(
            "run {} was already rolled back",
            run.run_id
        )));
    }
    Ok(run)
}

impl RollbackReport {
    /// An empty report for a rollback of `run`.
    pub(crate) fn new(migration: &'static str, run: &RunRecord, opts: &RollbackOptions) -> Self {
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
    pub(crate) fn refuse_changes(&self, opts: &RollbackOptions) -> Result<()> {
        if !self.changed.is_empty() && !opts.force && !opts.dry_run {
            return Err(EngineError::Refused(format!(
                "{} change(s) since the migration would be lost, e.g. {}; review them (--dry-run lists them) and pass --force to roll back anyway",
                self.changed.len(),
                self.changed[0].detail
            )));
        }
        Ok(())
    }
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
    let started = Instant::now();
    let mut report = RollbackReport::new(MIGRATION, run, opts);
    let journal_key = rollback_journal_key(&run.run_id);
    // Pass 1 reads everything and finds changes; pass 2 writes, only when
    // there are none or the operator forced it.
    let mut plans = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, outcomes) = scan_outcomes(conn, &run.run_id, cursor, BATCH).await?;
        let migrated: Vec<(String, i64, i64)> = outcomes
            .into_iter()
            .filter_map(|(key, o)| match o {
                Outcome::Migrated { pttl, at, .. } => Some((key, pttl, at)),
                _ => None,
            })
            .collect();
        report.users += migrated.len();
        plans.extend(plan_batch(conn, run, &journal_key, &migrated, &mut report).await?);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    report.refuse_changes(opts)?;
    if opts.dry_run {
        report.restored = plans.len();
    } else {
        for chunk in plans.chunks(BATCH) {
            let users: Vec<UserRollback> = chunk
                .iter()
                .cloned()
                .map(|mut u| {
                    u.force = opts.force;
                    u
                })
                .collect();
            for (u, outcome) in users
                .iter()
                .zip(store.rollback_users(&journal_key, &users).await?)
            {
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
        }
        let mut record = run.clone();
        record.state = RunState::RolledBack;
        record.rollback = Some(serde_json::json!({
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "restored": report.restored,
            "expired": report.expired,
            "keys_deleted": report.keys_deleted,
            "forced": opts.force,
            "skipped": report.skipped.len(),
        }));
        if report.skipped.is_empty() {
            store.save_run(&record).await?;
        }
    }
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
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

/// The server's TIME, the last reply of a pipeline, in ms (the local clock
/// when it cannot be read).
pub(crate) fn pop_server_time_ms(replies: &mut Vec<redis::Value>) -> i64 {
    let (secs, micros): (i64, i64) = replies
        .pop()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or((chrono::Utc::now().timestamp(), 0));
    secs * 1000 + micros / 1000
}

/// The legacy TTL left now: -1 for none, 0 when it would have expired.
pub(crate) fn remaining_ttl(pttl: i64, at: i64, now_ms: i64) -> i64 {
    if pttl <= 0 {
        -1
    } else {
        (pttl - (now_ms - at)).max(0)
    }
}

/// The legacy key's absolute expiry (server ms): -1 for none, 0 when it
/// would have expired by `now_ms`.
pub(crate) fn expiry(pttl: i64, at: i64, now_ms: i64) -> i64 {
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
    fn remaining_ttl_counts_down_and_expires() {
        assert_eq!(remaining_ttl(-1, 0, 10), -1);
        assert_eq!(remaining_ttl(10_000, 1_000, 4_000), 7_000);
        assert_eq!(remaining_ttl(10_000, 1_000, 20_000), 0);
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
