//! The shipped users on a 3-primary Redis Cluster (process backend: the
//! ACL file is passed by its path on this host). The default user keeps no
//! password there, as the harness forms the cluster through it.

use std::path::Path;

use keyshift_harness::backend::{BackendKind, Primaries, RedisCluster};
use keyshift_harness::seed::{self, generate, GenConfig};

use super::keyshift_as;
use super::servers::{
    cluster_acl_file, MIGRATE_PASSWORD, MIGRATE_USER, READONLY_PASSWORD, READONLY_USER,
};

#[tokio::test]
async fn the_shipped_users_run_their_commands_on_a_cluster() {
    let files = tempfile::tempdir().expect("a temp dir");
    let acl = cluster_acl_file(files.path());
    let cluster = RedisCluster::start_with(BackendKind::Process, &["--aclfile", &acl])
        .await
        .expect("a disposable cluster with the shipped users");
    let g = generate(&GenConfig {
        users: 30,
        seed: 9,
        malformed_rate: 0.0,
        order_placed_rate: 0.5,
        position_cache_rate: 0.5,
        ..GenConfig::default()
    });
    let primaries = Primaries::connect(&cluster.url()).await.expect("primaries");
    seed::load(&primaries, &g.keyspace).await.expect("seeding");

    let with_user = |user: &str, password: &str| {
        cluster
            .url()
            .replacen("://", &format!("://{user}:{password}@"), 1)
    };
    let migrate = with_user(MIGRATE_USER, MIGRATE_PASSWORD);
    let readonly = with_user(READONLY_USER, READONLY_PASSWORD);
    for (url, args) in [
        (&migrate, &["migrate", "order-placed", "--force"][..]),
        (&readonly, &["verify", "order-placed"]),
        (&migrate, &["migrate", "grid-positions", "--force"]),
        (&readonly, &["verify", "grid-positions"]),
        (&readonly, &["status"]),
        (&migrate, &["cleanup-legacy", "--force"]),
        (&readonly, &["validate"]),
        (&migrate, &["rollback", "grid-positions", "--force"]),
        (&migrate, &["rollback", "order-placed", "--force"]),
        (
            &migrate,
            &["cleanup-migration", "grid-positions", "--force"],
        ),
    ] {
        // The cluster client logs through `log`; at trace it says most.
        let ran = keyshift_as(url, args, &[("RUST_LOG", Path::new("trace"))]).await;
        assert_eq!(ran.code, Some(0), "{args:?} on the cluster: {ran}");
        assert!(!ran.stderr.contains(MIGRATE_PASSWORD) && !ran.stderr.contains(READONLY_PASSWORD));
    }
    let ran = keyshift_as(&readonly, &["migrate", "grid-positions", "--force"], &[]).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("no permission"), "{ran}");
}
