//! The cluster migration's "migrating" marker (`keys::migrating_sentinel`)
//! replayed state by state on a 3-primary Redis Cluster: each test sets up
//! one intermediate keyspace a cluster migration passes through (with raw
//! commands, or the store's own steps), then asserts what the dual-read
//! store reads, where it writes, and what the migration's undo, settle,
//! rollback and cleanup leave. Deterministic: no timing decides anything.

mod support;

use std::collections::BTreeSet;

use keyshift_engine::api::{
    DualReadStore, HashStore, LegacyStore, LegacyWrite, PositionObject, PositionStore,
};
use keyshift_engine::connection::{connect, RedisConn};
use keyshift_engine::grid_positions::debris::{find_debris, remove_debris};
use keyshift_engine::grid_positions::plan::Side;
use keyshift_engine::grid_positions::rollback::{rollback_grid_positions, RollbackOptions};
use keyshift_engine::grid_positions::store::cluster::{undo_attempts, ClusterStore};
use keyshift_engine::grid_positions::store::{GridPositionsStore, UserWrite, WriteOutcome};
use keyshift_engine::grid_positions::verify::verify_grid_positions;
use keyshift_engine::keys::{is_migrating_sentinel, migrating_sentinel, LegacyPositionsKey};
use keyshift_engine::run::journal::{Outcome, RunState};
use keyshift_harness::backend::RedisCluster;
use support::cluster::{ctx, run_record, write_for, AT};

const RUN: &str = "grid-positions-20261128_090000-0a1b";

async fn cluster() -> (RedisCluster, RedisConn) {
    let cluster = support::cluster::cluster().await;
    let conn = connect(&cluster.url()).await.expect("redis+cluster://");
    assert!(conn.is_cluster());
    (cluster, conn)
}

fn marker() -> String {
    migrating_sentinel(RUN)
}

