//! The Phase 2 runner: SCAN -> read -> plan -> write, batched and pipelined,
//! over any [`GridPositionsStore`], in the run loop both migrations share
//! ([`crate::run::runner`]); what a batch does is here.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::connection::RedisConn;
use crate::error::Result;
use crate::grid_positions::plan::{
    plan_value, MigratePlan, PlanOptions, Planner, QuarantineReason, UserPlan,
};
use crate::grid_positions::store::{
    GridPositionsStore, PositionWrite, RunContext, UserWrite, WriteOutcome,
};
use crate::keys::{
    escape_glob, escape_key, not_legacy_reason, LegacyPositionsKey, BACKUP_TTL_SECS,
};
use crate::run;
use crate::run::checkpoint::Checkpoints;
use crate::run::journal::{self, outcomes_key, sha256_hex, Outcome, RunRecord, RunStart};
use crate::run::runner::{
    close_run, journal_entry, record_findings, run_batches, BatchSteps, Batching, Tally,
};

pub use super::MIGRATION;

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub exchanges: Vec<String>,
    pub dry_run: bool,
    pub skip_closed: bool,
    /// SCAN COUNT per step, and so about the keys of one batch: 250 keep
    /// a batch's plans, payloads and pipelines small (peak RSS at 100k
    /// users 44-47 MB, against 95-103 MB at 1000), at no cost in time
    /// that a benchmark could tell from noise.
    pub scan_count: usize,
    /// Batches in flight at once.
    pub in_flight: usize,
    /// How often a user whose legacy key keeps changing under a writer is
    /// read and planned again before it is reported as a conflict.
    pub max_retries: usize,
    /// How many sample old -> new key mappings a report keeps.
    pub samples: usize,
    /// A user with more positions is quarantined: each user is one atomic
    /// step, and the server does nothing else while it runs (about 5.5 µs
    /// a position in the standalone script, Redis 7.0).
    pub max_positions_per_user: usize,
    /// Plans each legacy value: [`plan_value`]. Every command keeps it;
    /// it is an option only so the gate can run a deliberately broken
    /// planner through the very same runner (keyshift-mutants).
    pub planner: Planner,
}

impl MigrateOptions {
    pub const DEFAULT_IN_FLIGHT: usize = 4;
    /// 5,000 positions: about 27 ms of one server's time in one step.
    pub const DEFAULT_MAX_POSITIONS_PER_USER: usize = 5_000;

