//! The Phase 1 runner: SCAN -> read legacy and target -> plan -> write,
//! batched and pipelined over any [`OrderPlacedStore`]. Like Phase 2's it
//! never spawns, and it resumes an interrupted run under the same run id.

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::stream::TryStreamExt;
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::keys::OrderPlacedKey;
use crate::run::journal::{self, outcomes_key, OrderPlacedOutcome, RunRecord, RunStart, RunState};

use super::plan::{fields_digest, plan_key, ConflictReason, KeyPlan, QuarantineReason};
use super::store::{KeyWrite, OrderPlacedStore, WriteKind, WriteOutcome};
use super::MIGRATION;

#[derive(Debug, Clone)]
pub struct OrderPlacedOptions {
    pub exchanges: Vec<String>,
    pub dry_run: bool,
    /// SCAN COUNT per step.
    pub scan_count: usize,
    /// SCAN batches read and written at once.
    pub in_flight: usize,
    /// How often a key that keeps changing under a writer is read again
    /// before it is reported as a conflict.
    pub max_retries: usize,
    /// How many sample old -> new mappings a report keeps.
    pub samples: usize,
}

impl OrderPlacedOptions {
    pub fn new(exchanges: Vec<String>) -> Self {
        Self {
            exchanges,
            dry_run: false,
            scan_count: 1000,
            in_flight: 4,
            max_retries: 5,
            samples: 5,
        }
    }
}

