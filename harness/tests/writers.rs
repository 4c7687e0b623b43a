//! Writers through a migration: no acknowledged write is lost, the check
//! that says so fails when one is, and a legacy writer that keeps writing
//! after a user's migration is reported by validate and verify.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keyshift_engine::api::{LegacyStore, LegacyWrite, PositionObject};
use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::grid_positions::plan::Side;
use keyshift_engine::grid_positions::runner::MigrationReport;
use keyshift_engine::grid_positions::verify::{verify_grid_positions_scoped, Scope};
use keyshift_engine::keys::LegacyPositionsKey;
use keyshift_harness::report::Status;
use keyshift_harness::seed::{self, generate, GenConfig};
use keyshift_harness::writers::{
    hot_pairs, legacy_keys, no_lost_writes, Action, History, HotPair, OpResult, Via, Writers,
    WritersConfig,
};
use support::cli::keyshift_on;
use support::{exchanges, redis, redis_with, TestRedis};

/// Long enough for any number of writes a test waits for.
const WAIT: Duration = Duration::from_secs(30);

/// A seeded keyspace of `users` users, loaded, and `hot` pairs of it.
async fn seeded(users: usize, seed: u64, hot: usize) -> (TestRedis, Vec<HotPair>) {
    let db = redis().await;
    let generated = generate(&GenConfig {
        users,
        seed,
        ..GenConfig::default()
    });
    let conn = db.conn.clone();
    seed::load(&conn, &generated.keyspace).await.unwrap();
    let pairs = hot_pairs(&generated.keyspace, &exchanges(), hot, seed);
    assert_eq!(pairs.len(), hot);
    (db, pairs)
}

fn config(seed: u64) -> WritersConfig {
    WritersConfig {
        tasks: 3,
        seed,
        pause: Duration::from_millis(1),
        ..WritersConfig::default()
    }
}

/// Writers on `pairs` (`config(seed)`) while Phase 2 runs: it starts once
/// `before` writes are acknowledged, and they stop 60 writes after it
/// ended. The run's report, when it ended, and what the writers did.
async fn write_through_a_migration(
    db: &TestRedis,
    pairs: Vec<HotPair>,
    seed: u64,
    before: usize,
) -> (MigrationReport, Instant, History) {
    let writers = Writers::start(&db.url(), pairs, &config(seed))
        .await
        .unwrap();
    assert!(writers.wait_acknowledged(before, WAIT).await);
    let report = db.migrate().await;
    let migrated_at = Instant::now();
    assert!(
        writers
            .wait_acknowledged(writers.acknowledged() + 60, WAIT)
            .await
    );
    (report, migrated_at, writers.stop().await)
}

async fn index_exists(db: &TestRedis, pair: &HotPair) -> bool {
    let index = LegacyPositionsKey::new(&pair.exchange, &pair.user_id).index_key();
    db.cmd::<bool>(&["EXISTS", &index]).await
}

