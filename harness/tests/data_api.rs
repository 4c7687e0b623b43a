//! The application's data API of DESIGN §3 on a real disposable Redis:
//! every operation on every position store, the legacy value's shape and
//! unknown fields through writes, dual-read routing, the trading cache and
//! the order-placed flags.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use keyshift_engine::api::{
    ApiError, ApiResult, DualReadStore, FlagsLayout, HashStore, LegacyStore, OrderPlacedFlags,
    Position, PositionObject, PositionStore, TradingCache, POSITION_CACHE_TTL_SECS,
};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::Side;
use rstest::rstest;
use support::{redis, TestRedis};

const LEGACY: &str = "okx:positions:u1";
const INDEX: &str = "positions:index:u1:okx";

fn obj(json: &str) -> PositionObject {
    PositionObject::parse(json).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Legacy,
    Hash,
    Dual,
}

/// One of the three stores, chosen per test case.
enum Store {
    Legacy(LegacyStore<RedisConn>),
    Hash(HashStore<RedisConn>),
    Dual(DualReadStore<RedisConn>),
}

/// A disposable Redis, and the store of `kind` on it.
async fn redis_and_store(kind: Kind) -> (TestRedis, Store) {
    let r = redis().await;
    let c = r.conn.clone();
    let s = match kind {
        Kind::Legacy => Store::Legacy(LegacyStore::new(c)),
        Kind::Hash => Store::Hash(HashStore::new(c)),
        Kind::Dual => Store::Dual(DualReadStore::new(c)),
    };
    (r, s)
}

macro_rules! each {
    ($store:expr, $s:ident => $e:expr) => {
        match $store {
            Store::Legacy($s) => $e,
            Store::Hash($s) => $e,
            Store::Dual($s) => $e,
        }
    };
}

impl PositionStore for Store {
    async fn all_positions(&self, u: &str, ex: &str) -> ApiResult<Vec<Position>> {
        each!(self, s => s.all_positions(u, ex).await)
    }
    async fn get_position(
        &self,
        u: &str,
        ex: &str,
        i: &str,
        side: Side,
    ) -> ApiResult<Option<Position>> {
        each!(self, s => s.get_position(u, ex, i, side).await)
    }
    async fn position_size(&self, u: &str, ex: &str, i: &str) -> ApiResult<f64> {
        each!(self, s => s.position_size(u, ex, i).await)
    }
    async fn upsert(&self, u: &str, ex: &str, p: &PositionObject) -> ApiResult<()> {
        each!(self, s => s.upsert(u, ex, p).await)
    }
    async fn remove(&self, u: &str, ex: &str, i: &str, side: Side) -> ApiResult<bool> {
        each!(self, s => s.remove(u, ex, i, side).await)
    }
}

async fn pttl(r: &TestRedis, key: &str) -> i64 {
    r.cmd(&["PTTL", key]).await
}

async fn get(r: &TestRedis, key: &str) -> Option<String> {
    r.cmd(&["GET", key]).await
}

