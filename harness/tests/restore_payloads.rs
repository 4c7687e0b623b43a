//! The RESTORE payloads Phase 2 writes each position hash with, held to
//! what the server itself does: a listpack payload is byte for byte what
//! DUMP gives of the hash HSET makes, and any payload RESTOREs into the
//! hash HSET makes, in the encoding HSET picks.

mod support;

use keyshift_engine::grid_positions::plan::{plan_value, PlanOptions, UserPlan};
use keyshift_engine::grid_positions::store::standalone::dump::{hash_payload, ListpackLimits};
use keyshift_harness::seed::{generate, GenConfig, KeyValue};
use proptest::prelude::*;
use redis::Value;
use support::{redis, TestRedis};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// HSETs `pairs` at one key, RESTOREs their payload at another, and
/// compares the two: DUMP bytes when the server keeps a listpack, else
/// the fields and the encoding. Returns the encoding.
async fn restore_matches_hset(
    r: &TestRedis,
    n: usize,
    pairs: &Pairs,
    limits: ListpackLimits,
) -> String {
    let mut c = r.conn.clone();
    let (by_hset, by_restore) = (format!("hset:{n}"), format!("restore:{n}"));
    let mut hset = redis::cmd("HSET");
    hset.arg(&by_hset);
    for (f, v) in pairs {
        hset.arg(f).arg(v);
    }
    hset.query_async::<i64>(&mut c).await.unwrap();
    let payload = hash_payload(
        pairs.iter().map(|(f, v)| (f.as_slice(), v.as_slice())),
        Some(limits),
    );
    let restored: redis::RedisResult<()> = redis::cmd("RESTORE")
        .arg(&by_restore)
        .arg(0)
        .arg(&payload)
        .query_async(&mut c)
        .await;
    restored.unwrap_or_else(|e| panic!("RESTORE refused {pairs:?}: {e}"));
    let encoding: String = r.cmd(&["OBJECT", "ENCODING", &by_hset]).await;
    let restored_encoding: String = r.cmd(&["OBJECT", "ENCODING", &by_restore]).await;
    assert_eq!(encoding, restored_encoding, "{pairs:?}");
    let all = |key: String| {
        let mut c = r.conn.clone();
        async move {
            let mut v: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut c)
                .await
                .unwrap();
            v.sort();
            v
        }
    };
    assert_eq!(
        all(by_hset.clone()).await,
        all(by_restore).await,
        "{pairs:?}"
    );
    if encoding == "listpack" {
        let dumped: Value = redis::cmd("DUMP")
            .arg(&by_hset)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(dumped, Value::BulkString(payload), "{pairs:?}");
    }
    encoding
}

async fn server() -> (TestRedis, ListpackLimits) {
    let r = redis().await;
    // DUMP compresses long strings otherwise; RESTORE takes either.
    let _: () = r.cmd(&["CONFIG", "SET", "rdbcompression", "no"]).await;
    let limits = ListpackLimits {
        entries: r
            .cmd::<Vec<String>>(&["CONFIG", "GET", "hash-max-listpack-entries"])
            .await[1]
            .parse()
            .unwrap(),
        value: r
            .cmd::<Vec<String>>(&["CONFIG", "GET", "hash-max-listpack-value"])
            .await[1]
            .parse()
            .unwrap(),
    };
    (r, limits)
}

/// Every position hash of 300 generated users (with the metadata Phase 2
/// adds), through the planner as the migration sees them.
#[tokio::test]
async fn generated_positions_restore_as_hset_writes_them() {
    let (r, limits) = server().await;
    let generated = generate(&GenConfig {
        users: 300,
        seed: 5,
        ..GenConfig::default()
    });
    let mut encodings = std::collections::BTreeMap::<String, usize>::new();
    let mut n = 0;
    for entry in &generated.keyspace.entries {
        let KeyValue::String(value) = &entry.value else {
            continue;
        };
        let UserPlan::Migrate(plan) = plan_value(value, PlanOptions::default()) else {
            continue;
        };
        for p in plan.positions {
            let mut pairs: Pairs = p
                .fields
                .iter()
                .map(|(f, v)| (f.clone().into_bytes(), v.clone().into_bytes()))
                .collect();
            pairs.push((b"migrated_at".to_vec(), b"2026-12-07T12:00:00Z".to_vec()));
            pairs.push((b"migrated_from".to_vec(), entry.key.clone().into_bytes()));
            n += 1;
            *encodings
                .entry(restore_matches_hset(&r, n, &pairs, limits).await)
                .or_default() += 1;
        }
    }
    assert!(n > 500, "{n} hashes");
    // Both kinds were met: listpacks (compared byte for byte) and hashes
    // past the limits (sent as plain RDB hashes).
    assert!(encodings.get("listpack") > Some(&100), "{encodings:?}");
    assert!(encodings.get("hashtable") > Some(&0), "{encodings:?}");
}

/// Strings at the edges of listpack's forms: integers at every width and
/// sign, things that look like integers but are not, lengths at the 6-,
/// 12- and 32-bit boundaries, bytes that are not UTF-8, a field twice.
fn edge() -> impl Strategy<Value = Vec<u8>> {
    let ints = prop::sample::select(vec![
        0i64,
        1,
        127,
        128,
        -1,
        4095,
        4096,
        -4096,
        -4097,
        32767,
        32768,
        -32768,
        -32769,
        8_388_607,
        8_388_608,
        -8_388_608,
        2_147_483_647,
        2_147_483_648,
        -2_147_483_648,
        i64::MAX,
        i64::MIN,
    ])
    .prop_map(|i| i.to_string().into_bytes());
    let odd = prop::sample::select(vec![
        "-0",
        "007",
        "+7",
        " 7",
        "7 ",
        "1e3",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "",
        "-",
        "0x10",
        "١٢٣",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    let sized = prop::sample::select(vec![1usize, 62, 63, 64, 65, 4095, 4096, 5000])
        .prop_map(|n| vec![b'x'; n]);
    let bytes = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![ints, odd, sized, bytes]
}

#[test]
fn edge_strings_restore_as_hset_writes_them() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (r, _) = runtime.block_on(server());
    // Roomy limits, so long strings reach the 12- and 32-bit forms inside
    // a listpack; the server is told the same.
    let limits = ListpackLimits {
        entries: 128,
        value: 8192,
    };
    runtime.block_on(async {
        let _: () = r
            .cmd(&["CONFIG", "SET", "hash-max-listpack-value", "8192"])
            .await;
    });
    let n = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    };
    proptest!(config, |(pairs in prop::collection::vec((edge(), edge()), 1..12))| {
        let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let encoding = runtime.block_on(restore_matches_hset(&r, n, &pairs, limits));
        prop_assert_eq!(encoding, "listpack");
    });
}