#[tokio::test]
async fn no_acknowledged_write_lost_across_ten_seeds() {
    let (mut legacy_acks, mut new_layout_acks, mut strict_failures) = (0, 0, 0);
    for seed in 0..10u64 {
        let (db, pairs) = seeded(300, seed, 30).await;
        let (report, migrated_at, history) =
            write_through_a_migration(&db, pairs.clone(), seed, 60).await;
        let entry = no_lost_writes(&db.conn, &history).await;
        assert_eq!(entry.status, Status::Pass, "seed {seed}: {entry:#?}");
        assert!(entry.matching > 0, "seed {seed}: nothing compared");

        // Writes really landed in both layouts: the old one through the
        // guarded legacy path (it writes only unmigrated users), the new one
        // through dual-read after the migration, for users it moved.
        let mut migrated = BTreeSet::new();
        for p in &pairs {
            if index_exists(&db, p).await {
                migrated.insert(p.clone());
            }
        }
        let acks: Vec<_> = history.acknowledged().collect();
        legacy_acks += acks.iter().filter(|op| op.via == Via::Legacy).count();
        new_layout_acks += acks
            .iter()
            .filter(|op| {
                op.via == Via::DualRead && op.invoked > migrated_at && migrated.contains(&op.pair)
            })
            .count();
        assert!(
            history.ops.iter().all(|op| op.completed.is_some()),
            "seed {seed}: an op was left in flight after stop"
        );

        // verify with the writers' users left out passes; the rest is
        // verified as strictly as ever.
        let run = latest_run(&db.conn).await.unwrap();
        let scope = Scope {
            left_out: legacy_keys(&pairs),
        };
        let scoped = verify_grid_positions_scoped(&db.conn, &run, &scope, &|_| {})
            .await
            .unwrap();
        assert!(scoped.report.passed(), "seed {seed}: {:#?}", scoped.report);
        assert!(
            scoped.left_out > 0 && scoped.left_out <= pairs.len(),
            "seed {seed}: {} hot users left out",
            scoped.left_out
        );
        assert!(report.totals.keys_migrated > scoped.left_out, "seed {seed}");
        if strict_failures == 0 {
            // Once is enough to show the scope is needed (verify is slow
            // on a debug build).
            let strict = verify_grid_positions_scoped(&db.conn, &run, &Scope::default(), &|_| {})
                .await
                .unwrap();
            assert_eq!(strict.left_out, 0);
            strict_failures += usize::from(!strict.report.passed());
        }
    }
    assert!(
        legacy_acks > 0,
        "no write acknowledged in the legacy layout"
    );
    assert!(
        new_layout_acks > 0,
        "no write acknowledged in the new layout"
    );
    // Unscoped, verify sees what the writers changed: the scope is needed.
    assert!(
        strict_failures > 0,
        "the writers never changed a migrated user"
    );
}

#[tokio::test]
async fn a_write_lost_behind_the_writers_back_is_reported() {
    let (db, pairs) = seeded(200, 11, 12).await;
    let (_, _, history) = write_through_a_migration(&db, pairs, 11, 30).await;
    let entry = no_lost_writes(&db.conn, &history).await;
    assert_eq!(entry.status, Status::Pass, "{entry:#?}");

    // The last acknowledged upsert of a migrated position, overwritten
    // behind the writers' back: that write is lost.
    let mut victim = None;
    for op in history.ops.iter().rev() {
        let Action::Upsert { slot, .. } = &op.action else {
            continue;
        };
        let last_on_slot = history
            .ops
            .iter()
            .rfind(|o| o.pair == op.pair && o.action.slot() == slot)
            .is_some_and(|o| o.id == op.id);
        if op.result == OpResult::Acknowledged && last_on_slot && index_exists(&db, &op.pair).await
        {
            victim = Some(op);
            break;
        }
    }
    let op = victim.expect("an acknowledged upsert on a migrated user");
    let (inst_id, side) = op.action.slot();
    let key = LegacyPositionsKey::new(&op.pair.exchange, &op.pair.user_id)
        .position_key(&format!("{inst_id}:{}", side.as_str()));
    db.cmd::<()>(&["HSET", &key, "wseq", "clobbered"]).await;

    let entry = no_lost_writes(&db.conn, &history).await;
    assert_eq!(entry.status, Status::Fail, "{entry:#?}");
    let sample = entry.samples.join("\n");
    assert!(
        sample.contains(&format!("user {}", op.pair.user_id))
            && sample.contains(&format!("{inst_id}:{}", side.as_str()))
            && sample.contains(&format!("acknowledged {} upsert", op.id))
            && sample.contains(&format!("wseq={}", op.id))
            && sample.contains("found")
            && sample.contains("wseq=clobbered"),
        "{sample}"
    );
}

