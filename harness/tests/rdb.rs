//! RDB snapshot replay (issue 7): a server started with files placed in its
//! working dir loads them (both backends), `keyshift gate --rdb` runs the
//! whole gate on a snapshot of a seeded server, and a file the server
//! cannot load (a newer RDB format, truncated, not an RDB, missing) is one
//! clear error with its exit code.

mod support;

use std::path::{Path, PathBuf};

use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_harness::backend::{process_redis_version, BackendKind, RedisServer, ServerSetup};
use keyshift_harness::seed::{self, generate, load_fixture_dir, GenConfig};
use serde_json::Value;
use support::cli::{keyshift, run, Ran};
use support::docker_or_skip;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// SAVE on a process server and copy its dump.rdb to `dest`.
async fn save_to(server: &RedisServer, dest: &Path) {
    assert_eq!(server.kind(), BackendKind::Process);
    let mut c = server.connection().await.unwrap();
    let () = redis::cmd("SAVE").query_async(&mut c).await.unwrap();
    let (_, dir): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query_async(&mut c)
        .await
        .unwrap();
    std::fs::copy(Path::new(&dir).join("dump.rdb"), dest).unwrap();
}

/// A snapshot of a server seeded as the gate seeds one: `users` generated
/// users plus the fixtures. Returns the number of keys in it.
async fn seeded_snapshot(users: usize, dest: &Path) -> usize {
    let mut keyspace = generate(&GenConfig {
        users,
        seed: 7,
        ..GenConfig::default()
    })
    .keyspace;
    keyspace.extend(load_fixture_dir(fixtures_dir()).unwrap());
    let server = RedisServer::start(BackendKind::Process).await.unwrap();
    let conn = connect(&server.url()).await.unwrap();
    seed::load(&conn, &keyspace).await.unwrap();
    save_to(&server, dest).await;
    dbsize(&server).await
}

async fn dbsize(server: &RedisServer) -> usize {
    let mut c = server.connection().await.unwrap();
    redis::cmd("DBSIZE").query_async(&mut c).await.unwrap()
}

/// A tiny snapshot: three keys in database 0, one with a TTL, and one key
/// in database 2.
async fn tiny_snapshot(dest: &Path) {
    let server = RedisServer::start(BackendKind::Process).await.unwrap();
    let mut c = server.connection().await.unwrap();
    let () = redis::pipe()
        .set("a", "1")
        .set("b", "2")
        .cmd("SET")
        .arg("c")
        .arg("3")
        .arg("EX")
        .arg(3600)
        .cmd("SELECT")
        .arg(2)
        .set("elsewhere", "x")
        .cmd("SELECT")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    save_to(&server, dest).await;
}

async fn setup_files_are_loaded_on(kind: BackendKind) {
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("snapshot.rdb");
    tiny_snapshot(&rdb).await;
    let setup = ServerSetup::new().file(&rdb, "dump.rdb");
    let server = RedisServer::start_setup(kind, &setup).await.unwrap();
    assert_eq!(server.kind(), kind);
    assert_eq!(dbsize(&server).await, 3);
    let mut c = server.connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg("c")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 3000 && ttl <= 3600, "ttl {ttl}");
}

#[tokio::test]
async fn a_file_placed_before_start_is_loaded_as_dump_rdb_on_process() {
    setup_files_are_loaded_on(BackendKind::Process).await;
}

#[tokio::test]
async fn a_file_placed_before_start_is_loaded_as_dump_rdb_on_docker() {
    if !docker_or_skip("a_file_placed_before_start_is_loaded_as_dump_rdb_on_docker").await {
        return;
    }
    setup_files_are_loaded_on(BackendKind::Docker).await;
}

fn report_json(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn invariant<'a>(report: &'a Value, phase: &str, id: &str) -> &'a Value {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == phase)
        .and_then(|p| {
            p["invariants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["id"] == id)
        })
        .unwrap_or_else(|| panic!("no {phase}/{id} in the report"))
}

