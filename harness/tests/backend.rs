//! Real disposable Redis servers: the process backend always, the docker
//! backend when an engine answers (a skip with a notice otherwise, a failure
//! when KEYSHIFT_REQUIRE_DOCKER=1).

mod support;

use std::time::{Duration, Instant};

use keyshift_harness::backend::{
    docker_available, docker_required, wait_ready, BackendError, BackendKind, RedisServer,
};
use redis::AsyncCommands;
use support::docker_or_skip;

async fn assert_serves(server: &RedisServer) {
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    let mut con = server.connection().await.expect("connection");
    let () = con.set("keyshift:probe", "value").await.expect("SET");
    let got: String = con.get("keyshift:probe").await.expect("GET");
    assert_eq!(got, "value");
}

async fn config_get(server: &RedisServer, name: &str) -> String {
    let mut con = server.connection().await.expect("connection");
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(&mut con)
        .await
        .expect("CONFIG GET");
    pair.get(1).cloned().unwrap_or_default()
}

/// Nothing listens on `port` any more (allowing a moment for the kernel).
async fn assert_port_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} still accepts connections after the server was dropped");
}

#[tokio::test]
async fn process_backend_serves_and_closes_its_port_on_drop() {
    let server = RedisServer::start(BackendKind::Process)
        .await
        .expect("start");
    assert_eq!(server.kind(), BackendKind::Process);
    assert_serves(&server).await;
    assert_eq!(config_get(&server, "save").await, "");
    assert_eq!(config_get(&server, "appendonly").await, "no");
    let port = server.port();
    drop(server);
    assert_port_closed(port).await;
}

#[tokio::test]
async fn process_backend_passes_extra_args() {
    let server = RedisServer::start_with(BackendKind::Process, &["--maxmemory", "10mb"])
        .await
        .expect("start");
    assert_eq!(config_get(&server, "maxmemory").await, "10485760");
}

#[tokio::test]
async fn process_servers_run_side_by_side() {
    let (a, b) = tokio::join!(
        RedisServer::start(BackendKind::Process),
        RedisServer::start(BackendKind::Process)
    );
    let (a, b) = (a.expect("start a"), b.expect("start b"));
    assert_ne!(a.port(), b.port());
    assert_serves(&a).await;
    assert_serves(&b).await;
}

#[tokio::test]
async fn process_backend_reports_bad_args_with_the_log() {
    let err = RedisServer::start_with(BackendKind::Process, &["--no-such-option", "1"])
        .await
        .expect_err("redis-server must refuse an unknown option");
    assert!(
        matches!(err, BackendError::ProcessExited { ref log_tail, .. } if log_tail.contains("no-such-option")),
        "{err}"
    );
}

#[tokio::test]
async fn docker_backend_serves_and_removes_its_container_on_drop() {
    if !docker_or_skip("docker_backend_serves_and_removes_its_container_on_drop").await {
        return;
    }
    let server = RedisServer::start(BackendKind::Docker)
        .await
        .expect("start");
    assert_eq!(server.kind(), BackendKind::Docker);
    assert_serves(&server).await;
    let port = server.port();
    drop(server);
    assert_port_closed(port).await;
}

#[tokio::test]
async fn docker_backend_passes_extra_args_and_runs_in_parallel() {
    if !docker_or_skip("docker_backend_passes_extra_args_and_runs_in_parallel").await {
        return;
    }
    // Two at once: the image build (if any) happens once, the other waits.
    let (a, b) = tokio::join!(
        RedisServer::start_with(BackendKind::Docker, &["--maxmemory", "10mb"]),
        RedisServer::start_with(BackendKind::Docker, &["--appendonly", "yes"])
    );
    let (a, b) = (a.expect("start a"), b.expect("start b"));
    assert_ne!(a.port(), b.port());
    assert_eq!(config_get(&a, "maxmemory").await, "10485760");
    assert_eq!(config_get(&b, "appendonly").await, "yes");
    assert_serves(&b).await;
}

#[tokio::test]
async fn auto_prefers_docker_and_falls_back_to_process() {
    let docker = docker_available().await;
    let server = RedisServer::start(BackendKind::Auto).await;
    match (docker, docker_required()) {
        (true, _) => assert_eq!(server.expect("start").kind(), BackendKind::Docker),
        (false, true) => {
            let err = server.expect_err("KEYSHIFT_REQUIRE_DOCKER=1 forbids the fallback");
            assert!(err.to_string().contains("KEYSHIFT_REQUIRE_DOCKER"), "{err}");
        }
        (false, false) => {
            eprintln!("auto_prefers_docker: no Docker engine, checking the process fallback only");
            assert_eq!(server.expect("start").kind(), BackendKind::Process);
        }
    }
}

#[tokio::test]
async fn wait_ready_gives_up_on_a_closed_port() {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = wait_ready(&url, Duration::from_millis(300))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, BackendError::NotReady { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}
