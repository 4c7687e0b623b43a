//! The `keyshift` binary as scripts see it (DESIGN §6): arguments, exit
//! codes, stdout/stderr, and what it does to a real disposable Redis. Each
//! test starts its own server from `support::redis()`.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use keyshift_harness::seed::{self, generate, GenConfig};
use serde_json::Value;
use support::cli::{keyshift, keyshift_on, run};
use support::gate::{
    check_gate_phases, check_gate_run, check_junit, run_gate, GRID_POSITIONS_INVARIANTS,
};
use support::{docker_or_skip, redis, TestRedis};

/// Two positions of one user on OKX (long/short mode, a hedged pair).
const OKX_1: &str = r#"[{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"2","avgPx":"65000.5"},{"instId":"BTC-USDT-SWAP","posSide":"short","pos":"1","avgPx":"65010"}]"#;
const OKX_2: &str = r#"[{"instId":"ETH-USDT-SWAP","posSide":"net","pos":"-3","lever":10}]"#;
const BINANCE_1: &str = r#"[{"instId":"SOLUSDT","pos":"4.5"}]"#;

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

async fn get_bytes(db: &TestRedis, key: &str) -> Option<Vec<u8>> {
    db.cmd(&["GET", key]).await
}

/// Every key's DUMP and PTTL, and DBSIZE.
async fn snapshot(db: &TestRedis) -> (i64, BTreeMap<String, (Vec<u8>, i64)>) {
    let mut keys = BTreeMap::new();
    for k in db.keys().await {
        let dump: Vec<u8> = db.cmd(&["DUMP", &k]).await;
        let pttl: i64 = db.cmd(&["PTTL", &k]).await;
        keys.insert(k, (dump, pttl));
    }
    (db.cmd(&["DBSIZE"]).await, keys)
}

fn position_keys(keys: &[String]) -> Vec<&String> {
    keys.iter()
        .filter(|k| k.starts_with("positions:"))
        .collect()
}

fn counts<'a>(report: &'a Value, exchange: Option<&str>) -> &'a Value {
    let c = match exchange {
        None => &report["totals"],
        Some(ex) => &report["per_exchange"][ex],
    };
    assert!(c.is_object(), "no counts for {exchange:?} in {report:#}");
    c
}

#[tokio::test]
async fn migrate_refuses_without_force_off_a_terminal() {
    let db = redis().await;
    db.set("okx:positions:1", OKX_1).await;
    let before = snapshot(&db).await;

    // Even a "yes" on a pipe is not a confirmation: only a terminal can give one.
    let url = db.url();
    let mut cmd = keyshift(&["migrate", "grid-positions", "--redis", &url]);
    cmd.write_stdin("yes\n");
    let ran = run(cmd).await;

    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("--force"), "{ran}");
    assert_eq!(
        db.keys().await,
        ["okx:positions:1"],
        "nothing written, no journal"
    );
    assert_eq!(
        get_bytes(&db, "okx:positions:1").await.as_deref(),
        Some(OKX_1.as_bytes())
    );
    assert_eq!(snapshot(&db).await, before);
}

#[tokio::test]
async fn migrate_with_force_exits_0_and_verify_passes() {
    let db = redis().await;
    db.set("okx:positions:1", OKX_1).await;
    db.set("okx:positions:2", OKX_2).await;
    db.set("binance:positions:1", BINANCE_1).await;

    let ran = keyshift_on(&db, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let keys = db.keys().await;
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(":positions:") && !k.contains(":backup:")),
        "legacy keys remain: {keys:?}"
    );
    assert_eq!(
        position_keys(&keys),
        [
            "positions:1:binance:SOLUSDT:long",
            "positions:1:okx:BTC-USDT-SWAP:long",
            "positions:1:okx:BTC-USDT-SWAP:short",
            "positions:2:okx:ETH-USDT-SWAP:short",
            "positions:index:1:binance",
            "positions:index:1:okx",
            "positions:index:2:okx",
        ]
    );

    let ran = keyshift_on(&db, &["verify", "grid-positions", "--json"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let report = ran.json();
    let invariants = report["invariants"].as_array().expect("invariants array");
    let ids: BTreeSet<&str> = invariants
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["backup", "counts", "fields", "index", "ttl"]),
        "{report:#}"
    );
    for inv in invariants {
        assert_eq!(inv["passed"], true, "{inv:#}");
        assert_eq!(inv["mismatched"], 0, "{inv:#}");
    }
    let fields = invariants.iter().find(|i| i["id"] == "fields").unwrap();
    assert_eq!(
        fields["processed"], 4,
        "one check per migrated hash: {fields:#}"
    );

    // The human form says the same.
    let ran = keyshift_on(&db, &["verify", "grid-positions"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains("All invariants hold."), "{ran}");
}

