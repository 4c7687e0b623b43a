//! The forward run both migrations share: start or resume the run record,
//! stream SCAN steps into batches processed a few at a time, merge their
//! tallies, and close the record as done (with totals summed from the
//! journal) or failed. What a batch does is the migration's own
//! ([`BatchSteps`]); everything around it is here, once.

use std::collections::BTreeMap;

use futures_util::stream::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::connection::RedisConn;
use crate::error::{EngineError, Result};
use crate::run::checkpoint::Checkpoints;
use crate::run::journal::{self, RunRecord, RunStart, RunState};

/// Per-exchange counts of one migration, summed across batches.
pub trait Counts: Default {
    fn add(&mut self, other: &Self);
}

/// A key left for review, as a report lists it (sorted by key).
pub trait Keyed {
    fn key(&self) -> &str;
}

/// What one batch, and then the whole run, found: counts per exchange,
/// a few sample mappings, the keys quarantined and in conflict.
#[derive(Debug)]
pub struct Tally<C, S, F> {
    pub per_exchange: BTreeMap<String, C>,
    pub samples: Vec<S>,
    pub quarantined: Vec<F>,
    pub conflicts: Vec<F>,
    /// Keys the SCAN matched that are not the migration's (a report lists
    /// the first [`MAX_SKIPPED_LISTED`]); `skipped_total` counts them all.
    pub skipped: Vec<F>,
    pub skipped_total: usize,
}

/// How many skipped keys a report lists by name.
pub const MAX_SKIPPED_LISTED: usize = 100;

impl<C, S, F> Default for Tally<C, S, F> {
    fn default() -> Self {
        Self {
            per_exchange: BTreeMap::new(),
            samples: Vec::new(),
            quarantined: Vec::new(),
            conflicts: Vec::new(),
            skipped: Vec::new(),
            skipped_total: 0,
        }
    }
}

impl<C: Counts, S, F: Keyed> Tally<C, S, F> {
    /// The counts of `exchange`, created at zero: an exchange whose keys a
    /// batch saw is reported even when none of them was settled.
    pub fn counts(&mut self, exchange: &str) -> &mut C {
        self.per_exchange.entry(exchange.to_owned()).or_default()
    }

    fn merge(&mut self, batch: Self, max_samples: usize) {
        for (exchange, counts) in batch.per_exchange {
            self.per_exchange.entry(exchange).or_default().add(&counts);
        }
        let room = max_samples.saturating_sub(self.samples.len());
        self.samples.extend(batch.samples.into_iter().take(room));
        self.quarantined.extend(batch.quarantined);
        self.conflicts.extend(batch.conflicts);
        self.skipped_total += batch.skipped_total;
        let room = MAX_SKIPPED_LISTED.saturating_sub(self.skipped.len());
        self.skipped.extend(batch.skipped.into_iter().take(room));
    }

    /// A key the SCAN matched that is not the migration's, and why.
    pub fn skip(&mut self, finding: F) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_LISTED {
            self.skipped.push(finding);
        }
    }

    /// The counts of every exchange summed, with the findings sorted by key
    /// so a report reads the same whatever order the batches finished in.
    pub fn totals(&mut self) -> C {
        self.quarantined.sort_by(|a, b| a.key().cmp(b.key()));
        self.conflicts.sort_by(|a, b| a.key().cmp(b.key()));
        self.skipped.sort_by(|a, b| a.key().cmp(b.key()));
        let mut totals = C::default();
        self.per_exchange.values().for_each(|c| totals.add(c));
        totals
    }
}

/// How a run walks the keyspace.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// SCAN COUNT per step.
    pub scan_count: usize,
    /// Batches in flight at once.
    pub in_flight: usize,
    /// How many sample mappings a report keeps.
    pub samples: usize,
}

/// What a migration does with the keyspace, one SCAN batch at a time.
#[allow(async_fn_in_trait)]
pub trait BatchSteps {
    /// A key name as SCAN returns it (`String`, or raw bytes where a name
    /// that is not UTF-8 must be reported rather than fail the run).
    type Key;
    type Counts: Counts;
    type Sample;
    type Finding: Keyed;

