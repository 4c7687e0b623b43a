//! The data API of DESIGN §3 on a 3-primary Redis Cluster gives the same
//! answers as on one server: the same scripted calls run against each store
//! on a disposable standalone server and on a disposable cluster, and every
//! answer and the resulting keyspace (types, values, TTLs; the journal and
//! the migration's timestamps aside) must match. A user's keys span slots
//! there, so any multi-key script or MULTI left in a store would fail the
//! cluster side with CROSSSLOT.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use keyshift_engine::api::{
    DualReadStore, FlagsLayout, HashStore, LegacyStore, OrderPlacedFlags, PositionObject,
    PositionStore, TradingCache,
};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::Side;
use keyshift_engine::grid_positions::runner::{migrate_grid_positions, MigrateOptions};
use keyshift_engine::grid_positions::store::cluster::GridStore;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};
use keyshift_engine::run::journal::is_journal_key;
use keyshift_harness::backend::{key_slot, RedisCluster, RedisServer};
use redis::aio::MultiplexedConnection;
use support::{exchanges, test_backend};

/// The same deployment twice: one server, and a cluster.
struct Both {
    _server: RedisServer,
    cluster: RedisCluster,
    one: RedisConn,
    many: RedisConn,
    one_nodes: Vec<MultiplexedConnection>,
}

async fn both() -> Both {
    let server = RedisServer::start(test_backend()).await.expect("a redis");
    let cluster = RedisCluster::start(test_backend())
        .await
        .expect("a cluster");
    let one = connect(&server.url()).await.expect("connect");
    let many = connect(&cluster.url())
        .await
        .expect("connect to the cluster");
    assert!(!one.is_cluster() && many.is_cluster());
    let one_nodes = vec![server.connection().await.unwrap()];
    Both {
        _server: server,
        cluster,
        one,
        many,
        one_nodes,
    }
}

impl Both {
    fn conns(&self) -> [&RedisConn; 2] {
        [&self.one, &self.many]
    }

    /// The same command on both deployments.
    async fn run(&self, args: &[&str]) {
        for conn in self.conns() {
            let mut c = conn.clone();
            redis::cmd(args[0])
                .arg(&args[1..])
                .query_async::<()>(&mut c)
                .await
                .unwrap();
        }
    }

    /// Both keyspaces, which must be equal.
    async fn assert_same_keyspace(&self) {
        let one = keyspace(&self.one_nodes).await;
        let many = keyspace(&self.cluster.node_connections().await.unwrap()).await;
        assert_eq!(one, many, "standalone vs cluster keyspace");
        assert!(!one.is_empty(), "the calls wrote something to compare");
    }
}

/// Every key of every node (disposable servers: KEYS is fine) as type,
/// value and TTL rounded to minutes; journal keys and migration
/// timestamps differ by run and are left out, backup stamps masked.
async fn keyspace(nodes: &[MultiplexedConnection]) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for node in nodes {
        let mut c = node.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        for key in keys.into_iter().filter(|k| !is_journal_key(k)) {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            let value = match kind.as_str() {
                "string" => {
                    let v: String = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    v
                }
                "hash" => {
                    let mut h: BTreeMap<String, String> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    h.remove(META_MIGRATED_AT);
                    h.remove(META_MIGRATED_FROM);
                    format!("{h:?}")
                }
                "set" => {
                    let s: BTreeSet<String> = redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    format!("{s:?}")
                }
                other => panic!("unexpected type {other} at {key}"),
            };
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            let ttl = if pttl < 0 {
                pttl
            } else {
                (pttl + 30_000) / 60_000
            };
            // Backups are named by their run's one-second stamp, which the
            // two deployments' runs need not share.
            let key = match key.split_once(":backup:") {
                Some((user, _stamp)) => format!("{user}:backup:STAMP"),
                None => key,
            };
            all.insert(key, format!("{kind} {value} ttl~{ttl}min"));
        }
    }
    all
}

fn obj(json: &str) -> PositionObject {
    PositionObject::parse(json).unwrap()
}

