//! Phase 1 (`order-placed`) on a 3-primary Redis Cluster, where a legacy
//! key and its `orders:` target live in different slots: migrate, verify
//! and rollback through [`AnyOrderPlaced`] (the cluster store), an equal
//! target dropped, a differing one reported with both keys untouched, TTLs
//! kept, and a run killed in the middle of a key's steps finished by the
//! rerun.

mod support;

use std::collections::BTreeMap;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::error::{EngineError, Result};
use keyshift_engine::grid_positions::rollback::{RollbackOptions, RollbackReport};
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::order_placed::plan::KeyRead;
use keyshift_engine::order_placed::rollback::{find_runs, rollback_order_placed_runs};
use keyshift_engine::order_placed::store::{
    KeyRollback, KeyWrite, OrderPlacedStore, WriteKind, WriteOutcome,
};
use keyshift_engine::order_placed::verify::latest_run;
use keyshift_engine::order_placed::{
    migrate_order_placed, verify_order_placed, AnyOrderPlaced, OrderPlacedOptions,
    OrderPlacedReport,
};
use keyshift_engine::run::invariant::InvariantResult;
use keyshift_engine::run::journal::{outcomes_key, OrderPlacedOutcome, RunRecord};
use keyshift_harness::backend::{key_slot, RedisCluster};
use support::cli::{keyshift, run};
use support::{exchanges, failed_invariants, test_backend};

type Hash = BTreeMap<String, String>;

const MOVED: &str = "okx:user:42:symbol:BTC-USDT-SWAP:order_placed";
const MOVED_T: &str = "orders:okx:user:42:symbol:BTC-USDT-SWAP:order_placed";
const EQUAL: &str = "bybit:user:7:symbol:ETH:order_placed";
const EQUAL_T: &str = "orders:bybit:user:7:symbol:ETH:order_placed";
const DIFFERS: &str = "binance:user:7:symbol:C:order_placed";
const DIFFERS_T: &str = "orders:binance:user:7:symbol:C:order_placed";
const NOT_A_HASH: &str = "upbit:user:1:symbol:S:order_placed";

const LEVELS: &[(&str, &str)] = &[("1", "0"), ("2", "1"), ("3", "1"), ("10", "0")];

struct Cluster {
    _cluster: RedisCluster,
    conn: RedisConn,
}

async fn cluster() -> Cluster {
    let cluster = RedisCluster::start(test_backend())
        .await
        .expect("a cluster");
    let conn = connect(&cluster.url()).await.expect("connect");
    assert!(conn.is_cluster());
    Cluster {
        _cluster: cluster,
        conn,
    }
}

impl Cluster {
    async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = self.conn.clone();
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut c)
            .await
            .unwrap()
    }

    async fn hset(&self, key: &str, pairs: &[(&str, &str)]) {
        let mut args = vec!["HSET", key];
        pairs.iter().for_each(|(f, v)| args.extend([*f, *v]));
        self.cmd::<i64>(&args).await;
    }

    async fn hash(&self, key: &str) -> Hash {
        self.cmd(&["HGETALL", key]).await
    }

    async fn exists(&self, key: &str) -> bool {
        self.cmd::<i64>(&["EXISTS", key]).await == 1
    }

    async fn pttl(&self, key: &str) -> i64 {
        self.cmd(&["PTTL", key]).await
    }

    async fn store(&self) -> AnyOrderPlaced {
        let store = AnyOrderPlaced::open(self.conn.clone()).await.unwrap();
        assert!(matches!(store, AnyOrderPlaced::Cluster(_)));
        store
    }

    async fn migrate_on<S: OrderPlacedStore>(&self, store: &S) -> Result<OrderPlacedReport> {
        migrate_order_placed(store, &OrderPlacedOptions::new(exchanges()), &|_| {}).await
    }

    async fn migrate(&self) -> OrderPlacedReport {
        self.migrate_on(&self.store().await).await.unwrap()
    }

    async fn run(&self) -> RunRecord {
        latest_run(&self.conn)
            .await
            .unwrap()
            .expect("a recorded run")
    }

    /// Rolls back as `rollback order-placed [--force]` does: every run
    /// that moved or dropped a key (in these tests, one).
    async fn try_rollback(&self, force: bool) -> Result<RollbackReport> {
        let runs = find_runs(&self.conn, None).await.unwrap();
        let opts = RollbackOptions {
            backup_stamp: None,
            dry_run: false,
            force,
        };
        let store = self.store().await;
        let mut reports = rollback_order_placed_runs(&store, &self.conn, &runs, &opts).await?;
        assert_eq!(reports.len(), 1, "one run to roll back: {reports:?}");
        Ok(reports.remove(0))
    }

    async fn rollback(&self, force: bool) -> RollbackReport {
        self.try_rollback(force).await.unwrap()
    }

    async fn outcome(&self, run: &RunRecord, legacy: &str) -> OrderPlacedOutcome {
        let json: String = self
            .cmd(&["HGET", &outcomes_key(&run.run_id), legacy])
            .await;
        serde_json::from_str(&json).unwrap()
    }
}