    /// One SCAN step over the migration's legacy keys.
    async fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<Self::Key>)>;
    /// Reads, plans and writes one batch of scanned keys.
    async fn process(
        &self,
        keys: Vec<Self::Key>,
    ) -> Result<Tally<Self::Counts, Self::Sample, Self::Finding>>;
}

/// SCAN steps, read ahead into a bounded queue, feed the batches in
/// flight, so a SCAN round trip never stalls the writes. It never spawns:
/// the SCAN and the batches overlap as futures on the caller's task, so
/// Redis works on one batch while the next is planned. `progress` gets
/// each step's key count as its batch starts.
///
/// With checkpoints ahead (a fault harness's, `run::checkpoint`), the run
/// first goes one batch at a time, each no larger than what is left to
/// the next checkpoint, and stops at each; past the last, it goes on as
/// usual from where the SCAN is.
pub async fn run_batches<B: BatchSteps>(
    steps: &B,
    batching: Batching,
    progress: &dyn Fn(usize),
    checkpoints: &mut Checkpoints,
) -> Result<Tally<B::Counts, B::Sample, B::Finding>> {
    let mut total = Tally::default();
    let mut cursor = Some(0u64);
    checkpoints.stop_if_reached().await?;
    while checkpoints.ahead() {
        let Some(at) = cursor else { break };
        let (mut keys, next) = scan_step(steps, at, batching.scan_count).await?;
        progress(keys.len());
        cursor = next;
        while !keys.is_empty() {
            let rest = keys.split_off(checkpoints.room().min(keys.len()));
            total.merge(steps.process(keys).await?, batching.samples);
            checkpoints.stop_if_reached().await?;
            keys = rest;
        }
    }
    // The SCAN runs ahead of the batches, into a bounded queue: keys the
    // run creates land in buckets the cursor has passed, so the server
    // walks fewer of them (a SCAN's cost is the keys it walks, not the
    // keys it returns). The queue bounds what the client holds.
    let steps_ahead = (READ_AHEAD_KEYS / batching.scan_count.max(1)).max(1);
    let (ahead, mut queued) = tokio::sync::mpsc::channel(steps_ahead);
    let scan = async move {
        let mut cursor = cursor;
        while let Some(at) = cursor {
            let (keys, next) = scan_step(steps, at, batching.scan_count).await?;
            cursor = next;
            if ahead.send(keys).await.is_err() {
                break; // the batches stopped; their error is the run's
            }
        }
        Ok(())
    };
    let taken = futures_util::stream::poll_fn(|cx| queued.poll_recv(cx)).map(|keys| {
        progress(keys.len());
        Ok(keys)
    });
    let batches = async {
        let batches = taken
            .map_ok(|keys| steps.process(keys))
            .try_buffer_unordered(batching.in_flight.max(1));
        let mut batches = std::pin::pin!(batches);
        while let Some(batch) = batches.try_next().await? {
            total.merge(batch, batching.samples);
        }
        Ok::<_, EngineError>(())
    };
    futures_util::future::try_join(scan, batches).await?;
    Ok(total)
}

/// How many keys SCAN steps may hold while they wait for their batch (at
/// most; a step returns at most about its COUNT): some 7 MB of names, and
/// on 100,000 users most of the legacy keys, so the SCAN ends before the
/// run has written much.
const READ_AHEAD_KEYS: usize = 128_000;

/// One SCAN step: its keys and the next cursor, `None` once the scan is
/// complete.
async fn scan_step<B: BatchSteps>(
    steps: &B,
    cursor: u64,
    count: usize,
) -> Result<(Vec<B::Key>, Option<u64>)> {
    let (next, keys) = steps.scan(cursor, count).await?;
    Ok((keys, (next != 0).then_some(next)))
}

