//! `keyshift bench` end to end with tiny settings: the reports hold every
//! cell they promise, and the migration run reports a ratio to the floor
//! and the migrating process's peak RSS. No timing is asserted: only that
//! each figure was measured.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use support::cli::keyshift;
use support::test_backend;

fn bench(dir: &Path, extra: &[&str]) -> std::process::Output {
    let backend = test_backend().to_string();
    let dir = dir.to_str().expect("utf-8 temp dir");
    let mut args = vec!["bench", "--backend", backend.as_str(), "--report-dir", dir];
    args.extend_from_slice(extra);
    keyshift(&args).output().expect("keyshift runs")
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("bench.json")).expect("bench.json written");
    serde_json::from_str(&text).expect("bench.json is JSON")
}

/// One latency cell: operation, store, positions per user, concurrency.
type Cell = (String, String, u64, u64);

const OPS: [&str; 5] = [
    "get_position",
    "position_size",
    "all_positions",
    "upsert",
    "remove",
];

#[test]
fn latency_and_migration_reports_hold_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        dir.path(),
        &[
            "--users",
            "12",
            "--positions",
            "1,5",
            "--concurrency",
            "1,3",
            "--cell-ms",
            "20",
        ],
    );
    assert!(
        out.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = report(dir.path())["latency"]["rows"]
        .as_array()
        .expect("latency rows")
        .clone();
    let cells: BTreeSet<Cell> = rows.iter().map(measured_cell).collect();
    check_every_cell_and_chart(dir.path(), &cells);
    assert_eq!(rows.len(), cells.len(), "one row per cell");
    let md = std::fs::read_to_string(dir.path().join("bench.md")).unwrap();
    assert!(md.contains("| remove | dual-read | 5 | 3 |"), "{md}");
    assert!(md.contains("hash p50 <= legacy p50"), "{md}");

    // The migration run: a ratio and peak RSS per size, the latency kept.
    let out = bench(dir.path(), &["--migration", "--sizes", "1000"]);
    assert!(
        out.status.success(),
        "bench --migration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(dir.path());
    assert_eq!(r["latency"]["rows"].as_array().unwrap().len(), rows.len());
    let migration = r["migration"]["rows"].as_array().expect("migration rows");
    assert_eq!(migration.len(), 1);
    check_migration_row(&migration[0]);
    let md = std::fs::read_to_string(dir.path().join("bench.md")).unwrap();
    assert!(md.contains("1000 users: migrate took"), "{md}");
    assert!(md.contains("x the read floor"), "{md}");
    assert!(dir.path().join("migration.svg").exists());
}

/// The cell of latency row `r`, whose figures were all measured.
fn measured_cell(r: &Value) -> Cell {
    assert!(r["calls"].as_u64().unwrap() > 0, "a cell with no call: {r}");
    // Every call costs the client and the server something.
    for cpu in ["client_cpu_us", "server_cpu_us"] {
        assert!(r[cpu].as_f64().unwrap_or(0.0) > 0.0, "no {cpu}: {r}");
    }
    let (p50, p99, max) = (
        r["p50_us"].as_f64().unwrap(),
        r["p99_us"].as_f64().unwrap(),
        r["max_us"].as_f64().unwrap(),
    );
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 <= max,
        "percentiles out of order: {r}"
    );
    (
        r["op"].as_str().unwrap().to_owned(),
        r["store"].as_str().unwrap().to_owned(),
        r["positions"].as_u64().unwrap(),
        r["concurrency"].as_u64().unwrap(),
    )
}

/// Every operation on every store, size and concurrency asked for was
/// measured, and each operation has its chart.
fn check_every_cell_and_chart(dir: &Path, cells: &BTreeSet<Cell>) {
    for op in OPS {
        for store in ["legacy", "hash", "dual-read"] {
            for positions in [1, 5] {
                for c in [1, 3] {
                    let cell = (op.to_owned(), store.to_owned(), positions, c);
                    assert!(cells.contains(&cell), "missing cell {cell:?}");
                }
            }
        }
        let chart = dir.join(format!("latency_{op}.svg"));
        let svg = std::fs::read_to_string(&chart).expect("one chart per operation");
        assert!(
            svg.contains("<svg") && svg.contains("dual-read"),
            "{chart:?}"
        );
    }
}

/// The one migration size's row: every figure measured, both runs exited
/// as designed.
fn check_migration_row(m: &Value) {
    assert_eq!(m["users"], 1000);
    assert!(m["positions_migrated"].as_u64().unwrap() > 0, "{m}");
    assert!(m["ratio"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["floor_s"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["read_floor_s"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["verify_ratio"].as_f64().unwrap() > 0.0, "{m}");
    // A keyshift process holds at least its binary and runtime: a peak of
    // 0 would mean the sampling never saw the child.
    assert!(m["migrate_peak_rss_mb"].as_f64().unwrap() > 1.0, "{m}");
    assert!(m["verify_peak_rss_mb"].as_f64().unwrap() > 1.0, "{m}");
    assert_eq!(
        m["verify_exit"], 0,
        "verify after the bench's migration: {m}"
    );
    // Exit 3: the generator seeds malformed keys, quarantined as designed.
    assert_eq!(m["migrate_exit"], 3, "{m}");
    assert!(m["cpu"]["migrate_server"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["cpu"]["floor_server"].as_f64().unwrap() > 0.0, "{m}");
}
