//! Phase 1 (`order-placed`) on a real disposable Redis, one test per rule
//! of DESIGN §2, and the binary's exit codes for it (DESIGN §6).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use assert_cmd::Command;
use keyshift_engine::order_placed::plan::fields_digest;
use keyshift_engine::order_placed::store::{KeyWrite, OrderPlacedStore, WriteKind, WriteOutcome};
use keyshift_engine::order_placed::verify::latest_run;
use keyshift_engine::order_placed::{
    migrate_order_placed, verify_order_placed, OrderPlacedOptions, OrderPlacedReport,
    StandaloneOrderPlaced,
};
use keyshift_engine::run::journal::is_journal_key;
use keyshift_harness::digest::{compare, digest, Digest};
use rstest::rstest;
use support::{exchanges, failed_invariants, redis, TestRedis};

type Hash = BTreeMap<String, String>;

const LEGACY: &str = "okx:user:42:symbol:BTC-USDT-SWAP:order_placed";
const TARGET: &str = "orders:okx:user:42:symbol:BTC-USDT-SWAP:order_placed";

async fn hset(r: &TestRedis, key: &str, pairs: &[(&str, &str)]) {
    let mut args = vec!["HSET", key];
    for (f, v) in pairs {
        args.extend([*f, *v]);
    }
    r.cmd::<i64>(&args).await;
}

async fn hash(r: &TestRedis, key: &str) -> Hash {
    r.cmd(&["HGETALL", key]).await
}

async fn exists(r: &TestRedis, key: &str) -> bool {
    r.cmd::<i64>(&["EXISTS", key]).await == 1
}

async fn migrate_with(
    r: &TestRedis,
    configure: impl FnOnce(&mut OrderPlacedOptions),
) -> OrderPlacedReport {
    let store = StandaloneOrderPlaced::open(r.conn.clone()).await.unwrap();
    let mut opts = OrderPlacedOptions::new(exchanges());
    configure(&mut opts);
    migrate_order_placed(&store, &opts, &|_| {}).await.unwrap()
}

async fn migrate(r: &TestRedis) -> OrderPlacedReport {
    migrate_with(r, |_| {}).await
}

/// Every key but the journal's (and the runner lock's).
async fn keyspace(r: &mut TestRedis) -> Digest {
    digest(&r.conn, |k| !is_journal_key(k)).await.unwrap()
}

fn assert_unchanged(before: &Digest, after: &Digest) {
    let diff = compare(before, after, 1_000);
    assert!(diff.is_clean(), "the keyspace changed: {diff:?}");
}

const LEVELS: &[(&str, &str)] = &[("1", "0"), ("2", "1"), ("3", "1"), ("10", "0")];

#[rstest]
#[case::without_ttl(None)]
#[case::with_ttl(Some(5_000_000))]
#[tokio::test]
async fn moves_keep_every_field_and_the_ttl(#[case] ttl_ms: Option<u64>) {
    let r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    if let Some(ms) = ttl_ms {
        r.cmd::<i64>(&["PEXPIRE", LEGACY, &ms.to_string()]).await;
    }
    let report = migrate(&r).await;
    assert_eq!(report.totals.keys_moved, 1, "{report:#?}");
    assert!(!report.needs_review());
    assert!(!exists(&r, LEGACY).await, "legacy key moved away");
    assert_eq!(r.cmd::<String>(&["TYPE", TARGET]).await, "hash");
    let want: Hash = LEVELS
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect();
    assert_eq!(hash(&r, TARGET).await, want, "every field, nothing added");
    let pttl: i64 = r.cmd(&["PTTL", TARGET]).await;
    match ttl_ms {
        None => assert_eq!(pttl, -1, "stays persistent"),
        Some(ms) => assert!((ms as i64 - 10_000..=ms as i64).contains(&pttl), "{pttl}"),
    }
    assert_eq!(report.samples[0].target, TARGET);
}

