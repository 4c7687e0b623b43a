//! Phase 2 (`grid-positions`) on a real disposable Redis, one test per rule
//! of DESIGN §2.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::grid_positions::store::{
    GridPositionsStore, PositionWrite, RunContext, UserWrite, WriteOutcome,
};
use keyshift_engine::grid_positions::verify::verify_grid_positions;
use keyshift_engine::keys::BACKUP_TTL_SECS;
use keyshift_engine::run::journal::is_journal_key;
use keyshift_harness::digest::{compare, digest};
use rstest::rstest;
use support::{failed_invariants, redis, redis_with, TestRedis};

type Hash = BTreeMap<String, String>;

async fn hash(r: &TestRedis, key: &str) -> Hash {
    r.cmd(&["HGETALL", key]).await
}

async fn members(r: &TestRedis, key: &str) -> BTreeSet<String> {
    r.cmd(&["SMEMBERS", key]).await
}

async fn position_keys(r: &TestRedis) -> Vec<String> {
    r.keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with("positions:"))
        .collect()
}

async fn backup_of(r: &TestRedis, legacy: &str) -> String {
    let backups: Vec<String> = r
        .keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with(&format!("{legacy}:backup:")))
        .collect();
    assert_eq!(
        backups.len(),
        1,
        "exactly one backup of {legacy}: {backups:?}"
    );
    backups[0].clone()
}

#[rstest]
#[case::long_short_mode_long(r#"{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"3"}"#, "long")]
#[case::long_short_mode_short_has_positive_pos(
    r#"{"instId":"BTC-USDT-SWAP","posSide":"short","pos":"3"}"#,
    "short"
)]
#[case::pos_side_in_upper_case(
    r#"{"instId":"BTC-USDT-SWAP","posSide":"SHORT","pos":"3"}"#,
    "short"
)]
#[case::pos_side_mixed_case(r#"{"instId":"BTC-USDT-SWAP","posSide":"Long","pos":"-3"}"#, "long")]
#[case::net_negative_is_short(
    r#"{"instId":"BTC-USDT-SWAP","posSide":"net","pos":"-0.5"}"#,
    "short"
)]
#[case::net_positive_is_long(r#"{"instId":"BTC-USDT-SWAP","posSide":"net","pos":"0.5"}"#, "long")]
#[case::missing_pos_side_negative_is_short(r#"{"instId":"BTC-USDT-SWAP","pos":"-2"}"#, "short")]
#[case::missing_pos_side_numeric_pos(r#"{"instId":"BTC-USDT-SWAP","pos":-2}"#, "short")]
#[case::net_zero_is_long(r#"{"instId":"BTC-USDT-SWAP","posSide":"net","pos":"0"}"#, "long")]
#[tokio::test]
async fn side_follows_the_design_rule(#[case] position: &str, #[case] side: &str) {
    let r = redis_with(&[("okx:positions:u1", format!("[{position}]"))]).await;
    let report = r.migrate().await;
    assert_eq!(report.totals.keys_migrated, 1);
    assert_eq!(
        position_keys(&r).await,
        vec![
            format!("positions:index:u1:okx"),
            format!("positions:u1:okx:BTC-USDT-SWAP:{side}")
        ]
    );
    assert_eq!(
        members(&r, "positions:index:u1:okx").await,
        BTreeSet::from([format!("BTC-USDT-SWAP:{side}")])
    );
}

