//! `verify grid-positions`: checks the counts, index, fields, backup and ttl
//! invariants of DESIGN §4 on a live server after a migration, using the
//! run's backups (found through the journal) as the record of what was
//! there. Reads only.
//!
//! [`verify_grid_positions_scoped`] leaves a set of legacy keys out of the
//! per-user comparisons (index, fields, ttl): users that live writers
//! legitimately changed after their migration, whose final state the
//! harness's no-lost-writes check proves instead. Their counts, backup and
//! "reappeared" checks still run. The CLI passes no scope.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::connection::scan::scan_step;
use crate::error::{EngineError, Result};
use crate::grid_positions::plan::{plan_value, PlanOptions, UserPlan};
use crate::grid_positions::runner::MIGRATION;
use crate::keys::{
    is_migrating_sentinel, parse_index_key, LegacyPositionsKey, PositionHashKey, BACKUP_TTL_SECS,
};
use crate::run::invariant::InvariantResult;
pub use crate::run::journal::read_run;
use crate::run::journal::{outcomes_key, scan_outcomes, Outcome, RunRecord};

mod judge;
use judge::{check_ttl, compare_hash, read_in_window};

/// How far a carried-over TTL may drift from the legacy TTL (ms), beyond
/// the time elapsed since the write.
pub const TTL_TOLERANCE_MS: i64 = 2_000;
const BATCH: usize = 500;

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub migration: &'static str,
    pub run_id: String,
    pub stamp: String,
    pub invariants: Vec<InvariantResult>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|i| i.passed)
    }
}

struct Checks {
    counts: InvariantResult,
    index: InvariantResult,
    fields: InvariantResult,
    backup: InvariantResult,
    ttl: InvariantResult,
}

/// The invariants a [`Scope`] leaves its users out of.
pub const SCOPED_INVARIANTS: [&str; 3] = ["index", "fields", "ttl"];

/// Legacy keys left out of the per-user comparisons ([`SCOPED_INVARIANTS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub left_out: BTreeSet<String>,
}

/// A verify report and how many migrated users its scope left out.
#[derive(Debug, Clone)]
pub struct ScopedReport {
    pub report: VerifyReport,
    pub left_out: usize,
}

impl ScopedReport {
    /// The note for invariant `id`: set for the scoped invariants when a
    /// user was left out.
    pub fn note(&self, id: &str) -> Option<String> {
        (self.left_out > 0 && SCOPED_INVARIANTS.contains(&id)).then(|| {
            format!(
                "{} users left out: written by live writers, checked by no-lost-writes",
                self.left_out
            )
        })
    }
}

/// Every invariant over every migrated user: what the CLI runs.
pub async fn verify_grid_positions<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    progress: &dyn Fn(usize),
) -> Result<VerifyReport> {
    let scoped = verify_grid_positions_scoped(conn, run, &Scope::default(), progress).await?;
    Ok(scoped.report)
}

/// As [`verify_grid_positions`], with `scope`'s legacy keys left out of
/// the index, fields and ttl comparisons.
pub async fn verify_grid_positions_scoped<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    scope: &Scope,
    progress: &dyn Fn(usize),
) -> Result<ScopedReport> {
    let mut checks = Checks {
        counts: InvariantResult::new(
            "counts",
            "legacy positions found = migrated + skipped by a declared rule + quarantined, per user and in total; no migrated legacy key has reappeared",
        ),
        index: InvariantResult::new(
            "index",
            "every index member has its hash; every position hash is in its index",
        ),
        fields: InvariantResult::new("fields", "each hash equals its legacy object plus migrated_at/migrated_from"),
        backup: InvariantResult::new("backup", "each migrated legacy key has one backup of this run with TTL in (0, 7 days]"),
        ttl: InvariantResult::new("ttl", "legacy TTLs carried over to every new key within tolerance"),
    };
    let opts = PlanOptions {
        skip_closed: run.skip_closed,
    };
    let mut totals = (0usize, 0usize, 0usize, 0usize); // found, migrated, skipped, quarantined
    let mut left_out = 0usize;
    let mut cursor = 0u64;
    loop {
        let (next, outcomes) = scan_outcomes(conn, &run.run_id, cursor, BATCH).await?;
        progress(outcomes.len());
        let tally = Tally {
            totals: &mut totals,
            left_out: &mut left_out,
        };
        verify_outcomes(conn, run, opts, outcomes, scope, &mut checks, tally).await?;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let (found, migrated, skipped, quarantined) = totals;
    checks.counts.check(if found == migrated + skipped + quarantined {
        Ok(())
    } else {
        Err(format!(
            "total: found {found} != migrated {migrated} + skipped {skipped} + quarantined {quarantined}"
        ))
    });
    sweep_orphans(conn, &run.exchanges, &mut checks.index).await?;
    let report = VerifyReport {
        migration: MIGRATION,
        run_id: run.run_id.clone(),
        stamp: run.stamp.clone(),
        invariants: vec![
            checks.counts,
            checks.index,
            checks.fields,
            checks.backup,
            checks.ttl,
        ],
    };
    Ok(ScopedReport { report, left_out })
}

/// What one batch of outcomes adds up to.
struct Tally<'a> {
    /// found, migrated, skipped, quarantined
    totals: &'a mut (usize, usize, usize, usize),
    left_out: &'a mut usize,
}

