//! Rollback, status and cleanup-migration of Phase 2 on a real disposable
//! Redis, through the binary as operators run them.

mod support;

use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::run::journal::{is_journal_key, run_key, runs_key, runs_of, RunState};
use keyshift_harness::digest::{compare, digest, Digest};
use keyshift_harness::seed::{generate, load, GenConfig};
use support::cli::keyshift_on;
use support::{redis, redis_with, TestRedis};

async fn non_journal_digest(r: &mut TestRedis, stamp: Option<&str>) -> Digest {
    let suffix = stamp.map(|s| format!(":backup:{s}"));
    digest(&r.conn, |k| {
        !is_journal_key(k) && !suffix.as_deref().is_some_and(|s| k.ends_with(s))
    })
    .await
    .unwrap()
}

async fn stamp(r: &TestRedis) -> String {
    latest_run(&r.conn).await.unwrap().stamp
}

#[tokio::test]
async fn rollback_restores_the_pre_migration_keyspace() {
    let mut r = redis().await;
    let generated = generate(&GenConfig {
        users: 400,
        seed: 5,
        ..GenConfig::default()
    });
    load(&r.conn, &generated.keyspace).await.unwrap();
    let started = std::time::Instant::now();
    let before = non_journal_digest(&mut r, None).await;

    assert!(matches!(
        keyshift_on(&r, &["migrate", "grid-positions", "--force"])
            .await
            .code,
        Some(0 | 3)
    ));
    let ran = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains("restored"), "{ran}");

    let stamp = stamp(&r).await;
    let after = non_journal_digest(&mut r, Some(&stamp)).await;
    // TTLs tick down meanwhile; everything else must be identical.
    let diff = compare(
        &before,
        &after,
        started.elapsed().as_millis() as i64 + 1_000,
    );
    assert!(diff.is_clean(), "{diff:#?}");
    assert!(before.len() > 400);
    let run = latest_run(&r.conn).await.unwrap();
    assert_eq!(run.state, RunState::RolledBack);
}