#[tokio::test]
async fn every_field_is_kept_with_non_strings_as_compact_json() {
    let r = redis().await;
    let value = r#"[{"instType":"SWAP","instId":"ETH-USDT-SWAP","posSide":"net","pos":"-1.5","avgPx":"3120.4","closeOrderAlgo": [ ],"extra":{"b": 1,"a": 2},"flag":true,"ratio":3.5,"note":"a \"quoted\" é"}]"#;
    r.set("bybit:positions:42", value).await;
    r.migrate().await;
    let h = hash(&r, "positions:42:bybit:ETH-USDT-SWAP:short").await;
    let expect = [
        ("instType", "SWAP"),
        ("instId", "ETH-USDT-SWAP"),
        ("posSide", "net"),
        ("pos", "-1.5"),
        ("avgPx", "3120.4"),
        ("closeOrderAlgo", "[]"),
        ("extra", r#"{"b":1,"a":2}"#),
        ("flag", "true"),
        ("ratio", "3.5"),
        ("note", "a \"quoted\" é"),
        ("migrated_from", "bybit:positions:42"),
    ];
    for (f, v) in expect {
        assert_eq!(h.get(f).map(String::as_str), Some(v), "field {f}");
    }
    let at = chrono::DateTime::parse_from_rfc3339(&h["migrated_at"]).expect("RFC 3339");
    assert_eq!(at.offset().local_minus_utc(), 0, "UTC");
    assert!(h["migrated_at"].ends_with('Z'));
    assert_eq!(h.len(), expect.len() + 1, "no field added or lost: {h:?}");
}

#[tokio::test]
async fn closed_positions_migrate_by_default() {
    let r = redis_with(&[(
        "okx:positions:7",
        r#"[{"instId":"A","pos":"0"},{"instId":"B","pos":"1"}]"#,
    )])
    .await;
    let report = r.migrate().await;
    assert_eq!(report.totals.positions_migrated, 2);
    assert_eq!(report.totals.positions_skipped_closed, 0);
    assert!(!hash(&r, "positions:7:okx:A:long").await.is_empty());
}

#[tokio::test]
async fn skip_closed_skips_and_counts_them() {
    let r = redis_with(&[(
        "okx:positions:7",
        r#"[{"instId":"A","pos":"0"},{"instId":"B","pos":"1"},{"instId":"C","pos":"0.0"}]"#,
    )])
    .await;
    let report = r.migrate_with(|o| o.skip_closed = true).await;
    assert_eq!(report.totals.positions_found, 3);
    assert_eq!(report.totals.positions_migrated, 1);
    assert_eq!(report.totals.positions_skipped_closed, 2);
    assert_eq!(
        members(&r, "positions:index:7:okx").await,
        BTreeSet::from(["B:long".to_owned()])
    );
    // The backup keeps the skipped ones.
    let backup = backup_of(&r, "okx:positions:7").await;
    let kept: String = r.cmd(&["GET", &backup]).await;
    assert!(kept.contains(r#""instId":"A""#));
}

#[tokio::test]
async fn object_shaped_values_migrate_like_arrays() {
    let value = r#"{"BTC-USDT":{"instId":"BTC-USDT","pos":"-1"},"ETH-USDT":{"instId":"ETH-USDT","posSide":"long","pos":"2"}}"#;
    let r = redis_with(&[("binance:positions:9", value)]).await;
    let report = r.migrate().await;
    assert_eq!(report.totals.positions_migrated, 2);
    assert_eq!(
        members(&r, "positions:index:9:binance").await,
        BTreeSet::from(["BTC-USDT:short".to_owned(), "ETH-USDT:long".to_owned()])
    );
    assert_eq!(
        hash(&r, "positions:9:binance:ETH-USDT:long").await["pos"],
        "2"
    );
    assert_eq!(r.cmd::<i64>(&["EXISTS", "binance:positions:9"]).await, 0);
}

#[tokio::test]
async fn empty_array_leaves_only_a_backup() {
    let r = redis_with(&[("okx:positions:e", "[]")]).await;
    let report = r.migrate().await;
    assert_eq!(report.totals.keys_migrated, 1);
    assert!(position_keys(&r).await.is_empty());
    let backup = backup_of(&r, "okx:positions:e").await;
    assert_eq!(r.cmd::<String>(&["GET", &backup]).await, "[]");
    assert_eq!(r.cmd::<i64>(&["EXISTS", "okx:positions:e"]).await, 0);
}

#[rstest]
#[case::not_json(b"{not json".as_slice())]
#[case::not_utf8(b"\xff\xfe[]".as_slice())]
#[case::json_number(b"42".as_slice())]
#[case::json_string(b"\"[]\"".as_slice())]
#[case::position_not_an_object(b"[1, 2]".as_slice())]
#[case::position_without_inst_id(br#"[{"pos":"1"}]"#.as_slice())]
#[case::colliding_positions(br#"[{"instId":"A","pos":"1"},{"instId":"A","posSide":"long","pos":"2"}]"#.as_slice())]
#[case::duplicate_field(br#"[{"instId":"A","pos":"1","pos":"2"}]"#.as_slice())]
#[case::object_key_is_not_the_inst_id(br#"{"A":{"instId":"B","pos":"1"}}"#.as_slice())]
#[tokio::test]
async fn malformed_values_are_quarantined_and_untouched(#[case] value: &[u8]) {
    let r = redis().await;
    r.set_px("okx:positions:bad", value, 3_600_000).await;
    let report = r.migrate().await;
    assert!(report.needs_review(), "exit 3");
    assert_eq!(report.totals.keys_quarantined, 1);
    assert_eq!(report.quarantined[0].key, "okx:positions:bad");
    let after: Vec<u8> = r.cmd(&["GET", "okx:positions:bad"]).await;
    assert_eq!(after, value, "value untouched");
    assert!(
        r.cmd::<i64>(&["PTTL", "okx:positions:bad"]).await > 3_500_000,
        "TTL untouched"
    );
    let written: Vec<String> = r
        .keys()
        .await
        .into_iter()
        .filter(|k| !is_journal_key(k))
        .collect();
    assert_eq!(
        written,
        vec!["okx:positions:bad".to_owned()],
        "nothing else written"
    );
}

#[rstest]
#[case::hash(&["HSET", "okx:positions:h", "instId", "A"])]
#[case::list(&["RPUSH", "okx:positions:h", "[]"])]
#[case::set(&["SADD", "okx:positions:h", "[]"])]
#[tokio::test]
async fn wrong_redis_type_is_quarantined_and_untouched(#[case] create: &[&str]) {
    let r = redis().await;
    r.cmd::<i64>(create).await;
    let report = r.migrate().await;
    assert_eq!(report.totals.keys_quarantined, 1);
    assert_eq!(report.quarantined[0].reason, "not_a_string");
    assert_eq!(
        r.cmd::<String>(&["TYPE", "okx:positions:h"]).await,
        create[0]
            .replace("HSET", "hash")
            .replace("RPUSH", "list")
            .replace("SADD", "set")
    );
    assert!(position_keys(&r).await.is_empty());
}

#[tokio::test]
async fn backup_is_byte_identical_with_a_seven_day_ttl() {
    let r = redis().await;
    // Odd spacing and key order must survive byte for byte.
    let value = "[ {\"pos\" : \"1\", \"instId\":\"X\"} ]\n";
    r.set("upbit:positions:b", value).await;
    r.migrate().await;
    let backup = backup_of(&r, "upbit:positions:b").await;
    let stamp = backup.rsplit(':').next().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d_%H%M%S").is_ok(),
        "{stamp}"
    );
    assert_eq!(r.cmd::<String>(&["GET", &backup]).await, value);
    let ttl: i64 = r.cmd(&["TTL", &backup]).await;
    assert!(
        ttl > 0 && ttl <= BACKUP_TTL_SECS as i64 && ttl > BACKUP_TTL_SECS as i64 - 60,
        "{ttl}"
    );
}

#[tokio::test]
async fn legacy_ttl_carries_over_to_hashes_and_index() {
    let r = redis().await;
    r.set_px(
        "okx:positions:t",
        r#"[{"instId":"A","pos":"1"},{"instId":"B","pos":"-1"}]"#,
        5_000_000,
    )
    .await;
    r.set("okx:positions:p", r#"[{"instId":"A","pos":"1"}]"#)
        .await;
    r.migrate().await;
    for key in [
        "positions:t:okx:A:long",
        "positions:t:okx:B:short",
        "positions:index:t:okx",
    ] {
        let pttl: i64 = r.cmd(&["PTTL", key]).await;
        assert!((4_990_000..=5_000_000).contains(&pttl), "{key}: {pttl}");
    }
    for key in ["positions:p:okx:A:long", "positions:index:p:okx"] {
        assert_eq!(
            r.cmd::<i64>(&["PTTL", key]).await,
            -1,
            "{key} stays persistent"
        );
    }
}

#[tokio::test]
async fn existing_backups_are_never_migrated() {
    let r = redis().await;
    let old = "okx:positions:u:backup:20240101_000000";
    r.set_px(old, r#"[{"instId":"A","pos":"1"}]"#, 100_000_000)
        .await;
    let report = r.migrate().await;
    assert_eq!(report.totals.legacy_keys_found, 0);
    assert_eq!(
        r.keys()
            .await
            .into_iter()
            .filter(|k| !is_journal_key(k))
            .collect::<Vec<_>>(),
        vec![old.to_owned()]
    );
}

#[tokio::test]
async fn exchange_option_migrates_one_exchange_only() {
    let r = redis_with(&[
        ("okx:positions:1", r#"[{"instId":"A","pos":"1"}]"#),
        ("binance:positions:1", r#"[{"instId":"A","pos":"1"}]"#),
    ])
    .await;
    let report = r.migrate_with(|o| o.exchanges = vec!["okx".into()]).await;
    assert_eq!(report.totals.keys_migrated, 1);
    assert_eq!(r.cmd::<i64>(&["EXISTS", "okx:positions:1"]).await, 0);
    assert_eq!(r.cmd::<i64>(&["EXISTS", "binance:positions:1"]).await, 1);
    assert!(position_keys(&r)
        .await
        .iter()
        .all(|k| !k.contains("binance")));
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let r = redis_with(&[
        ("okx:positions:1", r#"[{"instId":"A","pos":"1"}]"#),
        ("okx:positions:2", "junk"),
    ])
    .await;
    r.set_px("bitget:positions:3", "[]", 9_000_000).await;
    let before = digest(&r.conn, |_| true).await.unwrap();
    let report = r.migrate_with(|o| o.dry_run = true).await;
    let after = digest(&r.conn, |_| true).await.unwrap();
    assert!(
        compare(&before, &after, 1_000).is_clean(),
        "dry run wrote something"
    );
    assert_eq!(before.len(), 3, "no journal either");
    // ... but it planned what a run would do.
    assert_eq!(report.totals.keys_migrated, 2);
    assert_eq!(report.totals.keys_quarantined, 1);
    assert!(report.run_id.is_none());
}

#[tokio::test]
async fn glob_characters_and_unicode_in_ids_stay_literal() {
    let r = redis().await;
    let uid = "u*[1]?\\é";
    r.set(
        &format!("okx:positions:{uid}"),
        r#"[{"instId":"BTC-€","pos":"1"}]"#,
    )
    .await;
    r.set("okx:positions:u1", r#"[{"instId":"A","pos":"1"}]"#)
        .await;
    let report = r.migrate_with(|o| o.exchanges = vec!["okx".into()]).await;
    assert_eq!(report.totals.keys_migrated, 2);
    assert_eq!(
        members(&r, &format!("positions:index:{uid}:okx")).await,
        BTreeSet::from(["BTC-€:long".to_owned()])
    );
    assert_eq!(
        members(&r, "positions:index:u1:okx").await,
        BTreeSet::from(["A:long".to_owned()])
    );
}

#[tokio::test]
async fn existing_target_is_a_conflict_and_nothing_is_written() {
    let r = redis_with(&[(
        "okx:positions:c",
        r#"[{"instId":"A","pos":"1"},{"instId":"B","pos":"1"}]"#,
    )])
    .await;
    r.cmd::<i64>(&["HSET", "positions:c:okx:B:long", "pos", "9"])
        .await;
    let report = r.migrate().await;
    assert!(report.needs_review());
    assert_eq!(report.totals.keys_conflicting, 1);
    assert!(report.conflicts[0]
        .detail
        .contains("positions:c:okx:B:long"));
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", "okx:positions:c"]).await,
        1,
        "legacy kept"
    );
    assert_eq!(
        hash(&r, "positions:c:okx:B:long").await,
        Hash::from([("pos".into(), "9".into())])
    );
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", "positions:c:okx:A:long"]).await,
        0,
        "nothing half-written"
    );
}

/// A writer that changes the legacy key after it was read must not lose its
/// update: the write is refused and the user is read again.
#[tokio::test]
async fn stale_plan_writes_nothing() {
    let r = redis_with(&[("okx:positions:w", r#"[{"instId":"A","pos":"2"}]"#)]).await;
    let store = r.store().await;
    let stale = UserWrite {
        legacy_key: "okx:positions:w".into(),
        expected: br#"[{"instId":"A","pos":"1"}]"#.to_vec(),
        backup_key: "okx:positions:w:backup:20260101_000000".into(),
        index_key: "positions:index:w:okx".into(),
        positions: vec![PositionWrite {
            key: "positions:w:okx:A:long".into(),
            member: "A:long".into(),
            fields: vec![("instId".into(), "A".into()), ("pos".into(), "1".into())],
        }],
        skipped_closed: 0,
    };
    let ctx = RunContext {
        run_id: "test".into(),
        outcomes_key: "keyshift:run:test:users".into(),
        migrated_at: "2026-01-01T00:00:00Z".into(),
        backup_ttl_secs: BACKUP_TTL_SECS,
    };
    let outcomes = store
        .migrate_users(&ctx, std::slice::from_ref(&stale))
        .await
        .unwrap();
    assert_eq!(outcomes, vec![WriteOutcome::Changed]);
    assert_eq!(r.keys().await, vec!["okx:positions:w".to_owned()]);
    // And the runner, reading afresh, migrates the writer's value.
    r.migrate().await;
    assert_eq!(hash(&r, "positions:w:okx:A:long").await["pos"], "2");
}

#[tokio::test]
async fn verify_passes_after_a_migration_and_catches_tampering() {
    let r = redis_with(&[(
        "okx:positions:v",
        r#"[{"instId":"A","pos":"1"},{"instId":"B","pos":"-1"}]"#,
    )])
    .await;
    r.set_px(
        "bybit:positions:v",
        r#"[{"instId":"C","posSide":"long","pos":"1"}]"#,
        7_200_000,
    )
    .await;
    r.migrate().await;
    let run = latest_run(&r.conn).await.unwrap();
    let ok = verify_grid_positions(&r.conn, &run, &|_| {}).await.unwrap();
    assert!(ok.passed(), "{ok:#?}");
    let ids: Vec<&str> = ok.invariants.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["counts", "index", "fields", "backup", "ttl"]);

    r.cmd::<i64>(&["HSET", "positions:v:okx:A:long", "pos", "5"])
        .await;
    r.cmd::<i64>(&["DEL", "positions:v:okx:B:short"]).await;
    r.cmd::<i64>(&["PERSIST", "positions:v:bybit:C:long"]).await;
    r.set("okx:positions:v", "[]").await;
    let bad = verify_grid_positions(&r.conn, &run, &|_| {}).await.unwrap();
    let failed: BTreeSet<&str> = failed_invariants(&bad);
    assert_eq!(
        failed,
        BTreeSet::from(["counts", "fields", "index", "ttl"]),
        "{bad:#?}"
    );
}

#[tokio::test]
async fn a_second_run_migrates_nothing() {
    let r = redis_with(&[
        ("okx:positions:i", r#"[{"instId":"A","pos":"1"}]"#),
        ("okx:positions:q", "junk"),
    ])
    .await;
    r.migrate().await;
    let keys = r.keys().await;
    let second = r.migrate().await;
    assert_eq!(second.totals.keys_migrated, 0);
    assert_eq!(second.totals.keys_quarantined, 1);
    let new: Vec<String> = r
        .keys()
        .await
        .into_iter()
        .filter(|k| !keys.contains(k) && !is_journal_key(k))
        .collect();
    assert!(new.is_empty(), "{new:?}");
}

/// HSET inside the script (the path of a server that refuses RESTORE)
/// must reach the same end state as the RESTORE path.
#[tokio::test]
async fn restore_path_and_hset_path_agree() {
    use keyshift_engine::grid_positions::runner::{migrate_grid_positions, MigrateOptions};
    use keyshift_harness::seed::{generate, load, GenConfig};

    let generated = generate(&GenConfig {
        users: 300,
        seed: 11,
        ..GenConfig::default()
    });
    let mut reports = Vec::new();
    for hset in [false, true] {
        let r = redis().await;
        load(&r.conn, &generated.keyspace).await.unwrap();
        let store = r.store().await;
        let store = if hset { store.without_restore() } else { store };
        let report =
            migrate_grid_positions(&store, &MigrateOptions::new(support::exchanges()), &|_| {})
                .await
                .unwrap();
        let run = latest_run(&r.conn).await.unwrap();
        let verified = verify_grid_positions(&r.conn, &run, &|_| {}).await.unwrap();
        assert!(verified.passed(), "hset={hset}: {verified:#?}");
        // Hashes carry each run's own migrated_at, so the runs compare by
        // key count, the verifier having checked every field.
        let stamp = format!(":backup:{}", run.stamp);
        let digest = digest(&r.conn, |k| !is_journal_key(k) && !k.ends_with(&stamp))
            .await
            .unwrap();
        reports.push((report.totals, digest.len()));
    }
    assert_eq!(reports[0], reports[1]);
    assert!(reports[0].0.keys_migrated > 250);
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Regression (issue 15): the journal kept no record of the value a
/// migration read, so a backup changed afterwards could not be told from
/// the original. Each outcome now names the SHA-256 of the bytes read:
/// whether the hashes went by RESTORE or by HSET.
#[rstest]
#[case::restore(false)]
#[case::hset(true)]
#[tokio::test]
async fn journal_records_the_digest_of_the_value_read(#[case] hset: bool) {
    use keyshift_engine::grid_positions::runner::{migrate_grid_positions, MigrateOptions};
    use keyshift_engine::run::journal::{outcomes_key, Outcome};

    let value = "[ {\"instId\":\"Ü-1\", \"pos\" : \"1\"} ]\n";
    let r = redis_with(&[("okx:positions:d", value), ("okx:positions:junk", "junk")]).await;
    r.cmd::<i64>(&["HSET", "okx:positions:h", "a", "1"]).await;
    let store = r.store().await;
    let store = if hset { store.without_restore() } else { store };
    migrate_grid_positions(&store, &MigrateOptions::new(support::exchanges()), &|_| {})
        .await
        .unwrap();
    let run = latest_run(&r.conn).await.unwrap();
    let journal: BTreeMap<String, String> = r.cmd(&["HGETALL", &outcomes_key(&run.run_id)]).await;
    let outcome = |key: &str| -> Outcome { serde_json::from_str(&journal[key]).unwrap() };

    let Outcome::Migrated { digest, .. } = outcome("okx:positions:d") else {
        panic!("not migrated: {journal:?}");
    };
    let backup: Vec<u8> = r
        .cmd(&["GET", &format!("okx:positions:d:backup:{}", run.stamp)])
        .await;
    assert_eq!(digest, sha256_hex(&backup));
    assert_eq!(digest, sha256_hex(value.as_bytes()));
    assert!(
        matches!(outcome("okx:positions:junk"), Outcome::Quarantined { digest: Some(d), .. } if d == sha256_hex(b"junk"))
    );
    assert!(matches!(
        outcome("okx:positions:h"),
        Outcome::Quarantined { digest: None, .. }
    ));
}

/// Regression (issue 15): a backup with one space appended still passed
/// the backup invariant, which looked only at its TTL.
#[tokio::test]
async fn verify_fails_a_backup_that_is_not_the_value_read() {
    let r = redis_with(&[("okx:positions:s", r#"[{"instId":"A","pos":"1"}]"#)]).await;
    r.migrate().await;
    let run = latest_run(&r.conn).await.unwrap();
    let backup = format!("okx:positions:s:backup:{}", run.stamp);
    r.cmd::<i64>(&["APPEND", &backup, " "]).await;
    let report = verify_grid_positions(&r.conn, &run, &|_| {}).await.unwrap();
    let failed: BTreeSet<&str> = failed_invariants(&report);
    assert_eq!(failed, BTreeSet::from(["backup"]), "{report:#?}");
    let backup_result = &report.invariants[3];
    assert!(
        backup_result.samples[0].contains("not byte-identical"),
        "{backup_result:#?}"
    );
}

/// A server that refuses RESTORE (here an ACL user without it) gets every
/// hash by HSET, the refused users included, and verify passes. (A user
/// whose second hash is refused is undone like one whose second hash
/// exists: `existing_target_is_a_conflict_and_nothing_is_written`.)
#[tokio::test]
async fn a_refused_restore_falls_back_to_hset() {
    use keyshift_engine::grid_positions::runner::{migrate_grid_positions, MigrateOptions};
    use keyshift_engine::grid_positions::store::standalone::StandaloneStore;

    let value = r#"[{"instId":"A","pos":"1"},{"instId":"B","pos":"-2"}]"#;
    let r = redis_with(&[("okx:positions:u1", value), ("okx:positions:u2", value)]).await;
    let _: () = r
        .cmd(&[
            "ACL",
            "SETUSER",
            "norestore",
            "on",
            ">pw",
            "~*",
            "+@all",
            "-restore",
        ])
        .await;
    let url = r.url().replacen("redis://", "redis://norestore:pw@", 1);
    let conn = keyshift_engine::grid_positions::store::standalone::connect(&url)
        .await
        .unwrap();
    let store = StandaloneStore::open(&url, conn).await.unwrap();
    let report =
        migrate_grid_positions(&store, &MigrateOptions::new(support::exchanges()), &|_| {})
            .await
            .unwrap();
    assert_eq!(report.totals.keys_migrated, 2);
    assert_eq!(report.totals.keys_conflicting, 0);
    let run = latest_run(&r.conn).await.unwrap();
    let verified = verify_grid_positions(&r.conn, &run, &|_| {}).await.unwrap();
    assert!(verified.passed(), "{verified:#?}");
    for user in ["u1", "u2"] {
        assert_eq!(
            hash(&r, &format!("positions:{user}:okx:B:short")).await["pos"],
            "-2"
        );
    }
}
