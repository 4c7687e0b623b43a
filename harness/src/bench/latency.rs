//! Latency distributions of the data API: every operation x store x
//! positions per user x concurrency, each an HDR histogram of the measured
//! calls (nanoseconds, 3 significant digits).
//!
//! A cell runs `concurrency` workers for a fixed time, each on its own
//! connection and its own users (user i belongs to worker i mod n), so
//! writers never contend for one key: what is measured is the store, not
//! compare-and-set retries. The first tenth of a cell warms up and is not
//! recorded.
//!
//! The stores compared in one (operation, positions, concurrency) are
//! measured interleaved ([`run_interleaved`]): in rounds, each store a slice
//! of its time per round, the order rotated. On a shared machine a
//! neighbour's burst, or cores sleeping deeper when it goes quiet, moves
//! latencies by more than the difference between two stores; run one after
//! the other, the store that happened to meet the burst lost. Interleaved,
//! every store meets the same moments.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keyshift_engine::connection::RedisConn;
use serde::{Deserialize, Serialize};

use super::data::{AnyStore, Dataset, Op, StoreKind};
use keyshift_engine::api::ApiResult;

/// No cell records more calls than this, however fast the server.
const MAX_CALLS_PER_CELL: u64 = 2_000_000;
/// 1 ns .. 60 s.
const HIGHEST_NS: u64 = 60_000_000_000;

/// One cell's distribution, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyRow {
    pub op: Op,
    pub store: StoreKind,
    pub positions: usize,
    pub concurrency: usize,
    pub calls: u64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// CPU per call, warm-up included: this process's (the store's client
    /// work, the connection's, and the bench loop's, alike for every store)
    /// and the server's. `None` from a bench.json of an older version, or
    /// where the kernel does not count per-thread CPU time.
    #[serde(default)]
    pub client_cpu_us: Option<f64>,
    #[serde(default)]
    pub server_cpu_us: Option<f64>,
}

impl LatencyRow {
    pub fn new(
        op: Op,
        store: StoreKind,
        positions: usize,
        concurrency: usize,
        m: &Measured,
    ) -> Self {
        let h = &m.histogram;
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        LatencyRow {
            op,
            store,
            positions,
            concurrency,
            calls: h.len(),
            ops_per_sec: (h.len() as f64 / m.measured.as_secs_f64().max(1e-9)).round(),
            mean_us: (h.mean() / 100.0).round() / 10.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            client_cpu_us: m
                .client_cpu_ns
                .map(|ns| per_call(ns as f64 / 1000.0, m.calls)),
            server_cpu_us: Some(per_call(m.server_cpu_s * 1e6, m.calls)),
        }
    }
}

/// Microseconds per call, to 0.1.
fn per_call(us: f64, calls: u64) -> f64 {
    (us / calls.max(1) as f64 * 10.0).round() / 10.0
}

/// What one store's share of an interleaved measurement gathered.
pub struct Measured {
    /// Latencies past each slice's warm-up.
    pub histogram: Histogram<u64>,
    /// The time they were recorded in.
    pub measured: Duration,
    /// Every call, warm-up included (the CPU figures cover those too).
    pub calls: u64,
    pub client_cpu_ns: Option<u64>,
    pub server_cpu_s: f64,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("static histogram bounds")
}

/// Rounds of an interleaved measurement: enough that a burst lasting a
/// fraction of a cell lands on every store alike, few enough that each
/// slice is long against one call at the highest concurrency (a 300 ms
/// cell gives 30 ms slices; a call at concurrency 64 takes about 1 ms).
const ROUNDS: usize = 10;

/// Measures `kinds` for one operation interleaved (see the module doc):
/// each gets `duration` in all, in [`ROUNDS`] slices. One [`Measured`] per
/// kind, in the order of `kinds`. The CPU figures are read around each
/// slice, so each store is charged only for its own slices.
pub async fn run_interleaved(
    conns: &[RedisConn],
    kinds: &[StoreKind],
    op: Op,
    data: &Dataset,
    duration: Duration,
) -> anyhow::Result<Vec<Measured>> {
    let slice = duration / ROUNDS as u32;
    // Per kind, one histogram per worker, kept across the rounds: a
    // histogram up to 60 s is large, and making and merging them per slice
    // cost the bench a sixth of its CPU (perf).
    let mut hists: Vec<Vec<Histogram<u64>>> = kinds
        .iter()
        .map(|_| conns.iter().map(|_| new_histogram()).collect())
        .collect();
    let mut out: Vec<Measured> = kinds
        .iter()
        .map(|_| Measured {
            histogram: new_histogram(),
            measured: Duration::ZERO,
            calls: 0,
            client_cpu_ns: Some(0),
            server_cpu_s: 0.0,
        })
        .collect();
    // The CPU clocks are read once per slice boundary: one slice's end is
    // the next one's start.
    let mut info = conns[0].clone();
    let mut server_mark = super::cpu::server_seconds(&mut info).await?;
    let mut client_mark = super::cpu::process_ns();
    for round in 0..ROUNDS {
        for k in 0..kinds.len() {
            let which = (k + round) % kinds.len();
            let (measured, calls) = run_slice(
                conns,
                kinds[which],
                op,
                data,
                slice,
                round as u64,
                &mut hists[which],
            )
            .await?;
            let (server, client) = (
                super::cpu::server_seconds(&mut info).await?,
                super::cpu::process_ns(),
            );
            let m = &mut out[which];
            m.measured += measured;
            m.calls += calls;
            m.server_cpu_s += server - server_mark;
            m.client_cpu_ns = m
                .client_cpu_ns
                .zip(client_mark.zip(client))
                .map(|(sum, (before, after))| sum + after.saturating_sub(before));
            (server_mark, client_mark) = (server, client);
        }
    }
    for (m, per_worker) in out.iter_mut().zip(&hists) {
        for h in per_worker {
            m.histogram.add(h).expect("same bounds");
        }
    }
    Ok(out)
}

