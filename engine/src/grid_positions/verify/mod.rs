//! `verify grid-positions`: checks the counts, index, fields, backup and ttl
//! invariants of DESIGN §4 on a live server after a migration, using the
//! run's backups (found through the journal) as the record of what was
//! there, each held to the digest the run journaled when it read the
//! legacy value. Reads only. An invariant the run gave nothing to examine
//! (a run that migrated no user) reports `not run` with the reason.
//!
//! [`verify_grid_positions_scoped`] leaves a set of legacy keys out of the
//! per-user comparisons (index, fields, ttl): users that live writers
//! legitimately changed after their migration, whose final state the
//! harness's no-lost-writes check proves instead. Their counts, backup and
//! "reappeared" checks still run. The CLI passes no scope.

use std::collections::{BTreeSet, HashMap};

use redis::aio::ConnectionLike;

use crate::error::{EngineError, Result};
use crate::grid_positions::plan::{plan_value, PlanOptions, UserPlan};
use crate::grid_positions::runner::MIGRATION;
use crate::keys::{is_migrating_sentinel, LegacyPositionsKey, BACKUP_TTL_SECS};
use crate::run::invariant::InvariantResult;
pub use crate::run::invariant::{VerifyReport, TTL_TOLERANCE_MS};
pub use crate::run::journal::read_run;
use crate::run::journal::{outcomes_key, scan_outcomes, sha256_hex, Outcome, RunRecord};

mod judge;
mod orphans;
use judge::{check_ttl, compare_hash, marked_index, read_in_window, ReadWindow};
use orphans::sweep_orphans;

const BATCH: usize = 500;

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
        backup: InvariantResult::new("backup", "each migrated legacy key has one backup of this run, byte-identical to the value read (the journaled digest), with TTL in (0, 7 days]"),
        ttl: InvariantResult::new("ttl", "legacy TTLs carried over to every new key within tolerance"),
    };
    let mut v = Verifier {
        run,
        opts: PlanOptions {
            skip_closed: run.skip_closed,
        },
        scope,
        totals: Totals::default(),
        left_out: 0,
        seen: Seen::default(),
    };
    let mut cursor = 0u64;
    loop {
        let (next, outcomes) = scan_outcomes(conn, &run.run_id, cursor, BATCH).await?;
        progress(outcomes.len());
        v.verify_outcomes(conn, outcomes, &mut checks).await?;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let Totals {
        found,
        migrated,
        skipped,
        quarantined,
    } = v.totals;
    if v.seen.outcomes > 0 {
        checks.counts.check(if found == migrated + skipped + quarantined {
            Ok(())
        } else {
            Err(format!(
                "total: found {found} != migrated {migrated} + skipped {skipped} + quarantined {quarantined}"
            ))
        });
    }
    let swept = sweep_orphans(conn, &run.exchanges, &mut checks.index).await?;
    v.explain_not_run(swept, &mut checks);
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
    Ok(ScopedReport {
        report,
        left_out: v.left_out,
    })
}

/// Positions counted over every batch.
#[derive(Debug, Default)]
struct Totals {
    found: usize,
    migrated: usize,
    skipped: usize,
    quarantined: usize,
}

/// What the per-user checks hold to, and what they add up.
struct Verifier<'a> {
    run: &'a RunRecord,
    opts: PlanOptions,
    scope: &'a Scope,
    totals: Totals,
    /// Migrated users the scope left out.
    left_out: usize,
    seen: Seen,
}

/// What the run gave verify to examine: why an invariant did not run.
#[derive(Debug, Default)]
struct Seen {
    /// Outcomes journaled (any state).
    outcomes: usize,
    /// Users journaled as migrated.
    migrated: usize,
    /// Migrated users whose backup was read and planned.
    planned: usize,
}

/// A user the journal records as migrated, as it records it.
struct Migrated {
    legacy_key: String,
    legacy: LegacyPositionsKey,
    positions: usize,
    skipped: usize,
    /// The legacy TTL (ms) and the server time (ms) it was read at.
    pttl: i64,
    at: i64,
    /// SHA-256 of the legacy value as read (`""`: journaled before digests).
    digest: String,
}

/// What round trip 1 read for one migrated user.
struct UserRead {
    backup: Option<Vec<u8>>,
    backup_ttl: i64,
    /// The legacy key exists again.
    reappeared: bool,
    members: BTreeSet<String>,
    index_ttl: i64,
}

impl UserRead {
    /// The five replies [`read_users`] asked for one user.
    fn from_replies(r: &[redis::Value]) -> Self {
        Self {
            backup: redis::from_redis_value_ref(&r[0]).ok().flatten(),
            backup_ttl: redis::from_redis_value_ref(&r[1]).unwrap_or(-2),
            reappeared: redis::from_redis_value_ref(&r[2]).unwrap_or(false),
            members: redis::from_redis_value_ref(&r[3]).unwrap_or_default(),
            index_ttl: redis::from_redis_value_ref(&r[4]).unwrap_or(-2),
        }
    }
}