struct Expected {
    legacy_key: String,
    pttl: i64,
    at: i64,
    /// Each hash's key and planned fields.
    hashes: Vec<(String, Vec<(String, String)>)>,
}

async fn verify_outcomes<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    opts: PlanOptions,
    outcomes: Vec<(String, Outcome)>,
    scope: &Scope,
    checks: &mut Checks,
    tally: Tally<'_>,
) -> Result<()> {
    let totals = tally.totals;
    let mut migrated = Vec::new();
    for (legacy_key, outcome) in outcomes {
        match outcome {
            Outcome::Migrated {
                positions,
                skipped,
                pttl,
                at,
            } => migrated.push((legacy_key, positions, skipped, pttl, at)),
            Outcome::Quarantined { .. } => {}
            Outcome::Conflict { .. } => {}
        }
    }
    // A batch of quarantines and conflicts only: nothing to read (and an
    // empty pipeline is an error to redis-rs).
    if migrated.is_empty() {
        return Ok(());
    }
    // Round trip 1: backups, their TTLs, index sets, and whether a legacy key is back.
    let mut pipe = redis::pipe();
    for (legacy_key, ..) in &migrated {
        let legacy = LegacyPositionsKey::parse(legacy_key, &run.exchanges).ok_or_else(|| {
            EngineError::BadJournal {
                key: outcomes_key(&run.run_id),
                detail: format!("{legacy_key} is not a legacy positions key"),
            }
        })?;
        let backup = legacy.backup_key(&run.stamp);
        pipe.get(&backup)
            .pttl(&backup)
            .exists(legacy_key)
            .smembers(legacy.index_key())
            .pttl(legacy.index_key());
    }
    let (replies, read_at) = read_in_window(conn, &pipe, "reading backups").await?;
    let mut expected = Vec::new();
    for ((legacy_key, positions, skipped, pttl, at), r) in
        migrated.into_iter().zip(replies.chunks_exact(5))
    {
        let legacy = LegacyPositionsKey::parse(&legacy_key, &run.exchanges).expect("checked above");
        let backup: Option<Vec<u8>> = redis::from_redis_value_ref(&r[0]).ok().flatten();
        let backup_ttl: i64 = redis::from_redis_value_ref(&r[1]).unwrap_or(-2);
        let reappeared: bool = redis::from_redis_value_ref(&r[2]).unwrap_or(false);
        let members: BTreeSet<String> = redis::from_redis_value_ref(&r[3]).unwrap_or_default();
        let index_ttl: i64 = redis::from_redis_value_ref(&r[4]).unwrap_or(-2);
        if reappeared {
            checks.counts.mismatch(|| format!("{legacy_key}: legacy key reappeared after its migration (a writer still uses the old layout)"));
        }
        let Some(backup) = backup else {
            checks.backup.mismatch(|| {
                format!(
                    "{legacy_key}: backup {} is missing",
                    legacy.backup_key(&run.stamp)
                )
            });
            continue;
        };
        checks.backup.check(
            if backup_ttl > 0 && backup_ttl <= (BACKUP_TTL_SECS * 1000) as i64 {
                Ok(())
            } else {
                Err(format!(
                    "{}: TTL {backup_ttl} ms is not in (0, 7 days]",
                    legacy.backup_key(&run.stamp)
                ))
            },
        );
        let plan = match plan_value(&backup, opts) {
            UserPlan::Migrate(p) => p,
            UserPlan::Quarantine { reason, .. } => {
                checks.counts.mismatch(|| {
                    format!(
                        "{legacy_key}: migrated, yet its backup would be quarantined ({reason})"
                    )
                });
                continue;
            }
        };
        totals.0 += plan.positions.len() + plan.skipped_closed;
        totals.1 += positions;
        totals.2 += skipped;
        checks.counts.check(if plan.positions.len() == positions && plan.skipped_closed == skipped {
            Ok(())
        } else {
            Err(format!(
                "{legacy_key}: backup holds {} positions (+{} closed skipped), journal says {positions} (+{skipped})",
                plan.positions.len(),
                plan.skipped_closed
            ))
        });
        if scope.left_out.contains(&legacy_key) {
            // Written since its migration: no-lost-writes checks this user.
            *tally.left_out += 1;
            continue;
        }
        let want: BTreeSet<String> = plan.positions.iter().map(|p| p.index_member()).collect();
        let marked = members.iter().find(|m| is_migrating_sentinel(m));
        checks.index.check(if let Some(m) = marked {
            Err(marked_index(&legacy.index_key(), m))
        } else if want == members {
            Ok(())
        } else {
            Err(format!(
                "{}: members {members:?}, expected {want:?}",
                legacy.index_key()
            ))
        });
        if !want.is_empty() {
            check_ttl(
                &mut checks.ttl,
                &legacy.index_key(),
                index_ttl,
                pttl,
                at,
                read_at,
            );
        }
        expected.push(Expected {
            legacy_key: legacy_key.clone(),
            hashes: plan
                .positions
                .into_iter()
                .map(|p| (legacy.position_key(&p.index_member()), p.fields))
                .collect(),
            pttl,
            at,
        });
    }
    // Round trip 2: every expected hash and its TTL, between two readings
    // of the server's clock: a TTL is judged by the clock of the round trip
    // it came in, however long a loaded machine took between the two.
    let mut pipe = redis::pipe();
    for e in &expected {
        for (key, ..) in &e.hashes {
            pipe.hgetall(key).pttl(key);
        }
    }
    let (replies, read_at) = if expected.iter().all(|e| e.hashes.is_empty()) {
        (Vec::new(), read_at)
    } else {
        read_in_window(conn, &pipe, "reading position hashes").await?
    };
    let mut replies = replies.chunks_exact(2);
    for e in &expected {
        for (key, fields) in &e.hashes {
            let r = replies.next().expect("one reply pair per hash");
            let actual: HashMap<String, String> =
                redis::from_redis_value_ref(&r[0]).unwrap_or_default();
            let pttl: i64 = redis::from_redis_value_ref(&r[1]).unwrap_or(-2);
            checks
                .fields
                .check(compare_hash(key, &e.legacy_key, fields, &actual));
            if !actual.is_empty() {
                check_ttl(&mut checks.ttl, key, pttl, e.pttl, e.at, read_at);
            }
        }
    }
    Ok(())
}