#[tokio::test]
async fn an_equal_target_drops_the_legacy_key_and_stays_as_it_was() {
    let mut r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    // Same pairs written in another order, with its own TTL.
    let reversed: Vec<(&str, &str)> = LEVELS.iter().rev().copied().collect();
    hset(&r, TARGET, &reversed).await;
    r.cmd::<i64>(&["PEXPIRE", TARGET, "9000000"]).await;
    let target_before = keyspace(&mut r).await.filtered(|k| k == TARGET);
    let report = migrate(&r).await;
    assert_eq!(report.totals.keys_dropped_equal, 1, "{report:#?}");
    assert!(!report.needs_review());
    assert!(!exists(&r, LEGACY).await, "legacy key dropped");
    assert_unchanged(&target_before, &keyspace(&mut r).await);
}

#[rstest]
#[case::other_value(&["HSET", TARGET, "1", "1", "2", "1", "3", "1", "10", "0"], "target_differs")]
#[case::extra_field(&["HSET", TARGET, "1", "0", "2", "1", "3", "1", "10", "0", "11", "1"], "target_differs")]
#[case::missing_field(&["HSET", TARGET, "1", "0"], "target_differs")]
#[case::not_a_hash(&["SET", TARGET, "x"], "target_not_a_hash")]
#[tokio::test]
async fn a_differing_target_is_a_conflict_and_nothing_changes(
    #[case] create_target: &[&str],
    #[case] reason: &str,
) {
    let mut r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    r.cmd::<i64>(&["PEXPIRE", LEGACY, "3600000"]).await;
    r.cmd::<redis::Value>(create_target).await;
    hset(&r, "bybit:user:7:symbol:ETH:order_placed", &[("1", "1")]).await;
    let before = keyspace(&mut r).await;
    let report = migrate_with(&r, |o| o.exchanges = vec!["okx".into()]).await;
    assert!(report.needs_review(), "exit 3");
    assert_eq!(report.totals.keys_conflicting, 1);
    let c = &report.conflicts[0];
    assert_eq!((c.key.as_str(), c.target.as_str()), (LEGACY, TARGET));
    assert_eq!(c.reason, reason);
    assert_unchanged(&before, &keyspace(&mut r).await);
}

#[rstest]
#[case::string(&["SET", LEGACY, "{\"1\":0}"], "string")]
#[case::list(&["RPUSH", LEGACY, "1"], "list")]
#[case::set(&["SADD", LEGACY, "1"], "set")]
#[case::zset(&["ZADD", LEGACY, "1", "a"], "zset")]
#[tokio::test]
async fn a_legacy_key_that_is_not_a_hash_is_quarantined_untouched(
    #[case] create: &[&str],
    #[case] redis_type: &str,
) {
    let mut r = redis().await;
    r.cmd::<redis::Value>(create).await;
    r.cmd::<i64>(&["PEXPIRE", LEGACY, "3600000"]).await;
    let before = keyspace(&mut r).await;
    let report = migrate(&r).await;
    assert!(report.needs_review(), "exit 3");
    assert_eq!(report.totals.keys_quarantined, 1);
    assert_eq!(report.quarantined[0].reason, "not_a_hash");
    assert!(report.quarantined[0].detail.contains(redis_type));
    assert_unchanged(&before, &keyspace(&mut r).await);
}

#[tokio::test]
async fn a_key_name_that_is_not_utf8_is_quarantined_untouched() {
    let mut r = redis().await;
    let key = b"okx:user:\xff:symbol:BTC:order_placed";
    let mut c = r.conn.clone();
    redis::cmd("HSET")
        .arg(key.as_slice())
        .arg("1")
        .arg("0")
        .query_async::<i64>(&mut c)
        .await
        .unwrap();
    let before = keyspace(&mut r).await;
    let report = migrate(&r).await;
    assert_eq!(report.totals.keys_quarantined, 1);
    assert_eq!(report.quarantined[0].reason, "key_not_utf8");
    assert_eq!(
        report.quarantined[0].key,
        r"okx:user:\xff:symbol:BTC:order_placed"
    );
    assert_unchanged(&before, &keyspace(&mut r).await);
}

