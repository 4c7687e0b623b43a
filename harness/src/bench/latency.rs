//! Latency distributions of the data API: every operation x store x
//! positions per user x concurrency, each an HDR histogram of the measured
//! calls (nanoseconds, 3 significant digits).
//!
//! A cell runs `concurrency` workers for a fixed time, each on its own
//! connection and its own users (user i belongs to worker i mod n), so
//! writers never contend for one key: what is measured is the store, not
//! compare-and-set retries. The first tenth of a cell warms up and is not
//! recorded.

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
}

impl LatencyRow {
    pub fn from_histogram(
        op: Op,
        store: StoreKind,
        positions: usize,
        concurrency: usize,
        h: &Histogram<u64>,
        measured: Duration,
    ) -> Self {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        LatencyRow {
            op,
            store,
            positions,
            concurrency,
            calls: h.len(),
            ops_per_sec: (h.len() as f64 / measured.as_secs_f64().max(1e-9)).round(),
            mean_us: (h.mean() / 100.0).round() / 10.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("static histogram bounds")
}

/// Runs one cell: `conns.len()` workers (the concurrency) for `duration`.
pub async fn run_cell(
    conns: &[RedisConn],
    kind: StoreKind,
    op: Op,
    data: &Dataset,
    duration: Duration,
) -> ApiResult<(Histogram<u64>, Duration)> {
    let workers = conns.len().max(1);
    let started = Instant::now();
    let warm_until = started + duration / 10;
    let end = started + duration;
    let per_worker_cap = MAX_CALLS_PER_CELL / workers as u64;
    let runs = conns.iter().enumerate().map(|(w, conn)| {
        let store = AnyStore::new(kind, conn.clone());
        async move {
            let mut h = new_histogram();
            let mut rng = XorShift::new(w as u64 + 1);
            // This worker's users: w, w + workers, ...; at least one.
            let mine = data.users.saturating_sub(w).div_ceil(workers).max(1);
            let mut flip = false;
            loop {
                let now = Instant::now();
                if now >= end || h.len() >= per_worker_cap {
                    break;
                }
                let user = (w + workers * rng.below(mine)) % data.users;
                let slot = rng.below(data.positions);
                flip = !flip;
                let took = store.timed(data, op, user, slot, flip).await?;
                if now >= warm_until {
                    h.record(took.as_nanos().clamp(1, HIGHEST_NS as u128) as u64)
                        .expect("clamped into the histogram's range");
                }
            }
            Ok::<_, keyshift_engine::api::ApiError>(h)
        }
    });
    let histograms = futures_util::future::try_join_all(runs).await?;
    let measured = started.elapsed().saturating_sub(duration / 10);
    let mut total = new_histogram();
    for h in &histograms {
        total.add(h).expect("same bounds");
    }
    Ok((total, measured))
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
        let row = LatencyRow::from_histogram(
            Op::GetPosition,
            StoreKind::Hash,
            5,
            1,
            &h,
            Duration::from_millis(500),
        );
        assert_eq!(row.calls, 5);
        assert_eq!(row.ops_per_sec, 10.0);
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
