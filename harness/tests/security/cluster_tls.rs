//! `rediss+cluster://`: a 3-primary cluster whose nodes serve TLS (client
//! certificates required) and talk TLS on the cluster bus, reached through
//! the shipped migrate user. With the KEYSHIFT_TLS_* files every command
//! runs as on one TLS server; without the CA it stops with exit 4 and says
//! which variable to set; the password shows nowhere, even at trace level.

use std::path::Path;

use keyshift_engine::keys::{LegacyPositionsKey, DEFAULT_EXCHANGES};
use keyshift_harness::backend::{BackendKind, ClusterTls, RedisCluster};
use keyshift_harness::seed::{self, generate, GenConfig};

use super::certs::{self, Pki};
use super::keyshift_as;
use super::servers::{cluster_acl_file, MIGRATE_PASSWORD, MIGRATE_USER};

/// Legacy position keys on every primary, through the harness's plain
/// admin port (KEYS: this test's own cluster).
async fn legacy_keys(cluster: &RedisCluster) -> Vec<String> {
    let mut all = Vec::new();
    for mut con in cluster.node_connections().await.expect("node connections") {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut con)
            .await
            .unwrap();
        all.extend(
            keys.into_iter()
                .filter(|k| LegacyPositionsKey::parse(k, &DEFAULT_EXCHANGES).is_some()),
        );
    }
    all.sort();
    all
}

#[tokio::test]
async fn rediss_cluster_runs_migrate_verify_rollback_and_needs_the_ca() {
    let pki = Pki::new();
    let files = tempfile::tempdir().expect("a temp dir");
    let acl = cluster_acl_file(files.path());
    let tls = ClusterTls {
        cert: pki.path(certs::SERVER_CERT),
        key: pki.path(certs::SERVER_KEY),
        ca: pki.path(certs::CA),
        auth_clients: true,
        // The server certificate is for server use only; on the bus a node
        // is a client too.
        client: Some((pki.path(certs::CLIENT_CERT), pki.path(certs::CLIENT_KEY))),
    };
    let cluster = RedisCluster::start_tls(BackendKind::Process, &["--aclfile", &acl], &tls)
        .await
        .expect("a disposable TLS cluster");
    let g = generate(&GenConfig {
        users: 40,
        seed: 11,
        malformed_rate: 0.0,
        ..GenConfig::default()
    });
    let primaries = cluster.primaries().await.expect("primaries");
    seed::load(&primaries, &g.keyspace).await.expect("seeding");
    let before = legacy_keys(&cluster).await;
    assert!(before.len() > 20, "too few legacy keys seeded: {before:?}");

    let url = cluster.tls_url().expect("a TLS cluster").replacen(
        "://",
        &format!("://{MIGRATE_USER}:{MIGRATE_PASSWORD}@"),
        1,
    );
    let ca = pki.path(certs::CA);
    let (cert, key) = (pki.path(certs::CLIENT_CERT), pki.path(certs::CLIENT_KEY));
    let trace = Path::new("trace");
    let full = [
        ("KEYSHIFT_TLS_CA_CERT", ca.as_path()),
        ("KEYSHIFT_TLS_CLIENT_CERT", cert.as_path()),
        ("KEYSHIFT_TLS_CLIENT_KEY", key.as_path()),
        ("RUST_LOG", trace),
    ];
    let no_ca = &full[1..];
    let ran_without_password = |ran: &super::Ran| {
        !ran.stderr.contains(MIGRATE_PASSWORD) && !ran.stdout.contains(MIGRATE_PASSWORD)
    };
    for (args, code, migrated) in [
        (&["migrate", "grid-positions", "--force"][..], 0, true),
        (&["verify", "grid-positions"], 0, true),
        (&["status"], 0, true),
        (&["rollback", "grid-positions", "--force"], 0, false),
    ] {
        let ran = keyshift_as(&url, args, &full).await;
        assert_eq!(ran.code, Some(code), "{args:?} over TLS: {ran}");
        assert!(ran_without_password(&ran), "{args:?}: {ran}");
        // The run did happen on the cluster's data.
        let left = legacy_keys(&cluster).await;
        if migrated {
            assert!(left.is_empty(), "{args:?}: legacy keys left {left:?}");
        } else {
            assert_eq!(left, before, "{args:?}: not every legacy key restored");
        }
    }

    // Without the CA the nodes' certificates are not trusted: exit 4,
    // naming the variable to set, before anything is written.
    let ran = keyshift_as(&url, &["migrate", "grid-positions", "--force"], no_ca).await;
    assert_eq!(ran.code, Some(4), "{ran}");
    assert!(ran.stderr.contains("KEYSHIFT_TLS_CA_CERT"), "{ran}");
    assert!(ran_without_password(&ran), "{ran}");
    assert_eq!(legacy_keys(&cluster).await, before);
    // A wrong password: exit 4, masked.
    let wrong = url.replace(MIGRATE_PASSWORD, "wr0ng-Xc3vB");
    let ran = keyshift_as(&wrong, &["verify", "grid-positions"], &full).await;
    assert_eq!(ran.code, Some(4), "{ran}");
    assert!(!ran.stderr.contains("wr0ng-Xc3vB"), "{ran}");
    assert!(
        ran.stderr.contains(&format!("{MIGRATE_USER}:***@")),
        "{ran}"
    );
}
