//! The docker backend on a real engine (skipped with a notice when none
//! answers, a failure with KEYSHIFT_REQUIRE_DOCKER=1): the faults keep the
//! container's port and data, the engine is driven at its own API version,
//! and an interrupted `keyshift` leaves no container or network behind.

#[path = "docker_backend/proxy.rs"]
mod proxy;
mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use keyshift_harness::backend::{build_from_host_redis, docker_engine, BackendKind, RedisServer};
use redis::AsyncCommands;
use support::docker_or_skip;
use tokio::process::Command;

use proxy::RecordingProxy;

const KEYSHIFT: &str = env!("CARGO_BIN_EXE_keyshift");
const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios");
/// Long enough for a first build of the local image.
const CONTAINER_APPEARS: Duration = Duration::from_secs(300);
const EXIT_AFTER_SIGNAL: Duration = Duration::from_secs(60);

/// A connection that gives up on an answer after `ms` (a frozen or cut
/// server must not hang the test).
async fn impatient(
    server: &RedisServer,
    ms: u64,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let timeout = Some(Duration::from_millis(ms));
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    redis::Client::open(server.url())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn get(server: &RedisServer, key: &str) -> Option<String> {
    let mut con = server.connection().await.expect("connection");
    con.get(key).await.expect("GET")
}

#[tokio::test]
async fn faults_keep_the_container_port_and_its_data() {
    if !docker_or_skip("faults_keep_the_container_port_and_its_data").await {
        return;
    }
    let mut server = RedisServer::start_with(
        BackendKind::Docker,
        &["--appendonly", "yes", "--appendfsync", "always"],
    )
    .await
    .expect("start");
    let port = server.port();
    let mut con = server.connection().await.expect("connection");
    let () = con.set("keyshift:probe", "kept").await.expect("SET");

    let mut frozen = impatient(&server, 300).await.expect("connect");
    server.pause().await.expect("pause");
    let answer: redis::RedisResult<Option<String>> = frozen.get("keyshift:probe").await;
    assert!(answer.is_err(), "a paused server answered {answer:?}");
    server.unpause().await.expect("unpause");
    assert_eq!(
        get(&server, "keyshift:probe").await.as_deref(),
        Some("kept")
    );

    server.crash_and_restart().await.expect("crash and restart");
    assert_eq!(server.port(), port, "a restart keeps the host port");
    assert_eq!(
        get(&server, "keyshift:probe").await.as_deref(),
        Some("kept")
    );

    server
        .shutdown_and_restart()
        .await
        .expect("shutdown and restart");
    assert_eq!(server.port(), port);
    assert_eq!(
        get(&server, "keyshift:probe").await.as_deref(),
        Some("kept")
    );

    server.disconnect_network().await.expect("disconnect");
    assert!(
        impatient(&server, 500).await.is_err(),
        "a cut-off container still accepted a connection"
    );
    server.reconnect_network().await.expect("reconnect");
    assert_eq!(server.port(), port);
    assert_eq!(
        get(&server, "keyshift:probe").await.as_deref(),
        Some("kept")
    );
}

/// The engine's socket, unless DOCKER_HOST names another kind of host.
fn engine_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
        _ => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

/// Records which API version the docker backend drives the engine at: a
/// whole scenario (create, copy, start, logs, network cut, removal) runs
/// through a proxy that sees every request. None names a version, so the
/// engine serves each at its own newest, which it states in its answers.
#[tokio::test(flavor = "multi_thread")]
async fn the_engine_is_driven_at_its_own_api_version() {
    if !docker_or_skip("the_engine_is_driven_at_its_own_api_version").await {
        return;
    }
    let engine = docker_engine().await.expect("the engine's version");
    let Some(socket) = engine_socket() else {
        eprintln!(
            "SKIPPED the_engine_is_driven_at_its_own_api_version: DOCKER_HOST is not a unix socket"
        );
        return;
    };
    let proxy = RecordingProxy::start(&socket);
    let reports = tempfile::tempdir().unwrap();
    let out = Command::new(KEYSHIFT)
        .args([
            "scenario",
            "run",
            "network-cut-docker",
            "--backend",
            "docker",
        ])
        .args(["--dir", SCENARIOS, "--report-dir"])
        .arg(reports.path())
        .env("DOCKER_HOST", proxy.docker_host())
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("keyshift runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    let seen = proxy.seen.lock().unwrap();
    let versioned: Vec<&String> = seen
        .requests
        .iter()
        .filter(|r| r.contains(" /v1."))
        .collect();
    assert!(versioned.is_empty(), "versioned requests: {versioned:?}");
    for expected in [
        "/containers/create",
        "/start",
        "/networks/bridge/disconnect",
    ] {
        assert!(
            seen.requests.iter().any(|r| r.contains(expected)),
            "no {expected} request among {:?}",
            seen.requests
        );
    }
    let served: Vec<&String> = seen.api_versions.iter().collect();
    assert_eq!(
        served,
        [&engine.api_version],
        "the engine's Api-Version headers"
    );
    eprintln!(
        "docker backend drove Docker Engine {} at API {} (oldest it accepts {}; bollard's base URL names {}, \
         which no request path carried) over {} requests",
        engine.version,
        engine.api_version,
        engine.min_api_version,
        engine.client_api_version,
        seen.requests.len()
    );
}

/// Ids of the containers `pid` started, running or not.
fn containers_of(pid: u32) -> Vec<String> {
    docker_list(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=keyshift.harness.pid={pid}"),
    ])
}

/// Names of the cluster networks `pid` made.
fn networks_of(pid: u32) -> Vec<String> {
    let prefix = format!("keyshift-cluster-{pid}-");
    docker_list(&[
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("name={prefix}"),
    ])
    .into_iter()
    .filter(|name| name.starts_with(&prefix))
    .collect()
}

fn docker_list(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts `keyshift ARGS`, sends `signal` once one of its containers
/// exists, and checks it exits 128+signal leaving no container or network.
async fn interrupted_leaves_nothing(args: &[&str], signal: &str, code: i32) {
    let reports = tempfile::tempdir().unwrap();
    let mut child = Command::new(KEYSHIFT)
        .args(args)
        .arg("--report-dir")
        .arg(reports.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("keyshift starts");
    let pid = child.id().expect("a running child");
    let start = Instant::now();
    while containers_of(pid).is_empty() {
        if let Some(status) = child.try_wait().expect("child status") {
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "keyshift {args:?} ended ({status}) before starting a container:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < CONTAINER_APPEARS,
            "no container of {args:?} appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let out = tokio::time::timeout(EXIT_AFTER_SIGNAL, child.wait_with_output())
        .await
        .expect("keyshift exits after the signal")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(
        stderr.contains(&format!("interrupted by SIG{signal}")),
        "{stderr}"
    );
    assert_eq!(
        containers_of(pid),
        Vec::<String>::new(),
        "containers left by {args:?}"
    );
    assert_eq!(
        networks_of(pid),
        Vec::<String>::new(),
        "networks left by {args:?}"
    );
}

#[tokio::test]
async fn an_interrupted_gate_leaves_no_container() {
    if !docker_or_skip("an_interrupted_gate_leaves_no_container").await {
        return;
    }
    let gate = ["gate", "--backend", "docker", "--users", "20000"];
    interrupted_leaves_nothing(&gate, "INT", 130).await;
}

#[tokio::test]
async fn a_terminated_cluster_gate_leaves_no_container_or_network() {
    if !docker_or_skip("a_terminated_cluster_gate_leaves_no_container_or_network").await {
        return;
    }
    let gate = [
        "gate",
        "--backend",
        "docker",
        "--cluster",
        "--users",
        "20000",
    ];
    interrupted_leaves_nothing(&gate, "TERM", 143).await;
}

#[tokio::test]
async fn an_interrupted_scenario_run_leaves_no_container() {
    if !docker_or_skip("an_interrupted_scenario_run_leaves_no_container").await {
        return;
    }
    let run = [
        "scenario",
        "run",
        "--all",
        "--backend",
        "docker",
        "--dir",
        SCENARIOS,
    ];
    interrupted_leaves_nothing(&run, "INT", 130).await;
}

/// Removes a test's own image whatever the test's outcome.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["image", "rm", "-f", &self.0])
            .output();
    }
}

/// The build a fresh machine does when keyshift/redis:local is missing,
/// under a name of this test's own (the shared image may already exist):
/// through the engine's build API, labelled with the host's redis-server.
#[tokio::test]
async fn the_local_image_builds_through_the_engine_api() {
    if !docker_or_skip("the_local_image_builds_through_the_engine_api").await {
        return;
    }
    let image = format!("keyshift/redis:build-test-{}", std::process::id());
    let _remove = RemoveImage(image.clone());
    build_from_host_redis(&image)
        .await
        .expect("the image builds");
    let host = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .expect("the host's redis-server");
    let host = vec![String::from_utf8_lossy(&host.stdout).trim().to_string()];
    let label = docker_list(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"keyshift.redis-version\"}}",
        &image,
    ]);
    assert_eq!(label, host, "the version label");
    let version = docker_list(&["run", "--rm", &image, "redis-server", "--version"]);
    assert_eq!(version, host, "the image runs the host's redis-server");
}
