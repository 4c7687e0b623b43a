//! Regression: the gate's usage errors were found late, with the wrong
//! code. A `--report-dir` naming a file or a path that cannot be created,
//! and a malformed `--fixtures` file, exited 1 ("an invariant failed")
//! after the whole gate had run. They are usage errors: exit 2, naming the
//! path (and the entry), before any server starts.

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;

fn gate(args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("keyshift").expect("the keyshift binary is built");
    cmd.arg("gate")
        .args(["--backend", "process", "--users", "20"])
        .args(args)
        .env_remove("REDIS_URL")
        .timeout(Duration::from_secs(300));
    cmd
}

/// Runs the gate, expecting a usage error before any server started;
/// returns its stderr.
fn refused_before_any_server(args: &[&str]) -> String {
    let out = gate(args).output().expect("the gate ran");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The gate names its server as soon as one is up.
    assert!(!stderr.contains("backend at"), "a server started: {stderr}");
    stderr
}

#[test]
fn gate_report_dir_naming_a_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.txt");
    std::fs::write(&file, "not a directory").unwrap();
    let stderr = refused_before_any_server(&["--report-dir", file.to_str().unwrap()]);
    assert!(
        stderr.contains(&format!("--report-dir {}", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("is a file"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}

#[test]
fn gate_report_dir_that_cannot_be_created_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "").unwrap();
    // A directory below a file cannot exist.
    let below = file.join("reports");
    let stderr = refused_before_any_server(&["--report-dir", below.to_str().unwrap()]);
    assert!(
        stderr.contains(&format!("--report-dir {}", below.display())),
        "{stderr}"
    );
    assert!(stderr.contains("cannot create it"), "{stderr}");
}

fn fixtures_with(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn malformed_fixtures_are_usage_errors_naming_the_file_and_entry() {
    let cases = [
        (
            "truncated.json",
            r#"{"keys": [{"key": "okx:positions:1", "type": "str"#,
            "truncated.json",
        ),
        (
            "bad_type.json",
            r#"{"keys": [{"key": "okx:positions:1", "type": "strin", "value": "x"}]}"#,
            "keys[0]",
        ),
        (
            "bad_ttl.json",
            r#"{"keys": [{"key": "okx:positions:1", "type": "string", "value": "x", "ttl_ms": -5}]}"#,
            "ttl_ms",
        ),
    ];
    for (name, text, named) in cases {
        let dir = tempfile::tempdir().unwrap();
        fixtures_with(dir.path(), name, text);
        let reports = dir.path().join("reports");
        let stderr = refused_before_any_server(&[
            "--fixtures",
            dir.path().to_str().unwrap(),
            "--report-dir",
            reports.to_str().unwrap(),
        ]);
        assert!(stderr.contains(name), "{name}: {stderr}");
        assert!(stderr.contains(named), "{name}: {stderr}");
    }
}
