//! Shared by the cluster tests: a disposable 3-primary cluster, a full SCAN
//! through the engine's connection, and the grid-positions write a run
//! plans for one user, for tests that drive the store's steps directly.

use keyshift_engine::connection::scan::scan_step;
use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::{plan_value, PlanOptions, UserPlan};
use keyshift_engine::grid_positions::runner::user_write;
use keyshift_engine::grid_positions::store::{RunContext, UserWrite};
use keyshift_engine::keys::LegacyPositionsKey;
use keyshift_engine::run::journal::{outcomes_key, RunRecord, RunState};
use keyshift_engine::EngineError;
use keyshift_harness::backend::RedisCluster;

use super::test_backend;

pub async fn cluster() -> RedisCluster {
    RedisCluster::start(test_backend())
        .await
        .expect("a disposable cluster")
}

/// Every key name through one SCAN loop of `conn`, in the order SCAN gave
/// them (a key seen twice is there twice), or the first error.
pub async fn scan_all(conn: &RedisConn, count: usize) -> Result<Vec<String>, EngineError> {
    let mut keys = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, batch): (u64, Vec<String>) =
            scan_step(conn, cursor, None, count, "a test SCAN").await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return Ok(keys);
        }
    }
}

/// When the store-step tests' run migrated, and its backup stamp.
pub const AT: &str = "2026-11-28T09:00:00Z";
pub const STAMP: &str = "20261128_090000";

pub fn ctx(run_id: &str) -> RunContext {
    RunContext {
        run_id: run_id.into(),
        outcomes_key: outcomes_key(run_id),
        migrated_at: AT.into(),
        backup_ttl_secs: 7 * 24 * 3600,
    }
}

/// The journal's record of run `run_id` on okx, resumed once.
pub fn run_record(run_id: &str, state: RunState) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        migration: "grid-positions".into(),
        stamp: STAMP.into(),
        state,
        started_at: AT.into(),
        started_ms: 0,
        finished_at: None,
        skip_closed: false,
        exchanges: vec!["okx".into()],
        counts: None,
        error: None,
        resumes: 1,
        rollback: None,
    }
}

/// What a run plans for okx user `uid` whose legacy key holds `value`.
pub fn write_for(uid: &str, value: &[u8]) -> UserWrite {
    let legacy = LegacyPositionsKey::new("okx", uid);
    let UserPlan::Migrate(plan) = plan_value(value, PlanOptions::default()) else {
        panic!("plans");
    };
    user_write(&legacy, &legacy.key(), value.to_vec(), plan, STAMP)
}
