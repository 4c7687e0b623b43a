//! The Phase 1 runner: SCAN -> read legacy and target -> plan -> write,
//! batched and pipelined over any [`OrderPlacedStore`], in the run loop
//! both migrations share ([`crate::run::runner`]); it resumes an
//! interrupted run under the same run id.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::connection::RedisConn;
use crate::error::Result;
use crate::keys::{escape_key, OrderPlacedKey};
use crate::run;
use crate::run::checkpoint::Checkpoints;
use crate::run::journal::{self, outcomes_key, OrderPlacedOutcome, RunRecord, RunStart};
use crate::run::runner::{
    close_run, journal_entry, record_findings, run_batches, short_read, BatchSteps, Batching, Tally,
};

use super::plan::{
    fields_digest, plan_key, ConflictReason, KeyPlan, KeyPlanner, KeyRead, QuarantineReason,
};
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
    /// Plans each legacy key against its target: [`plan_key`]. Every
    /// command keeps it; it is an option only so the gate can run a
    /// deliberately broken planner through the very same runner
    /// (keyshift-mutants).
    pub planner: KeyPlanner,
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
            planner: plan_key,
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

impl run::runner::Counts for Counts {
    fn add(&mut self, o: &Counts) {
        self.legacy_keys_found += o.legacy_keys_found;
        self.keys_moved += o.keys_moved;
        self.keys_dropped_equal += o.keys_dropped_equal;
        self.keys_conflicting += o.keys_conflicting;
        self.keys_quarantined += o.keys_quarantined;
        self.keys_vanished += o.keys_vanished;
    }
}

impl Counts {
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

impl run::runner::Keyed for Finding {
    fn key(&self) -> &str {
        &self.key
    }
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

type BatchTally = Tally<Counts, KeySample, Finding>;

/// Runs Phase 1. `progress` is called with the number of keys each SCAN
/// step returned. The caller holds the runner lock when it writes.
pub async fn migrate_order_placed<S: OrderPlacedStore>(
    store: &S,
    opts: &OrderPlacedOptions,
    progress: &dyn Fn(usize),
) -> Result<OrderPlacedReport> {
    let started = Instant::now();
    let conn = store.journal_conn();
    let (mut record, resumed) = begin_or_resume(conn, opts).await?;
    let outcomes = outcomes_key(&record.run_id);
    let steps = Phase1Batches {
        store,
        opts,
        outcomes: &outcomes,
        pattern: match opts.exchanges.as_slice() {
            [one] => OrderPlacedKey::scan_pattern(Some(one)),
            _ => OrderPlacedKey::scan_pattern(None),
        },
    };
    let batching = Batching {
        scan_count: opts.scan_count,
        in_flight: opts.in_flight,
        samples: opts.samples,
    };
    let mut checkpoints = Checkpoints::from_env(conn, &outcomes);
    let result = run_batches(&steps, batching, progress, &mut checkpoints).await;
    let totals = async || run_totals(conn, &outcomes).await;
    let mut tally = close_run(conn, &mut record, opts.dry_run, result, totals).await?;
    Ok(OrderPlacedReport {
        migration: MIGRATION,
        run_id: (!opts.dry_run).then(|| record.run_id.clone()),
        resumed,
        dry_run: opts.dry_run,
        exchanges: opts.exchanges.clone(),
        totals: tally.totals(),
        per_exchange: tally.per_exchange,
        samples: tally.samples,
        quarantined: tally.quarantined,
        conflicts: tally.conflicts,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// What the whole run did, resumed parts included, summed from the journal.
async fn run_totals(conn: &RedisConn, outcomes: &str) -> Result<Counts> {
    let mut totals = Counts::default();
    journal::for_each_outcome_batch(conn, outcomes, 1000, async |batch| {
        batch.iter().for_each(|(_, o)| totals.count(o));
        Ok(())
    })
    .await?;
    Ok(totals)
}

/// Starts a run, or resumes an interrupted one over the same exchanges.
async fn begin_or_resume(conn: &RedisConn, opts: &OrderPlacedOptions) -> Result<(RunRecord, bool)> {
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
    run::runner::begin_or_resume(conn, start, refuse).await
}

/// Phase 1's part of the run loop. One SCAN; each key is then parsed
/// against the exchange list, which drops the `orders:` targets the
/// all-exchange pattern also matches.
struct Phase1Batches<'a, S> {
    store: &'a S,
    opts: &'a OrderPlacedOptions,
    outcomes: &'a str,
    pattern: String,
}

/// A legacy key of this run's exchanges, and its name as scanned.
type Pending = (OrderPlacedKey, String);

impl<S: OrderPlacedStore> BatchSteps for Phase1Batches<'_, S> {
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
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let (planned, writes) = self
                .plan_round(&mut pending, &mut tally, &mut journal)
                .await?;
            let done = if self.opts.dry_run {
                writes.iter().map(|w| dry_outcome(w.kind)).collect()
            } else {
                self.store.apply(self.outcomes, &writes).await?
            };
            for (user, (write, outcome)) in planned.into_iter().zip(writes.into_iter().zip(done)) {
                let retry = self.settle(&mut tally, &mut journal, user, write, outcome, attempt);
                pending.extend(retry);
            }
        }
        let conn = self.store.journal_conn();
        record_findings(conn, self.outcomes, self.opts.dry_run, &journal).await?;
        Ok(tally)
    }
}

impl<S: OrderPlacedStore> Phase1Batches<'_, S> {
    /// The scanned keys of this run's exchanges; a name that is not UTF-8
    /// is quarantined (shown with its bytes escaped), not lost.
    fn parse_keys(
        &self,
        scanned: Vec<Vec<u8>>,
        tally: &mut BatchTally,
        journal: &mut Vec<(String, String)>,
    ) -> Vec<Pending> {
        let mut pending = Vec::new();
        for raw in scanned {
            match String::from_utf8(raw) {
                Ok(key) => {
                    if let Some(k) = OrderPlacedKey::parse(&key, &self.opts.exchanges) {
                        tally.counts(&k.exchange);
                        pending.push((k, key));
                    }
                }
                Err(e) => {
                    let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    if let Some(k) = OrderPlacedKey::parse(&lossy, &self.opts.exchanges) {
                        let counts = tally.counts(&k.exchange);
                        let reason = QuarantineReason::KeyNotUtf8;
                        let shown = escape_key(e.as_bytes());
                        let f = quarantine(counts, journal, shown, &k, reason);
                        tally.quarantined.push(f);
                    }
                }
            }
        }
        pending
    }

