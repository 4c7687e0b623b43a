//! `keyshift validate` on a real disposable Redis: its counts per pattern
//! equal what the generator and the fixtures wrote, and its exit code and
//! `--json` shape are what scripts rely on (DESIGN §6).

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use keyshift_engine::keys::schema::Schema;
use keyshift_engine::validate::{validate, ValidateOptions};
use keyshift_harness::seed::{self, generate, load_fixture_dir, GenConfig};
use support::cli::{keyshift, keyshift_on, run};
use support::redis;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");

/// Every fixture key and the pattern it belongs to, written by hand from
/// DESIGN §1 (not by any classifier); `None` is unknown.
const FIXTURE_KEYS: &[(&str, Option<&str>)] = &[
    ("okx:positions:fx-closed-1", Some("grid_positions.legacy")),
    ("upbit:positions:fx-closed-2", Some("grid_positions.legacy")),
    ("okx:positions:fx-empty-1", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-1", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-2", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-3", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-4", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-5", Some("grid_positions.legacy")), // a hash
    ("okx:positions:fx-bad-6", Some("grid_positions.legacy")), // a list
    ("binance:positions:fx-bad-7", Some("grid_positions.legacy")),
    ("bitget:positions:fx-bad-8", Some("grid_positions.legacy")),
    ("bybit:positions:fx-bad-9", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-10", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-11", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-12", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-13", Some("grid_positions.legacy")),
    ("okx:positions:fx-bad-14", Some("grid_positions.legacy")),
    ("okx:user:fx-nb-1", None),
    (
        "okx:positions:fx-nb-1:backup:20250101_000000",
        Some("grid_positions.backup"),
    ),
    ("okx:positions:fx-nb-2", Some("grid_positions.legacy")),
    (
        "okx:positions:fx-nb-2:backup:20250101_000000",
        Some("grid_positions.backup"),
    ),
    ("okx:positions:fx-nb-3:meta", None),
    ("okx:positions:fx-nb-6:backup:latest", None),
    ("kraken:positions:fx-nb-4", None),
    ("bybit:user:fx-nb-5", None),
    ("session:fx-nb-1", None),
    ("notifications:fx-nb-1", None),
    ("grid:active_users:fixtures", None),
    ("leaderboard:pnl:fixtures", None),
    ("okx:positions:fx-obj-1", Some("grid_positions.legacy")),
    ("binance:positions:fx-obj-2", Some("grid_positions.legacy")),
    ("okx:positions:fx-okx-ls-1", Some("grid_positions.legacy")),
    ("bybit:positions:fx-okx-ls-2", Some("grid_positions.legacy")),
    ("okx:positions:fx-okx-net-1", Some("grid_positions.legacy")),
    (
        "bitget:positions:fx-okx-net-2",
        Some("grid_positions.legacy"),
    ),
    (
        "okx:user:fx-op-1:symbol:BTC-USDT-SWAP:order_placed",
        Some("order_placed.legacy"),
    ),
    (
        "binance:user:fx-op-2:symbol:ETH-USDT-SWAP:order_placed",
        Some("order_placed.legacy"),
    ),
    (
        "orders:binance:user:fx-op-2:symbol:ETH-USDT-SWAP:order_placed",
        Some("order_placed.standard"),
    ),
    (
        "okx:user:fx-op-3:symbol:SOL-USDT-SWAP:order_placed",
        Some("order_placed.legacy"),
    ),
    (
        "orders:okx:user:fx-op-3:symbol:SOL-USDT-SWAP:order_placed",
        Some("order_placed.standard"),
    ),
    (
        "position:fx-op-1:BTC-USDT-SWAP",
        Some("position_cache.legacy"),
    ),
    (
        "user:fx-op-1:position:BTC-USDT-SWAP:long",
        Some("position_cache.legacy_user"),
    ),
];

/// Fixture keys holding another type than their pattern's.
const FIXTURE_WRONG_TYPE: u64 = 2;

#[tokio::test]
async fn counts_equal_the_seeded_truth_per_pattern() {
    let db = redis().await;
    let g = generate(&GenConfig {
        users: 500,
        seed: 3,
        ..Default::default()
    });
    let mut ks = g.keyspace.clone();
    let fixtures = load_fixture_dir(Path::new(FIXTURES)).unwrap();
    let mut fixture_keys: Vec<&str> = fixtures.entries.iter().map(|e| e.key.as_str()).collect();
    fixture_keys.sort();
    let mut expected_keys: Vec<&str> = FIXTURE_KEYS.iter().map(|(k, _)| *k).collect();
    expected_keys.sort();
    assert_eq!(
        fixture_keys, expected_keys,
        "the fixtures changed: update FIXTURE_KEYS"
    );
    ks.extend(fixtures);
    seed::load(&db.conn, &ks).await.unwrap();

    let t = &g.truth;
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    let mut add = |id: &'static str, n: usize| *want.entry(id).or_default() += n as u64;
    add("grid_positions.legacy", t.legacy_keys);
    add("grid_positions.backup", t.preexisting_backups);
    add("order_placed.legacy", t.order_placed_keys);
    // The generator writes both legacy cache forms for each cached position.
    add("position_cache.legacy", t.position_cache_keys / 2);
    add("position_cache.legacy_user", t.position_cache_keys / 2);
    add("unknown", t.neighbour_keys - t.preexisting_backups);
    for (_, id) in FIXTURE_KEYS {
        add(id.unwrap_or("unknown"), 1);
    }
    let not_a_string = t
        .quarantined
        .values()
        .filter(|r| **r == "not_a_string")
        .count() as u64;

    let schema = Schema::builtin();
    let r = validate(&db.conn, &schema, &ValidateOptions::default(), &|_| {})
        .await
        .unwrap();
    let got: BTreeMap<&str, u64> = r
        .patterns
        .iter()
        .map(|p| (p.id.as_str(), p.count))
        .chain([("unknown", r.unknown.count)])
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(got, want);
    assert_eq!(r.keys_scanned as usize, ks.len());
    assert_eq!(
        r.legacy_keys,
        want["grid_positions.legacy"]
            + want["order_placed.legacy"]
            + want["position_cache.legacy"]
            + want["position_cache.legacy_user"]
    );
    let legacy = r.pattern("grid_positions.legacy").unwrap();
    assert_eq!(legacy.type_mismatches, not_a_string + FIXTURE_WRONG_TYPE);
    assert_eq!(r.type_mismatches, legacy.type_mismatches);
    assert!(r
        .patterns
        .iter()
        .all(|p| p.samples.len() as u64 == p.count.min(5)));
    assert!(!r.passed);
}

#[tokio::test]
async fn exit_1_while_legacy_keys_remain_then_0() {
    let db = redis().await;
    db.set("okx:positions:1", "[]").await;
    db.set("user:1:position:BTC:long", "{}").await;
    db.set("position:1:okx:BTC:long", "{}").await;
    db.set("session:1", "x").await;

    let ran = keyshift_on(&db, &["validate"]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stdout.contains("Legacy keys remain: 2"), "{ran}");
    assert!(ran.stdout.contains("\"okx:positions:1\""), "{ran}");

    db.cmd::<i64>(&["DEL", "okx:positions:1", "user:1:position:BTC:long"])
        .await;
    let ran = keyshift_on(&db, &["validate"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains("No legacy keys remain."), "{ran}");
}

#[tokio::test]
async fn json_report_shape() {
    let db = redis().await;
    db.set("okx:positions:1", "[]").await;
    db.cmd::<i64>(&["HSET", "okx:positions:2", "a", "b"]).await;
    db.cmd::<i64>(&["SADD", "positions:index:1:okx", "BTC:long"])
        .await;
    db.set("session:1", "x").await;

    let ran = keyshift_on(&db, &["validate", "--json"]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    let j = ran.json();
    assert_eq!(j["keys_scanned"], 4);
    assert_eq!(j["legacy_keys"], 2);
    assert_eq!(j["type_mismatches"], 1);
    assert_eq!(j["passed"], false);
    assert_eq!(j["unknown"]["count"], 1);
    assert_eq!(j["unknown"]["samples"][0], "session:1");
    let patterns = j["patterns"].as_array().unwrap();
    assert_eq!(patterns.len(), Schema::builtin().patterns().len());
    let legacy = patterns
        .iter()
        .find(|p| p["id"] == "grid_positions.legacy")
        .unwrap();
    assert_eq!(legacy["kind"], "legacy");
    assert_eq!(legacy["family"], "grid_positions");
    assert_eq!(legacy["template"], "{exchange}:positions:{user_id}");
    assert_eq!(legacy["type"], "string");
    assert_eq!(legacy["count"], 2);
    assert_eq!(legacy["type_mismatches"], 1);
    assert_eq!(legacy["mismatch_samples"][0]["key"], "okx:positions:2");
    assert_eq!(legacy["mismatch_samples"][0]["type"], "hash");
    assert_eq!(legacy["samples"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_large_keyspace_prints_a_bounded_summary() {
    let db = redis().await;
    let mut c = db.conn.clone();
    for chunk in 0..20 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            let n = chunk * 1000 + i;
            pipe.set(format!("session:{n}"), "x").ignore();
            pipe.set(format!("position:{n}:BTC"), "{}").ignore();
        }
        pipe.query_async::<()>(&mut c).await.unwrap();
    }
    let ran = keyshift_on(&db, &["validate"]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(ran.stdout.lines().count() < 60, "{ran}");
    assert!(ran.stdout.contains("Scanned: 40000 keys"), "{ran}");
}

#[tokio::test]
async fn a_schema_file_replaces_the_builtin_one() {
    let db = redis().await;
    db.set("cache:v1:7", "x").await;
    db.set("cache:v2:7", "x").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("schema.toml");
    std::fs::write(
        &file,
        r#"exchanges = ["okx"]
[placeholders.id]
kind = "id"
[[pattern]]
id = "v1"
family = "cache"
kind = "standard"
template = "cache:v1:{id}"
type = "string"
"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let ran = keyshift_on(&db, &["validate", "--json", "--schema", path]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let j = ran.json();
    assert_eq!(j["patterns"][0]["count"], 1);
    assert_eq!(j["unknown"]["count"], 1);

    std::fs::write(&file, "exchanges = [\"okx\"]\n[[pattern]]\nid = 1\n").unwrap();
    let ran = keyshift_on(&db, &["validate", "--schema", path]).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("line 3"), "{ran}");
}

#[tokio::test]
async fn an_unreachable_server_exits_4() {
    let ran = run(keyshift(&["validate", "--redis", "redis://127.0.0.1:1"])).await;
    assert_eq!(ran.code, Some(4), "{ran}");
}