/// Legacy values of three users (array, object-keyed, with TTLs) and a
/// user with none, on both deployments.
async fn seed_legacy(b: &Both) {
    b.run(&[
        "SET",
        "okx:positions:u1",
        r#"[{"instId":"A","pos":"1","odd":{"k":[1.50]}},{"instId":"B","posSide":"short","pos":"2"}]"#,
        "PX",
        "3600000",
    ])
    .await;
    b.run(&[
        "SET",
        "okx:positions:u2",
        r#"{"A":{"instId":"A","posSide":"net","pos":"-3"}}"#,
    ])
    .await;
    b.run(&[
        "SET",
        "bybit:positions:u3",
        r#"[{"instId":"C","posSide":"long","pos":"5"}]"#,
        "PX",
        "7200000",
    ])
    .await;
}

const USERS: [(&str, &str); 4] = [("u1", "okx"), ("u2", "okx"), ("u3", "bybit"), ("u4", "okx")];

/// Every read of one user, as text.
async fn reads<S: PositionStore>(s: &S, user: &str, ex: &str, out: &mut Vec<String>) {
    out.push(format!("all {user} {:?}", s.all_positions(user, ex).await));
    for inst in ["A", "B", "C", "NONE"] {
        out.push(format!(
            "size {user} {inst} {:?}",
            s.position_size(user, ex, inst).await
        ));
        for side in [Side::Long, Side::Short] {
            let got = s.get_position(user, ex, inst, side).await;
            out.push(format!("get {user} {inst} {side:?} {got:?}"));
        }
    }
}

