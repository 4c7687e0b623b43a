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

/// Runs the gate with `engine` (and a rollback engine), returning its exit
/// code, stdout and report.json.
fn gate(engine: &str, extra: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("keyshift")
        .expect("the keyshift binary is built")
        .current_dir(repo_root())
        .arg("gate")
        .args(["--backend", "process", "--users", "300", "--seed", "7"])
        .args(["--report-dir", dir.path().to_str().unwrap()])
        .args(["--engine", engine])
        .args(extra)
        .env_remove("REDIS_URL")
        .timeout(Duration::from_secs(600))
        .output()
        .expect("the gate ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = std::fs::read_to_string(dir.path().join("report.json"))
        .unwrap_or_else(|e| panic!("no report.json ({e}); stdout {stdout}; stderr {stderr}"));
    (
        out.status.code(),
        stdout,
        serde_json::from_str(&report).unwrap(),
    )
}

fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["phases"][0]["invariants"]
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
    let s = statuses(&report);
    for id in [
        "engine",
        "counts",
        "index",
        "fields",
        "backup",
        "ttl",
        "untouched",
        "idempotent",
        "rollback",
    ] {
        assert!(
            s.contains(&(id.to_owned(), "pass".to_owned())),
            "{id} did not pass: {s:?}\n{stdout}"
        );
    }
    let commands = report["phases"][0]["details"]["commands"]
        .as_array()
        .unwrap();
    assert_eq!(commands.len(), 3, "migrate, migrate again, rollback");
}

#[test]
fn gate_fails_the_lossy_example_engine_naming_fields_and_counts() {
    let (code, stdout, report) = gate("python3 examples/engines/lossy.py", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let failed: Vec<String> = statuses(&report)
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

/// `keyshift scenario run NAME --engine CMD` on the process backend: its
/// exit code, stdout and the scenario's report.json.
fn scenario(name: &str, engine: &str, extra: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("keyshift")
        .expect("the keyshift binary is built")
        .current_dir(repo_root())
        .args(["scenario", "run", name, "--backend", "process"])
        .args(["--report-dir", dir.path().to_str().unwrap()])
        .args(["--engine", engine])
        .args(extra)
        .env_remove("REDIS_URL")
        .timeout(Duration::from_secs(600))
        .output()
        .expect("the scenario ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = dir.path().join("scenarios").join(name).join("report.json");
    let report = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no {} ({e}); stdout {stdout}", path.display()));
    (
        out.status.code(),
        stdout,
        serde_json::from_str(&report).unwrap(),
    )
}

fn invariant_statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["invariants"]
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
    let s = invariant_statuses(&report);
    for id in [
        "counts",
        "index",
        "fields",
        "backup",
        "ttl",
        "untouched",
        "rollback",
    ] {
        assert!(
            s.contains(&(id.to_owned(), "pass".to_owned())),
            "{id} did not pass: {s:?}"
        );
    }
}

#[test]
fn scenario_fails_the_lossy_example_engine_naming_the_invariants() {
    let (code, stdout, report) =
        scenario("sigkill-at-half", "python3 examples/engines/lossy.py", &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(report["verdict"], "failed");
    let failed: Vec<String> = invariant_statuses(&report)
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