fn levels(pairs: &[(&str, &str)]) -> Hash {
    pairs
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

/// A moved key (TTL), an equal target (its own TTL), a differing target
/// and a legacy key that is not a hash.
async fn seed(c: &Cluster) {
    for (legacy, target) in [(MOVED, MOVED_T), (EQUAL, EQUAL_T), (DIFFERS, DIFFERS_T)] {
        assert_ne!(
            key_slot(legacy.as_bytes()),
            key_slot(target.as_bytes()),
            "the point: legacy and target are in different slots"
        );
    }
    c.hset(MOVED, LEVELS).await;
    c.cmd::<i64>(&["PEXPIRE", MOVED, "5000000"]).await;
    c.hset(EQUAL, LEVELS).await;
    c.cmd::<i64>(&["PEXPIRE", EQUAL, "3000000"]).await;
    let reversed: Vec<(&str, &str)> = LEVELS.iter().rev().copied().collect();
    c.hset(EQUAL_T, &reversed).await;
    c.cmd::<i64>(&["PEXPIRE", EQUAL_T, "9000000"]).await;
    c.hset(DIFFERS, LEVELS).await;
    c.hset(DIFFERS_T, &[("1", "1")]).await;
    c.cmd::<()>(&["SET", NOT_A_HASH, "x"]).await;
}

#[tokio::test]
async fn migrate_on_a_cluster_moves_with_ttl_drops_equal_and_reports_differing_targets() {
    let c = cluster().await;
    seed(&c).await;
    let report = c.migrate().await;
    let t = &report.totals;
    assert_eq!(
        (
            t.keys_moved,
            t.keys_dropped_equal,
            t.keys_conflicting,
            t.keys_quarantined
        ),
        (1, 1, 1, 1),
        "{report:#?}"
    );
    assert_eq!(report.conflicts[0].key, DIFFERS);
    assert_eq!(report.conflicts[0].target, DIFFERS_T);

    // Moved: same type, every field, the remaining TTL; legacy gone.
    assert!(!c.exists(MOVED).await);
    assert_eq!(c.cmd::<String>(&["TYPE", MOVED_T]).await, "hash");
    assert_eq!(c.hash(MOVED_T).await, levels(LEVELS));
    let pttl = c.pttl(MOVED_T).await;
    assert!((4_990_000..=5_000_000).contains(&pttl), "TTL kept: {pttl}");
    // Dropped: legacy gone, the equal target as it was (its own TTL).
    assert!(!c.exists(EQUAL).await);
    assert_eq!(c.hash(EQUAL_T).await, levels(LEVELS));
    assert!(c.pttl(EQUAL_T).await > 8_990_000);
    // Conflict and quarantine: nothing touched.
    assert_eq!(c.hash(DIFFERS).await, levels(LEVELS));
    assert_eq!(c.hash(DIFFERS_T).await, levels(&[("1", "1")]));
    assert_eq!(c.cmd::<String>(&["GET", NOT_A_HASH]).await, "x");

    let run = c.run().await;
    let verified = verify_order_placed(&c.conn, &run, &|_| {}).await.unwrap();
    assert!(verified.passed(), "{verified:#?}");
    // A second run finds only what it must leave for review.
    let again = c.migrate().await;
    assert_eq!(again.totals.keys_moved + again.totals.keys_dropped_equal, 0);
    assert_eq!(again.totals.keys_conflicting, 1);
}

#[tokio::test]
async fn verify_on_a_cluster_catches_a_tampered_target() {
    let c = cluster().await;
    seed(&c).await;
    c.migrate().await;
    c.cmd::<i64>(&["HSET", MOVED_T, "2", "0"]).await;
    let run = c.run().await;
    let bad = verify_order_placed(&c.conn, &run, &|_| {}).await.unwrap();
    let failed: Vec<&str> = failed_invariants(&bad);
    assert_eq!(failed, ["fields"], "{bad:#?}");
}

#[tokio::test]
async fn rollback_on_a_cluster_restores_moved_and_dropped_keys_with_their_ttl() {
    let c = cluster().await;
    seed(&c).await;
    c.migrate().await;
    let report = c.rollback(false).await;
    assert_eq!(report.restored, 2, "{report:#?}");
    assert!(
        report.skipped.is_empty() && report.changed.is_empty(),
        "{report:#?}"
    );
    // Moved back: the target is gone, the legacy key holds it with its TTL.
    assert!(!c.exists(MOVED_T).await);
    assert_eq!(c.hash(MOVED).await, levels(LEVELS));
    let pttl = c.pttl(MOVED).await;
    assert!((4_980_000..=5_000_000).contains(&pttl), "{pttl}");
    // Dropped: copied back with the TTL it had left; the target stays.
    assert_eq!(c.hash(EQUAL).await, levels(LEVELS));
    let pttl = c.pttl(EQUAL).await;
    assert!((2_980_000..=3_000_000).contains(&pttl), "{pttl}");
    assert_eq!(c.hash(EQUAL_T).await, levels(LEVELS));
}

#[tokio::test]
async fn a_rollback_killed_after_copying_a_key_back_is_finished_by_the_rerun() {
    let c = cluster().await;
    seed(&c).await;
    c.migrate().await;
    // What the cluster rollback leaves when killed right after its RESTORE
    // of the moved key: the legacy key back, the target still there.
    let payload: Vec<u8> = {
        let mut conn = c.conn.clone();
        redis::cmd("DUMP")
            .arg(MOVED_T)
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    let pttl = c.pttl(MOVED_T).await.to_string();
    let mut conn = c.conn.clone();
    redis::cmd("RESTORE")
        .arg(MOVED)
        .arg(&pttl)
        .arg(payload)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let report = c.rollback(false).await;
    assert_eq!(report.restored, 2, "{report:#?}");
    assert!(
        report.changed.is_empty() && report.skipped.is_empty(),
        "{report:#?}"
    );
    assert!(!c.exists(MOVED_T).await, "the moved key's target is gone");
    assert_eq!(c.hash(MOVED).await, levels(LEVELS));
    assert_eq!(c.hash(EQUAL).await, levels(LEVELS));
}

#[tokio::test]
async fn rollback_on_a_cluster_refuses_a_legacy_key_written_since_the_migration() {
    let c = cluster().await;
    seed(&c).await;
    c.migrate().await;
    c.hset(MOVED, &[("1", "1")]).await;
    let err = c.try_rollback(false).await.unwrap_err();
    assert!(err.to_string().contains("force"), "{err}");
    assert_eq!(c.hash(MOVED).await, levels(&[("1", "1")]), "untouched");
    assert!(c.exists(MOVED_T).await && !c.exists(EQUAL).await);
    // With --force the run's keys are put back over it.
    let forced = c.rollback(true).await;
    assert_eq!(forced.restored, 2, "{forced:#?}");
    assert_eq!(c.hash(MOVED).await, levels(LEVELS));
    assert!(!c.exists(MOVED_T).await);
}

#[tokio::test]
async fn a_stale_plan_on_a_cluster_writes_nothing() {
    let c = cluster().await;
    c.hset(MOVED, &[("1", "1")]).await;
    let store = c.store().await;
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = LEVELS
        .iter()
        .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    expected.sort();
    let digest = keyshift_engine::order_placed::plan::fields_digest(&expected);
    for kind in [WriteKind::Move, WriteKind::DropEqual] {
        let write = KeyWrite {
            legacy_key: MOVED.into(),
            target_key: MOVED_T.into(),
            kind,
            expected: expected.clone(),
            digest: digest.clone(),
        };
        let done = store.apply("keyshift:run:t:users", &[write]).await.unwrap();
        assert_eq!(done, [WriteOutcome::Changed]);
    }
    assert_eq!(c.hash(MOVED).await, levels(&[("1", "1")]));
    assert!(!c.exists(MOVED_T).await);
    assert!(!c.exists("keyshift:run:t:users").await);
}

/// Where a kill lands inside one key's move.
#[derive(Debug, Clone, Copy)]
enum KilledAfter {
    /// The target was created (RESTORE); no outcome yet.
    Copy,
    /// The target and the `moved` outcome were written; legacy still there.
    Outcome,
}

/// The cluster store, killed inside the first key's move: it leaves what
/// the real steps leave at that point, then fails the run.
struct KillMidMove {
    inner: AnyOrderPlaced,
    conn: RedisConn,
    after: KilledAfter,
}

impl OrderPlacedStore for KillMidMove {
    fn journal_conn(&self) -> &RedisConn {
        self.inner.journal_conn()
    }

    async fn rollback_keys(&self, journal_key: &str, keys: &[KeyRollback]) -> Result<Vec<String>> {
        self.inner.rollback_keys(journal_key, keys).await
    }
    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        self.inner.scan(cursor, pattern, count).await
    }
    async fn read_keys(&self, keys: &[String]) -> Result<Vec<KeyRead>> {
        self.inner.read_keys(keys).await
    }
    async fn apply(&self, outcomes_key: &str, writes: &[KeyWrite]) -> Result<Vec<WriteOutcome>> {
        let w = writes.iter().find(|w| w.kind == WriteKind::Move).unwrap();
        let mut c = self.conn.clone();
        let payload: Vec<u8> = redis::cmd("DUMP")
            .arg(&w.legacy_key)
            .query_async(&mut c)
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&w.legacy_key)
            .query_async(&mut c)
            .await
            .unwrap();
        redis::cmd("RESTORE")
            .arg(&w.target_key)
            .arg(pttl.max(0))
            .arg(payload)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
        if let KilledAfter::Outcome = self.after {
            let outcome = OrderPlacedOutcome::Moved {
                fields: w.expected.len(),
                digest: w.digest.clone(),
                pttl,
                at: chrono::Utc::now().timestamp_millis(),
            };
            let json = serde_json::to_string(&outcome).unwrap();
            redis::cmd("HSET")
                .arg(outcomes_key)
                .arg(&w.legacy_key)
                .arg(json)
                .query_async::<()>(&mut c)
                .await
                .unwrap();
        }
        Err(EngineError::Refused("killed mid-move (test)".into()))
    }
}

