//! Seeding and digest against a real, disposable Redis from
//! `support::redis()` (the one way tests start a server).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keyshift_engine::connection::RedisConn;
use keyshift_harness::digest::{compare, digest, digest_keyspace, Digest};
use keyshift_harness::seed::{
    generate, load, load_fixture_dir, load_fixture_file, write_resp, GenConfig, KeyValue, Keyspace,
    SeedError,
};

/// Loading and digesting take a few seconds at most; TTLs drift by that.
const TTL_TOLERANCE_MS: i64 = 30_000;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

async fn flush(conn: &mut RedisConn) {
    redis::cmd("FLUSHALL")
        .query_async::<()>(conn)
        .await
        .unwrap();
}

async fn dbsize(conn: &mut RedisConn) -> usize {
    redis::cmd("DBSIZE").query_async(conn).await.unwrap()
}

/// Loads `ks`, then checks the live digest against the model's.
async fn assert_round_trip(conn: &mut RedisConn, ks: &Keyspace, what: &str) -> Digest {
    load(conn, ks)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let live = digest(conn, |_| true).await.unwrap();
    let model = digest_keyspace(ks);
    let diff = compare(&model, &live, TTL_TOLERANCE_MS);
    assert!(diff.is_clean(), "{what}: {diff:?}");
    assert_eq!(diff.matching, ks.len(), "{what}");
    assert_eq!(dbsize(conn).await, ks.len(), "{what}");
    for (k, d) in &model.keys {
        if let (Some(m), Some(l)) = (d.ttl_ms, live.keys[k].ttl_ms) {
            assert!(
                l <= m && l > m - TTL_TOLERANCE_MS,
                "{what}: {k} ttl {l} vs {m}"
            );
        }
    }
    live
}

#[tokio::test]
async fn generated_keyspace_loads_exactly() {
    let db = support::redis().await;
    let mut conn = db.conn.clone();
    let g = generate(&GenConfig {
        users: 5000,
        seed: 17,
        ..GenConfig::default()
    });
    assert_eq!(g.truth.total_keys, g.keyspace.len());
    assert_round_trip(&mut conn, &g.keyspace, "generated").await;

    // A filtered digest holds exactly the matching keys.
    let legacy = digest(&conn, |k| {
        k.contains(":positions:") && !k.contains(":backup:")
    })
    .await
    .unwrap();
    assert_eq!(legacy.len(), g.truth.legacy_keys);
}

#[tokio::test]
async fn every_fixture_file_loads_exactly_and_together_with_generated_users() {
    let db = support::redis().await;
    let mut conn = db.conn.clone();
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "fixtures present: {files:?}");
    let mut per_file = 0;
    for file in &files {
        let ks = load_fixture_file(file).unwrap();
        per_file += ks.len();
        assert!(!ks.is_empty(), "{}", file.display());
        flush(&mut conn).await;
        assert_round_trip(&mut conn, &ks, &file.display().to_string()).await;
    }

    // All fixtures plus generated users in one server: no key collides.
    let mut all = load_fixture_dir(fixtures_dir()).unwrap();
    let fixture_keys = all.len();
    all.extend(
        generate(&GenConfig {
            users: 2000,
            seed: 3,
            ..GenConfig::default()
        })
        .keyspace,
    );
    flush(&mut conn).await;
    assert_round_trip(&mut conn, &all, "fixtures + generated").await;
    assert_eq!(fixture_keys, per_file);

    // The binary legacy value arrives byte for byte.
    let raw: Vec<u8> = redis::cmd("GET")
        .arg("binance:positions:fx-bad-7")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw[..2], [0x80, 0xff]);
}