/// One gate at a time from this file: two gates side by side on a small
/// machine stretch the rollback's planning past the 1 s TTL tolerance of
/// the `rollback` invariant (it restores TTLs computed when it planned).
static ONE_GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn gate_on(rdb: &Path, backend: &str, reports: &Path) -> Ran {
    let _one = ONE_GATE.lock().await;
    run(keyshift(&[
        "gate",
        "--rdb",
        rdb.to_str().unwrap(),
        "--backend",
        backend,
        "--report-dir",
        reports.to_str().unwrap(),
    ]))
    .await
}

/// The gate on a snapshot of a server seeded as the gate seeds one passes,
/// and its reports say it ran on that snapshot, with its key counts.
async fn gate_passes_on_a_snapshot(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("prod.rdb");
    let keys = seeded_snapshot(150, &rdb).await;
    let reports = dir.path().join("reports");
    let ran = gate_on(&rdb, backend, &reports).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains("== snapshot"), "{ran}");

    let report = report_json(&reports);
    let snapshot = &report["snapshot"];
    assert_eq!(snapshot["file"], rdb.to_str().unwrap());
    assert_eq!(snapshot["keys_loaded"], keys);
    assert_eq!(report["keys_seeded"], keys);
    let header = std::fs::read(&rdb).unwrap()[5..9].to_vec();
    let version: u64 = String::from_utf8(header).unwrap().parse().unwrap();
    assert_eq!(snapshot["rdb_version"], version);
    let legacy = snapshot["legacy_position_keys"].as_u64().unwrap();
    assert!(legacy >= 150, "{snapshot}");
    assert!(report["truth"].is_null());
    assert_eq!(report["backend"], backend);
    assert!(
        report["replay"].as_str().unwrap().contains("--rdb"),
        "{report}"
    );

    // Counts judged against the snapshot: one outcome per legacy key.
    let counts = invariant(&report, "grid-positions", "counts");
    assert_eq!(counts["status"], "pass", "{counts}");
    assert!(counts["processed"].as_u64().unwrap() >= legacy, "{counts}");
    // The writers ran on the snapshot's users.
    let writes = invariant(&report, "grid-positions", "no-lost-writes");
    assert_eq!(writes["status"], "pass", "{writes}");
    for id in ["untouched", "rollback", "idempotent", "api", "backup"] {
        let inv = invariant(&report, "grid-positions", id);
        assert_eq!(inv["status"], "pass", "{id}: {inv}");
        assert!(inv["processed"].as_u64().unwrap() > 0, "{id}: {inv}");
    }
    let md = std::fs::read_to_string(reports.join("report.md")).unwrap();
    assert!(md.contains("on the RDB snapshot"), "{md}");
    assert!(md.contains(&format!("{keys} keys loaded")), "{md}");
    assert!(reports.join("junit.xml").is_file());
}

#[tokio::test]
async fn gate_on_a_snapshot_of_a_seeded_server_passes_on_process() {
    gate_passes_on_a_snapshot("process").await;
}

#[tokio::test]
async fn gate_on_a_snapshot_of_a_seeded_server_passes_on_docker() {
    if !docker_or_skip("gate_on_a_snapshot_of_a_seeded_server_passes_on_docker").await {
        return;
    }
    gate_passes_on_a_snapshot("docker").await;
}

/// A copy of a real snapshot whose header claims RDB version 12 (as Redis
/// 7.4 writes): Redis checks the version before the checksum.
async fn newer_snapshot(dir: &Path) -> PathBuf {
    let rdb = dir.join("from-7.4.rdb");
    tiny_snapshot(&rdb).await;
    let mut bytes = std::fs::read(&rdb).unwrap();
    assert_eq!(&bytes[..5], b"REDIS");
    bytes[5..9].copy_from_slice(b"0012");
    std::fs::write(&rdb, bytes).unwrap();
    rdb
}

async fn newer_rdb_is_refused_on(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let rdb = newer_snapshot(dir.path()).await;
    let reports = dir.path().join("reports");
    let ran = gate_on(&rdb, backend, &reports).await;
    assert_eq!(ran.code, Some(4), "{ran}");
    for part in [
        rdb.to_str().unwrap(),
        "RDB format version 12",
        "Redis 7.4 or newer",
        "cannot read",
        "at least as new",
    ] {
        assert!(ran.stderr.contains(part), "{part:?} missing:\n{ran}");
    }
    // The docker image is built from the host's redis-server unless
    // KEYSHIFT_REDIS_IMAGE names another.
    if backend == "process" || std::env::var_os("KEYSHIFT_REDIS_IMAGE").is_none() {
        let version = process_redis_version()
            .await
            .expect("redis-server --version");
        let named = format!("which Redis {version} cannot read");
        assert!(ran.stderr.contains(&named), "{named:?} missing:\n{ran}");
    }
    assert!(
        !reports.join("report.json").exists(),
        "no report for a gate that never ran"
    );
}

