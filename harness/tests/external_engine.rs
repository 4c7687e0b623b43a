//! `keyshift gate --engine CMD` judges any team's migration command with
//! the oracle: the example engines in examples/engines/ (Python,
//! redis-py, installed by scripts/setup.sh) are one correct engine, which
//! must pass, and one with typical bug classes, which must fail naming the
//! invariants that catch them. `scenario run NAME --engine CMD` strikes
//! the same engines with a scenario's faults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Runs keyshift with `args`, `--report-dir` a temporary directory and
/// `--engine engine` (then `extra`), on the process backend; returns its
/// exit code, stdout and the report.json at `report` under the directory.
fn with_engine(
    args: &[&str],
    engine: &str,
    extra: &[&str],
    report: &str,
) -> (Option<i32>, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("keyshift")
        .expect("the keyshift binary is built")
        .current_dir(repo_root())
        .args(args)
        .args(["--backend", "process"])
        .args(["--report-dir", dir.path().to_str().unwrap()])
        .args(["--engine", engine])
        .args(extra)
        .env_remove("REDIS_URL")
        .timeout(Duration::from_secs(600))
        .output()
        .expect("keyshift ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = dir.path().join(report);
    let report = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no {} ({e}); stdout {stdout}; stderr {stderr}",
            path.display()
        )
    });
    (
        out.status.code(),
        stdout,
        serde_json::from_str(&report).unwrap(),
    )
}

/// The gate with `engine` in keyshift's place (300 users, seed 7).
fn gate(engine: &str, extra: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let args = ["gate", "--users", "300", "--seed", "7"];
    with_engine(&args, engine, extra, "report.json")
}

/// What the oracle judges of any grid-positions migration.
const JUDGED: [&str; 6] = ["counts", "index", "fields", "backup", "ttl", "untouched"];

fn assert_all_pass<'a>(
    invariants: &serde_json::Value,
    ids: impl Iterator<Item = &'a str>,
    out: &str,
) {
    let s = statuses(invariants);
    for id in ids {
        assert!(
            s.contains(&(id.to_owned(), "pass".to_owned())),
            "{id} did not pass: {s:?}\n{out}"
        );
    }
}

/// (id, status) of each entry of a report's `invariants` array.
fn statuses(invariants: &serde_json::Value) -> Vec<(String, String)> {
    invariants
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn gate_passes_the_correct_example_engine_and_its_rollback() {
    let (code, stdout, report) = gate(
        "python3 examples/engines/correct.py",
        &[
            "--rollback-engine",
            "python3 examples/engines/correct.py rollback",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}");
    let judged = &report["phases"][0]["invariants"];
    let (first, then) = (["engine"], ["idempotent", "rollback"]);
    let ids = first.iter().chain(&JUDGED).chain(&then);
    assert_all_pass(judged, ids.copied(), &stdout);
    let commands = report["phases"][0]["details"]["commands"]
        .as_array()
        .unwrap();
    assert_eq!(commands.len(), 3, "migrate, migrate again, rollback");
}

#[test]
fn gate_fails_the_lossy_example_engine_naming_fields_and_counts() {
    let (code, stdout, report) = gate("python3 examples/engines/lossy.py", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let failed: Vec<String> = statuses(&report["phases"][0]["invariants"])
        .into_iter()
        .filter(|(_, st)| st == "fail")
        .map(|(id, _)| id)
        .collect();
    for id in ["fields", "counts", "index"] {
        assert!(
            failed.contains(&id.to_owned()),
            "{id} not failed: {failed:?}"
        );
    }
    // Each bug class shows in the samples: the fixed field list drops
    // fields, the sign-only side files positions under the wrong side.
    assert!(stdout.contains("FAIL fields"), "{stdout}");
    assert!(stdout.contains("lacks field"), "{stdout}");
    assert!(
        stdout.contains("positions, "),
        "counts names how many: {stdout}"
    );
}

#[test]
fn gate_judges_an_order_placed_engine() {
    let (code, stdout, report) = gate(
        "python3 examples/engines/correct.py",
        &["--migration", "order-placed"],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(report["phases"][0]["name"]
        .as_str()
        .unwrap()
        .starts_with("order-placed"));
}

#[test]
fn a_command_that_does_nothing_fails_counts() {
    let (code, stdout, _) = gate("true", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL counts"), "{stdout}");
    assert!(stdout.contains("left in place"), "{stdout}");
}

#[test]
fn a_command_that_crashes_fails_the_engine_invariant() {
    let (code, stdout, _) = gate("exit 7", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL engine"), "{stdout}");
    assert!(stdout.contains("exited 7"), "{stdout}");
}

/// `keyshift scenario run NAME --engine CMD`.
fn scenario(name: &str, engine: &str, extra: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let report = format!("scenarios/{name}/report.json");
    with_engine(&["scenario", "run", name], engine, extra, &report)
}

#[test]
fn scenario_sigkills_the_correct_example_engine_and_its_rerun_repairs_the_keyspace() {
    let (code, stdout, report) = scenario(
        "sigkill-at-half",
        "python3 examples/engines/correct.py",
        &[
            "--rollback-engine",
            "python3 examples/engines/correct.py rollback",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{report:#}");
    assert_eq!(report["verdict"], "passed", "{report:#}");
    let runs = report["invocations"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[0]["command"].as_str().unwrap().contains("sh -c"));
    assert_eq!(runs[0]["exit"], serde_json::Value::Null, "run 1 was killed");
    let fault = &runs[0]["faults"][0];
    assert_eq!(fault["kind"], "sigkill");
    assert!(
        fault["note"].as_str().unwrap().contains("process group"),
        "{fault}"
    );
    assert_eq!(runs[1]["exit"], 0);
    let ids = JUDGED.iter().chain(&["rollback"]);
    assert_all_pass(&report["invariants"], ids.copied(), &stdout);
}

#[test]
fn scenario_fails_the_lossy_example_engine_naming_the_invariants() {
    let (code, stdout, report) =
        scenario("sigkill-at-half", "python3 examples/engines/lossy.py", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(report["verdict"], "failed");
    let failed: Vec<String> = statuses(&report["invariants"])
        .into_iter()
        .filter(|(_, st)| st == "fail")
        .map(|(id, _)| id)
        .collect();
    assert!(
        failed.contains(&"fields".to_owned()),
        "fields not failed: {failed:?}"
    );
    let unmet: Vec<&str> = report["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["met"] == false)
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(
        unmet.contains(&"invariant fields holds"),
        "unmet: {unmet:?}"
    );
}

#[test]
fn scenario_skips_a_cluster_case_for_an_external_engine_and_says_why() {
    let (code, stdout, report) = scenario("cluster-sigkill-resume", "true", &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(report["verdict"], "skipped");
    assert!(
        report["note"]
            .as_str()
            .unwrap()
            .contains("cluster scenario"),
        "{report:#}"
    );
}