    pub fn new(exchanges: Vec<String>) -> Self {
        Self {
            exchanges,
            dry_run: false,
            skip_closed: false,
            scan_count: 250,
            in_flight: Self::DEFAULT_IN_FLIGHT,
            max_retries: 5,
            samples: 5,
            max_positions_per_user: Self::DEFAULT_MAX_POSITIONS_PER_USER,
            planner: plan_value,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub legacy_keys_found: usize,
    pub keys_migrated: usize,
    pub keys_quarantined: usize,
    pub keys_conflicting: usize,
    /// Keys that disappeared between SCAN and read (expired, deleted).
    pub keys_vanished: usize,
    pub positions_found: usize,
    pub positions_migrated: usize,
    pub positions_skipped_closed: usize,
    pub positions_quarantined: usize,
}

impl run::runner::Counts for Counts {
    fn add(&mut self, o: &Counts) {
        self.legacy_keys_found += o.legacy_keys_found;
        self.keys_migrated += o.keys_migrated;
        self.keys_quarantined += o.keys_quarantined;
        self.keys_conflicting += o.keys_conflicting;
        self.keys_vanished += o.keys_vanished;
        self.positions_found += o.positions_found;
        self.positions_migrated += o.positions_migrated;
        self.positions_skipped_closed += o.positions_skipped_closed;
        self.positions_quarantined += o.positions_quarantined;
    }
}

pub use crate::run::Finding;

#[derive(Debug, Clone, Serialize)]
pub struct KeySample {
    pub legacy: String,
    pub backup: String,
    pub index: String,
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    pub migration: &'static str,
    pub run_id: Option<String>,
    /// This invocation continued an interrupted run; its counts cover
    /// only the keys it settled itself.
    pub resumed: bool,
    pub stamp: String,
    pub dry_run: bool,
    pub skip_closed: bool,
    pub exchanges: Vec<String>,
    pub totals: Counts,
    pub per_exchange: BTreeMap<String, Counts>,
    pub samples: Vec<KeySample>,
    pub quarantined: Vec<Finding>,
    pub conflicts: Vec<Finding>,
    /// Keys the SCAN matched that are not legacy keys (backups aside), and
    /// why: listed up to a hundred, counted in `skipped_keys`.
    pub skipped: Vec<Finding>,
    pub skipped_keys: usize,
    pub elapsed_ms: u128,
}

impl MigrationReport {
    /// DESIGN §6: exit 3 when the run completed but left keys for review.
    pub fn needs_review(&self) -> bool {
        !self.quarantined.is_empty() || !self.conflicts.is_empty()
    }
}

type BatchTally = Tally<Counts, KeySample, Finding>;

/// Runs Phase 2. `progress` is called with the number of keys each SCAN step
/// returned.
pub async fn migrate_grid_positions<S: GridPositionsStore>(
    store: &S,
    opts: &MigrateOptions,
    progress: &dyn Fn(usize),
) -> Result<MigrationReport> {
    let started = Instant::now();
    let conn = store.journal_conn();
    let (mut record, resumed) = begin_or_resume(conn, opts).await?;
    if resumed && !opts.dry_run {
        store.settle_interrupted(&record).await?;
    }
    let (run_id, stamp) = (record.run_id.clone(), record.stamp.clone());
    let ctx = RunContext {
        run_id: run_id.clone(),
        outcomes_key: outcomes_key(&run_id),
        migrated_at: record.started_at.clone(),
        backup_ttl_secs: BACKUP_TTL_SECS,
    };
    let steps = Phase2Batches {
        store,
        opts,
        ctx: &ctx,
        stamp: &stamp,
        pattern: scan_pattern(&opts.exchanges),
    };
    let batching = Batching {
        scan_count: opts.scan_count,
        in_flight: opts.in_flight,
        samples: opts.samples,
    };
    let mut checkpoints = Checkpoints::from_env(conn, &ctx.outcomes_key);
    let result = run_batches(&steps, batching, progress, &mut checkpoints).await;
    let totals = async || run_totals(conn, &ctx.outcomes_key).await;
    let mut tally = close_run(conn, &mut record, opts.dry_run, result, totals).await?;
    Ok(MigrationReport {
        migration: MIGRATION,
        run_id: (!opts.dry_run).then_some(run_id),
        resumed,
        stamp,
        dry_run: opts.dry_run,
        skip_closed: opts.skip_closed,
        exchanges: opts.exchanges.clone(),
        totals: tally.totals(),
        per_exchange: tally.per_exchange,
        samples: tally.samples,
        quarantined: tally.quarantined,
        conflicts: tally.conflicts,
        skipped: tally.skipped,
        skipped_keys: tally.skipped_total,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// What the whole run did, resumed parts included, summed from the journal.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RunTotals {
    pub keys_migrated: usize,
    pub keys_quarantined: usize,
    pub keys_conflicting: usize,
    pub positions_migrated: usize,
    pub positions_skipped_closed: usize,
}

async fn run_totals(conn: &RedisConn, outcomes_key: &str) -> Result<RunTotals> {
    let mut totals = RunTotals::default();
    journal::for_each_outcome_batch(conn, outcomes_key, 1000, async |batch| {
        for (_, outcome) in batch {
            match outcome {
                Outcome::Migrated {
                    positions, skipped, ..
                } => {
                    totals.keys_migrated += 1;
                    totals.positions_migrated += positions;
                    totals.positions_skipped_closed += skipped;
                }
                Outcome::Quarantined { .. } => totals.keys_quarantined += 1,
                Outcome::Conflict { .. } => totals.keys_conflicting += 1,
            }
        }
        Ok(())
    })
    .await?;
    Ok(totals)
}

/// Starts a run, or resumes an interrupted one with the same options.
async fn begin_or_resume(conn: &RedisConn, opts: &MigrateOptions) -> Result<(RunRecord, bool)> {
    let start = RunStart {
        migration: MIGRATION,
        skip_closed: opts.skip_closed,
        exchanges: &opts.exchanges,
        dry_run: opts.dry_run,
    };
    let refuse = |last: &RunRecord| {
        (last.skip_closed != opts.skip_closed || last.exchanges != opts.exchanges).then(|| {
            format!(
                "run {} was interrupted with other options (skip_closed {}, exchanges {:?}); \
                 rerun with the same options to resume it, or remove its debris with \
                 `keyshift cleanup-migration grid-positions` first",
                last.run_id, last.skip_closed, last.exchanges
            )
        })
    };
    run::runner::begin_or_resume(conn, start, refuse).await
}

/// One SCAN for all exchanges: MATCH runs server-side, and each key is
/// then parsed against the exchange list, so backups and ids with `:` are
/// dropped there rather than by a looser pattern.
fn scan_pattern(exchanges: &[String]) -> String {
    match exchanges {
        [one] => format!("{}:positions:*", escape_glob(one)),
        _ => "*:positions:*".to_owned(),
    }
}

/// Phase 2's part of the run loop: one batch of legacy keys read, planned
/// and written, retried while writers change them.
struct Phase2Batches<'a, S> {
    store: &'a S,
    opts: &'a MigrateOptions,
    ctx: &'a RunContext,
    stamp: &'a str,
    pattern: String,
}

/// A legacy key of this run's exchanges, and its name as scanned.
type Pending = (LegacyPositionsKey, String);

impl<S: GridPositionsStore> BatchSteps for Phase2Batches<'_, S> {
    type Key = Vec<u8>;
    type Counts = Counts;
    type Sample = KeySample;
    type Finding = Finding;

    async fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        self.store.scan(cursor, &self.pattern, count).await
    }

    async fn process(&self, scanned: Vec<Vec<u8>>) -> Result<BatchTally> {
        let mut tally = BatchTally::default();
        let mut journal = Vec::new();
        let mut pending = self.parse_keys(scanned, &mut tally, &mut journal);
        let conn = self.store.journal_conn();
        let (outcomes_key, dry_run) = (&self.ctx.outcomes_key, self.opts.dry_run);
        record_findings(conn, outcomes_key, dry_run, &journal).await?;
        journal.clear();
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let (planned, writes) = self
                .plan_round(&mut pending, &mut tally, &mut journal)
                .await?;
            let outcomes = if self.opts.dry_run {
                vec![WriteOutcome::Migrated { pttl_ms: -1 }; writes.len()]
            } else {
                self.store.migrate_users(self.ctx, &writes).await?
            };
            for (user, (write, outcome)) in
                planned.into_iter().zip(writes.into_iter().zip(outcomes))
            {
                let round = Round {
                    attempt,
                    max_retries: self.opts.max_retries,
                    max_samples: self.opts.samples,
                };
                let retry = settle(&mut tally, &mut journal, user, write, outcome, round);
                pending.extend(retry);
            }
            record_findings(conn, outcomes_key, dry_run, &journal).await?;
            journal.clear();
        }
        Ok(tally)
    }
}