#[tokio::test]
async fn quarantined_key_exits_3_and_is_untouched() {
    let db = redis().await;
    let bad: &[u8] = b"[{'instId': 'BTC-USDT-SWAP', 'pos': '1'}]\xff";
    db.set_px("okx:positions:7", bad, 3_600_000).await;
    db.set("binance:positions:1", BINANCE_1).await;
    let (_, before) = snapshot(&db).await;

    let ran = keyshift_on(&db, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(3), "{ran}");
    assert!(
        ran.stdout.contains("okx:positions:7"),
        "report names the key: {ran}"
    );

    assert_eq!(
        get_bytes(&db, "okx:positions:7").await.as_deref(),
        Some(bad)
    );
    let (_, after) = snapshot(&db).await;
    let (dump, pttl) = &before["okx:positions:7"];
    assert_eq!(&after["okx:positions:7"].0, dump);
    let now = after["okx:positions:7"].1;
    assert!(
        now <= *pttl && now > pttl - 60_000,
        "TTL kept: {pttl} -> {now}"
    );
    let keys = db.keys().await;
    assert!(
        !keys
            .iter()
            .any(|k| k.starts_with("okx:positions:7:backup:") || k.contains(":7:okx")),
        "nothing written for the quarantined key: {keys:?}"
    );
    // The rest of the run still happened.
    assert!(
        keys.contains(&"positions:1:binance:SOLUSDT:long".to_owned()),
        "{keys:?}"
    );

    // The JSON report names it too, with its reason.
    let ran = keyshift_on(&db, &["migrate", "grid-positions", "--force", "--json"]).await;
    assert_eq!(ran.code, Some(3), "{ran}");
    let report = ran.json();
    let quarantined = report["quarantined"].as_array().expect("quarantined array");
    assert_eq!(quarantined.len(), 1, "{report:#}");
    assert_eq!(quarantined[0]["key"], "okx:positions:7");
    let reason = quarantined[0]["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{report:#}");
    assert_eq!(
        get_bytes(&db, "okx:positions:7").await.as_deref(),
        Some(bad)
    );
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let db = redis().await;
    db.set("okx:positions:1", OKX_1).await;
    db.set_px("okx:positions:2", OKX_2, 3_600_000).await;
    db.set("binance:positions:1", BINANCE_1).await;
    db.cmd::<i64>(&["HSET", "okx:user:1", "name", "Mina"]).await;
    db.cmd::<()>(&["SET", "okx:positions:9:backup:20240101_000000", "[]"])
        .await;
    let (size, before) = snapshot(&db).await;
    assert_eq!(size, 5);

    let ran = keyshift_on(&db, &["migrate", "grid-positions", "--dry-run"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");

    // The plan: per-exchange counts (legacy keys, ..., positions) and samples.
    assert!(ran.stdout.contains("dry run"), "{ran}");
    let row = |name: &str| -> Vec<String> {
        ran.stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cols| cols.first().map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{ran}"))
    };
    assert_eq!(row("okx")[1], "2", "okx legacy keys:\n{ran}");
    assert_eq!(row("okx")[5], "3", "okx positions:\n{ran}");
    assert_eq!(row("binance")[1], "1", "binance legacy keys:\n{ran}");
    assert_eq!(row("binance")[5], "1", "binance positions:\n{ran}");
    assert_eq!(row("total")[1], "3", "total legacy keys:\n{ran}");
    assert_eq!(row("total")[5], "4", "total positions:\n{ran}");
    assert!(ran.stdout.contains("old -> new"), "{ran}");
    assert!(
        ran.stdout.contains("okx:positions:1 -> 2 hash(es)")
            && ran.stdout.contains("positions:1:okx:BTC-USDT-SWAP:short"),
        "a sample old -> new key:\n{ran}"
    );

    let (size_after, after) = snapshot(&db).await;
    assert_eq!(size_after, size, "DBSIZE");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, (dump, pttl)) in &before {
        let (dump_after, pttl_after) = &after[k];
        assert_eq!(dump_after, dump, "{k} changed");
        if *pttl < 0 {
            assert_eq!(pttl_after, pttl, "{k} TTL");
        } else {
            assert!(
                pttl_after <= pttl && *pttl_after > pttl - 60_000,
                "{k} TTL {pttl} -> {pttl_after}"
            );
        }
    }
    assert!(
        !after.keys().any(|k| k.starts_with("keyshift:")),
        "journal written: {after:?}"
    );
}

#[tokio::test]
async fn json_report_is_machine_readable() {
    let db = redis().await;
    let g = generate(&GenConfig {
        users: 60,
        seed: 11,
        malformed_rate: 0.0,
        closed_rate: 0.2,
        ..GenConfig::default()
    });
    let truth = &g.truth;
    assert!(truth.closed_positions > 0 && truth.well_formed_legacy_keys > 0);
    seed::load(&db.conn, &g.keyspace).await.unwrap();

    let ran = keyshift_on(&db, &["migrate", "grid-positions", "--force", "--json"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let report = ran.json();
    assert_eq!(report["dry_run"], false);
    assert!(report["run_id"].is_string(), "{report:#}");
    assert_eq!(report["quarantined"], Value::Array(vec![]));
    assert_eq!(report["conflicts"], Value::Array(vec![]));
    let t = counts(&report, None);
    assert_eq!(t["legacy_keys_found"], truth.legacy_keys, "{t:#}");
    assert_eq!(t["keys_migrated"], truth.well_formed_legacy_keys, "{t:#}");
    assert_eq!(t["keys_quarantined"], 0, "{t:#}");
    assert_eq!(t["positions_found"], truth.positions, "{t:#}");
    // Lossless by default: closed positions migrate too.
    assert_eq!(t["positions_migrated"], truth.positions, "{t:#}");
    assert_eq!(t["positions_skipped_closed"], 0, "{t:#}");
    for (ex, et) in &truth.per_exchange {
        let c = counts(&report, Some(ex));
        assert_eq!(c["legacy_keys_found"], et.legacy_keys, "{ex}: {c:#}");
        assert_eq!(
            c["keys_migrated"], et.well_formed_legacy_keys,
            "{ex}: {c:#}"
        );
        assert_eq!(c["positions_migrated"], et.positions, "{ex}: {c:#}");
    }

    // --skip-closed is counted, never silent (on a second, fresh keyspace).
    let db = redis().await;
    seed::load(&db.conn, &g.keyspace).await.unwrap();
    let ran = keyshift_on(
        &db,
        &[
            "migrate",
            "grid-positions",
            "--force",
            "--json",
            "--skip-closed",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let t = counts(&ran.json(), None).clone();
    assert_eq!(
        t["positions_skipped_closed"], truth.closed_positions,
        "{t:#}"
    );
    assert_eq!(
        t["positions_migrated"],
        truth.positions - truth.closed_positions,
        "{t:#}"
    );
}

#[tokio::test]
async fn unreachable_redis_exits_4() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    for args in [
        &["migrate", "grid-positions", "--force"][..],
        &["migrate", "grid-positions", "--dry-run"],
        &["verify", "grid-positions"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--redis", url.as_str()]);
        let ran = run(keyshift(&all)).await;
        assert_eq!(ran.code, Some(4), "{args:?}: {ran}");
        assert!(
            ran.stderr.contains(&url),
            "{args:?}: names the server: {ran}"
        );
        assert!(ran.stdout.is_empty(), "{args:?}: {ran}");
    }
}

#[tokio::test]
async fn redis_url_falls_back_to_env() {
    let db = redis().await;
    db.set("okx:positions:1", OKX_1).await;

    let mut cmd = keyshift(&["migrate", "grid-positions", "--force"]);
    cmd.env("REDIS_URL", db.url());
    let ran = run(cmd).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let keys = db.keys().await;
    assert!(!keys.contains(&"okx:positions:1".to_owned()), "{keys:?}");
    assert!(
        keys.contains(&"positions:1:okx:BTC-USDT-SWAP:short".to_owned()),
        "{keys:?}"
    );

    let mut cmd = keyshift(&["verify", "grid-positions"]);
    cmd.env("REDIS_URL", db.url());
    let ran = run(cmd).await;
    assert_eq!(ran.code, Some(0), "{ran}");

    // --redis wins over REDIS_URL.
    let mut cmd = keyshift(&["verify", "grid-positions", "--redis", &db.url()]);
    cmd.env("REDIS_URL", format!("redis://127.0.0.1:{}", closed_port()));
    let ran = run(cmd).await;
    assert_eq!(ran.code, Some(0), "{ran}");

    // Neither: a usage error.
    let ran = run(keyshift(&["verify", "grid-positions"])).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("--redis"), "{ran}");
}

#[tokio::test]
async fn password_never_printed() {
    let closed = format!("redis://:s3cret@127.0.0.1:{}", closed_port());
    // A live server with no password set refuses the AUTH.
    let db = redis().await;
    let live = format!("redis://:s3cret@127.0.0.1:{}", db.server.port());
    for url in [&closed, &live] {
        for args in [
            &["migrate", "grid-positions", "--force"][..],
            &["migrate", "grid-positions", "--dry-run", "--json"],
            &["verify", "grid-positions", "--json"],
        ] {
            let mut all = args.to_vec();
            all.extend(["--redis", url.as_str()]);
            let via_flag = run(keyshift(&all)).await;
            let mut cmd = keyshift(args);
            cmd.env("REDIS_URL", url);
            let via_env = run(cmd).await;
            for ran in [via_flag, via_env] {
                assert_ne!(ran.code, Some(0), "{url} {args:?}: {ran}");
                assert!(
                    !ran.stderr.trim().is_empty(),
                    "{url} {args:?}: an error is printed: {ran}"
                );
                assert!(
                    !ran.stdout.contains("s3cret") && !ran.stderr.contains("s3cret"),
                    "{url} {args:?}: password printed: {ran}"
                );
            }
        }
    }
    let ran = run(keyshift(&["verify", "grid-positions", "--redis", &closed])).await;
    assert_eq!(ran.code, Some(4), "{ran}");
    assert!(
        ran.stderr.contains("127.0.0.1"),
        "still names the host: {ran}"
    );
    assert!(db.keys().await.is_empty());
}

#[tokio::test]
async fn verify_without_a_run_exits_1() {
    let db = redis().await;
    db.set("okx:positions:1", OKX_1).await;
    let ran = keyshift_on(&db, &["verify", "grid-positions"]).await;
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(
        ran.stderr.contains("migrate grid-positions"),
        "says what to run: {ran}"
    );
    assert_eq!(db.keys().await, ["okx:positions:1"], "verify reads only");
}

#[tokio::test]
async fn exchange_option_limits_the_run() {
    let db = redis().await;
    db.set("okx:positions:1", OKX_1).await;
    db.set("okx:positions:2", OKX_2).await;
    db.set("binance:positions:1", BINANCE_1).await;

    let ran = keyshift_on(
        &db,
        &[
            "migrate",
            "grid-positions",
            "--exchange",
            "okx",
            "--force",
            "--json",
        ],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let report = ran.json();
    assert_eq!(
        report["exchanges"],
        serde_json::json!(["okx"]),
        "{report:#}"
    );
    assert_eq!(counts(&report, None)["legacy_keys_found"], 2, "{report:#}");
    assert_eq!(counts(&report, None)["keys_migrated"], 2, "{report:#}");

    let keys = db.keys().await;
    assert!(
        !keys.contains(&"okx:positions:1".to_owned())
            && !keys.contains(&"okx:positions:2".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"positions:index:1:okx".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"positions:index:2:okx".to_owned()),
        "{keys:?}"
    );
    assert_eq!(
        get_bytes(&db, "binance:positions:1").await.as_deref(),
        Some(BINANCE_1.as_bytes())
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(":binance") && k != "binance:positions:1"),
        "nothing written for binance: {keys:?}"
    );
}

/// Runs the gate and checks its three reports.
async fn gate_writes_reports(backend: &str, users: usize) {
    let dir = tempfile::tempdir().unwrap();
    let report_dir = dir.path().join("reports");
    let ran = run_gate(backend, users, &report_dir).await;
    assert_eq!(ran.code, Some(0), "{ran}");

    let read = |name: &str| {
        std::fs::read_to_string(report_dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{ran}"))
    };
    let report: Value = serde_json::from_str(&read("report.json")).expect("report.json parses");
    check_gate_run(&report, backend, users);
    let invariants: Vec<&Value> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["invariants"].as_array().unwrap())
        .collect();
    let status: BTreeMap<&str, &str> = invariants
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["status"].as_str().unwrap()))
        .collect();
    for id in GRID_POSITIONS_INVARIANTS
        .into_iter()
        .chain(["no-lost-writes"])
    {
        assert_eq!(status.get(id), Some(&"pass"), "{id}: {status:?}");
    }
    assert!(!status.values().any(|s| *s == "fail"), "{status:?}");
    check_gate_phases(&report);

    let md = read("report.md");
    assert!(md.starts_with("# keyshift gate"), "{md}");
    for id in status.keys() {
        assert!(
            md.contains(&format!("| {id} |")),
            "report.md lists {id}:\n{md}"
        );
    }
    let junit = read("junit.xml");
    check_junit(&junit, status.keys().copied(), invariants.len());
}

#[tokio::test]
async fn gate_writes_three_reports() {
    gate_writes_reports("process", 50).await;
}

#[tokio::test]
async fn gate_on_docker_backend() {
    if !docker_or_skip("gate_on_docker_backend").await {
        return;
    }
    gate_writes_reports("docker", 30).await;
}