#[tokio::test]
async fn dry_run_writes_nothing_and_plans_everything() {
    let r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    hset(&r, "binance:user:1:symbol:S:order_placed", &[("1", "0")]).await;
    hset(
        &r,
        "orders:binance:user:1:symbol:S:order_placed",
        &[("1", "0")],
    )
    .await;
    hset(&r, "bitget:user:1:symbol:S:order_placed", &[("1", "0")]).await;
    hset(
        &r,
        "orders:bitget:user:1:symbol:S:order_placed",
        &[("1", "1")],
    )
    .await;
    r.set("upbit:user:1:symbol:S:order_placed", "x").await;
    let before = digest(&r.conn, |_| true).await.unwrap();
    let report = migrate_with(&r, |o| o.dry_run = true).await;
    let after = digest(&r.conn, |_| true).await.unwrap();
    assert_unchanged(&before, &after);
    assert!(before.keys.keys().all(|k| !is_journal_key(k)), "no journal");
    assert!(report.run_id.is_none());
    let t = &report.totals;
    assert_eq!(
        (t.legacy_keys_found, t.keys_moved, t.keys_dropped_equal),
        (4, 1, 1)
    );
    assert_eq!((t.keys_conflicting, t.keys_quarantined), (1, 1));
    assert_eq!(report.per_exchange["okx"].keys_moved, 1);
    assert_eq!(report.samples.len(), 2);
    assert_eq!(
        report.conflicts[0].target,
        "orders:bitget:user:1:symbol:S:order_placed"
    );
}

#[tokio::test]
async fn exchange_option_moves_one_exchange_only() {
    let r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    hset(&r, "binance:user:42:symbol:BTC:order_placed", &[("1", "0")]).await;
    let report = migrate_with(&r, |o| o.exchanges = vec!["okx".into()]).await;
    assert_eq!(report.totals.keys_moved, 1);
    assert!(exists(&r, TARGET).await);
    assert!(exists(&r, "binance:user:42:symbol:BTC:order_placed").await);
    assert!(!exists(&r, "orders:binance:user:42:symbol:BTC:order_placed").await);
}

#[tokio::test]
async fn glob_characters_in_ids_stay_literal_and_neighbours_are_untouched() {
    let mut r = redis().await;
    let odd = "okx:user:u*[1]?\\é:symbol:BTC?USDT*:order_placed";
    hset(&r, odd, &[("5", "1")]).await;
    let neighbours = [
        "okx:user:u1:symbol:BTC:order_placed_index",
        "orders:okx:user:u9:symbol:BTC:order_placed",
        "okx:user:a:b:symbol:BTC:order_placed",
        "kraken:user:u1:symbol:BTC:order_placed",
    ];
    for k in neighbours {
        hset(&r, k, &[("1", "0")]).await;
    }
    let before = keyspace(&mut r).await.filtered(|k| neighbours.contains(&k));
    let report = migrate_with(&r, |o| o.exchanges = vec!["okx".into()]).await;
    assert_eq!(report.totals.keys_moved, 1, "{report:#?}");
    assert_eq!(
        hash(&r, &format!("orders:{odd}")).await,
        Hash::from([("5".into(), "1".into())])
    );
    let after = keyspace(&mut r)
        .await
        .filtered(|k| k != format!("orders:{odd}"));
    assert_unchanged(&before, &after);
}