/// Writes of every kind, with reads after each round.
async fn calls<S: PositionStore>(s: &S, out: &mut Vec<String>) {
    for (user, ex) in USERS {
        reads(s, user, ex, out).await;
    }
    for (user, ex) in USERS {
        let writes = [
            obj(r#"{"instId":"A","posSide":"long","pos":"7","extra":[1,{"x":null}]}"#),
            obj(r#"{"instId":"B","posSide":"short","pos":"4"}"#),
            obj(r#"{"instId":"C","pos":"1"}"#),
        ];
        for p in &writes {
            out.push(format!("upsert {user} {:?}", s.upsert(user, ex, p).await));
        }
        reads(s, user, ex, out).await;
        for (inst, side) in [("A", Side::Long), ("A", Side::Long), ("NONE", Side::Short)] {
            let removed = s.remove(user, ex, inst, side).await;
            out.push(format!("remove {user} {inst} {side:?} {removed:?}"));
        }
        reads(s, user, ex, out).await;
    }
    // A user's last positions removed.
    for (inst, side) in [("B", Side::Short), ("C", Side::Long)] {
        out.push(format!(
            "remove u4 {:?}",
            s.remove("u4", "okx", inst, side).await
        ));
    }
    reads(s, "u4", "okx", out).await;
}

async fn migrate(conn: &RedisConn, url: &str) {
    let store = GridStore::open(url, conn.clone()).await.unwrap();
    let report = migrate_grid_positions(&store, &MigrateOptions::new(exchanges()), &|_| {})
        .await
        .unwrap();
    assert!(report.totals.keys_migrated > 0, "{report:?}");
}

/// Runs `calls` with the store `make` builds on each deployment; with
/// `migrate_between`, Phase 2 runs after the first round and the calls
/// run again.
async fn same_answers<S: PositionStore>(make: impl Fn(RedisConn) -> S, migrate_between: bool) {
    let b = both().await;
    seed_legacy(&b).await;
    b.run(&["SET", "okx:positions:u9", "[]"]).await;
    let urls = [b._server.url(), b.cluster.url()];
    let mut answers = Vec::new();
    for (conn, url) in b.conns().into_iter().zip(&urls) {
        let store = make(conn.clone());
        let mut out = Vec::new();
        calls(&store, &mut out).await;
        if migrate_between {
            // Users the first round left in the legacy layout move now.
            let mut c = conn.clone();
            redis::cmd("SET")
                .arg("okx:positions:u5")
                .arg(r#"[{"instId":"A","pos":"2"}]"#)
                .arg("PX")
                .arg(3_600_000)
                .query_async::<()>(&mut c)
                .await
                .unwrap();
            migrate(conn, url).await;
            calls(&store, &mut out).await;
            reads(&store, "u5", "okx", &mut out).await;
        }
        answers.push(out);
    }
    for (one, many) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(one, many, "standalone vs cluster answer");
    }
    assert_eq!(answers[0].len(), answers[1].len());
    // Refusals of the API (an object-shaped value holds one side) are
    // answers too; a Redis error (CROSSSLOT above all) is not.
    let failed = answers[1].iter().find(|a| a.contains("Redis {"));
    assert!(failed.is_none(), "a call failed on the cluster: {failed:?}");
    b.assert_same_keyspace().await;
}

#[tokio::test]
async fn legacy_store_answers_on_a_cluster_as_on_one_server() {
    same_answers(LegacyStore::new, false).await;
}

#[tokio::test]
async fn hash_store_answers_on_a_cluster_as_on_one_server() {
    same_answers(HashStore::new, false).await;
}

#[tokio::test]
async fn dual_read_store_answers_on_a_cluster_as_on_one_server_across_a_migration() {
    same_answers(DualReadStore::new, true).await;
}

#[tokio::test]
async fn hash_store_on_a_cluster_writes_index_and_hashes_in_different_slots_with_ttls() {
    let b = both().await;
    // The point of the cluster variants: these keys are on different slots.
    let (hash_key, index) = ("positions:u1:okx:A:long", "positions:index:u1:okx");
    assert_ne!(key_slot(hash_key.as_bytes()), key_slot(index.as_bytes()));
    for conn in b.conns() {
        let s = HashStore::new(conn.clone());
        s.upsert("u1", "okx", &obj(r#"{"instId":"A","pos":"1","x":"y"}"#))
            .await
            .unwrap();
    }
    b.run(&["PEXPIRE", index, "3600000"]).await;
    b.run(&["PEXPIRE", hash_key, "7200000"]).await;
    for conn in b.conns() {
        let s = HashStore::new(conn.clone());
        // A new position takes the index's TTL, a replaced one keeps its own
        // and loses the fields it no longer has.
        s.upsert("u1", "okx", &obj(r#"{"instId":"B","pos":"1"}"#))
            .await
            .unwrap();
        s.upsert("u1", "okx", &obj(r#"{"instId":"A","pos":"2"}"#))
            .await
            .unwrap();
    }
    b.assert_same_keyspace().await;
    let ks = keyspace(&b.cluster.node_connections().await.unwrap()).await;
    assert_eq!(
        ks[hash_key],
        r#"hash {"instId": "A", "pos": "2"} ttl~120min"#
    );
    assert_eq!(
        ks["positions:u1:okx:B:long"],
        r#"hash {"instId": "B", "pos": "1"} ttl~60min"#
    );
}

#[tokio::test]
async fn unmigrated_legacy_writes_on_a_cluster_refuse_a_migrated_user() {
    let b = both().await;
    seed_legacy(&b).await;
    let mut answers = Vec::new();
    for (conn, url) in b
        .conns()
        .into_iter()
        .zip([b._server.url(), b.cluster.url()])
    {
        let s = LegacyStore::new(conn.clone());
        let p = obj(r#"{"instId":"Z","pos":"1"}"#);
        let mut out = vec![
            format!("{:?}", s.upsert_unmigrated("u1", "okx", &p).await),
            format!("{:?}", s.upsert_unmigrated("nobody", "okx", &p).await),
            format!(
                "{:?}",
                s.remove_unmigrated("u1", "okx", "A", Side::Long).await
            ),
        ];
        migrate(conn, &url).await;
        out.push(format!("{:?}", s.upsert_unmigrated("u1", "okx", &p).await));
        // A legacy key written again beside the index: still refused.
        let mut c = conn.clone();
        redis::cmd("SET")
            .arg("okx:positions:u1")
            .arg("[]")
            .query_async::<()>(&mut c)
            .await
            .unwrap();
        out.push(format!("{:?}", s.upsert_unmigrated("u1", "okx", &p).await));
        out.push(format!(
            "{:?}",
            s.remove_unmigrated("u1", "okx", "Z", Side::Long).await
        ));
        answers.push(out);
    }
    assert_eq!(
        answers[1],
        [
            "Ok(Done(true))",
            "Ok(Absent)",
            "Ok(Done(true))",
            // Migrated: the legacy key is gone ...
            "Ok(Absent)",
            // ... and written again beside the index, a write is refused;
            // removing a position it does not hold changes nothing.
            "Ok(Moved)",
            "Ok(Done(false))",
        ]
    );
    assert_eq!(answers[0], answers[1]);
    b.assert_same_keyspace().await;
}

#[tokio::test]
async fn order_placed_flags_and_trading_cache_answer_on_a_cluster_as_on_one_server() {
    let b = both().await;
    let mut answers = Vec::new();
    for conn in b.conns() {
        let mut out = Vec::new();
        for layout in [FlagsLayout::Standard, FlagsLayout::Legacy] {
            let f = OrderPlacedFlags::new(conn.clone(), layout);
            out.push(format!("{:?}", f.get("okx", "7", "BTC", 3).await));
            out.push(format!("{:?}", f.set("okx", "7", "BTC", 3, true).await));
            let levels = [(0, true), (1, false), (2, true)];
            out.push(format!("{:?}", f.upload("okx", "7", "BTC", levels).await));
            out.push(format!("{:?}", f.get_all("okx", "7", "BTC").await));
            out.push(format!("{:?}", f.reset("okx", "7", "BTC").await));
            out.push(format!("{:?}", f.get_all("okx", "7", "BTC").await));
            out.push(format!("{:?}", f.reset("okx", "7", "ETH").await));
        }
        let cache = TradingCache::new(conn.clone());
        for (ex, side) in [(None, Side::Long), (Some("bybit"), Side::Short)] {
            let set = cache
                .set_position("7", "BTC", side, r#"{"pos":"1"}"#, ex)
                .await;
            out.push(format!("{set:?}"));
            out.push(format!(
                "{:?}",
                cache.get_position("7", "BTC", side, ex).await
            ));
        }
        out.push(format!(
            "{:?}",
            cache.remove_position("7", "BTC", Side::Long, None).await
        ));
        out.push(format!(
            "{:?}",
            cache.remove_position("7", "BTC", Side::Long, None).await
        ));
        answers.push(out);
    }
    assert_eq!(answers[0], answers[1]);
    assert!(
        answers[1].iter().all(|a| !a.contains("Err(")),
        "{:?}",
        answers[1]
    );
    b.assert_same_keyspace().await;
}

/// Dual-read writers running through a Phase 2 migration on the cluster:
/// every acknowledged upsert is read back afterwards, whichever layout
/// its user ended up in (the steps' ordering and the guarded legacy
/// compare-and-set at work against the migration's compare-and-delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_read_writes_through_a_cluster_migration_are_all_read_back() {
    const USERS: usize = 60;
    const WRITERS: usize = 4;
    const EACH: usize = 40;
    let cluster = RedisCluster::start(test_backend())
        .await
        .expect("a cluster");
    let conn = connect(&cluster.url()).await.unwrap();
    let mut c = conn.clone();
    for u in 0..USERS {
        redis::cmd("SET")
            .arg(format!("okx:positions:w{u}"))
            .arg(format!(r#"[{{"instId":"SEED","pos":"{u}"}}]"#))
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = DualReadStore::new(conn.clone());
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..EACH {
                    let user = format!("w{}", (w * 7 + i * 13) % USERS);
                    let inst = format!("W{w}-{i}");
                    let p = obj(&format!(r#"{{"instId":"{inst}","pos":"{i}"}}"#));
                    store.upsert(&user, "okx", &p).await.unwrap();
                    written.push((user, inst, i));
                }
                written
            })
        })
        .collect();
    migrate(&conn, &cluster.url()).await;
    let dual = DualReadStore::new(conn.clone());
    let mut checked = 0;
    for w in writers {
        for (user, inst, i) in w.await.unwrap() {
            let got = dual.get_position(&user, "okx", &inst, Side::Long).await;
            let got = got.unwrap().unwrap_or_else(|| panic!("{user} {inst} lost"));
            assert_eq!(got.fields["pos"], i.to_string());
            checked += 1;
        }
    }
    assert_eq!(checked, WRITERS * EACH);
    for u in 0..USERS {
        let user = format!("w{u}");
        let seeded = dual.get_position(&user, "okx", "SEED", Side::Long).await;
        assert!(seeded.unwrap().is_some(), "{user}'s seeded position");
    }
}