#[tokio::test]
async fn rollback_restores_ttl() {
    let r = redis().await;
    r.set_px(
        "okx:positions:t",
        r#"[{"instId":"A","pos":"1"}]"#,
        5_000_000,
    )
    .await;
    r.set("okx:positions:p", r#"[{"instId":"A","pos":"1"}]"#)
        .await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    let ran = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let pttl: i64 = r.cmd(&["PTTL", "okx:positions:t"]).await;
    assert!((4_990_000..=5_000_000).contains(&pttl), "{pttl}");
    assert_eq!(r.cmd::<i64>(&["PTTL", "okx:positions:p"]).await, -1);
    let keys: Vec<String> = r
        .keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with("positions:"))
        .collect();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn rollback_refuses_to_lose_data_changed_since_and_force_overrides() {
    let r = redis_with(&[
        (
            "okx:positions:1",
            r#"[{"instId":"A","pos":"1"},{"instId":"B","pos":"-1"}]"#,
        ),
        ("okx:positions:2", r#"[{"instId":"C","pos":"1"}]"#),
    ])
    .await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    // The application kept writing the new structure.
    r.cmd::<i64>(&["HSET", "positions:1:okx:A:long", "pos", "7"])
        .await;
    r.cmd::<i64>(&["SADD", "positions:index:2:okx", "D:long"])
        .await;
    r.cmd::<i64>(&["HSET", "positions:2:okx:D:long", "instId", "D", "pos", "1"])
        .await;
    let keys_before = r.keys().await;

    let dry = keyshift_on(&r, &["rollback", "grid-positions", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{dry}");
    assert!(dry.stdout.contains("positions:1:okx:A:long"), "{dry}");
    assert!(dry.stdout.contains("D:long"), "{dry}");

    // Not on a terminal and no --force: refused, nothing written.
    let refused = keyshift_on(&r, &["rollback", "grid-positions"]).await;
    assert_eq!(refused.code, Some(2), "{refused}");
    assert_eq!(r.keys().await, keys_before, "nothing written");

    let forced = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(forced.code, Some(0), "{forced}");
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", "okx:positions:1", "okx:positions:2"])
            .await,
        2
    );
    // Exactly the run's keys went: the application's own position stays.
    assert_eq!(
        r.cmd::<i64>(&[
            "EXISTS",
            "positions:1:okx:A:long",
            "positions:1:okx:B:short",
            "positions:2:okx:C:long"
        ])
        .await,
        0
    );
    assert_eq!(r.cmd::<i64>(&["EXISTS", "positions:2:okx:D:long"]).await, 1);
    let left: Vec<String> = r.cmd(&["SMEMBERS", "positions:index:2:okx"]).await;
    assert_eq!(left, vec!["D:long".to_owned()]);
}

#[tokio::test]
async fn rollback_without_changes_still_needs_force_off_a_terminal() {
    let r = redis_with(&[("okx:positions:1", r#"[{"instId":"A","pos":"1"}]"#)]).await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    let ran = keyshift_on(&r, &["rollback", "grid-positions"]).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("--force"), "{ran}");
    assert_eq!(r.cmd::<i64>(&["EXISTS", "okx:positions:1"]).await, 0);
}

#[tokio::test]
async fn rollback_refuses_over_a_rewritten_legacy_key() {
    let r = redis_with(&[("okx:positions:1", r#"[{"instId":"A","pos":"1"}]"#)]).await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    r.set("okx:positions:1", r#"[{"instId":"A","pos":"9"}]"#)
        .await;
    let ran = keyshift_on(&r, &["rollback", "grid-positions", "--dry-run"]).await;
    assert!(ran.stdout.contains("legacy_rewritten"), "{ran}");
}

#[tokio::test]
async fn a_rolled_back_run_is_not_rolled_back_twice_and_stamps_pick_runs() {
    let r = redis_with(&[("okx:positions:1", r#"[{"instId":"A","pos":"1"}]"#)]).await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    let first = stamp(&r).await;
    keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    let again = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(again.code, Some(2), "{again}");
    assert!(again.stderr.contains("already rolled back"), "{again}");

    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    let second = stamp(&r).await;
    assert_ne!(first, second, "a new run gets a new backup stamp");
    let old = keyshift_on(
        &r,
        &[
            "rollback",
            "grid-positions",
            "--backup-stamp",
            &first,
            "--force",
        ],
    )
    .await;
    assert_eq!(old.code, Some(2), "{old}");
    let unknown = keyshift_on(
        &r,
        &[
            "rollback",
            "grid-positions",
            "--backup-stamp",
            "20000101_000000",
            "--force",
        ],
    )
    .await;
    assert_eq!(unknown.code, Some(2), "{unknown}");
    let latest = keyshift_on(
        &r,
        &[
            "rollback",
            "grid-positions",
            "--backup-stamp",
            &second,
            "--force",
        ],
    )
    .await;
    assert_eq!(latest.code, Some(0), "{latest}");
    assert_eq!(
        r.cmd::<String>(&["GET", "okx:positions:1"]).await,
        r#"[{"instId":"A","pos":"1"}]"#
    );

    let status = keyshift_on(&r, &["status", "--json"]).await;
    assert_eq!(status.code, Some(0), "{status}");
    let runs = status.json()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter().all(|run| run["state"] == "rolled_back"),
        "{status}"
    );
    assert!(status.json()["lock"].is_null());
}

async fn position_keys(r: &TestRedis) -> Vec<String> {
    let mut keys = r.keys().await;
    keys.retain(|k| k.starts_with("positions:"));
    keys
}

/// Regression (issue 15): a second `migrate` that found nothing left
/// recorded an empty run, and `rollback` picked that one ("users 0"),
/// leaving every user of the first run migrated.
#[tokio::test]
async fn rollback_does_not_pick_an_empty_newest_run() {
    let value = r#"[{"instId":"A","pos":"1"}]"#;
    let r = redis_with(&[("okx:positions:1", value), ("okx:positions:2", value)]).await;
    let first = keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(first.code, Some(0), "{first}");
    let second = keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(second.code, Some(0), "{second}");
    let runs = runs_of(&r.conn, "grid-positions").await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (real, empty) = (&runs[0].run_id, &runs[1].run_id);

    let dry = keyshift_on(&r, &["rollback", "grid-positions", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{dry}");
    assert!(dry.stdout.contains(real.as_str()), "{dry}");
    assert!(!dry.stdout.contains(empty.as_str()), "{dry}");
    assert!(dry.stdout.contains("users 2: would restore 2"), "{dry}");

    let ran = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    for key in ["okx:positions:1", "okx:positions:2"] {
        assert_eq!(r.cmd::<String>(&["GET", key]).await, value, "{key}");
    }
    assert_eq!(position_keys(&r).await, Vec::<String>::new());
    let runs = runs_of(&r.conn, "grid-positions").await.unwrap();
    assert_eq!(runs[0].state, RunState::RolledBack);
    assert_eq!(runs[1].state, RunState::Done, "the empty run is left alone");

    let again = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(again.code, Some(2), "{again}");
    assert!(again.stderr.contains("already rolled back"), "{again}");
}

/// The same for Phase 1: an empty newest run never hides the one that
/// moved the keys.
#[tokio::test]
async fn rollback_order_placed_does_not_pick_an_empty_newest_run() {
    let r = redis().await;
    let legacy = "okx:user:7:symbol:BTC-USDT:order_placed";
    r.cmd::<i64>(&["HSET", legacy, "1", "1"]).await;
    for _ in 0..2 {
        let ran = keyshift_on(&r, &["migrate", "order-placed", "--force"]).await;
        assert_eq!(ran.code, Some(0), "{ran}");
    }
    let ran = keyshift_on(&r, &["rollback", "order-placed", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains("users 1: restored 1"), "{ran}");
    assert_eq!(r.cmd::<String>(&["HGET", legacy, "1"]).await, "1");
}

/// Two runs that each migrated users (a writer still on the old layout
/// made a legacy key after the first): rollback undoes both, newest first.
#[tokio::test]
async fn rollback_undoes_every_run_that_migrated_newest_first() {
    let value = r#"[{"instId":"A","pos":"1"}]"#;
    let r = redis_with(&[("okx:positions:1", value)]).await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    r.set("okx:positions:2", value).await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    let runs = runs_of(&r.conn, "grid-positions").await.unwrap();
    assert_eq!(runs.len(), 2);

    let ran = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let newest_first = format!(
        "rolled back 2 runs, newest first: {}, {}",
        runs[1].run_id, runs[0].run_id
    );
    assert!(ran.stdout.contains(&newest_first), "{ran}");
    for key in ["okx:positions:1", "okx:positions:2"] {
        assert_eq!(r.cmd::<String>(&["GET", key]).await, value, "{key}");
    }
    assert_eq!(position_keys(&r).await, Vec::<String>::new());
    let runs = runs_of(&r.conn, "grid-positions").await.unwrap();
    assert!(runs.iter().all(|run| run.state == RunState::RolledBack));
}

/// A change since the older of two runs refuses the whole rollback (the
/// operator confirmed, but did not force it) before the newer run is
/// undone: nothing is left half rolled back.
#[tokio::test]
async fn a_rollback_of_several_runs_refuses_before_writing_anything() {
    use keyshift_engine::grid_positions::rollback::{
        find_runs, rollback_grid_positions_runs, RollbackOptions,
    };
    use keyshift_engine::EngineError;

    let value = r#"[{"instId":"A","pos":"1"}]"#;
    let r = redis_with(&[("okx:positions:1", value)]).await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    r.set("okx:positions:2", value).await;
    keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    r.cmd::<i64>(&["HSET", "positions:1:okx:A:long", "pos", "7"])
        .await;
    let keys_before = r.keys().await;

    let dry = keyshift_on(&r, &["rollback", "grid-positions", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{dry}");
    assert!(dry.stdout.contains("would roll back 2 runs"), "{dry}");
    assert!(dry.stdout.contains("positions:1:okx:A:long"), "{dry}");

    let runs = find_runs(&r.conn, None).await.unwrap();
    assert_eq!(runs.len(), 2);
    let store = r.store().await;
    let refused = rollback_grid_positions_runs(&store, &r.conn, &runs, &RollbackOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(refused, EngineError::Refused(_)), "{refused}");
    assert!(refused.to_string().contains(&runs[1].run_id), "{refused}");
    assert_eq!(r.keys().await, keys_before, "nothing written");
}

/// An interrupted run as a crash on a cluster could leave it: a hash and a
/// backup written for a user whose legacy key is still there and whose
/// outcome was never recorded.
#[tokio::test]
async fn cleanup_migration_removes_exactly_the_debris() {
    let r = redis_with(&[
        ("okx:positions:1", r#"[{"instId":"A","pos":"1"}]"#),
        ("okx:positions:2", r#"[{"instId":"B","pos":"1"}]"#),
    ])
    .await;
    keyshift_on(
        &r,
        &["migrate", "grid-positions", "--force", "--exchange", "okx"],
    )
    .await;
    let run = latest_run(&r.conn).await.unwrap();
    // Mark the run interrupted and leave debris for a third user.
    let mut record = run.clone();
    record.state = RunState::Running;
    r.set(
        &run_key(&run.run_id),
        serde_json::to_string(&record).unwrap(),
    )
    .await;
    r.set("okx:positions:3", r#"[{"instId":"C","pos":"1"}]"#)
        .await;
    r.cmd::<i64>(&[
        "HSET",
        "positions:3:okx:C:long",
        "instId",
        "C",
        "pos",
        "1",
        "migrated_at",
        &run.started_at,
        "migrated_from",
        "okx:positions:3",
    ])
    .await;
    r.cmd::<i64>(&["SADD", "positions:index:3:okx", "C:long"])
        .await;
    r.set(
        &format!("okx:positions:3:backup:{}", run.stamp),
        r#"[{"instId":"C","pos":"1"}]"#,
    )
    .await;
    // Not debris: the application's own hash (no migrated_from of ours).
    r.cmd::<i64>(&["HSET", "positions:3:okx:D:long", "instId", "D"])
        .await;
    r.cmd::<i64>(&["SADD", "positions:index:3:okx", "D:long"])
        .await;

    let dry = keyshift_on(&r, &["cleanup-migration", "grid-positions", "--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{dry}");
    assert!(dry.stdout.contains("positions:3:okx:C:long"), "{dry}");
    assert!(!dry.stdout.contains("positions:3:okx:D:long"), "{dry}");
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", "positions:3:okx:C:long"]).await,
        1,
        "dry run deletes nothing"
    );

    let refused = keyshift_on(&r, &["cleanup-migration", "grid-positions"]).await;
    assert_eq!(refused.code, Some(2), "{refused}");

    let ran = keyshift_on(&r, &["cleanup-migration", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(r.cmd::<i64>(&["EXISTS", "positions:3:okx:C:long"]).await, 0);
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", &format!("okx:positions:3:backup:{}", run.stamp)])
            .await,
        0
    );
    assert_eq!(
        r.cmd::<Vec<String>>(&["SMEMBERS", "positions:index:3:okx"])
            .await,
        vec!["D:long".to_owned()]
    );
    assert_eq!(
        r.cmd::<i64>(&[
            "EXISTS",
            "positions:3:okx:D:long",
            "okx:positions:3",
            "positions:1:okx:A:long",
            "positions:2:okx:B:long"
        ])
        .await,
        4
    );
    assert_eq!(
        r.cmd::<i64>(&["ZCARD", &runs_key("grid-positions")]).await,
        1
    );
}

#[tokio::test]
async fn rollback_order_placed_renames_back_and_restores_dropped_keys() {
    let mut r = redis().await;
    let moved = "okx:user:7:symbol:BTC-USDT:order_placed";
    let dropped = "bybit:user:7:symbol:ETH-USDT:order_placed";
    r.cmd::<i64>(&["HSET", moved, "1", "1", "2", "0"]).await;
    r.cmd::<i64>(&["PEXPIRE", moved, "5000000"]).await;
    r.cmd::<i64>(&["HSET", dropped, "1", "0"]).await;
    r.cmd::<i64>(&[
        "HSET",
        "orders:bybit:user:7:symbol:ETH-USDT:order_placed",
        "1",
        "0",
    ])
    .await;
    let started = std::time::Instant::now();
    let before = non_journal_digest(&mut r, None).await;

    let ran = keyshift_on(&r, &["migrate", "order-placed", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(r.cmd::<i64>(&["EXISTS", moved, dropped]).await, 0);

    let ran = keyshift_on(&r, &["rollback", "order-placed", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let after = non_journal_digest(&mut r, None).await;
    let diff = compare(
        &before,
        &after,
        started.elapsed().as_millis() as i64 + 1_000,
    );
    assert!(diff.is_clean(), "{diff:#?}");
    let again = keyshift_on(&r, &["rollback", "order-placed", "--force"]).await;
    assert_eq!(again.code, Some(2), "{again}");
}

#[tokio::test]
async fn rollback_order_placed_refuses_over_a_changed_target() {
    let r = redis().await;
    let legacy = "okx:user:8:symbol:BTC-USDT:order_placed";
    let target = "orders:okx:user:8:symbol:BTC-USDT:order_placed";
    r.cmd::<i64>(&["HSET", legacy, "1", "1"]).await;
    keyshift_on(&r, &["migrate", "order-placed", "--force"]).await;
    r.cmd::<i64>(&["HSET", target, "2", "1"]).await;
    let dry = keyshift_on(&r, &["rollback", "order-placed", "--dry-run"]).await;
    assert!(dry.stdout.contains("target_changed"), "{dry}");
    let refused = keyshift_on(&r, &["rollback", "order-placed"]).await;
    assert_eq!(refused.code, Some(2), "{refused}");
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", legacy]).await,
        0,
        "nothing written"
    );
    let forced = keyshift_on(&r, &["rollback", "order-placed", "--force"]).await;
    assert_eq!(forced.code, Some(0), "{forced}");
    // The change made since travels back with the hash: nothing is lost.
    assert_eq!(r.cmd::<String>(&["HGET", legacy, "2"]).await, "1");
    assert_eq!(r.cmd::<i64>(&["EXISTS", target]).await, 0);
}