impl<S: GridPositionsStore> Phase2Batches<'_, S> {
    /// The scanned legacy keys of this run's exchanges. A legacy name that
    /// is not UTF-8 is quarantined, shown escaped; any other key the
    /// pattern matched is listed as skipped, with why.
    fn parse_keys(
        &self,
        scanned: Vec<Vec<u8>>,
        tally: &mut BatchTally,
        journal: &mut Vec<(String, String)>,
    ) -> Vec<Pending> {
        let exchanges = &self.opts.exchanges;
        let mut pending = Vec::new();
        for raw in scanned {
            let key = match String::from_utf8(raw) {
                Ok(key) => key,
                Err(e) => {
                    let shown = escape_key(e.as_bytes());
                    let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    match LegacyPositionsKey::parse(&lossy, exchanges) {
                        Some(legacy) => {
                            let counts = tally.counts(&legacy.exchange);
                            let reason = QuarantineReason::KeyNotUtf8;
                            let finding = quarantine(counts, journal, shown, reason, 0, None);
                            tally.quarantined.push(finding);
                        }
                        None => tally.skip(skipped(shown, "the key name is not UTF-8".into())),
                    }
                    continue;
                }
            };
            match LegacyPositionsKey::parse(&key, exchanges) {
                Some(legacy) => {
                    tally.counts(&legacy.exchange);
                    pending.push((legacy, key));
                }
                None => {
                    if let Some(why) = not_legacy_reason(&key, exchanges) {
                        tally.skip(skipped(key, why));
                    }
                }
            }
        }
        pending
    }

    /// Reads every pending key once and plans it: a write for each user to
    /// migrate, a quarantine (tallied and journaled) for the rest.
    async fn plan_round(
        &self,
        pending: &mut Vec<Pending>,
        tally: &mut BatchTally,
        journal: &mut Vec<(String, String)>,
    ) -> Result<(Vec<Pending>, Vec<UserWrite>)> {
        let keys: Vec<String> = pending.iter().map(|(_, k)| k.clone()).collect();
        let reads = self.store.read_legacy(&keys).await?;
        let plan_opts = PlanOptions {
            skip_closed: self.opts.skip_closed,
        };
        let mut writes = Vec::new();
        let mut planned = Vec::new();
        for (n, ((legacy, key), read)) in pending.drain(..).zip(reads).enumerate() {
            let counts = tally.counts(&legacy.exchange);
            let value = match (read.redis_type.as_str(), read.value) {
                ("none", _) => {
                    // Counted once: a key is settled (here or in `settle`)
                    // only in its final state, however often a race sent it back.
                    counts.keys_vanished += 1;
                    continue;
                }
                ("string", Some(v)) => v,
                (other, _) => {
                    let redis_type = other.to_owned();
                    let reason = QuarantineReason::NotAString { redis_type };
                    let finding = quarantine(counts, journal, key, reason, 0, None);
                    tally.quarantined.push(finding);
                    continue;
                }
            };
            // Planning is CPU work on the caller's task: yield now and then
            // so the lock renewal and the connection drivers keep running.
            if n % 32 == 31 {
                tokio::task::yield_now().await;
            }
            match (self.opts.planner)(&value, plan_opts) {
                UserPlan::Quarantine { reason, positions } => {
                    let digest = Some(sha256_hex(&value));
                    let finding = quarantine(counts, journal, key, reason, positions, digest);
                    tally.quarantined.push(finding);
                }
                UserPlan::Migrate(plan) if too_many(&plan, self.opts.max_positions_per_user) => {
                    let positions = plan.positions.len() + plan.skipped_closed;
                    let max = self.opts.max_positions_per_user;
                    let reason = QuarantineReason::TooManyPositions { positions, max };
                    let digest = Some(sha256_hex(&value));
                    let finding = quarantine(counts, journal, key, reason, positions, digest);
                    tally.quarantined.push(finding);
                }
                UserPlan::Migrate(plan) => {
                    writes.push(user_write(&legacy, &key, value, plan, self.stamp));
                    planned.push((legacy, key));
                }
            }
        }
        Ok((planned, writes))
    }
}