/// A writer that changes the legacy hash after it was read must not lose
/// its update: the write is refused and the key is read again.
#[tokio::test]
async fn a_stale_plan_writes_nothing() {
    let r = redis().await;
    hset(&r, LEGACY, &[("1", "1")]).await;
    let store = StandaloneOrderPlaced::open(r.conn.clone()).await.unwrap();
    let expected = vec![(b"1".to_vec(), b"0".to_vec())];
    let stale = KeyWrite {
        legacy_key: LEGACY.into(),
        target_key: TARGET.into(),
        kind: WriteKind::Move,
        digest: fields_digest(&expected),
        expected,
    };
    let outcomes = store.apply("keyshift:run:t:users", &[stale]).await.unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Changed]);
    assert_eq!(r.keys().await, vec![LEGACY.to_owned()]);
    // A target that appeared since the read is never overwritten.
    hset(&r, TARGET, &[("9", "9")]).await;
    let expected = vec![(b"1".to_vec(), b"1".to_vec())];
    let late = KeyWrite {
        legacy_key: LEGACY.into(),
        target_key: TARGET.into(),
        kind: WriteKind::Move,
        digest: fields_digest(&expected),
        expected,
    };
    let outcomes = store.apply("keyshift:run:t:users", &[late]).await.unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Changed]);
    assert_eq!(
        hash(&r, TARGET).await,
        Hash::from([("9".into(), "9".into())])
    );
    r.cmd::<i64>(&["DEL", TARGET]).await;
    migrate(&r).await;
    assert_eq!(hash(&r, TARGET).await["1"], "1", "the writer's value moved");
}

#[tokio::test]
async fn a_second_run_moves_nothing() {
    let mut r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    r.set("okx:user:1:symbol:S:order_placed", "x").await;
    migrate(&r).await;
    let before = keyspace(&mut r).await;
    let second = migrate(&r).await;
    assert_eq!(second.totals.keys_moved, 0);
    assert_eq!(second.totals.keys_quarantined, 1);
    assert_unchanged(&before, &keyspace(&mut r).await);
}

#[tokio::test]
async fn verify_passes_after_migrate_and_catches_tampering() {
    let r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    hset(&r, "bybit:user:7:symbol:ETH:order_placed", &[("1", "1")]).await;
    r.cmd::<i64>(&["PEXPIRE", "bybit:user:7:symbol:ETH:order_placed", "7200000"])
        .await;
    hset(&r, "upbit:user:7:symbol:X:order_placed", &[("1", "1")]).await;
    hset(
        &r,
        "orders:upbit:user:7:symbol:X:order_placed",
        &[("1", "1")],
    )
    .await;
    hset(&r, "binance:user:7:symbol:C:order_placed", &[("1", "1")]).await;
    hset(
        &r,
        "orders:binance:user:7:symbol:C:order_placed",
        &[("1", "0")],
    )
    .await;
    migrate(&r).await;
    let run = latest_run(&r.conn).await.unwrap().expect("a recorded run");
    let ok = verify_order_placed(&r.conn, &run, &|_| {}).await.unwrap();
    assert!(ok.passed(), "{ok:#?}");
    let ids: Vec<&str> = ok.invariants.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["counts", "fields", "ttl"]);
    assert_eq!(ok.invariants[1].processed, 3, "two moved, one dropped");

    r.cmd::<i64>(&["HSET", TARGET, "2", "0"]).await;
    let bad = verify_order_placed(&r.conn, &run, &|_| {}).await.unwrap();
    let failed: Vec<&str> = failed_invariants(&bad);
    assert_eq!(failed, ["fields"], "{bad:#?}");

    r.cmd::<i64>(&["PERSIST", "orders:bybit:user:7:symbol:ETH:order_placed"])
        .await;
    hset(&r, LEGACY, &[("1", "0")]).await;
    let worse = verify_order_placed(&r.conn, &run, &|_| {}).await.unwrap();
    let failed: Vec<&str> = failed_invariants(&worse);
    assert_eq!(failed, ["counts", "fields", "ttl"], "{worse:#?}");
}

// --- the binary (DESIGN §6) ---

fn keyshift(args: &[&str]) -> Command {
    let mut cmd = Command::cargo_bin("keyshift").expect("the keyshift binary is built");
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(300));
    cmd
}

