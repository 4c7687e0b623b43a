//! Shared by the integration tests: a disposable Redis per test (process
//! backend unless KEYSHIFT_TEST_BACKEND says otherwise) and small helpers
//! to seed keys and run Phase 2 through the engine as the binary does.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod gate;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::runner::{
    migrate_grid_positions, MigrateOptions, MigrationReport,
};
use keyshift_engine::grid_positions::store::standalone::{connect, StandaloneStore};
use keyshift_engine::grid_positions::verify::VerifyReport;
use keyshift_engine::keys::DEFAULT_EXCHANGES;
use keyshift_harness::backend::{docker_available, docker_required, BackendKind, RedisServer};

pub struct TestRedis {
    pub server: RedisServer,
    pub conn: RedisConn,
}

/// The backend integration tests run on: `KEYSHIFT_TEST_BACKEND=docker`
/// (or auto) switches them; process is the default as it starts fastest.
pub fn test_backend() -> BackendKind {
    std::env::var("KEYSHIFT_TEST_BACKEND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BackendKind::Process)
}

/// False (after printing why) when Docker is down and not required; when it
/// is required the test goes on and fails on the start error.
pub async fn docker_or_skip(test: &str) -> bool {
    if docker_available().await || docker_required() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: no Docker engine answers (set KEYSHIFT_REQUIRE_DOCKER=1 to make this a failure)"
    );
    false
}

pub async fn redis() -> TestRedis {
    let server = RedisServer::start(test_backend())
        .await
        .expect("a disposable redis");
    let conn = connect(&server.url()).await.expect("connect");
    TestRedis { server, conn }
}

/// A disposable Redis holding `values` (key, string value), no TTLs.
pub async fn redis_with<V: AsRef<[u8]>>(values: &[(&str, V)]) -> TestRedis {
    let r = redis().await;
    for (key, value) in values {
        r.set(key, value).await;
    }
    r
}

/// The ids of the invariants `report` failed, in its order.
pub fn failed_invariants<'a, C: FromIterator<&'a str>>(report: &'a VerifyReport) -> C {
    report
        .invariants
        .iter()
        .filter(|i| !i.passed)
        .map(|i| i.id.as_str())
        .collect()
}

pub fn exchanges() -> Vec<String> {
    DEFAULT_EXCHANGES.iter().map(|s| (*s).to_owned()).collect()
}

impl TestRedis {
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn set(&self, key: &str, value: impl AsRef<[u8]>) {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }

    pub async fn set_px(&self, key: &str, value: impl AsRef<[u8]>, ttl_ms: u64) {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }

    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = self.conn.clone();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await.unwrap()
    }

    /// Every key, sorted (a server this test created, so KEYS is fine).
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.cmd(&["KEYS", "*"]).await;
        keys.sort();
        keys
    }

    pub async fn store(&self) -> StandaloneStore {
        StandaloneStore::open(&self.url(), self.conn.clone())
            .await
            .unwrap()
    }

    /// Runs Phase 2 with `configure` applied to the default options.
    pub async fn migrate_with(
        &self,
        configure: impl FnOnce(&mut MigrateOptions),
    ) -> MigrationReport {
        let mut opts = MigrateOptions::new(exchanges());
        configure(&mut opts);
        migrate_grid_positions(&self.store().await, &opts, &|_| {})
            .await
            .unwrap()
    }

    pub async fn migrate(&self) -> MigrationReport {
        self.migrate_with(|_| {}).await
    }
}