/// A user's hashes as its backup plans them, for round trip 2.
struct Expected {
    legacy_key: String,
    pttl: i64,
    at: i64,
    /// Each hash's key and planned fields.
    hashes: Vec<(String, Vec<(String, String)>)>,
}

impl Verifier<'_> {
    /// Checks one batch of the journal's outcomes (its migrated users).
    async fn verify_outcomes<C: ConnectionLike + Clone + Send>(
        &mut self,
        conn: &C,
        outcomes: Vec<(String, Outcome)>,
        checks: &mut Checks,
    ) -> Result<()> {
        self.seen.outcomes += outcomes.len();
        let migrated = self.migrated_users(outcomes)?;
        self.seen.migrated += migrated.len();
        // A batch of quarantines and conflicts only: nothing to read (and an
        // empty pipeline is an error to redis-rs).
        if migrated.is_empty() {
            return Ok(());
        }
        let (reads, read_at) = read_users(conn, self.run, &migrated).await?;
        let mut expected = Vec::new();
        for (user, read) in migrated.into_iter().zip(reads) {
            if let Some(e) = self.check_user(user, read, read_at, checks) {
                expected.push(e);
            }
        }
        check_hashes(conn, &expected, read_at, checks).await
    }

    /// The batch's migrated users; a key that is no legacy positions key
    /// is a broken journal.
    fn migrated_users(&self, outcomes: Vec<(String, Outcome)>) -> Result<Vec<Migrated>> {
        let run = self.run;
        outcomes
            .into_iter()
            .filter_map(|(legacy_key, outcome)| match outcome {
                Outcome::Migrated {
                    positions,
                    skipped,
                    pttl,
                    at,
                    digest,
                } => Some((legacy_key, positions, skipped, pttl, at, digest)),
                Outcome::Quarantined { .. } | Outcome::Conflict { .. } => None,
            })
            .map(|(legacy_key, positions, skipped, pttl, at, digest)| {
                let legacy =
                    LegacyPositionsKey::parse(&legacy_key, &run.exchanges).ok_or_else(|| {
                        EngineError::BadJournal {
                            key: outcomes_key(&run.run_id),
                            detail: format!("{legacy_key} is not a legacy positions key"),
                        }
                    })?;
                Ok(Migrated {
                    legacy_key,
                    legacy,
                    positions,
                    skipped,
                    pttl,
                    at,
                    digest,
                })
            })
            .collect()
    }

    /// The counts, backup and index checks of one user; its hashes to read
    /// unless a check already failed it or the scope leaves it out.
    fn check_user(
        &mut self,
        user: Migrated,
        read: UserRead,
        read_at: ReadWindow,
        checks: &mut Checks,
    ) -> Option<Expected> {
        let Migrated {
            legacy_key, legacy, ..
        } = &user;
        if read.reappeared {
            checks.counts.mismatch(|| format!("{legacy_key}: legacy key reappeared after its migration (a writer still uses the old layout)"));
        }
        let backup_key = legacy.backup_key(&self.run.stamp);
        let Some(backup) = &read.backup else {
            checks
                .backup
                .mismatch(|| format!("{legacy_key}: backup {backup_key} is missing"));
            return None;
        };
        checks.backup.check(check_backup(
            &backup_key,
            backup,
            read.backup_ttl,
            &user.digest,
        ));
        let plan = match plan_value(backup, self.opts) {
            UserPlan::Migrate(p) => p,
            UserPlan::Quarantine { reason, .. } => {
                checks.counts.mismatch(|| {
                    format!(
                        "{legacy_key}: migrated, yet its backup would be quarantined ({reason})"
                    )
                });
                return None;
            }
        };
        self.count(&user, plan.positions.len(), plan.skipped_closed, checks);
        self.seen.planned += 1;
        if self.scope.left_out.contains(legacy_key) {
            // Written since its migration: no-lost-writes checks this user.
            self.left_out += 1;
            return None;
        }
        let want: BTreeSet<String> = plan.positions.iter().map(|p| p.index_member()).collect();
        check_index(&user, &want, &read, read_at, checks);
        Some(Expected {
            hashes: plan
                .positions
                .into_iter()
                .map(|p| (legacy.position_key(&p.index_member()), p.fields))
                .collect(),
            legacy_key: user.legacy_key,
            pttl: user.pttl,
            at: user.at,
        })
    }

    /// Says why each invariant that examined nothing did not run; the
    /// orphan sweep, which examined `swept` keys, answers for the index
    /// when the run gave it no user.
    fn explain_not_run(&self, swept: usize, checks: &mut Checks) {
        let run = &self.run.run_id;
        let seen = &self.seen;
        if seen.outcomes == 0 {
            checks.counts.not_run(format!(
                "run {run} journaled no legacy key: nothing to count"
            ));
        }
        let no_user = if seen.outcomes == 0 {
            format!("run {run} journaled no legacy key")
        } else {
            format!(
                "run {run} migrated no legacy key ({} journaled: quarantined or in conflict)",
                seen.outcomes
            )
        };
        let why = if seen.migrated == 0 {
            no_user.clone()
        } else if seen.planned == 0 {
            format!(
                "no backup of the {} migrated users could be planned (see backup)",
                seen.migrated
            )
        } else if self.left_out == seen.planned {
            format!(
                "all {} migrated users left out: written by live writers, checked by no-lost-writes",
                self.left_out
            )
        } else {
            format!(
                "the {} migrated users held no position (empty values, or closed positions skipped)",
                seen.planned - self.left_out
            )
        };
        checks.backup.not_run(no_user);
        checks.fields.not_run(why.clone());
        checks.ttl.not_run(why.clone());
        if swept > 0 {
            checks.index.nothing_to_check(format!(
                "{why}; the orphan sweep found {swept} position keys, none orphaned"
            ));
        } else {
            checks
                .index
                .not_run(format!("{why}; the orphan sweep found no position key"));
        }
    }

    /// Adds a user's counts to the totals and checks them against its
    /// backup's plan: `planned` positions, `closed` skipped as closed.
    fn count(&mut self, user: &Migrated, planned: usize, closed: usize, checks: &mut Checks) {
        let Migrated {
            legacy_key,
            positions,
            skipped,
            ..
        } = user;
        self.totals.found += planned + closed;
        self.totals.migrated += positions;
        self.totals.skipped += skipped;
        checks.counts.check(if planned == *positions && closed == *skipped {
            Ok(())
        } else {
            Err(format!(
                "{legacy_key}: backup holds {planned} positions (+{closed} closed skipped), journal says {positions} (+{skipped})"
            ))
        });
    }
}

