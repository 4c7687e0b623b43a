//! The Phase 2 runner: SCAN -> read -> plan -> write, batched and pipelined,
//! over any [`GridPositionsStore`]. It never spawns: batches overlap as
//! futures on the caller's task, so Redis works on one batch while the next
//! is planned.

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::stream::TryStreamExt;
use serde::Serialize;

use crate::error::Result;
use crate::grid_positions::plan::{plan_value, PlanOptions, QuarantineReason, UserPlan};
use crate::grid_positions::store::{
    GridPositionsStore, PositionWrite, RunContext, UserWrite, WriteOutcome,
};
use crate::keys::{escape_glob, LegacyPositionsKey, BACKUP_TTL_SECS};
use crate::run::journal::{self, outcomes_key, Outcome, RunRecord, RunStart, RunState};

pub use super::MIGRATION;

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub exchanges: Vec<String>,
    pub dry_run: bool,
    pub skip_closed: bool,
    /// SCAN COUNT per step.
    pub scan_count: usize,
    /// Batches in flight at once.
    pub in_flight: usize,
    /// How often a user whose legacy key keeps changing under a writer is
    /// read and planned again before it is reported as a conflict.
    pub max_retries: usize,
    /// How many sample old -> new key mappings a report keeps.
    pub samples: usize,
}

impl MigrateOptions {
    pub const DEFAULT_IN_FLIGHT: usize = 4;