#[tokio::test]
async fn guarded_legacy_write_is_refused_once_the_user_has_migrated() {
    let db = redis_with(&[
        ("okx:positions:u1", r#"[{"instId":"A","pos":"1"}]"#),
        ("okx:positions:u2", "[]"),
    ])
    .await;
    let legacy = LegacyStore::new(db.conn.clone());
    let b = PositionObject::parse(r#"{"instId":"B","pos":"2"}"#).unwrap();
    assert_eq!(
        legacy.upsert_unmigrated("u1", "okx", &b).await.unwrap(),
        LegacyWrite::Done(true)
    );
    db.migrate().await;
    // Migrated: the legacy key is gone (an empty value migrates to nothing
    // at all, no index either), and it stays gone.
    for user in ["u1", "u2"] {
        assert_eq!(
            legacy.upsert_unmigrated(user, "okx", &b).await.unwrap(),
            LegacyWrite::Absent
        );
    }
    assert_eq!(
        legacy
            .remove_unmigrated("u1", "okx", "A", Side::Long)
            .await
            .unwrap(),
        LegacyWrite::Absent
    );
    let remaining: Vec<String> = db
        .keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with("okx:positions:u") && !k.contains(":backup:"))
        .collect();
    assert!(remaining.is_empty(), "{remaining:?}");
    let members: Vec<String> = db.cmd(&["SMEMBERS", "positions:index:u1:okx"]).await;
    assert_eq!(members.len(), 2, "the pre-migration write was carried over");
    // A legacy key back beside the index (someone wrote it unguarded) is
    // still not written: the user has moved.
    let stray = r#"[{"instId":"A","pos":"9"}]"#;
    db.set("okx:positions:u1", stray).await;
    assert_eq!(
        legacy.upsert_unmigrated("u1", "okx", &b).await.unwrap(),
        LegacyWrite::Moved
    );
    assert_eq!(db.cmd::<String>(&["GET", "okx:positions:u1"]).await, stray);
}

#[tokio::test]
async fn rogue_legacy_writer_is_reported_as_reappeared() {
    let (db, pairs) = seeded(200, 5, 8).await;
    let cfg = WritersConfig {
        legacy_share: 1.0,
        rogue: true,
        ..config(5)
    };
    let writers = Writers::start(&db.url(), pairs.clone(), &cfg)
        .await
        .unwrap();
    assert!(writers.wait_acknowledged(20, WAIT).await);
    db.migrate().await;
    // Wait until the rogue writer has brought a migrated user's legacy key back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reappeared = None;
    while reappeared.is_none() && Instant::now() < deadline {
        for p in &pairs {
            let legacy = LegacyPositionsKey::new(&p.exchange, &p.user_id).key();
            if index_exists(&db, p).await && db.cmd::<bool>(&["EXISTS", &legacy]).await {
                reappeared = Some(legacy);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let history = writers.stop().await;
    let key = reappeared.expect("a legacy key back beside its index");
    assert!(history.acknowledged().all(|op| op.via == Via::RogueLegacy));

    let validate = keyshift_on(&db, &["validate"]).await;
    assert_eq!(validate.code, Some(1), "{validate}");
    assert!(
        validate.stdout.contains("Reappeared after migration"),
        "{validate}"
    );
    // Exactly the writers' keys are reported, every one of them.
    let json = keyshift_on(&db, &["validate", "--json"]).await.json();
    let hot = legacy_keys(&pairs);
    let samples: Vec<&str> = json["reappeared"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        samples.contains(&key.as_str()) || samples.len() == 5,
        "{json}"
    );
    assert!(samples.iter().all(|s| hot.contains(*s)), "{json}");
    assert!(json["reappeared"]["count"].as_u64().unwrap() >= 1, "{json}");

    let verify = keyshift_on(&db, &["verify", "grid-positions"]).await;
    assert_eq!(verify.code, Some(1), "{verify}");
    assert!(
        verify.stdout.contains("FAIL counts")
            && verify
                .stdout
                .contains("legacy key reappeared after its migration"),
        "{verify}"
    );
    // And the writes it made there are invisible to the application.
    let entry = no_lost_writes(&db.conn, &history).await;
    assert_eq!(entry.status, Status::Fail, "{entry:#?}");
}
