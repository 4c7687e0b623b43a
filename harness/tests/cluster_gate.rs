//! `keyshift gate --cluster` through the binary (issue 7): the whole gate on
//! a disposable 3-primary Redis Cluster (backups restored into a second,
//! fresh cluster; writers through the second migration) exits 0 on the
//! process backend, and on docker when it answers; `--cluster` with
//! `--rdb` is a usage error.

mod support;

use support::cli::{keyshift, run};
use support::docker_or_skip;

async fn gate_on(backend: &str) {
    let reports = tempfile::tempdir().unwrap();
    let fixtures = tempfile::tempdir().unwrap();
    let ran = run(keyshift(&[
        "gate",
        "--cluster",
        "--backend",
        backend,
        "--users",
        "150",
        "--seed",
        "7",
        "--fixtures",
        fixtures.path().to_str().unwrap(),
        "--report-dir",
        reports.path().to_str().unwrap(),
    ]))
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reports.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["backend"], format!("{backend} cluster"));
    assert_eq!(report["passed"], true);
    assert!(
        report["replay"].as_str().unwrap().contains(" --cluster "),
        "{report:#}"
    );
    assert!(ran.stdout.contains("PASS no-lost-writes"), "{ran}");
}

#[tokio::test]
async fn gate_cluster_passes_on_the_process_backend() {
    gate_on("process").await;
}

#[tokio::test]
async fn gate_cluster_passes_on_docker() {
    if !docker_or_skip("gate_cluster_passes_on_docker").await {
        return;
    }
    gate_on("docker").await;
}

#[tokio::test]
async fn gate_cluster_with_an_rdb_is_a_usage_error() {
    let ran = run(keyshift(&["gate", "--cluster", "--rdb", "dump.rdb"])).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("cannot be used with"), "{ran}");
}