/// A cluster run's "migrating" marker left in an index set: that run
/// stopped between writing the index and finishing the user.
fn marked_index(index_key: &str, marker: &str) -> String {
    format!(
        "{index_key} holds the migration marker {marker:?}: interrupted run: resume it \
         (run `keyshift migrate grid-positions` again) or roll it back"
    )
}

/// Orphan sweep by SCAN over every `positions:` key of the run's exchanges:
/// each hash must be in its index and each index member must have a hash.
async fn sweep_orphans<C: ConnectionLike + Clone + Send>(
    conn: &C,
    exchanges: &[String],
    index: &mut InvariantResult,
) -> Result<()> {
    let mut cursor = 0u64;
    loop {
        let during = "sweeping for orphans";
        let (next, keys): (u64, Vec<String>) =
            scan_step(conn, cursor, Some("positions:*"), 1000, during).await?;
        let mut c = conn.clone();
        let hashes: Vec<PositionHashKey> = keys
            .iter()
            .filter_map(|k| PositionHashKey::parse(k, exchanges))
            .collect();
        let index_keys: Vec<&String> = keys
            .iter()
            .filter(|k| parse_index_key(k, exchanges).is_some())
            .collect();
        let mut pipe = redis::pipe();
        for h in &hashes {
            pipe.sismember(h.index_key(), h.index_member());
        }
        for k in &index_keys {
            pipe.smembers(*k);
        }
        let replies: Vec<redis::Value> = if hashes.is_empty() && index_keys.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut c)
                .await
                .map_err(EngineError::redis("sweeping for orphans"))?
        };
        let (member_of, sets) = replies.split_at(hashes.len());
        for (h, r) in hashes.iter().zip(member_of) {
            if !redis::from_redis_value_ref::<bool>(r).unwrap_or(false) {
                index.extra(|| {
                    format!(
                        "positions:{}:{}:{}:{} is in no index",
                        h.user_id, h.exchange, h.inst_id, h.side
                    )
                });
            }
        }
        let mut member_keys: BTreeMap<String, String> = BTreeMap::new();
        for (k, r) in index_keys.iter().zip(sets) {
            let (user, exchange) = parse_index_key(k, exchanges).expect("filtered above");
            let members: Vec<String> = redis::from_redis_value_ref(r).unwrap_or_default();
            for m in members {
                if is_migrating_sentinel(&m) {
                    index.extra(|| marked_index(k, &m));
                    continue;
                }
                member_keys.insert(
                    format!("positions:{user}:{exchange}:{m}"),
                    format!("{k} member {m:?}"),
                );
            }
        }
        if !member_keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in member_keys.keys() {
                pipe.exists(key);
            }
            let exists: Vec<bool> = pipe
                .query_async(&mut c)
                .await
                .map_err(EngineError::redis("sweeping for orphans"))?;
            for ((_, what), present) in member_keys.iter().zip(exists) {
                if !present {
                    index.extra(|| format!("{what} has no hash"));
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(left_out: usize) -> ScopedReport {
        ScopedReport {
            report: VerifyReport {
                migration: MIGRATION,
                run_id: "r".into(),
                stamp: "20260101_000000".into(),
                invariants: Vec::new(),
            },
            left_out,
        }
    }

    #[test]
    fn scope_note_names_the_left_out_users_on_scoped_invariants_only() {
        let r = scoped(3);
        for id in SCOPED_INVARIANTS {
            assert_eq!(
                r.note(id).as_deref(),
                Some("3 users left out: written by live writers, checked by no-lost-writes")
            );
        }
        assert_eq!(r.note("counts"), None);
        assert_eq!(r.note("backup"), None);
        assert_eq!(scoped(0).note("fields"), None);
    }
}
