//! The disposable 3-primary Redis Cluster: formed on both backends, each
//! primary serving its third of the slots at a host-reachable address
//! (MOVED names it), everything gone after drop.

mod support;

use std::time::{Duration, Instant};

use keyshift_harness::backend::{cluster_slot_ranges, key_slot, BackendKind, RedisCluster};
use support::docker_or_skip;

/// Each key is accepted by the primary owning its slot, and every other
/// primary answers MOVED with that primary's host-reachable address.
async fn assert_routes_keys(cluster: &RedisCluster) {
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 3);
    assert_eq!(
        cluster.url(),
        format!("redis+cluster://127.0.0.1:{}", nodes[0].port())
    );
    let ranges = cluster_slot_ranges(3);
    let mut cons = cluster.node_connections().await.expect("node connections");
    let mut owners_hit = [false; 3];
    for i in 0..30 {
        let key = format!("keyshift:probe:{i}");
        let slot = key_slot(key.as_bytes());
        let server_slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut cons[0])
            .await
            .expect("CLUSTER KEYSLOT");
        assert_eq!(slot, server_slot, "{key}");
        let owner = ranges
            .iter()
            .position(|&(a, b)| (a..=b).contains(&slot))
            .unwrap();
        owners_hit[owner] = true;
        for (n, con) in cons.iter_mut().enumerate() {
            let set: redis::RedisResult<()> =
                redis::cmd("SET").arg(&key).arg("v").query_async(con).await;
            if n == owner {
                set.expect("SET on the owning primary");
            } else {
                let err = set.expect_err("SET on another primary");
                assert_eq!(
                    err.kind(),
                    redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
                    "{err}"
                );
                let text = err.to_string();
                let target = format!("127.0.0.1:{}", nodes[owner].port());
                assert!(
                    text.contains(&target),
                    "{key} on node {n}: {text} (expected MOVED to {target})"
                );
            }
        }
    }
    assert_eq!(owners_hit, [true; 3], "30 keys land on every primary");
}

async fn assert_ports_closed(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for &port in ports {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "port {port} still open after drop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn process_cluster_routes_every_slot_and_goes_away_on_drop() {
    let cluster = RedisCluster::start(BackendKind::Process)
        .await
        .expect("start a process cluster");
    assert_eq!(cluster.kind(), BackendKind::Process);
    assert_routes_keys(&cluster).await;
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    drop(cluster);
    assert_ports_closed(&ports).await;
}

#[tokio::test]
async fn docker_cluster_announces_host_addresses_and_removes_its_network() {
    if !docker_or_skip("docker_cluster_announces_host_addresses_and_removes_its_network").await {
        return;
    }
    let cluster = RedisCluster::start(BackendKind::Docker)
        .await
        .expect("start a docker cluster");
    assert_eq!(cluster.kind(), BackendKind::Docker);
    assert_routes_keys(&cluster).await;
    let network = cluster
        .network_name()
        .expect("a docker cluster has a network")
        .to_string();
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    drop(cluster);
    assert_ports_closed(&ports).await;
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{network}$"),
        ])
        .output()
        .expect("docker network ls");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "network {network} still exists after drop"
    );
}
