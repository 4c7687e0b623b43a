//! The gate run as the CLI tests run it, and what its reports must hold.

use std::path::Path;

use serde_json::Value;

use super::cli::{keyshift, run, Ran};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");

/// The grid-positions invariants of DESIGN §4 that every gate run checks
/// and must pass, whatever the keyspace.
pub const GRID_POSITIONS_INVARIANTS: [&str; 8] = [
    "counts",
    "index",
    "fields",
    "backup",
    "ttl",
    "untouched",
    "api",
    "idempotent",
];

/// `keyshift gate` on `users` generated users (seed 7) and the repository's
/// fixtures, its reports in `report_dir`.
pub async fn run_gate(backend: &str, users: usize, report_dir: &Path) -> Ran {
    let users_arg = users.to_string();
    let args = [
        "gate",
        "--backend",
        backend,
        "--users",
        &users_arg,
        "--seed",
        "7",
        "--fixtures",
        FIXTURES,
        "--report-dir",
        report_dir.to_str().unwrap(),
    ];
    run(keyshift(&args)).await
}

/// report.json names the run as asked, fixtures seeded beside the
/// generated keys.
pub fn check_gate_run(report: &Value, backend: &str, users: usize) {
    assert_eq!(report["schema_version"], 1, "{report:#}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["backend"], backend);
    assert_eq!(report["seed"], 7);
    assert_eq!(report["users"], users);
    assert!(
        Path::new(report["fixtures"].as_str().expect("fixtures were seeded")).is_dir(),
        "{report:#}"
    );
    let generated_keys = report["truth"]["total_keys"].as_u64().unwrap();
    assert!(
        report["keys_seeded"].as_u64().unwrap() > generated_keys,
        "fixture keys seeded too: {report:#}"
    );
    assert_eq!(report["truth"]["users"], users);
}

/// The three phases in order; Phase 2 kept every closed position and
/// quarantined the fixtures' malformed keys.
pub fn check_gate_phases(report: &Value) {
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["order-placed", "cleanup-legacy", "grid-positions"]);
    let migration = &report["phases"][2]["details"];
    // Lossless by default: without --skip-closed no closed position is
    // dropped (the generated keyspace and the fixtures hold some).
    assert!(
        report["truth"]["closed_positions"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(
        migration["totals"]["positions_skipped_closed"], 0,
        "{migration:#}"
    );
    // The fixtures' malformed keys were quarantined, and counted as such.
    assert!(
        migration["totals"]["keys_quarantined"].as_u64().unwrap() > 0,
        "{migration:#}"
    );
}

/// junit.xml: one passing test case per invariant.
pub fn check_junit<'a>(junit: &str, ids: impl Iterator<Item = &'a str>, invariants: usize) {
    assert_eq!(junit.matches("<testcase").count(), invariants, "{junit}");
    for id in ids {
        assert!(
            junit.contains(&format!("<testcase name=\"{id}\"")),
            "junit has {id}:\n{junit}"
        );
    }
    assert!(!junit.contains("<failure"), "{junit}");
}