/// A legacy value of long positions `inst` with `pos` = `pos`.
fn value(inst: &[&str], pos: &str) -> Vec<u8> {
    let items: Vec<String> = inst
        .iter()
        .map(|i| format!(r#"{{"instId":"{i}","pos":"{pos}"}}"#))
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

fn obj(inst: &str, pos: &str) -> PositionObject {
    PositionObject::parse(&format!(r#"{{"instId":"{inst}","pos":"{pos}"}}"#)).unwrap()
}

async fn cmd<T: redis::FromRedisValue>(conn: &RedisConn, args: &[&str]) -> T {
    let mut c = conn.clone();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c).await.unwrap()
}

async fn set(conn: &RedisConn, key: &str, value: &[u8]) {
    let mut c = conn.clone();
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
}

async fn exists(conn: &RedisConn, key: &str) -> bool {
    cmd(conn, &["EXISTS", key]).await
}

async fn members(conn: &RedisConn, index: &str) -> BTreeSet<String> {
    cmd(conn, &["SMEMBERS", index]).await
}

async fn pos_of(conn: &RedisConn, hash: &str) -> Option<String> {
    cmd(conn, &["HGET", hash, "pos"]).await
}

/// A position hash as the run writes it (with its metadata).
async fn our_hash(conn: &RedisConn, key: &LegacyPositionsKey, inst: &str, pos: &str) {
    let hash = key.position_key(&format!("{inst}:long"));
    let legacy = key.key();
    let args = [
        "HSET",
        &hash,
        "instId",
        inst,
        "pos",
        pos,
        "migrated_from",
        &legacy,
        "migrated_at",
        AT,
    ];
    cmd::<()>(conn, &args).await;
}

/// Every member has its hash and every position hash of the user its
/// member: what two application writers can never break the other way.
async fn consistent(conn: &RedisConn, key: &LegacyPositionsKey, insts: &[&str]) {
    let index = members(conn, &key.index_key()).await;
    for inst in insts {
        let member = format!("{inst}:long");
        let hash = exists(conn, &key.position_key(&member)).await;
        assert!(
            !hash || index.contains(&member),
            "{inst}: a hash without its index member (members {index:?})"
        );
    }
}

async fn inst_ids<S: PositionStore>(store: &S, user: &str) -> Vec<(String, String)> {
    store
        .all_positions(user, "okx")
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.inst_id, p.fields["pos"].clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// Mid-migration (after the index, before the compare-and-delete): the
/// index holds the marker and the legacy key exists. The legacy key is the
/// truth; the hashes the migration wrote are not read yet.
async fn mid_migration(conn: &RedisConn, uid: &str) -> LegacyPositionsKey {
    let key = LegacyPositionsKey::new("okx", uid);
    set(conn, &key.key(), &value(&["A", "B"], "1")).await;
    our_hash(conn, &key, "A", "stale").await;
    our_hash(conn, &key, "B", "stale").await;
    let index = key.index_key();
    cmd::<()>(conn, &["SADD", &index, "A:long", "B:long", &marker()]).await;
    key
}

/// User `uid` with long positions `insts`, migrated by `store` in one
/// attempt that ran to the end (the legacy key had no TTL).
async fn migrated(store: &ClusterStore, conn: &RedisConn, uid: &str, insts: &[&str]) -> UserWrite {
    let v = value(insts, "1");
    let user = write_for(uid, &v);
    set(conn, &user.legacy_key, &v).await;
    let out = store
        .migrate_users(&ctx(RUN), std::slice::from_ref(&user))
        .await
        .unwrap();
    assert_eq!(out, [WriteOutcome::Migrated { pttl_ms: -1 }]);
    user
}

/// Regression (issue 15): the cluster's per-user steps journal the SHA-256
/// of the legacy value they read (and backed up), as one server does.
#[tokio::test]
async fn cluster_journal_records_the_digest_of_the_value_read() {
    use sha2::{Digest, Sha256};
    let (_cluster, conn) = cluster().await;
    let store = ClusterStore::new(conn.clone());
    let user = migrated(&store, &conn, "9", &["A", "B"]).await;
    let json: String = cmd(&conn, &["HGET", &ctx(RUN).outcomes_key, &user.legacy_key]).await;
    let Outcome::Migrated { digest, .. } = serde_json::from_str(&json).unwrap() else {
        panic!("not migrated: {json}");
    };
    let backup: Vec<u8> = cmd(&conn, &["GET", &user.backup_key]).await;
    assert_eq!(backup, user.expected);
    let sha: String = Sha256::digest(&backup)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, sha);
}

#[tokio::test]
async fn dual_read_reads_legacy_while_index_holds_the_sentinel() {
    let (_cluster, conn) = cluster().await;
    mid_migration(&conn, "1").await;
    let dual = DualReadStore::new(conn.clone());
    assert_eq!(inst_ids(&dual, "1").await, pairs(&[("A", "1"), ("B", "1")]));
    let a = dual
        .get_position("1", "okx", "A", Side::Long)
        .await
        .unwrap();
    assert_eq!(a.unwrap().fields["pos"], "1");
    assert_eq!(dual.position_size("1", "okx", "B").await.unwrap(), 1.0);
    // The hash store has no fallback: it reads the hashes and skips the
    // marker (never read as a position, never an HGETALL of its own).
    let hash = HashStore::new(conn.clone());
    assert_eq!(
        inst_ids(&hash, "1").await,
        pairs(&[("A", "stale"), ("B", "stale")])
    );
    // Once the marker goes, the index wins and the legacy key is invisible.
    cmd::<()>(&conn, &["SREM", "positions:index:1:okx", &marker()]).await;
    assert_eq!(
        inst_ids(&dual, "1").await,
        pairs(&[("A", "stale"), ("B", "stale")])
    );
}

#[tokio::test]
async fn dual_read_reads_new_layout_once_the_legacy_key_is_deleted_before_the_sentinel_goes() {
    let (_cluster, conn) = cluster().await;
    let key = mid_migration(&conn, "2").await;
    // The migration's compare-and-delete happened; its marker removal not
    // yet (the old order's GAP: neither layout, read as "no positions").
    cmd::<()>(&conn, &["DEL", &key.key()]).await;
    let dual = DualReadStore::new(conn.clone());
    assert_eq!(
        inst_ids(&dual, "2").await,
        pairs(&[("A", "stale"), ("B", "stale")])
    );
    let b = dual
        .get_position("2", "okx", "B", Side::Long)
        .await
        .unwrap();
    assert_eq!(b.unwrap().fields["pos"], "stale");
    // Every position removed in that window: the marker alone is no
    // position, and the user has none.
    for inst in ["A", "B"] {
        assert!(dual.remove("2", "okx", inst, Side::Long).await.unwrap());
    }
    assert_eq!(members(&conn, &key.index_key()).await, [marker()].into());
    assert!(inst_ids(&dual, "2").await.is_empty());
}

#[tokio::test]
async fn dual_read_write_during_migration_window_goes_to_the_legacy_key() {
    let (_cluster, conn) = cluster().await;
    let key = mid_migration(&conn, "3").await;
    let dual = DualReadStore::new(conn.clone());
    dual.upsert("3", "okx", &obj("C", "7")).await.unwrap();
    assert!(dual.remove("3", "okx", "A", Side::Long).await.unwrap());
    // Written into the legacy key (so the migration's compare-and-delete
    // sees it changed and redoes the user); the new layout untouched.
    let legacy: Vec<u8> = cmd(&conn, &["GET", &key.key()]).await;
    let text = String::from_utf8(legacy).unwrap();
    assert!(text.contains(r#""instId":"C""#) && !text.contains(r#""instId":"A""#));
    assert!(!exists(&conn, &key.position_key("C:long")).await);
    assert_eq!(
        pos_of(&conn, &key.position_key("A:long")).await.as_deref(),
        Some("stale")
    );
    assert_eq!(
        members(&conn, &key.index_key()).await,
        ["A:long".to_owned(), "B:long".to_owned(), marker()].into()
    );
    assert_eq!(inst_ids(&dual, "3").await, pairs(&[("B", "1"), ("C", "7")]));
    // The old application's guarded write is the legacy route too, not
    // "moved"; an index without the marker is.
    let old_app = LegacyStore::new(conn.clone());
    let w = old_app.upsert_unmigrated("3", "okx", &obj("D", "4")).await;
    assert_eq!(w.unwrap(), LegacyWrite::Done(true));
    cmd::<()>(&conn, &["SREM", &key.index_key(), &marker()]).await;
    let w = old_app.upsert_unmigrated("3", "okx", &obj("E", "5")).await;
    assert_eq!(w.unwrap(), LegacyWrite::Moved);
    // Marker back, legacy key deleted (the compare-and-delete ran): the
    // dual-read write goes to the new layout, hash and member.
    cmd::<()>(&conn, &["SADD", &key.index_key(), &marker()]).await;
    cmd::<()>(&conn, &["DEL", &key.key()]).await;
    dual.upsert("3", "okx", &obj("F", "6")).await.unwrap();
    assert_eq!(
        pos_of(&conn, &key.position_key("F:long")).await.as_deref(),
        Some("6")
    );
    assert!(members(&conn, &key.index_key()).await.contains("F:long"));
    assert!(
        !exists(&conn, &key.key()).await,
        "no legacy key brought back"
    );
}

/// The undo of an attempt whose legacy key someone deleted: the dual-read
/// store wrote the new layout in between (marker, no legacy key). The
/// old undo deleted every planned hash by name, the application's
/// rewrite of one included.
#[tokio::test]
async fn undo_keeps_a_hash_the_application_rewrote() {
    let (_cluster, conn) = cluster().await;
    let v = value(&["A", "B"], "1");
    let user = write_for("4", &v);
    let key = LegacyPositionsKey::new("okx", "4");
    // Steps 2-5 of an attempt, then the legacy key deleted by someone.
    set(&conn, &user.backup_key, &v).await;
    our_hash(&conn, &key, "A", "1").await;
    our_hash(&conn, &key, "B", "1").await;
    cmd::<()>(
        &conn,
        &["SADD", &user.index_key, "A:long", "B:long", &marker()],
    )
    .await;
    cmd::<()>(
        &conn,
        &["HSET", &ctx(RUN).outcomes_key, &user.legacy_key, "{}"],
    )
    .await;
    let dual = DualReadStore::new(conn.clone());
    dual.upsert("4", "okx", &obj("A", "9")).await.unwrap();
    dual.upsert("4", "okx", &obj("C", "3")).await.unwrap();
    undo_attempts(&conn, &ctx(RUN), std::slice::from_ref(&user))
        .await
        .unwrap();
    // The application's A and C stay, indexed; the run's B and marker go.
    assert_eq!(
        pos_of(&conn, &key.position_key("A:long")).await.as_deref(),
        Some("9")
    );
    assert!(!exists(&conn, &key.position_key("B:long")).await);
    assert_eq!(
        members(&conn, &key.index_key()).await,
        ["A:long".to_owned(), "C:long".to_owned()].into()
    );
    assert!(!exists(&conn, &user.backup_key).await);
    let outcome: Option<String> =
        cmd(&conn, &["HGET", &ctx(RUN).outcomes_key, &user.legacy_key]).await;
    assert_eq!(outcome, None);
    assert_eq!(inst_ids(&dual, "4").await, pairs(&[("A", "9"), ("C", "3")]));
    consistent(&conn, &key, &["A", "B", "C"]).await;
}

/// H1 of the old order, replayed: after the compare-and-delete the old
/// migrator checked which hashes existed, SADDed them, then dropped the
/// members whose hash had gone meanwhile; an application remove then
/// re-upsert of one position in between ended as a hash without member.
/// Now the migration touches no member after its delete, only its marker.
#[tokio::test]
async fn lost_upsert_between_index_check_and_member_drop_cannot_happen() {
    let (_cluster, conn) = cluster().await;
    let store = ClusterStore::new(conn.clone());
    let user = migrated(&store, &conn, "5", &["P", "Q"]).await;
    // Back to "deleted, marker still there" (a kill before step 7).
    cmd::<()>(&conn, &["SADD", &user.index_key, &marker()]).await;
    let key = LegacyPositionsKey::new("okx", "5");
    let dual = DualReadStore::new(conn.clone());
    // The application removes P, the marker goes (the resumed run's
    // settle), the application upserts P again; and Q the other way round.
    assert!(dual.remove("5", "okx", "P", Side::Long).await.unwrap());
    assert!(dual.remove("5", "okx", "Q", Side::Long).await.unwrap());
    dual.upsert("5", "okx", &obj("Q", "8")).await.unwrap();
    assert_eq!(
        store
            .settle_interrupted(&run_record(RUN, RunState::Running))
            .await
            .unwrap(),
        1
    );
    dual.upsert("5", "okx", &obj("P", "2")).await.unwrap();
    assert_eq!(inst_ids(&dual, "5").await, pairs(&[("P", "2"), ("Q", "8")]));
    assert_eq!(
        members(&conn, &user.index_key).await,
        ["P:long".to_owned(), "Q:long".to_owned()].into()
    );
    consistent(&conn, &key, &["P", "Q"]).await;
    // Settled: nothing left to settle.
    assert_eq!(
        store
            .settle_interrupted(&run_record(RUN, RunState::Running))
            .await
            .unwrap(),
        0
    );
}

/// Killed between the index and the compare-and-delete, and the legacy
/// key rewritten before the resume: the resumed attempt rewrites the
/// marked index exactly (its own), deletes the hash of the member the plan
/// dropped, and finishes; a dropped member whose hash someone else wrote
/// makes the user a conflict instead of leaving that hash without member.
#[tokio::test]
async fn resume_after_a_kill_between_index_and_delete_rewrites_its_own_index() {
    let (_cluster, conn) = cluster().await;
    let store = ClusterStore::new(conn.clone());
    let key = mid_migration(&conn, "6").await;
    let v = value(&["A", "C"], "2");
    set(&conn, &key.key(), &v).await;
    let user = write_for("6", &v);
    let out = store
        .migrate_users(&ctx(RUN), std::slice::from_ref(&user))
        .await
        .unwrap();
    assert_eq!(out, [WriteOutcome::Migrated { pttl_ms: -1 }]);
    assert_eq!(
        members(&conn, &key.index_key()).await,
        ["A:long".to_owned(), "C:long".to_owned()].into()
    );
    assert!(!exists(&conn, &key.position_key("B:long")).await);
    assert_eq!(
        pos_of(&conn, &key.position_key("A:long")).await.as_deref(),
        Some("2")
    );
    assert!(!exists(&conn, &key.key()).await);

    let other = mid_migration(&conn, "7").await;
    cmd::<()>(&conn, &["DEL", &other.position_key("B:long")]).await;
    cmd::<()>(
        &conn,
        &["HSET", &other.position_key("B:long"), "pos", "foreign"],
    )
    .await;
    let v = value(&["A"], "2");
    set(&conn, &other.key(), &v).await;
    let out = store
        .migrate_users(&ctx(RUN), &[write_for("7", &v)])
        .await
        .unwrap();
    assert_eq!(
        out,
        [WriteOutcome::Conflict {
            key: other.position_key("B:long")
        }]
    );
    assert_eq!(
        pos_of(&conn, &other.position_key("B:long"))
            .await
            .as_deref(),
        Some("foreign")
    );
    assert!(members(&conn, &other.index_key()).await.contains("B:long"));
}

/// A user interrupted with the marker in place, rolled back, and (another
/// user, not migrated yet) cleaned up: no marker-only index is left.
#[tokio::test]
async fn rollback_and_cleanup_of_a_user_interrupted_with_the_sentinel_in_place() {
    let (_cluster, conn) = cluster().await;
    let store = ClusterStore::new(conn.clone());
    // Rollback: migrated, then the marker put back (killed before step 7).
    let user = migrated(&store, &conn, "8", &["A"]).await;
    cmd::<()>(&conn, &["SADD", &user.index_key, &marker()]).await;
    let run = run_record(RUN, RunState::Failed);
    let opts = RollbackOptions {
        backup_stamp: None,
        dry_run: false,
        force: false,
    };
    let report = rollback_grid_positions(&store, &conn, &run, &opts)
        .await
        .unwrap();
    let report = serde_json::to_string(&report).unwrap();
    assert!(!report.contains("index_member_added"), "{report}");
    assert!(
        !exists(&conn, &user.index_key).await,
        "marker-only index left"
    );
    assert!(!exists(&conn, &user.positions[0].key).await);
    let back: Vec<u8> = cmd(&conn, &["GET", &user.legacy_key]).await;
    assert_eq!(back, user.expected);

    // Cleanup: killed after the index, before the outcome (no journal entry).
    let key = mid_migration(&conn, "9").await;
    let debris = find_debris(&conn, &run).await.unwrap();
    let index = key.index_key();
    let listed = debris
        .index_members
        .get(&index)
        .cloned()
        .unwrap_or_default();
    assert!(
        listed.iter().any(|m| is_migrating_sentinel(m)),
        "{debris:?}"
    );
    remove_debris(&conn, &debris).await.unwrap();
    assert!(!exists(&conn, &index).await, "marker-only index left");
    assert!(
        exists(&conn, &key.key()).await,
        "the legacy key is the truth"
    );
}

/// A marker left after a run (stopped between index and marker removal,
/// never resumed) fails `index`, and the sample says what to do.
#[tokio::test]
async fn verify_reports_a_leftover_sentinel_as_an_interrupted_run() {
    let (_cluster, conn) = cluster().await;
    let store = ClusterStore::new(conn.clone());
    let user = migrated(&store, &conn, "10", &["A"]).await;
    let run = run_record(RUN, RunState::Done);
    let clean = verify_grid_positions(&conn, &run, &|_| {}).await.unwrap();
    let index = |r: &keyshift_engine::grid_positions::verify::VerifyReport| {
        r.invariants
            .iter()
            .find(|i| i.id == "index")
            .cloned()
            .expect("an index invariant")
    };
    assert!(index(&clean).passed, "{:?}", index(&clean));
    cmd::<()>(&conn, &["SADD", &user.index_key, &marker()]).await;
    let left = verify_grid_positions(&conn, &run, &|_| {}).await.unwrap();
    let result = index(&left);
    assert!(!result.passed);
    assert!(
        result
            .samples
            .iter()
            .any(|s| s.contains("interrupted run: resume it")),
        "{result:?}"
    );
}