/// Starts a run, or resumes the latest one of `start.migration` when it was
/// interrupted ([`journal::begin_or_resume`]); `refuse` says why options
/// that differ from the interrupted run's cannot resume it.
pub async fn begin_or_resume(
    conn: &RedisConn,
    start: RunStart<'_>,
    refuse: impl FnOnce(&RunRecord) -> Option<String>,
) -> Result<(RunRecord, bool)> {
    let last = journal::latest_run_of(conn, start.migration).await?;
    journal::begin_or_resume(start, last, refuse, async |run| {
        journal::save_run(conn, run).await
    })
    .await
}

/// Closes `record` once its batches ended with `result`: `Done` with the
/// totals that `totals` sums from the journal (resumed parts included), or
/// `Failed` with the error. A dry run records nothing.
pub async fn close_run<T, Totals: Serialize>(
    conn: &RedisConn,
    record: &mut RunRecord,
    dry_run: bool,
    result: Result<T>,
    totals: impl AsyncFnOnce() -> Result<Totals>,
) -> Result<T> {
    let finished = chrono::Utc::now();
    record.finished_at = Some(finished.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    match result {
        Ok(done) => {
            if !dry_run {
                record.state = RunState::Done;
                let totals = totals().await?;
                record.counts = Some(serde_json::to_value(&totals).expect("counts serialise"));
                journal::save_run(conn, record).await?;
            }
            Ok(done)
        }
        Err(e) => {
            if !dry_run {
                record.state = RunState::Failed;
                record.error = Some(e.to_string());
                // The original error matters more than a failure to record it.
                let _ = journal::save_run(conn, record).await;
            }
            Err(e)
        }
    }
}

/// Records outcomes that involved no migration write (quarantine,
/// conflict); a dry run records nothing.
pub async fn record_findings(
    conn: &RedisConn,
    outcomes_key: &str,
    dry_run: bool,
    outcomes: &[(String, String)],
) -> Result<()> {
    if dry_run {
        return Ok(());
    }
    journal::record_outcomes(conn, outcomes_key, outcomes).await
}

/// A journal entry for `outcome`, as the outcome hash holds it.
pub fn journal_entry<T: Serialize>(key: &str, outcome: &T) -> (String, String) {
    let json = serde_json::to_string(outcome).expect("outcome serialises");
    (key.to_owned(), json)
}

/// The error for a batch read that answered fewer replies than it asked.
pub fn short_read(during: &'static str) -> EngineError {
    EngineError::unexpected_reply(during, "fewer replies than keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Seen(usize);
    impl Counts for Seen {
        fn add(&mut self, other: &Self) {
            self.0 += other.0;
        }
    }
    struct Named(&'static str);
    impl Keyed for Named {
        fn key(&self) -> &str {
            self.0
        }
    }

    fn batch(
        exchange: &str,
        seen: usize,
        samples: usize,
        quarantined: &[&'static str],
    ) -> Tally<Seen, u8, Named> {
        let mut t: Tally<Seen, u8, Named> = Tally::default();
        t.counts(exchange).0 = seen;
        t.samples = vec![0; samples];
        t.quarantined = quarantined.iter().map(|k| Named(k)).collect();
        t
    }

    #[test]
    fn batches_merge_into_per_exchange_totals_with_samples_capped() {
        let mut total = Tally::default();
        total.merge(batch("okx", 2, 3, &["okx:b"]), 4);
        total.merge(batch("okx", 1, 3, &["okx:a"]), 4);
        total.merge(batch("bybit", 5, 0, &[]), 4);
        assert_eq!(total.per_exchange["okx"], Seen(3));
        assert_eq!(total.per_exchange["bybit"], Seen(5));
        assert_eq!(total.samples.len(), 4);
        assert_eq!(total.totals(), Seen(8));
        let keys: Vec<&str> = total.quarantined.iter().map(|f| f.key()).collect();
        assert_eq!(keys, ["okx:a", "okx:b"]);
    }

    #[test]
    fn an_exchange_a_batch_saw_is_reported_at_zero() {
        let mut t: Tally<Seen, u8, Named> = Tally::default();
        t.counts("upbit");
        assert_eq!(t.per_exchange["upbit"], Seen(0));
    }
}