    pub fn new(exchanges: Vec<String>) -> Self {
        Self {
            exchanges,
            dry_run: false,
            skip_closed: false,
            scan_count: 1000,
            in_flight: Self::DEFAULT_IN_FLIGHT,
            max_retries: 5,
            samples: 5,
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

impl Counts {
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

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub key: String,
    pub reason: String,
    pub detail: String,
}

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
    pub elapsed_ms: u128,
}

impl MigrationReport {
    /// DESIGN §6: exit 3 when the run completed but left keys for review.
    pub fn needs_review(&self) -> bool {
        !self.quarantined.is_empty() || !self.conflicts.is_empty()
    }
}

#[derive(Default)]
struct BatchResult {
    per_exchange: BTreeMap<String, Counts>,
    samples: Vec<KeySample>,
    quarantined: Vec<Finding>,
    conflicts: Vec<Finding>,
    scanned: usize,
}

/// Runs Phase 2. `progress` is called with the number of keys each SCAN step
/// returned.
pub async fn migrate_grid_positions<S: GridPositionsStore>(
    store: &S,
    opts: &MigrateOptions,
    progress: &dyn Fn(usize),
) -> Result<MigrationReport> {
    let started = Instant::now();
    let (mut record, resumed) = begin_or_resume(store, opts).await?;
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
    let result = run_batches(store, opts, &ctx, &stamp, progress).await;
    let finished = chrono::Utc::now();
    record.finished_at = Some(finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let mut report = MigrationReport {
        migration: MIGRATION,
        run_id: (!opts.dry_run).then(|| run_id.clone()),
        resumed,
        stamp,
        dry_run: opts.dry_run,
        skip_closed: opts.skip_closed,
        exchanges: opts.exchanges.clone(),
        totals: Counts::default(),
        per_exchange: BTreeMap::new(),
        samples: Vec::new(),
        quarantined: Vec::new(),
        conflicts: Vec::new(),
        elapsed_ms: 0,
    };
    match result {
        Ok(batch) => {
            for counts in batch.per_exchange.values() {
                report.totals.add(counts);
            }
            report.per_exchange = batch.per_exchange;
            report.samples = batch.samples;
            report.quarantined = batch.quarantined;
            report.conflicts = batch.conflicts;
            report.quarantined.sort_by(|a, b| a.key.cmp(&b.key));
            report.conflicts.sort_by(|a, b| a.key.cmp(&b.key));
            report.elapsed_ms = started.elapsed().as_millis();
            if !opts.dry_run {
                record.state = RunState::Done;
                let totals = run_totals(store, &run_id).await?;
                record.counts = Some(serde_json::to_value(&totals).expect("counts serialise"));
                store.save_run(&record).await?;
            }
            Ok(report)
        }
        Err(e) => {
            if !opts.dry_run {
                record.state = RunState::Failed;
                record.error = Some(e.to_string());
                // The original error matters more than a failure to record it.
                let _ = store.save_run(&record).await;
            }
            Err(e)
        }
    }
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

async fn run_totals<S: GridPositionsStore>(store: &S, run_id: &str) -> Result<RunTotals> {
    let mut totals = RunTotals::default();
    let mut cursor = 0;
    loop {
        let (next, outcomes) = store.scan_outcomes(run_id, cursor, 1000).await?;
        for (_, outcome) in outcomes {
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
        cursor = next;
        if cursor == 0 {
            return Ok(totals);
        }
    }
}

/// Starts a run, or resumes an interrupted one with the same options
/// ([`journal::begin_or_resume`]).
async fn begin_or_resume<S: GridPositionsStore>(
    store: &S,
    opts: &MigrateOptions,
) -> Result<(RunRecord, bool)> {
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
    let last = store.latest_run(MIGRATION).await?;
    journal::begin_or_resume(start, last, refuse, async |run| store.save_run(run).await).await
}

async fn run_batches<S: GridPositionsStore>(
    store: &S,
    opts: &MigrateOptions,
    ctx: &RunContext,
    stamp: &str,
    progress: &dyn Fn(usize),
) -> Result<BatchResult> {
    // One SCAN for all exchanges: MATCH runs server-side, and each key is
    // then parsed against the exchange list, so backups and ids with `:`
    // are dropped here rather than by a looser pattern.
    let pattern = match opts.exchanges.as_slice() {
        [one] => format!("{}:positions:*", escape_glob(one)),
        _ => "*:positions:*".to_owned(),
    };
    // SCAN steps are a stream polled together with the batches in flight,
    // so a SCAN round trip never stalls the writes.
    let scan = futures_util::stream::try_unfold(Some(0u64), |cursor| {
        let pattern = &pattern;
        async move {
            let Some(cursor) = cursor else {
                return Ok(None);
            };
            let (next, keys) = store.scan(cursor, pattern, opts.scan_count).await?;
            progress(keys.len());
            Ok(Some((keys, (next != 0).then_some(next))))
        }
    });
    let batches = scan
        .map_ok(|keys| process_batch(store, opts, ctx, stamp, keys))
        .try_buffer_unordered(opts.in_flight.max(1));
    let mut batches = std::pin::pin!(batches);
    let mut total = BatchResult::default();
    while let Some(batch) = batches.try_next().await? {
        merge(&mut total, batch, opts.samples);
    }
    Ok(total)
}

fn merge(total: &mut BatchResult, batch: BatchResult, max_samples: usize) {
    for (ex, counts) in batch.per_exchange {
        total.per_exchange.entry(ex).or_default().add(&counts);
    }
    let room = max_samples.saturating_sub(total.samples.len());
    total.samples.extend(batch.samples.into_iter().take(room));
    total.quarantined.extend(batch.quarantined);
    total.conflicts.extend(batch.conflicts);
    total.scanned += batch.scanned;
}

async fn process_batch<S: GridPositionsStore>(
    store: &S,
    opts: &MigrateOptions,
    ctx: &RunContext,
    stamp: &str,
    scanned: Vec<String>,
) -> Result<BatchResult> {
    let mut result = BatchResult {
        scanned: scanned.len(),
        ..BatchResult::default()
    };
    let mut pending: Vec<(LegacyPositionsKey, String)> = scanned
        .into_iter()
        .filter_map(|k| LegacyPositionsKey::parse(&k, &opts.exchanges).map(|p| (p, k)))
        .collect();
    for (legacy, _) in &pending {
        result
            .per_exchange
            .entry(legacy.exchange.clone())
            .or_default();
    }
    let plan_opts = PlanOptions {
        skip_closed: opts.skip_closed,
    };
    let mut attempt = 0;
    while !pending.is_empty() {
        attempt += 1;
        let keys: Vec<String> = pending.iter().map(|(_, k)| k.clone()).collect();
        let reads = store.read_legacy(&keys).await?;
        let mut writes = Vec::new();
        let mut planned = Vec::new();
        let mut journal = Vec::new();
        for (n, ((legacy, key), read)) in pending.drain(..).zip(reads).enumerate() {
            let counts = result
                .per_exchange
                .get_mut(&legacy.exchange)
                .expect("entry");
            let value = match (read.redis_type.as_str(), read.value) {
                ("none", _) => {
                    // Counted once: a key is settled (here or below) only in
                    // its final state, however often a race sent it back.
                    counts.keys_vanished += 1;
                    continue;
                }
                ("string", Some(v)) => v,
                (other, _) => {
                    let reason = QuarantineReason::NotAString {
                        redis_type: other.to_owned(),
                    };
                    quarantine(
                        &mut result.quarantined,
                        &mut journal,
                        counts,
                        key,
                        reason,
                        0,
                    );
                    continue;
                }
            };
            // Planning is CPU work on the caller's task: yield now and then
            // so the lock renewal and the connection drivers keep running.
            if n % 32 == 31 {
                tokio::task::yield_now().await;
            }
            match plan_value(&value, plan_opts) {
                UserPlan::Quarantine { reason, positions } => quarantine(
                    &mut result.quarantined,
                    &mut journal,
                    counts,
                    key,
                    reason,
                    positions,
                ),
                UserPlan::Migrate(plan) => {
                    let write = UserWrite {
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
                        legacy_key: key.clone(),
                        expected: value,
                    };
                    planned.push((legacy, key));
                    writes.push(write);
                }
            }
        }
        let outcomes = if opts.dry_run {
            vec![WriteOutcome::Migrated { pttl_ms: -1 }; writes.len()]
        } else {
            store.migrate_users(ctx, &writes).await?
        };
        for ((legacy, key), (write, outcome)) in
            planned.into_iter().zip(writes.into_iter().zip(outcomes))
        {
            let counts = result
                .per_exchange
                .get_mut(&legacy.exchange)
                .expect("entry");
            match outcome {
                WriteOutcome::Migrated { .. } => {
                    let n = write.positions.len();
                    counts.legacy_keys_found += 1;
                    counts.keys_migrated += 1;
                    counts.positions_found += n + write.skipped_closed;
                    counts.positions_migrated += n;
                    counts.positions_skipped_closed += write.skipped_closed;
                    if result.samples.len() < opts.samples {
                        result.samples.push(KeySample {
                            legacy: key,
                            backup: write.backup_key,
                            index: write.index_key,
                            hashes: write.positions.into_iter().map(|p| p.key).collect(),
                        });
                    }
                }
                WriteOutcome::Changed if attempt <= opts.max_retries => pending.push((legacy, key)),
                WriteOutcome::Changed => {
                    counts.legacy_keys_found += 1;
                    counts.keys_conflicting += 1;
                    let detail = format!(
                        "the key changed under a writer {attempt} times in a row; rerun to retry"
                    );
                    record_conflict(
                        &mut result.conflicts,
                        &mut journal,
                        key.clone(),
                        key,
                        detail,
                    );
                }
                WriteOutcome::Conflict { key: existing } => {
                    counts.legacy_keys_found += 1;
                    counts.keys_conflicting += 1;
                    let detail =
                        format!("{existing} already exists; nothing was written for this user");
                    record_conflict(&mut result.conflicts, &mut journal, key, existing, detail);
                }
            }
        }
        if !opts.dry_run {
            store.record_outcomes(ctx, &journal).await?;
        }
    }
    Ok(result)
}

fn quarantine(
    findings: &mut Vec<Finding>,
    journal: &mut Vec<(String, String)>,
    counts: &mut Counts,
    key: String,
    reason: QuarantineReason,
    positions: usize,
) {
    counts.legacy_keys_found += 1;
    counts.keys_quarantined += 1;
    counts.positions_found += positions;
    counts.positions_quarantined += positions;
    let outcome = Outcome::Quarantined {
        reason: reason.tag().to_owned(),
        detail: reason.to_string(),
    };
    journal.push((
        key.clone(),
        serde_json::to_string(&outcome).expect("outcome serialises"),
    ));
    findings.push(Finding {
        key,
        reason: reason.tag().to_owned(),
        detail: reason.to_string(),
    });
}

fn record_conflict(
    findings: &mut Vec<Finding>,
    journal: &mut Vec<(String, String)>,
    legacy_key: String,
    existing: String,
    detail: String,
) {
    let outcome = Outcome::Conflict { key: existing };
    journal.push((
        legacy_key.clone(),
        serde_json::to_string(&outcome).expect("outcome serialises"),
    ));
    findings.push(Finding {
        key: legacy_key,
        reason: "conflict".into(),
        detail,
    });
}