    /// Reads every pending key and its target once and plans each: a write
    /// to move or drop it, or a finding (tallied and journaled).
    async fn plan_round(
        &self,
        pending: &mut Vec<Pending>,
        tally: &mut BatchTally,
        journal: &mut Vec<(String, String)>,
    ) -> Result<(Vec<Pending>, Vec<KeyWrite>)> {
        let keys: Vec<String> = pending
            .iter()
            .flat_map(|(k, key)| [key.clone(), k.target_key()])
            .collect();
        let mut reads = self.store.read_keys(&keys).await?.into_iter();
        let mut writes = Vec::new();
        let mut planned = Vec::new();
        for (k, key) in pending.drain(..) {
            let (Some(legacy), Some(target)) = (reads.next(), reads.next()) else {
                return Err(short_read("reading order-placed keys"));
            };
            let counts = tally.counts(&k.exchange);
            let kind = match (self.opts.planner)(&legacy, &target) {
                KeyPlan::Vanished => {
                    counts.keys_vanished += 1;
                    continue;
                }
                KeyPlan::Quarantine(reason) => {
                    let f = quarantine(counts, journal, key, &k, reason);
                    tally.quarantined.push(f);
                    continue;
                }
                KeyPlan::Conflict(reason) => {
                    let f = conflict(counts, journal, key, &k, reason);
                    tally.conflicts.push(f);
                    continue;
                }
                KeyPlan::Move => WriteKind::Move,
                KeyPlan::DropEqual => WriteKind::DropEqual,
            };
            let KeyRead::Hash(expected) = legacy else {
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
        Ok((planned, writes))
    }

    /// Tallies one key's write outcome; a key that changed under a writer
    /// comes back to be read again, until it has changed too often.
    fn settle(
        &self,
        tally: &mut BatchTally,
        journal: &mut Vec<(String, String)>,
        (k, key): Pending,
        write: KeyWrite,
        outcome: WriteOutcome,
        attempt: usize,
    ) -> Option<Pending> {
        let counts = tally.counts(&k.exchange);
        let action = match outcome {
            WriteOutcome::Moved { .. } => {
                counts.keys_moved += 1;
                "move"
            }
            WriteOutcome::Dropped => {
                counts.keys_dropped_equal += 1;
                "drop_equal"
            }
            WriteOutcome::Changed if attempt <= self.opts.max_retries => return Some((k, key)),
            WriteOutcome::Changed => {
                let reason = ConflictReason::KeptChanging { attempts: attempt };
                let f = conflict(counts, journal, key, &k, reason);
                tally.conflicts.push(f);
                return None;
            }
        };
        counts.legacy_keys_found += 1;
        if tally.samples.len() < self.opts.samples {
            tally.samples.push(KeySample {
                legacy: key,
                target: write.target_key,
                action,
            });
        }
        None
    }
}

/// What a dry run reports a planned write as having done.
fn dry_outcome(kind: WriteKind) -> WriteOutcome {
    match kind {
        WriteKind::Move => WriteOutcome::Moved { pttl_ms: -1 },
        WriteKind::DropEqual => WriteOutcome::Dropped,
    }
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
    journal.push(journal_entry(&key, &outcome));
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
    journal.push(journal_entry(&key, &outcome));
    Finding {
        key,
        target: k.target_key(),
        reason: reason.tag().to_owned(),
        detail: format!("{reason}; neither key was touched"),
    }
}