/// Whether a user is too large to migrate in one bounded step.
fn too_many(plan: &MigratePlan, max: usize) -> bool {
    plan.positions.len() + plan.skipped_closed > max
}

/// The writes that migrate one user as `plan` says (`stamp`: the run's).
pub fn user_write(
    legacy: &LegacyPositionsKey,
    key: &str,
    value: Vec<u8>,
    plan: MigratePlan,
    stamp: &str,
) -> UserWrite {
    UserWrite {
        backup_key: legacy.backup_key(stamp),
        index_key: legacy.index_key(),
        positions: plan
            .positions
            .into_iter()
            .map(|p| {
                let member = p.index_member();
                PositionWrite {
                    key: legacy.position_key(&member),
                    member,
                    fields: p.fields,
                }
            })
            .collect(),
        skipped_closed: plan.skipped_closed,
        legacy_key: key.to_owned(),
        expected: value,
    }
}

/// Where a batch's retries stand.
#[derive(Clone, Copy)]
struct Round {
    attempt: usize,
    max_retries: usize,
    max_samples: usize,
}

/// Tallies one user's write outcome; a user whose legacy key changed under
/// a writer comes back to be read again, until it has changed too often.
fn settle(
    tally: &mut BatchTally,
    journal: &mut Vec<(String, String)>,
    (legacy, key): Pending,
    write: UserWrite,
    outcome: WriteOutcome,
    round: Round,
) -> Option<Pending> {
    let counts = tally.counts(&legacy.exchange);
    match outcome {
        WriteOutcome::Migrated { .. } => {
            let n = write.positions.len();
            counts.legacy_keys_found += 1;
            counts.keys_migrated += 1;
            counts.positions_found += n + write.skipped_closed;
            counts.positions_migrated += n;
            counts.positions_skipped_closed += write.skipped_closed;
            if tally.samples.len() < round.max_samples {
                tally.samples.push(KeySample {
                    legacy: key,
                    backup: write.backup_key,
                    index: write.index_key,
                    hashes: write.positions.into_iter().map(|p| p.key).collect(),
                });
            }
        }
        WriteOutcome::Changed if round.attempt <= round.max_retries => return Some((legacy, key)),
        WriteOutcome::Changed => {
            let attempt = round.attempt;
            let detail =
                format!("the key changed under a writer {attempt} times in a row; rerun to retry");
            let existing = key.clone();
            let finding = conflict(counts, journal, key, existing, detail);
            tally.conflicts.push(finding);
        }
        WriteOutcome::Conflict { key: existing } => {
            let detail = format!("{existing} already exists; nothing was written for this user");
            let finding = conflict(counts, journal, key, existing, detail);
            tally.conflicts.push(finding);
        }
    }
    None
}