/// Per exchange and in total. `legacy_keys_found` = moved + dropped_equal
/// + conflicting + quarantined; vanished keys are not found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub legacy_keys_found: usize,
    pub keys_moved: usize,
    pub keys_dropped_equal: usize,
    pub keys_conflicting: usize,
    pub keys_quarantined: usize,
    /// Keys that disappeared between SCAN and read (expired, deleted).
    pub keys_vanished: usize,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.legacy_keys_found += o.legacy_keys_found;
        self.keys_moved += o.keys_moved;
        self.keys_dropped_equal += o.keys_dropped_equal;
        self.keys_conflicting += o.keys_conflicting;
        self.keys_quarantined += o.keys_quarantined;
        self.keys_vanished += o.keys_vanished;
    }

    /// Tallies one journal outcome.
    pub fn count(&mut self, o: &OrderPlacedOutcome) {
        self.legacy_keys_found += 1;
        match o {
            OrderPlacedOutcome::Moved { .. } => self.keys_moved += 1,
            OrderPlacedOutcome::DroppedEqual { .. } => self.keys_dropped_equal += 1,
            OrderPlacedOutcome::Conflict { .. } => self.keys_conflicting += 1,
            OrderPlacedOutcome::Quarantined { .. } => self.keys_quarantined += 1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KeySample {
    pub legacy: String,
    pub target: String,
    /// `move` or `drop_equal`.
    pub action: &'static str,
}

/// A key left for review: the legacy key, its target, why.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub key: String,
    pub target: String,
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderPlacedReport {
    pub migration: &'static str,
    pub run_id: Option<String>,
    /// This invocation continued an interrupted run; its counts cover only
    /// the keys it settled itself.
    pub resumed: bool,
    pub dry_run: bool,
    pub exchanges: Vec<String>,
    pub totals: Counts,
    pub per_exchange: BTreeMap<String, Counts>,
    pub samples: Vec<KeySample>,
    pub quarantined: Vec<Finding>,
    pub conflicts: Vec<Finding>,
    pub elapsed_ms: u128,
}

impl OrderPlacedReport {
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
}

/// Runs Phase 1. `progress` is called with the number of keys each SCAN
/// step returned. The caller holds the runner lock when it writes.
pub async fn migrate_order_placed<S: OrderPlacedStore>(
    store: &S,
    opts: &OrderPlacedOptions,
    progress: &dyn Fn(usize),
) -> Result<OrderPlacedReport> {
    let started = Instant::now();
    let (mut record, resumed) = begin_or_resume(store, opts).await?;
    let outcomes = outcomes_key(&record.run_id);
    let result = run_batches(store, opts, &outcomes, progress).await;
    let finished = chrono::Utc::now();
    record.finished_at = Some(finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let batch = match result {
        Ok(batch) => batch,
        Err(e) => {
            if !opts.dry_run {
                record.state = RunState::Failed;
                record.error = Some(e.to_string());
                // The original error matters more than a failure to record it.
                let _ = store.save_run(&record).await;
            }
            return Err(e);
        }
    };
    let mut report = OrderPlacedReport {
        migration: MIGRATION,
        run_id: (!opts.dry_run).then(|| record.run_id.clone()),
        resumed,
        dry_run: opts.dry_run,
        exchanges: opts.exchanges.clone(),
        totals: Counts::default(),
        per_exchange: batch.per_exchange,
        samples: batch.samples,
        quarantined: batch.quarantined,
        conflicts: batch.conflicts,
        elapsed_ms: 0,
    };
    for counts in report.per_exchange.values() {
        report.totals.add(counts);
    }
    report.quarantined.sort_by(|a, b| a.key.cmp(&b.key));
    report.conflicts.sort_by(|a, b| a.key.cmp(&b.key));
    if !opts.dry_run {
        record.state = RunState::Done;
        let totals = run_totals(store, &outcomes).await?;
        record.counts = Some(serde_json::to_value(&totals).expect("counts serialise"));
        store.save_run(&record).await?;
    }
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

/// What the whole run did, resumed parts included, summed from the journal.
async fn run_totals<S: OrderPlacedStore>(store: &S, outcomes: &str) -> Result<Counts> {
    let mut totals = Counts::default();
    let mut cursor = 0;
    loop {
        let (next, batch) = store.scan_outcomes(outcomes, cursor, 1000).await?;
        batch.iter().for_each(|(_, o)| totals.count(o));
        cursor = next;
        if cursor == 0 {
            return Ok(totals);
        }
    }
}

/// Starts a run, or resumes an interrupted one over the same exchanges
/// ([`journal::begin_or_resume`]).
async fn begin_or_resume<S: OrderPlacedStore>(
    store: &S,
    opts: &OrderPlacedOptions,
) -> Result<(RunRecord, bool)> {
    let start = RunStart {
        migration: MIGRATION,
        skip_closed: false,
        exchanges: &opts.exchanges,
        dry_run: opts.dry_run,
    };
    let refuse = |last: &RunRecord| {
        (last.exchanges != opts.exchanges).then(|| {
            format!(
                "run {} was interrupted with exchanges {:?}; rerun with the same \
                 --exchange to resume it",
                last.run_id, last.exchanges
            )
        })
    };
    let last = store.latest_run(MIGRATION).await?;
    journal::begin_or_resume(start, last, refuse, async |run| store.save_run(run).await).await
}

async fn run_batches<S: OrderPlacedStore>(
    store: &S,
    opts: &OrderPlacedOptions,
    outcomes: &str,
    progress: &dyn Fn(usize),
) -> Result<BatchResult> {
    // One SCAN; each key is then parsed against the exchange list, which
    // drops the `orders:` targets the all-exchange pattern also matches.
    let pattern = match opts.exchanges.as_slice() {
        [one] => OrderPlacedKey::scan_pattern(Some(one)),
        _ => OrderPlacedKey::scan_pattern(None),
    };
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
        .map_ok(|keys| process_batch(store, opts, outcomes, keys))
        .try_buffer_unordered(opts.in_flight.max(1));
    let mut batches = std::pin::pin!(batches);
    let mut total = BatchResult::default();
    while let Some(batch) = batches.try_next().await? {
        for (ex, counts) in batch.per_exchange {
            total.per_exchange.entry(ex).or_default().add(&counts);
        }
        let room = opts.samples.saturating_sub(total.samples.len());
        total.samples.extend(batch.samples.into_iter().take(room));
        total.quarantined.extend(batch.quarantined);
        total.conflicts.extend(batch.conflicts);
    }
    Ok(total)
}

async fn process_batch<S: OrderPlacedStore>(
    store: &S,
    opts: &OrderPlacedOptions,
    outcomes: &str,
    scanned: Vec<Vec<u8>>,
) -> Result<BatchResult> {
    let mut result = BatchResult::default();
    let mut journal = Vec::new();
    let mut pending: Vec<(OrderPlacedKey, String)> = Vec::new();
    for raw in scanned {
        match String::from_utf8(raw) {
            Ok(key) => {
                if let Some(k) = OrderPlacedKey::parse(&key, &opts.exchanges) {
                    result.per_exchange.entry(k.exchange.clone()).or_default();
                    pending.push((k, key));
                }
            }
            Err(e) => {
                let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                if let Some(k) = OrderPlacedKey::parse(&lossy, &opts.exchanges) {
                    let counts = result.per_exchange.entry(k.exchange.clone()).or_default();
                    let reason = QuarantineReason::KeyNotUtf8;
                    let f = quarantine(counts, &mut journal, lossy, &k, reason);
                    result.quarantined.push(f);
                }
            }
        }
    }
    let mut attempt = 0;
    while !pending.is_empty() {
        attempt += 1;
        let keys: Vec<String> = pending
            .iter()
            .flat_map(|(k, key)| [key.clone(), k.target_key()])
            .collect();
        let mut reads = store.read_keys(&keys).await?.into_iter();
        let mut writes = Vec::new();
        let mut planned = Vec::new();
        for (k, key) in pending.drain(..) {
            let (legacy, target) = (reads.next(), reads.next());
            let (Some(legacy), Some(target)) = (legacy, target) else {
                return Err(short_read());
            };
            let counts = result.per_exchange.get_mut(&k.exchange).expect("entry");
            let kind = match plan_key(&legacy, &target) {
                KeyPlan::Vanished => {
                    counts.keys_vanished += 1;
                    continue;
                }
                KeyPlan::Quarantine(reason) => {
                    let f = quarantine(counts, &mut journal, key, &k, reason);
                    result.quarantined.push(f);
                    continue;
                }
                KeyPlan::Conflict(reason) => {
                    let f = conflict(counts, &mut journal, key, &k, reason);
                    result.conflicts.push(f);
                    continue;
                }
                KeyPlan::Move => WriteKind::Move,
                KeyPlan::DropEqual => WriteKind::DropEqual,
            };
            let super::plan::KeyRead::Hash(expected) = legacy else {
                unreachable!("only a hash is moved or dropped");
            };
            writes.push(KeyWrite {
                legacy_key: key.clone(),
                target_key: k.target_key(),
                kind,
                digest: fields_digest(&expected),
                expected,
            });
            planned.push((k, key));
        }
        let done = if opts.dry_run {
            writes
                .iter()
                .map(|w| match w.kind {
                    WriteKind::Move => WriteOutcome::Moved { pttl_ms: -1 },
                    WriteKind::DropEqual => WriteOutcome::Dropped,
                })
                .collect()
        } else {
            store.apply(outcomes, &writes).await?
        };
        for ((k, key), (write, outcome)) in planned.into_iter().zip(writes.into_iter().zip(done)) {
            let counts = result.per_exchange.get_mut(&k.exchange).expect("entry");
            let action = match outcome {
                WriteOutcome::Moved { .. } => {
                    counts.keys_moved += 1;
                    "move"
                }
                WriteOutcome::Dropped => {
                    counts.keys_dropped_equal += 1;
                    "drop_equal"
                }
                WriteOutcome::Changed if attempt <= opts.max_retries => {
                    pending.push((k, key));
                    continue;
                }
                WriteOutcome::Changed => {
                    let reason = ConflictReason::KeptChanging { attempts: attempt };
                    let f = conflict(counts, &mut journal, key, &k, reason);
                    result.conflicts.push(f);
                    continue;
                }
            };
            counts.legacy_keys_found += 1;
            if result.samples.len() < opts.samples {
                result.samples.push(KeySample {
                    legacy: key,
                    target: write.target_key,
                    action,
                });
            }
        }
    }
    if !opts.dry_run {
        store.record_outcomes(outcomes, &journal).await?;
    }
    Ok(result)
}

fn quarantine(
    counts: &mut Counts,
    journal: &mut Vec<(String, String)>,
    key: String,
    k: &OrderPlacedKey,
    reason: QuarantineReason,
) -> Finding {
    counts.legacy_keys_found += 1;
    counts.keys_quarantined += 1;
    let outcome = OrderPlacedOutcome::Quarantined {
        reason: reason.tag().to_owned(),
        detail: reason.to_string(),
    };
    journal.push((
        key.clone(),
        serde_json::to_string(&outcome).expect("serialises"),
    ));
    Finding {
        key,
        target: k.target_key(),
        reason: reason.tag().to_owned(),
        detail: reason.to_string(),
    }
}

fn conflict(
    counts: &mut Counts,
    journal: &mut Vec<(String, String)>,
    key: String,
    k: &OrderPlacedKey,
    reason: ConflictReason,
) -> Finding {
    counts.legacy_keys_found += 1;
    counts.keys_conflicting += 1;
    let outcome = OrderPlacedOutcome::Conflict {
        target: k.target_key(),
        reason: reason.tag().to_owned(),
        detail: reason.to_string(),
    };
    journal.push((
        key.clone(),
        serde_json::to_string(&outcome).expect("serialises"),
    ));
    Finding {
        key,
        target: k.target_key(),
        reason: reason.tag().to_owned(),
        detail: format!("{reason}; neither key was touched"),
    }
}

fn short_read() -> EngineError {
    EngineError::Redis {
        during: "reading order-placed keys",
        source: redis::RedisError::from((redis::ErrorKind::Client, "fewer replies than keys")),
    }
}
