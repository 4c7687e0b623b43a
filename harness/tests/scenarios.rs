//! `keyshift scenario` through the binary (issue 5): the scenario files of
//! scenarios/ list, every one (the cluster-* ones on a 3-primary Redis
//! Cluster, issue 7) meets its expectation on the process backend
//! (and on docker when KEYSHIFT_TEST_BACKEND=docker or
//! KEYSHIFT_REQUIRE_DOCKER=1), each writes its report, and a scenario whose
//! expectation is wrong fails the run with a report that replays it.

mod support;

use std::path::{Path, PathBuf};

use keyshift_harness::backend::docker_required;
use serde_json::Value;
use support::cli::{keyshift, run};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// The `name = "..."` of every scenario file, read without the harness's parser.
fn scenario_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let line = text.lines().find(|l| l.starts_with("name = ")).unwrap();
            line.trim_start_matches("name = ")
                .trim_matches('"')
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

fn report_of(dir: &Path, name: &str) -> Value {
    let path = dir.join("scenarios").join(name).join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for other in ["report.md", "junit.xml"] {
        assert!(path.with_file_name(other).is_file(), "{name}: no {other}");
    }
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn scenario_list_shows_every_scenario_file_with_its_one_line() {
    let dir = scenarios_dir();
    let ran = run(keyshift(&[
        "scenario",
        "list",
        "--dir",
        dir.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let names = scenario_names();
    assert!(names.len() >= 25, "only {} scenarios", names.len());
    let listed: Vec<&str> = ran
        .stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(listed, names, "{ran}");
    assert!(
        ran.stdout.lines().all(|l| l.split_whitespace().count() > 3),
        "{ran}"
    );
}

async fn run_all_on(backend: &str) {
    let reports = tempfile::tempdir().unwrap();
    let dir = scenarios_dir();
    let ran = run(keyshift(&[
        "scenario",
        "run",
        "--all",
        "--backend",
        backend,
        "--dir",
        dir.to_str().unwrap(),
        "--report-dir",
        reports.path().to_str().unwrap(),
    ]))
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let names = scenario_names();
    let clusters = names.iter().filter(|n| n.starts_with("cluster-")).count();
    assert!(clusters >= 4, "only {clusters} cluster scenarios");
    for name in names {
        let r = report_of(reports.path(), &name);
        // The cluster-* files run on a 3-primary cluster, the others on one server.
        assert_eq!(r["cluster"], name.starts_with("cluster-"), "{name}: {r:#}");
        let verdict = r["verdict"].as_str().unwrap();
        let docker_only = r["note"].as_str().is_some_and(|n| {
            n.starts_with("skipped: docker-only fault") && n.contains("--backend docker")
        });
        match (backend, verdict) {
            (_, "passed") => {
                assert_eq!(r["backend"], backend, "{name}");
                assert!(!r["expectations"].as_array().unwrap().is_empty(), "{name}");
            }
            ("process", "skipped") if docker_only => {}
            _ => panic!("{name}: {verdict} on {backend}: {r:#}"),
        }
    }
}

#[tokio::test]
async fn every_scenario_meets_its_expectation_on_the_process_backend() {
    run_all_on("process").await;
}

#[tokio::test]
async fn every_scenario_meets_its_expectation_on_docker_docker_only_faults_included() {
    let wanted =
        std::env::var("KEYSHIFT_TEST_BACKEND").is_ok_and(|b| b == "docker") || docker_required();
    if !wanted {
        eprintln!("not run: set KEYSHIFT_TEST_BACKEND=docker or KEYSHIFT_REQUIRE_DOCKER=1");
        return;
    }
    run_all_on("docker").await;
}

const WRONG: &str = r#"
name = "wrong-expectation"
replays = "A malformed legacy key is quarantined (exit 3), but this file expects exit 0."

[dataset]
generator = { seed = 7007, users = 30, malformed_rate = 0.0 }

[[dataset.keys]]
key = "okx:positions:not-json"
type = "string"
value = "[{"

[[run]]
exit = 0

[[expect.finding]]
kind = "conflict"
key = "okx:positions:not-json"
"#;

#[tokio::test]
async fn a_scenario_whose_expectation_is_wrong_fails_with_its_seed_and_replay_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wrong.toml"), WRONG).unwrap();
    let reports = tempfile::tempdir().unwrap();
    let args = [
        "scenario",
        "run",
        "wrong-expectation",
        "--backend",
        "process",
        "--dir",
        dir.path().to_str().unwrap(),
        "--report-dir",
        reports.path().to_str().unwrap(),
    ];
    let ran = run(keyshift(&args)).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    let r = report_of(reports.path(), "wrong-expectation");
    assert_eq!(r["verdict"], "failed");
    assert_eq!(r["seed"], 7007);
    let replay = r["replay"].as_str().unwrap();
    assert_eq!(replay, format!("keyshift {}", args.join(" ")));
    let unmet: Vec<&Value> = r["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["met"] == false)
        .collect();
    let whats: Vec<&str> = unmet.iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert_eq!(
        whats,
        ["run 1 exits 0", "finding Conflict okx:positions:not-json"],
        "{r:#}"
    );
    assert_eq!(unmet[0]["detail"], "exit 3");
    assert!(
        unmet[1]["detail"]
            .as_str()
            .unwrap()
            .contains("Quarantined: not_json"),
        "{r:#}"
    );
    let md = std::fs::read_to_string(reports.path().join("scenarios/wrong-expectation/report.md"))
        .unwrap();
    assert!(md.contains(replay) && md.contains("seed 7007"), "{md}");
    let junit =
        std::fs::read_to_string(reports.path().join("scenarios/wrong-expectation/junit.xml"))
            .unwrap();
    assert!(
        junit.contains("failures=\"2\"") && junit.contains(replay),
        "{junit}"
    );
}

#[tokio::test]
async fn a_bad_scenario_file_is_refused_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = WRONG.replace(
        "kind = \"conflict\"",
        "kind = \"conflict\"\nseverity = \"high\"",
    );
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let ran = run(keyshift(&[
        "scenario",
        "list",
        "--dir",
        dir.path().to_str().unwrap(),
    ]))
    .await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(
        ran.stderr.contains("bad.toml") && ran.stderr.contains("severity"),
        "{ran}"
    );
}