/// A backup holds the bytes the run read (their digest, when journaled)
/// and expires within 7 days.
fn check_backup(backup_key: &str, backup: &[u8], ttl: i64, digest: &str) -> Result<(), String> {
    if !digest.is_empty() && sha256_hex(backup) != digest {
        return Err(format!(
            "{backup_key}: not byte-identical to the value the run read (SHA-256 {}, journaled {digest})",
            sha256_hex(backup)
        ));
    }
    if ttl > 0 && ttl <= (BACKUP_TTL_SECS * 1000) as i64 {
        Ok(())
    } else {
        Err(format!("{backup_key}: TTL {ttl} ms is not in (0, 7 days]"))
    }
}

/// Round trip 1: each user's backup and its TTL, whether its legacy key
/// is back, and its index set and the set's TTL.
async fn read_users<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    migrated: &[Migrated],
) -> Result<(Vec<UserRead>, ReadWindow)> {
    let mut pipe = redis::pipe();
    for user in migrated {
        let backup = user.legacy.backup_key(&run.stamp);
        pipe.get(&backup)
            .pttl(&backup)
            .exists(&user.legacy_key)
            .smembers(user.legacy.index_key())
            .pttl(user.legacy.index_key());
    }
    let (replies, read_at) = read_in_window(conn, &pipe, "reading backups").await?;
    let reads = replies
        .chunks_exact(5)
        .map(UserRead::from_replies)
        .collect();
    Ok((reads, read_at))
}

/// The index set holds exactly the planned members (`want`) and no
/// marker, and carries the legacy TTL over.
fn check_index(
    user: &Migrated,
    want: &BTreeSet<String>,
    read: &UserRead,
    read_at: ReadWindow,
    checks: &mut Checks,
) {
    let index_key = user.legacy.index_key();
    let members = &read.members;
    let marked = members.iter().find(|m| is_migrating_sentinel(m));
    checks.index.check(if let Some(m) = marked {
        Err(marked_index(&index_key, m))
    } else if want == members {
        Ok(())
    } else {
        Err(format!(
            "{index_key}: members {members:?}, expected {want:?}"
        ))
    });
    if !want.is_empty() {
        check_ttl(
            &mut checks.ttl,
            &index_key,
            read.index_ttl,
            user.pttl,
            user.at,
            read_at,
        );
    }
}

/// Round trip 2: every expected hash and its TTL, between two readings
/// of the server's clock: a TTL is judged by the clock of the round trip
/// it came in, however long a loaded machine took between the two.
async fn check_hashes<C: ConnectionLike + Clone + Send>(
    conn: &C,
    expected: &[Expected],
    read_at: ReadWindow,
    checks: &mut Checks,
) -> Result<()> {
    let mut pipe = redis::pipe();
    for e in expected {
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
    for e in expected {
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