#[tokio::test]
async fn an_rdb_from_a_newer_server_is_a_clear_error_exit_4_on_process() {
    newer_rdb_is_refused_on("process").await;
}

#[tokio::test]
async fn an_rdb_from_a_newer_server_is_a_clear_error_exit_4_on_docker() {
    if !docker_or_skip("an_rdb_from_a_newer_server_is_a_clear_error_exit_4_on_docker").await {
        return;
    }
    newer_rdb_is_refused_on("docker").await;
}

#[tokio::test]
async fn a_missing_or_foreign_file_is_a_usage_error_before_any_server_starts() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    let missing = dir.path().join("missing.rdb");
    let ran = gate_on(&missing, "process", &reports).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(
        ran.stderr.contains("missing.rdb") && ran.stderr.contains("cannot read it"),
        "{ran}"
    );

    let foreign = dir.path().join("dump.json");
    std::fs::write(&foreign, "{\"not\": \"an rdb\"}").unwrap();
    let ran = gate_on(&foreign, "process", &reports).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("not an RDB file"), "{ran}");
    assert!(
        !ran.stderr.contains("gate: process backend"),
        "a server started:\n{ran}"
    );
}

#[tokio::test]
async fn rdb_cannot_be_combined_with_generated_users_fixtures_or_a_cluster() {
    let combinations: [&[&str]; 3] = [
        &["--users", "10"],
        &["--fixtures", "fixtures"],
        &["--cluster"],
    ];
    for extra in combinations {
        let mut args = vec!["gate", "--rdb", "dump.rdb"];
        args.extend(extra);
        let ran = run(keyshift(&args)).await;
        assert_eq!(ran.code, Some(2), "{ran}");
        assert!(ran.stderr.contains("cannot be used with"), "{ran}");
    }
}

#[tokio::test]
async fn a_snapshot_with_no_legacy_keys_passes_and_says_the_writers_did_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("other-app.rdb");
    tiny_snapshot(&rdb).await;
    let reports = dir.path().join("reports");
    let ran = gate_on(&rdb, "process", &reports).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let report = report_json(&reports);
    assert_eq!(report["snapshot"]["keys_loaded"], 3);
    assert_eq!(report["snapshot"]["legacy_position_keys"], 0);
    assert_eq!(report["snapshot"]["other_databases"]["2"], 1, "{report}");
    let md = std::fs::read_to_string(reports.join("report.md")).unwrap();
    assert!(
        md.contains("Not checked: the snapshot's other databases (db 2: 1 keys)"),
        "{md}"
    );
    let writes = invariant(&report, "grid-positions", "no-lost-writes");
    assert_eq!(writes["status"], "not_run", "{writes}");
    assert!(
        writes["note"].as_str().unwrap().contains("no user"),
        "{writes}"
    );
    // Nothing to migrate, and nothing else touched.
    let untouched = invariant(&report, "grid-positions", "untouched");
    assert_eq!(untouched["status"], "pass", "{untouched}");
    assert_eq!(untouched["processed"], 3, "{untouched}");
}

#[tokio::test]
async fn a_truncated_snapshot_is_exit_4_saying_it_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("partial.rdb");
    tiny_snapshot(&rdb).await;
    let bytes = std::fs::read(&rdb).unwrap();
    std::fs::write(&rdb, &bytes[..bytes.len() / 2]).unwrap();
    let ran = gate_on(&rdb, "process", &dir.path().join("reports")).await;
    assert_eq!(ran.code, Some(4), "{ran}");
    assert!(ran.stderr.contains("partial.rdb"), "{ran}");
    assert!(ran.stderr.contains("hit its end early"), "{ran}");
    assert!(ran.stderr.contains("copy it again"), "{ran}");
}