#[rstest]
#[tokio::test]
async fn every_operation_round_trips(#[values(Kind::Legacy, Kind::Hash, Kind::Dual)] kind: Kind) {
    // The server lives as long as the test.
    let (_r, s) = redis_and_store(kind).await;
    let long = obj(
        r#"{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"3","avgPx":"61000.5","lever":10}"#,
    );
    let short =
        obj(r#"{"instId":"BTC-USDT-SWAP","posSide":"short","pos":"5","odd":{"z":[1,2],"a":null}}"#);
    let net = obj(r#"{"instId":"ETH-USDT-SWAP","posSide":"net","pos":"-0.25"}"#);
    for p in [&long, &short, &net] {
        s.upsert("u1", "okx", p).await.unwrap();
    }
    let mut expected = vec![
        long.position().clone(),
        short.position().clone(),
        net.position().clone(),
    ];
    expected.sort_by(|a, b| (&a.inst_id, a.side).cmp(&(&b.inst_id, b.side)));
    assert_eq!(s.all_positions("u1", "okx").await.unwrap(), expected);
    assert_eq!(
        s.get_position("u1", "okx", "BTC-USDT-SWAP", Side::Short)
            .await
            .unwrap()
            .as_ref(),
        Some(short.position())
    );
    assert_eq!(short.position().fields["odd"], r#"{"z":[1,2],"a":null}"#);
    assert_eq!(
        s.get_position("u1", "okx", "ETH-USDT-SWAP", Side::Long)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.position_size("u1", "okx", "BTC-USDT-SWAP").await.unwrap(),
        -2.0
    );
    assert_eq!(
        s.position_size("u1", "okx", "ETH-USDT-SWAP").await.unwrap(),
        -0.25
    );
    assert_eq!(
        s.position_size("u1", "okx", "SOL-USDT-SWAP").await.unwrap(),
        0.0
    );
    assert!(s.all_positions("u1", "binance").await.unwrap().is_empty());

    // Upsert replaces the position at its (instId, side) whole.
    let moved = obj(r#"{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"1"}"#);
    s.upsert("u1", "okx", &moved).await.unwrap();
    assert_eq!(
        s.get_position("u1", "okx", "BTC-USDT-SWAP", Side::Long)
            .await
            .unwrap()
            .as_ref(),
        Some(moved.position())
    );
    assert_eq!(
        s.position_size("u1", "okx", "BTC-USDT-SWAP").await.unwrap(),
        -4.0
    );

    assert!(s
        .remove("u1", "okx", "BTC-USDT-SWAP", Side::Short)
        .await
        .unwrap());
    assert!(!s
        .remove("u1", "okx", "BTC-USDT-SWAP", Side::Short)
        .await
        .unwrap());
    assert_eq!(
        s.position_size("u1", "okx", "BTC-USDT-SWAP").await.unwrap(),
        1.0
    );
    assert_eq!(s.all_positions("u1", "okx").await.unwrap().len(), 2);
}

#[rstest]
#[tokio::test]
async fn removing_the_last_position_leaves_no_position(
    #[values(Kind::Legacy, Kind::Hash, Kind::Dual)] kind: Kind,
) {
    let (r, s) = redis_and_store(kind).await;
    s.upsert("u1", "okx", &obj(r#"{"instId":"A","pos":"1"}"#))
        .await
        .unwrap();
    assert!(s.remove("u1", "okx", "A", Side::Long).await.unwrap());
    assert!(s.all_positions("u1", "okx").await.unwrap().is_empty());
    assert_eq!(
        s.get_position("u1", "okx", "A", Side::Long).await.unwrap(),
        None
    );
    match kind {
        // The legacy value stays, empty, in its shape.
        Kind::Legacy => assert_eq!(r.keys().await, [LEGACY]),
        Kind::Hash | Kind::Dual => assert!(r.keys().await.is_empty()),
    }
    if let Kind::Legacy = kind {
        assert_eq!(get(&r, LEGACY).await.as_deref(), Some("[]"));
    }
}

#[rstest]
#[tokio::test]
async fn invalid_positions_and_ids_write_nothing(
    #[values(Kind::Legacy, Kind::Hash, Kind::Dual)] kind: Kind,
) {
    let (r, s) = redis_and_store(kind).await;
    for bad in [
        r#"{"pos":"1"}"#,
        r#"{"instId":"A:B"}"#,
        r#"[{"instId":"A"}]"#,
    ] {
        assert!(matches!(
            PositionObject::parse(bad),
            Err(ApiError::InvalidPosition { .. })
        ));
    }
    let p = obj(r#"{"instId":"A","pos":"1"}"#);
    assert!(matches!(
        s.upsert("u:1", "okx", &p).await,
        Err(ApiError::InvalidId { .. })
    ));
    assert!(matches!(
        s.upsert("u1", "", &p).await,
        Err(ApiError::InvalidId { .. })
    ));
    assert!(r.keys().await.is_empty());
}

#[rstest]
#[case::array(
    r#"[ {"instId":"A","pos":"1","mystery":{"k":[1.50, "x"]}} , {"instId":"B","posSide":"short","pos":"2","z":true} ]"#,
    r#"[{"instId":"A","pos":"1","mystery":{"k":[1.50, "x"]}},{"instId":"B","posSide":"short","pos":"7"},{"instId":"C","pos":"1"}]"#
)]
#[case::object_keyed_by_inst_id(
    r#"{"A": {"instId":"A","pos":"1","mystery":{"k":[1.50, "x"]}}, "B": {"instId":"B","posSide":"short","pos":"2","z":true}}"#,
    r#"{"A":{"instId":"A","pos":"1","mystery":{"k":[1.50, "x"]}},"B":{"instId":"B","posSide":"short","pos":"7"},"C":{"instId":"C","pos":"1"}}"#
)]
#[tokio::test]
async fn legacy_writes_keep_shape_unknown_fields_and_ttl(
    #[case] before: &str,
    #[case] after: &str,
) {
    let r = redis().await;
    r.set_px(LEGACY, before, 3_600_000).await;
    let s = LegacyStore::new(r.conn.clone());
    s.upsert(
        "u1",
        "okx",
        &obj(r#"{"instId":"B","posSide":"short","pos":"7"}"#),
    )
    .await
    .unwrap();
    s.upsert("u1", "okx", &obj(r#"{"instId":"C","pos":"1"}"#))
        .await
        .unwrap();
    assert_eq!(get(&r, LEGACY).await.as_deref(), Some(after));
    let ttl = pttl(&r, LEGACY).await;
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "TTL kept: {ttl}");
    let a = s
        .get_position("u1", "okx", "A", Side::Long)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.fields["mystery"], r#"{"k":[1.50,"x"]}"#);
}

#[tokio::test]
async fn object_shaped_legacy_value_refuses_a_second_side() {
    let r = redis().await;
    let before = r#"{"A":{"instId":"A","pos":"1"}}"#;
    r.set(LEGACY, before).await;
    let s = LegacyStore::new(r.conn.clone());
    let err = s
        .upsert("u1", "okx", &obj(r#"{"instId":"A","pos":"-1"}"#))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::ObjectShapeHoldsOneSide { .. }),
        "{err}"
    );
    assert_eq!(get(&r, LEGACY).await.as_deref(), Some(before));
}

#[tokio::test]
async fn unreadable_legacy_values_are_never_rewritten() {
    let r = redis().await;
    r.set(LEGACY, "[{'instId': 'A'}]").await;
    let s = LegacyStore::new(r.conn.clone());
    let err = s
        .upsert("u1", "okx", &obj(r#"{"instId":"A"}"#))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::UnreadableLegacy { .. }), "{err}");
    assert!(s.all_positions("u1", "okx").await.unwrap().is_empty());
    assert_eq!(get(&r, LEGACY).await.as_deref(), Some("[{'instId': 'A'}]"));
}

#[tokio::test]
async fn hash_writes_keep_hash_and_index_together_and_ttl() {
    let r = redis().await;
    let s = HashStore::new(r.conn.clone());
    s.upsert("u1", "okx", &obj(r#"{"instId":"A","pos":"1","extra":"x"}"#))
        .await
        .unwrap();
    r.cmd::<()>(&["PEXPIRE", INDEX, "3600000"]).await;
    // A new position takes its user's TTL (the index's) ...
    s.upsert("u1", "okx", &obj(r#"{"instId":"B","pos":"1"}"#))
        .await
        .unwrap();
    assert!(pttl(&r, "positions:u1:okx:B:long").await > 3_500_000);
    // ... a replaced one keeps its own, and loses fields it no longer has.
    r.cmd::<()>(&["PEXPIRE", "positions:u1:okx:A:long", "7200000"])
        .await;
    s.upsert("u1", "okx", &obj(r#"{"instId":"A","pos":"2"}"#))
        .await
        .unwrap();
    assert!(pttl(&r, "positions:u1:okx:A:long").await > 7_000_000);
    let hash: BTreeMap<String, String> = r.cmd(&["HGETALL", "positions:u1:okx:A:long"]).await;
    assert_eq!(
        hash,
        BTreeMap::from([("instId".into(), "A".into()), ("pos".into(), "2".into())])
    );
    let members: Vec<String> = r.cmd(&["SORT", INDEX, "ALPHA"]).await;
    assert_eq!(members, ["A:long", "B:long"]);
}

#[tokio::test]
async fn hash_reads_drop_migration_metadata() {
    let r = redis().await;
    r.set(LEGACY, r#"[{"instId":"A","pos":"1"}]"#).await;
    let before = LegacyStore::new(r.conn.clone())
        .all_positions("u1", "okx")
        .await
        .unwrap();
    r.migrate().await;
    assert_eq!(
        HashStore::new(r.conn.clone())
            .all_positions("u1", "okx")
            .await
            .unwrap(),
        before
    );
}

#[tokio::test]
async fn dual_read_falls_back_to_legacy_until_the_user_migrates() {
    let r = redis().await;
    let legacy_value = r#"[{"instId":"A","pos":"1"},{"instId":"B","posSide":"short","pos":"2"}]"#;
    r.set(LEGACY, legacy_value).await;
    let dual = DualReadStore::new(r.conn.clone());
    let legacy = LegacyStore::new(r.conn.clone());
    let before = legacy.all_positions("u1", "okx").await.unwrap();
    assert_eq!(dual.all_positions("u1", "okx").await.unwrap(), before);
    assert_eq!(dual.position_size("u1", "okx", "B").await.unwrap(), -2.0);
    assert!(dual
        .get_position("u1", "okx", "A", Side::Long)
        .await
        .unwrap()
        .is_some());

    // Not migrated: a write goes to the legacy value, so nothing is hidden.
    dual.upsert("u1", "okx", &obj(r#"{"instId":"C","pos":"3"}"#))
        .await
        .unwrap();
    assert!(dual.remove("u1", "okx", "A", Side::Long).await.unwrap());
    assert_eq!(r.keys().await, [LEGACY]);
    let written = legacy.all_positions("u1", "okx").await.unwrap();
    assert_eq!(dual.all_positions("u1", "okx").await.unwrap(), written);

    // Migrated: the same answers from the new layout, writes go there.
    r.migrate().await;
    assert_eq!(get(&r, LEGACY).await, None);
    assert_eq!(dual.all_positions("u1", "okx").await.unwrap(), written);
    dual.upsert("u1", "okx", &obj(r#"{"instId":"D","pos":"4"}"#))
        .await
        .unwrap();
    assert_eq!(get(&r, LEGACY).await, None);
    assert!(r
        .keys()
        .await
        .contains(&"positions:u1:okx:D:long".to_owned()));
    assert_eq!(dual.position_size("u1", "okx", "D").await.unwrap(), 4.0);
}

#[tokio::test]
async fn dual_read_prefers_the_index_when_both_exist_and_starts_new_users_new() {
    let r = redis().await;
    let dual = DualReadStore::new(r.conn.clone());
    // A new user is born in the new layout.
    dual.upsert("u1", "okx", &obj(r#"{"instId":"A","pos":"1"}"#))
        .await
        .unwrap();
    assert_eq!(
        r.keys().await,
        ["positions:index:u1:okx", "positions:u1:okx:A:long"]
    );
    // A stray legacy value beside the index is not read.
    r.set(LEGACY, r#"[{"instId":"Z","pos":"9"}]"#).await;
    let all = dual.all_positions("u1", "okx").await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.inst_id.as_str()).collect::<Vec<_>>(),
        ["A"]
    );
    assert_eq!(dual.position_size("u1", "okx", "Z").await.unwrap(), 0.0);
    dual.upsert("u1", "okx", &obj(r#"{"instId":"Z","pos":"1"}"#))
        .await
        .unwrap();
    assert_eq!(
        get(&r, LEGACY).await.as_deref(),
        Some(r#"[{"instId":"Z","pos":"9"}]"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_legacy_writers_lose_nothing() {
    const TASKS: usize = 16;
    const EACH: usize = 5;
    let r = redis().await;
    r.set(LEGACY, r#"[{"instId":"KEEP","pos":"1","unknown":[1]}]"#)
        .await;
    let store = Arc::new(LegacyStore::new(r.conn.clone()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..EACH {
                    let p = obj(&format!(r#"{{"instId":"S{t}-{i}","pos":"{i}"}}"#));
                    store.upsert("u1", "okx", &p).await.unwrap();
                }
                // Each task also removes one of its own again.
                assert!(store
                    .remove("u1", "okx", &format!("S{t}-0"), Side::Long)
                    .await
                    .unwrap());
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.all_positions("u1", "okx").await.unwrap();
    assert_eq!(all.len(), 1 + TASKS * (EACH - 1));
    for t in 0..TASKS {
        for i in 1..EACH {
            let got = store
                .get_position("u1", "okx", &format!("S{t}-{i}"), Side::Long)
                .await
                .unwrap();
            assert_eq!(got.unwrap().fields["pos"], i.to_string());
        }
    }
    let keep = store
        .get_position("u1", "okx", "KEEP", Side::Long)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(keep.fields["unknown"], "[1]");
}

#[tokio::test]
async fn trading_cache_defaults_to_okx_with_a_300_second_ttl() {
    let r = redis().await;
    let cache = TradingCache::new(r.conn.clone());
    let body = r#"{"instId":"BTC-USDT-SWAP","pos":"2"}"#;
    cache
        .set_position("7", "BTC-USDT-SWAP", Side::Long, body, None)
        .await
        .unwrap();
    cache
        .set_position("7", "BTC-USDT-SWAP", Side::Long, "{}", Some("bybit"))
        .await
        .unwrap();
    assert_eq!(
        r.keys().await,
        [
            "position:7:bybit:BTC-USDT-SWAP:long",
            "position:7:okx:BTC-USDT-SWAP:long"
        ]
    );
    let ttl: i64 = r.cmd(&["TTL", "position:7:okx:BTC-USDT-SWAP:long"]).await;
    assert!(ttl > 290 && ttl as u64 <= POSITION_CACHE_TTL_SECS, "{ttl}");
    assert_eq!(
        cache
            .get_position("7", "BTC-USDT-SWAP", Side::Long, None)
            .await
            .unwrap()
            .as_deref(),
        Some(body)
    );
    assert_eq!(
        cache
            .get_position("7", "BTC-USDT-SWAP", Side::Long, Some("okx"))
            .await
            .unwrap()
            .as_deref(),
        Some(body)
    );
    assert_eq!(
        cache
            .get_position("7", "BTC-USDT-SWAP", Side::Short, None)
            .await
            .unwrap(),
        None
    );
    assert!(cache
        .remove_position("7", "BTC-USDT-SWAP", Side::Long, None)
        .await
        .unwrap());
    assert!(!cache
        .remove_position("7", "BTC-USDT-SWAP", Side::Long, None)
        .await
        .unwrap());
    assert_eq!(r.keys().await, ["position:7:bybit:BTC-USDT-SWAP:long"]);
    let err = cache
        .set_position("7", "X", Side::Long, "{oops", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::NotJson { .. }), "{err}");
}

#[rstest]
#[case::standard(
    FlagsLayout::Standard,
    "orders:okx:user:7:symbol:BTC-USDT:order_placed"
)]
#[case::legacy(FlagsLayout::Legacy, "okx:user:7:symbol:BTC-USDT:order_placed")]
#[tokio::test]
async fn order_placed_flags(#[case] layout: FlagsLayout, #[case] key: &str) {
    let r = redis().await;
    let flags = OrderPlacedFlags::new(r.conn.clone(), layout);
    assert_eq!(flags.key("okx", "7", "BTC-USDT"), key);
    assert!(!flags.get("okx", "7", "BTC-USDT", 3).await.unwrap());
    flags.set("okx", "7", "BTC-USDT", 3, true).await.unwrap();
    assert!(flags.get("okx", "7", "BTC-USDT", 3).await.unwrap());
    r.cmd::<()>(&["PEXPIRE", key, "3600000"]).await;
    flags
        .upload("okx", "7", "BTC-USDT", [(0, true), (1, false), (2, true)])
        .await
        .unwrap();
    let all = flags.get_all("okx", "7", "BTC-USDT").await.unwrap();
    let expect = |v: [(&str, bool); 4]| {
        v.into_iter()
            .map(|(l, b)| (l.to_owned(), b))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        all,
        expect([("0", true), ("1", false), ("2", true), ("3", true)])
    );
    assert_eq!(flags.reset("okx", "7", "BTC-USDT").await.unwrap(), 4);
    let all = flags.get_all("okx", "7", "BTC-USDT").await.unwrap();
    assert_eq!(
        all,
        expect([("0", false), ("1", false), ("2", false), ("3", false)])
    );
    assert!(pttl(&r, key).await > 3_500_000, "writes keep the TTL");
    assert_eq!(r.keys().await, [key], "no other key is written");
    assert_eq!(flags.reset("okx", "7", "ETH-USDT").await.unwrap(), 0);
    r.cmd::<()>(&["HSET", key, "9", "yes"]).await;
    let err = flags.get("okx", "7", "BTC-USDT", 9).await.unwrap_err();
    assert!(matches!(err, ApiError::BadFlag { .. }), "{err}");
}