#[rstest::rstest]
#[case::after_the_outcome(KilledAfter::Outcome, "moved")]
#[case::after_the_copy(KilledAfter::Copy, "dropped_equal")]
#[tokio::test]
async fn a_run_killed_inside_a_move_is_finished_by_the_rerun_and_rolls_back(
    #[case] after: KilledAfter,
    #[case] recorded: &str,
) {
    let c = cluster().await;
    c.hset(MOVED, LEVELS).await;
    c.cmd::<i64>(&["PEXPIRE", MOVED, "5000000"]).await;
    let killed = KillMidMove {
        inner: c.store().await,
        conn: c.conn.clone(),
        after,
    };
    let err = c.migrate_on(&killed).await.unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
    assert!(c.exists(MOVED).await && c.exists(MOVED_T).await);

    let rerun = c.migrate().await;
    assert!(rerun.resumed, "{rerun:#?}");
    assert!(!rerun.needs_review(), "{rerun:#?}");
    assert!(!c.exists(MOVED).await, "legacy key gone after the rerun");
    assert_eq!(c.hash(MOVED_T).await, levels(LEVELS));
    assert!(c.pttl(MOVED_T).await > 4_900_000, "TTL kept");
    let run = c.run().await;
    let outcome = serde_json::to_value(c.outcome(&run, MOVED).await).unwrap();
    assert_eq!(outcome["state"], recorded);
    let verified = verify_order_placed(&c.conn, &run, &|_| {}).await.unwrap();
    let ids = |keep: fn(&&InvariantResult) -> bool| -> Vec<&str> {
        let kept = verified.invariants.iter().filter(keep);
        kept.map(|i| i.id.as_str()).collect()
    };
    assert_eq!(
        ids(|i| !i.passed && !i.is_not_run()),
        Vec::<&str>::new(),
        "{verified:#?}"
    );
    // A key dropped for its equal target carries no TTL over: the ttl
    // invariant has nothing to examine, and says so rather than pass.
    let not_run = if recorded == "dropped_equal" {
        vec!["ttl"]
    } else {
        vec![]
    };
    assert_eq!(ids(|i| i.is_not_run()), not_run, "{verified:#?}");

    // The rollback gets the legacy key back either way; a finished move
    // takes its target along, a copy the run could not claim stays.
    let back = c.rollback(false).await;
    assert_eq!(back.restored, 1, "{back:#?}");
    assert_eq!(c.hash(MOVED).await, levels(LEVELS));
    assert!(c.pttl(MOVED).await > 4_900_000);
    assert_eq!(c.exists(MOVED_T).await, matches!(after, KilledAfter::Copy));
}