#[tokio::test]
async fn cli_migrate_and_verify_exit_0_when_everything_moves() {
    let r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    let url = r.url();
    let out = keyshift(&[
        "migrate",
        "order-placed",
        "--redis",
        &url,
        "--force",
        "--json",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["migration"], "order-placed");
    assert_eq!(report["totals"]["keys_moved"], 1);
    assert!(exists(&r, TARGET).await);
    keyshift(&["verify", "order-placed", "--redis", &url])
        .assert()
        .code(0)
        .stdout(predicates::str::contains("All invariants hold."));
    r.cmd::<i64>(&["HSET", TARGET, "1", "1"]).await;
    keyshift(&["verify", "order-placed", "--redis", &url])
        .assert()
        .code(1)
        .stdout(predicates::str::contains("FAIL fields"));
}

#[tokio::test]
async fn cli_exits_3_on_a_conflict_and_changes_nothing() {
    let mut r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    hset(&r, TARGET, &[("1", "1")]).await;
    let before = keyspace(&mut r).await;
    keyshift(&["migrate", "order-placed", "--redis", &r.url(), "--force"])
        .assert()
        .code(3)
        .stdout(predicates::str::contains(
            "Conflicts (neither key touched): 1",
        ));
    assert_unchanged(&before, &keyspace(&mut r).await);
}

#[tokio::test]
async fn cli_refuses_to_write_without_force_off_a_terminal() {
    let r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    let before = digest(&r.conn, |_| true).await.unwrap();
    keyshift(&["migrate", "order-placed", "--redis", &r.url()])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--force"));
    keyshift(&[
        "migrate",
        "order-placed",
        "--redis",
        &r.url(),
        "--skip-closed",
        "--force",
    ])
    .assert()
    .code(2);
    // A dry run needs no --force and prints the plan.
    keyshift(&["migrate", "order-placed", "--redis", &r.url(), "--dry-run"])
        .assert()
        .code(0)
        .stdout(predicates::str::contains(format!(
            "{LEGACY} -> {TARGET} (move)"
        )));
    assert_unchanged(&before, &digest(&r.conn, |_| true).await.unwrap());
}

/// Regression: `rollback order-placed` set a dropped key's TTL relative to
/// when it wrote (PEXPIRE of the TTL left at its read), so every moment
/// between the rollback's read and its write was added to the key's life.
/// The restored key must expire exactly when the legacy key would have.
#[tokio::test]
async fn rollback_restores_a_dropped_keys_expiry_exactly() {
    use keyshift_engine::order_placed::rollback::{find_runs, rollback_order_placed};
    use keyshift_engine::run::journal::{outcomes_key, OrderPlacedOutcome};
    use keyshift_engine::run::rollback::RollbackOptions;

    let r = redis().await;
    hset(&r, LEGACY, LEVELS).await;
    hset(&r, TARGET, LEVELS).await;
    r.cmd::<i64>(&["PEXPIRE", LEGACY, "600000"]).await;
    let legacy_expiry: i64 = r.cmd(&["PEXPIRETIME", LEGACY]).await;
    assert_eq!(migrate(&r).await.totals.keys_dropped_equal, 1);
    let run = find_runs(&r.conn, None).await.unwrap().remove(0);
    let json: String = r.cmd(&["HGET", &outcomes_key(&run.run_id), LEGACY]).await;
    let OrderPlacedOutcome::DroppedEqual { pttl, at, .. } = serde_json::from_str(&json).unwrap()
    else {
        panic!("not dropped: {json}");
    };
    let store = StandaloneOrderPlaced::open(r.conn.clone()).await.unwrap();
    let report = rollback_order_placed(&store, &r.conn, &run, &RollbackOptions::default())
        .await
        .unwrap();
    assert_eq!(report.restored, 1, "{report:?}");
    assert_eq!(hash(&r, LEGACY).await, hash(&r, TARGET).await);
    let restored_expiry: i64 = r.cmd(&["PEXPIRETIME", LEGACY]).await;
    assert_eq!(restored_expiry, at + pttl, "the journal's absolute expiry");
    // The journal dates the TTL to the millisecond; the key's own expiry
    // is the same instant, read with PTTL's millisecond rounding.
    assert!(
        (restored_expiry - legacy_expiry).abs() <= 1,
        "restored {restored_expiry}, legacy {legacy_expiry}"
    );
}
