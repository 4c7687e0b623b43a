//! Every data-API operation (DESIGN §3) x legacy / hash / dual-read store x
//! 1, 5, 20 and 100 positions per user, on a disposable Redis this bench
//! starts (process backend unless KEYSHIFT_TEST_BACKEND says otherwise).
//!
//! One call at a time (criterion measures a single caller; `keyshift bench`
//! adds concurrency and tail percentiles). `remove` times the removal only:
//! the position is put back outside the measured time.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keyshift_harness::backend::{BackendKind, RedisServer};
use keyshift_harness::bench::data::{AnyStore, Dataset, Op, StoreKind};

/// Users per dataset: enough that reads do not all hit one key.
const USERS: usize = 200;
const POSITIONS: [usize; 4] = [1, 5, 20, 100];

fn backend() -> BackendKind {
    std::env::var("KEYSHIFT_TEST_BACKEND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BackendKind::Process)
}

fn data_api(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (server, conn, datasets) = rt.block_on(async {
        let server = RedisServer::start(backend())
            .await
            .expect("a disposable redis");
        let conn = keyshift_engine::grid_positions::store::standalone::connect(&server.url())
            .await
            .expect("connect");
        let mut datasets = Vec::new();
        for p in POSITIONS {
            let data = Dataset::new(USERS, p);
            data.seed(&conn).await.expect("seeding");
            datasets.push(data);
        }
        (server, conn, datasets)
    });
    for op in Op::ALL {
        let mut group = c.benchmark_group(op.name());
        group
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(30);
        for data in &datasets {
            for kind in StoreKind::ALL {
                let store = AnyStore::new(kind, conn.clone());
                let id = BenchmarkId::new(kind.name(), data.positions);
                group.bench_with_input(id, data, |b, data| {
                    b.to_async(&rt).iter_custom(|iters| {
                        let store = &store;
                        async move {
                            let mut total = Duration::ZERO;
                            for i in 0..iters {
                                let user = (i as usize * 7919) % data.users;
                                let slot = i as usize % data.positions;
                                total += store
                                    .timed(data, op, user, slot, i % 2 == 0)
                                    .await
                                    .expect("a benchmark call");
                            }
                            total
                        }
                    })
                });
            }
        }
        group.finish();
    }
    drop(server);
}

criterion_group!(benches, data_api);
criterion_main!(benches);