/// Runs `conns.len()` workers (the concurrency) for `duration`, worker `w`
/// recording into `hists[w]`; `round` varies which users and slots they
/// pick. Returns the time measured (the slice less its warm-up) and the
/// calls made, warm-up included.
async fn run_slice(
    conns: &[RedisConn],
    kind: StoreKind,
    op: Op,
    data: &Dataset,
    duration: Duration,
    round: u64,
    hists: &mut [Histogram<u64>],
) -> ApiResult<(Duration, u64)> {
    let workers = conns.len().max(1);
    let started = Instant::now();
    let warm_until = started + duration / 10;
    let end = started + duration;
    let per_worker_cap = MAX_CALLS_PER_CELL / (workers * ROUNDS) as u64;
    let runs = conns
        .iter()
        .zip(hists.iter_mut())
        .enumerate()
        .map(|(w, (conn, h))| {
            let store = AnyStore::new(kind, conn.clone());
            async move {
                let mut rng = XorShift::new((round << 32) + w as u64 + 1);
                // This worker's users: w, w + workers, ...; at least one.
                let mine = data.users.saturating_sub(w).div_ceil(workers).max(1);
                let (mut flip, mut calls, mut all) = (false, 0, 0);
                loop {
                    let now = Instant::now();
                    // Past the end only once this slice recorded a call:
                    // a slice shorter than one call still measures it.
                    if (now >= end && calls > 0) || calls >= per_worker_cap {
                        break;
                    }
                    let user = (w + workers * rng.below(mine)) % data.users;
                    let slot = rng.below(data.positions);
                    flip = !flip;
                    let took = store.timed(data, op, user, slot, flip).await?;
                    all += 1;
                    if now >= warm_until {
                        calls += 1;
                        h.record(took.as_nanos().clamp(1, HIGHEST_NS as u128) as u64)
                            .expect("clamped into the histogram's range");
                    }
                }
                Ok::<_, keyshift_engine::api::ApiError>(all)
            }
        });
    let calls = futures_util::future::try_join_all(runs).await?;
    Ok((
        started.elapsed().saturating_sub(duration / 10),
        calls.into_iter().sum(),
    ))
}

/// A tiny deterministic generator: which user and slot a call picks needs
/// spread, not quality, and must cost nothing next to a round trip.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_reports_microseconds_from_nanoseconds() {
        let mut h = new_histogram();
        for ns in [1_000u64, 2_000, 3_000, 4_000, 100_000] {
            h.record(ns).unwrap();
        }
        let m = Measured {
            histogram: h,
            measured: Duration::from_millis(500),
            calls: 8,
            client_cpu_ns: Some(200_000),
            server_cpu_s: 0.000_02,
        };
        let row = LatencyRow::new(Op::GetPosition, StoreKind::Hash, 5, 1, &m);
        assert_eq!(row.calls, 5);
        assert_eq!(row.ops_per_sec, 10.0);
        // CPU over every call, warm-up included: 200 µs / 8, 20 µs / 8.
        assert_eq!(row.client_cpu_us, Some(25.0));
        assert_eq!(row.server_cpu_us, Some(2.5));
        assert_eq!(row.p50_us, 3.0);
        assert!((99.9..=100.1).contains(&row.max_us), "{}", row.max_us);
        assert!(row.p50_us <= row.p90_us && row.p90_us <= row.p99_us);
    }

    #[test]
    fn picks_stay_in_range() {
        let mut r = XorShift::new(3);
        let picks: Vec<usize> = (0..1000).map(|_| r.below(7)).collect();
        assert!(picks.iter().all(|&p| p < 7));
        assert!((0..7).all(|v| picks.contains(&v)));
        assert_eq!(XorShift::new(1).below(1), 0);
    }
}