#[tokio::test]
async fn load_refuses_a_server_that_holds_keys() {
    let db = support::redis().await;
    let mut conn = db.conn.clone();
    redis::cmd("SET")
        .arg("precious")
        .arg("1")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let ks = generate(&GenConfig {
        users: 50,
        ..GenConfig::default()
    })
    .keyspace;
    let err = load(&conn, &ks).await.unwrap_err();
    assert!(matches!(err, SeedError::NotEmpty { keys: 1 }), "{err}");
    assert_eq!(dbsize(&mut conn).await, 1, "nothing written");
    let v: String = redis::cmd("GET")
        .arg("precious")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "1");
}

#[tokio::test]
async fn resp_output_through_redis_cli_pipe_gives_the_same_keyspace() {
    let db = support::redis().await;
    let conn = db.conn.clone();
    let mut ks = load_fixture_dir(fixtures_dir()).unwrap();
    ks.extend(
        generate(&GenConfig {
            users: 1000,
            seed: 5,
            ..GenConfig::default()
        })
        .keyspace,
    );
    let mut resp = Vec::new();
    write_resp(&ks, &mut resp).unwrap();
    let mut child = Command::new("redis-cli")
        .args(["-p", &db.server.port().to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    child.stdin.take().unwrap().write_all(&resp).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("errors: 0"), "{text}");
    let diff = compare(
        &digest_keyspace(&ks),
        &digest(&conn, |_| true).await.unwrap(),
        TTL_TOLERANCE_MS,
    );
    assert!(diff.is_clean(), "{diff:?}");
}

#[tokio::test]
async fn digest_sees_every_kind_of_change() {
    let db = support::redis().await;
    let mut conn = db.conn.clone();
    let ks = load_fixture_file(fixtures_dir().join("neighbours.json")).unwrap();
    let before = assert_round_trip(&mut conn, &ks, "neighbours").await;

    // A stream goes through DUMP.
    redis::cmd("XADD")
        .arg("events:fx")
        .arg("1-1")
        .arg("a")
        .arg("1")
        .query_async::<String>(&mut conn)
        .await
        .unwrap();
    let with_stream = digest(&conn, |_| true).await.unwrap();
    assert_eq!(with_stream.keys["events:fx"].kind, "stream");
    let again = digest(&conn, |_| true).await.unwrap();
    let stable = compare(&with_stream, &again, TTL_TOLERANCE_MS);
    assert!(
        stable.is_clean() && stable.matching == again.len(),
        "{stable:?}"
    );

    let cmd = |args: &[&str]| {
        let mut c = redis::cmd(args[0]);
        args[1..].iter().for_each(|a| {
            c.arg(*a);
        });
        c
    };
    for args in [
        &["HSET", "okx:user:fx-nb-1", "leverage", "20"][..],
        &["PERSIST", "session:fx-nb-1"],
        &["DEL", "kraken:positions:fx-nb-4"],
        &["ZADD", "leaderboard:pnl:fixtures", "0", "fx-nb-5"], // same score: no change
        &["XADD", "events:fx", "2-1", "b", "2"],
        &["SET", "okx:positions:fx-nb-7", "[]"],
    ] {
        cmd(args)
            .query_async::<redis::Value>(&mut conn)
            .await
            .unwrap();
    }
    let after = digest(&conn, |_| true).await.unwrap();
    let diff = compare(&with_stream, &after, TTL_TOLERANCE_MS);
    assert_eq!(diff.missing, ["kraken:positions:fx-nb-4"]);
    assert_eq!(diff.extra, ["okx:positions:fx-nb-7"]);
    assert_eq!(diff.changed, ["events:fx", "okx:user:fx-nb-1"]);
    assert_eq!(diff.ttl_changed, ["session:fx-nb-1"]);
    assert_eq!(diff.processed, before.len() + 2);

    // The list keeps its duplicate, in order; a set/zset ordering is canonical.
    let KeyValue::List(items) = &ks.get("notifications:fx-nb-1").unwrap().value else {
        panic!()
    };
    let live: Vec<String> = redis::cmd("LRANGE")
        .arg("notifications:fx-nb-1")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(&live, items);
}