/// Tallies and journals a key left in place; `digest` is the SHA-256 of
/// the value read, when a string was read.
fn quarantine(
    counts: &mut Counts,
    journal: &mut Vec<(String, String)>,
    key: String,
    reason: QuarantineReason,
    positions: usize,
    digest: Option<String>,
) -> Finding {
    counts.legacy_keys_found += 1;
    counts.keys_quarantined += 1;
    counts.positions_found += positions;
    counts.positions_quarantined += positions;
    let outcome = Outcome::Quarantined {
        reason: reason.tag().to_owned(),
        detail: reason.to_string(),
        digest,
    };
    journal.push(journal_entry(&key, &outcome));
    Finding {
        key,
        reason: reason.tag().to_owned(),
        detail: reason.to_string(),
    }
}

fn conflict(
    counts: &mut Counts,
    journal: &mut Vec<(String, String)>,
    legacy_key: String,
    existing: String,
    detail: String,
) -> Finding {
    counts.legacy_keys_found += 1;
    counts.keys_conflicting += 1;
    journal.push(journal_entry(
        &legacy_key,
        &Outcome::Conflict { key: existing },
    ));
    Finding {
        key: legacy_key,
        reason: "conflict".into(),
        detail,
    }
}

fn skipped(key: String, detail: String) -> Finding {
    Finding {
        key,
        reason: "not_a_legacy_key".into(),
        detail,
    }
}