#[tokio::test]
async fn cli_migrates_verifies_and_rolls_back_order_placed_on_a_cluster_url() {
    let c = cluster().await;
    seed(&c).await;
    let url = c._cluster.url();
    assert!(url.starts_with("redis+cluster://"), "{url}");
    let migrate = &[
        "migrate",
        "order-placed",
        "--redis",
        &url,
        "--force",
        "--json",
    ];
    let ran = run(keyshift(migrate)).await;
    // Exit 3: the differing target and the string are left for review.
    assert_eq!(ran.code, Some(3), "{ran}");
    let report = ran.json();
    assert_eq!(report["totals"]["keys_moved"], 1, "{ran}");
    assert_eq!(report["totals"]["keys_dropped_equal"], 1, "{ran}");
    let verify = run(keyshift(&["verify", "order-placed", "--redis", &url])).await;
    assert_eq!(verify.code, Some(0), "{verify}");
    let back = run(keyshift(&[
        "rollback",
        "order-placed",
        "--redis",
        &url,
        "--force",
    ]))
    .await;
    assert_eq!(back.code, Some(0), "{back}");
    assert_eq!(c.hash(MOVED).await, levels(LEVELS));
    assert_eq!(c.hash(EQUAL).await, levels(LEVELS));
    assert!(!c.exists(MOVED_T).await);
}
