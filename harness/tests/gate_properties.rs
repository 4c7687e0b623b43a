//! The gate as a property: whatever keyspace the generator makes (any seed,
//! any user count, malformed / object-shaped / closed / TTL rates varied),
//! the migration holds every invariant of DESIGN §4 the gate checks.

mod support;

use std::path::Path;

use keyshift_harness::backend::BackendKind;
use keyshift_harness::cli::{GateArgs, Migration};
use keyshift_harness::exit::Outcome;
use keyshift_harness::gate;
use keyshift_harness::seed::{generate, GenConfig};
use proptest::prelude::*;
use serde_json::Value;
use support::gate::GRID_POSITIONS_INVARIANTS;

fn check_report(dir: &Path, gen: &GenConfig) -> Result<(), TestCaseError> {
    let text = std::fs::read_to_string(dir.join("report.json"))
        .map_err(|e| TestCaseError::fail(format!("report.json: {e}")))?;
    let report: Value = serde_json::from_str(&text).expect("report.json parses");
    prop_assert_eq!(&report["passed"], true, "{:#}", report);
    prop_assert_eq!(&report["seed"], gen.seed);
    prop_assert_eq!(&report["users"], gen.users);

    // Exactly the generated keyspace was seeded: no fixture keys.
    let truth = generate(gen).truth;
    prop_assert_eq!(&report["keys_seeded"], truth.total_keys);

    let phase = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grid-positions")
        .ok_or_else(|| TestCaseError::fail("no grid-positions phase"))?;
    // Invariants that must have run and passed on every keyspace, but for
    // those that examine migrated users when none is well-formed (one user,
    // malformed): then they have nothing to examine, say so, and the gate
    // does not require them.
    let nothing_migrates = truth.well_formed_legacy_keys == 0;
    let examine_migrated = ["index", "fields", "backup", "ttl", "api", "rollback"];
    for id in std::iter::once("dry_run").chain(GRID_POSITIONS_INVARIANTS) {
        let inv = phase["invariants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id);
        let inv = inv.ok_or_else(|| TestCaseError::fail(format!("no {id} invariant")))?;
        if nothing_migrates && examine_migrated.contains(&id) && inv["status"] == "not_run" {
            prop_assert_eq!(&inv["required"], false, "{}: {:#}", id, inv);
            continue;
        }
        prop_assert_eq!(&inv["status"], "pass", "{}: {:#}", id, inv);
    }

    // The run did what the generator says it made, independently of the
    // gate's own counts invariant.
    let totals = &phase["details"]["totals"];
    prop_assert_eq!(
        &totals["legacy_keys_found"],
        truth.legacy_keys,
        "{:#}",
        totals
    );
    prop_assert_eq!(
        &totals["keys_migrated"],
        truth.well_formed_legacy_keys,
        "{:#}",
        totals
    );
    prop_assert_eq!(
        &totals["keys_quarantined"],
        truth.quarantined.len(),
        "{:#}",
        totals
    );
    // Lossless by default: closed positions migrate, none is skipped.
    prop_assert_eq!(
        &totals["positions_migrated"],
        truth.positions,
        "{:#}",
        totals
    );
    prop_assert_eq!(&totals["positions_skipped_closed"], 0, "{:#}", totals);
    let mut got: Vec<&str> = phase["details"]["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = truth.quarantined.keys().map(String::as_str).collect();
    got.sort_unstable();
    prop_assert_eq!(got, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        // Each case starts two Redis servers; keep shrinking short.
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_generated_keyspace_migrates_with_every_invariant_holding(
        seed in any::<u64>(),
        users in 1..40usize,
        malformed_rate in 0.0..0.2f64,
        object_shaped_rate in 0.0..0.5f64,
        closed_rate in 0.0..0.5f64,
        legacy_ttl_rate in 0.0..0.5f64,
    ) {
        let gen = GenConfig {
            users,
            seed,
            malformed_rate,
            object_shaped_rate,
            closed_rate,
            legacy_ttl_rate,
            ..GenConfig::default()
        };
        // An existing, empty fixtures directory: the gate seeds no fixtures.
        let fixtures = tempfile::tempdir().unwrap();
        let reports = tempfile::tempdir().unwrap();
        let args = GateArgs {
            backend: BackendKind::Process,
            users,
            seed,
            fixtures: fixtures.path().to_path_buf(),
            rdb: None,
            cluster: false,
            report_dir: reports.path().to_path_buf(),
            engine: None,
            rollback_engine: None,
            migration: Migration::GridPositions,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(gate::run_with(&args, gen.clone()));
        let outcome = outcome.map_err(|e| TestCaseError::fail(format!("gate failed: {e:#}")))?;
        prop_assert_eq!(outcome, Outcome::Done);
        check_report(reports.path(), &gen)?;
    }
}
