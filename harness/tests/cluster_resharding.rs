//! Slots moving between primaries while keyshift works on a 3-primary
//! cluster (process backend unless KEYSHIFT_TEST_BACKEND says otherwise):
//! key commands and pipelines meeting ASK and MOVED get the answers a
//! cluster at rest gives, a SCAN that slots moved under fails loudly
//! instead of ending with keys unseen, and `migrate grid-positions` run
//! while the cluster is resharded ends with every user migrated, by itself
//! or after the rerun its error asks for.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keyshift_engine::connection::scan::scan_step;
use keyshift_engine::connection::{connect, RedisConn};
use keyshift_engine::keys::{LegacyPositionsKey, DEFAULT_EXCHANGES};
use keyshift_engine::EngineError;
use keyshift_harness::backend::{cluster_slot_ranges, key_slot, RedisCluster, SlotMove};
use keyshift_harness::seed::{self, generate, GenConfig};
use support::cli::keyshift_at;
use support::cluster::cluster;

/// A hash tag whose slot node `node` serves in a fresh cluster.
fn tag_on(node: usize) -> String {
    let (first, last) = cluster_slot_ranges(3)[node];
    (0..)
        .map(|i| format!("t{i}"))
        .find(|t| (first..=last).contains(&key_slot(t.as_bytes())))
        .expect("some tag hashes there")
}

/// Every key through one SCAN loop of `conn`, or the first error.
async fn scan_all(conn: &RedisConn, count: usize) -> Result<BTreeSet<String>, EngineError> {
    let keys = support::cluster::scan_all(conn, count).await?;
    Ok(keys.into_iter().collect())
}

/// `GET key` on one node directly: `Ok(None)` when it answers nil, `Err`
/// for a redirect (the node does not hold it).
async fn get_on(
    cluster: &RedisCluster,
    node: usize,
    key: &str,
) -> redis::RedisResult<Option<String>> {
    let mut con = cluster.nodes()[node]
        .connection()
        .await
        .expect("node connection");
    redis::cmd("GET").arg(key).query_async(&mut con).await
}

/// Keys of one slot, all on node 0 at first.
struct SlotKeys {
    /// Moved to node 1 while the slot is half moved.
    moved: String,
    stayed: String,
    /// 10, incremented once through a pipeline.
    counter: String,
    /// Written through a pipeline while the slot is half moved.
    created: String,
}

#[tokio::test]
async fn ask_redirects_are_followed_by_commands_and_pipelines() {
    let cluster = cluster().await;
    let tag = tag_on(0);
    let key = |name: &str| format!("{{{tag}}}:{name}");
    let keys = SlotKeys {
        moved: key("moved"),
        stayed: key("stayed"),
        counter: key("counter"),
        created: key("created"),
    };
    let mv = half_move(&cluster, key_slot(tag.as_bytes()), &keys).await;
    let conn = connect(&cluster.url()).await.unwrap();
    let mut c = conn.clone();
    commands_and_pipelines_follow_ask(&mut c, &keys).await;

    // The move completes (MIGRATE refuses a key the target already holds:
    // a command run twice, on both nodes, would stop it here).
    cluster
        .finish_slot_move(&mv)
        .await
        .expect("the slot moves over");
    for (k, v) in [
        (&keys.moved, "m"),
        (&keys.stayed, "s"),
        (&keys.counter, "11"),
        (&keys.created, "c"),
    ] {
        assert_eq!(
            get_on(&cluster, 1, k).await.unwrap().as_deref(),
            Some(v),
            "{k} on node 1"
        );
    }
    // And MOVED: the client's old slot map sends the next reads to node 0.
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys.counter)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, [Some("11".to_owned())]);
    let mut pipe = redis::pipe();
    pipe.cmd("GET")
        .arg(&keys.stayed)
        .cmd("GET")
        .arg(&keys.created);
    let after: (String, String) = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(after, ("s".to_owned(), "c".to_owned()));
}

/// Writes `moved`, `stayed` and `counter` on node 0, then moves `slot`
/// half way: `moved` on node 1, the others still on node 0.
async fn half_move(cluster: &RedisCluster, slot: u16, keys: &SlotKeys) -> SlotMove {
    let mut source = cluster.nodes()[0].connection().await.unwrap();
    for (k, v) in [
        (&keys.moved, "m"),
        (&keys.stayed, "s"),
        (&keys.counter, "10"),
    ] {
        redis::cmd("SET")
            .arg(k)
            .arg(v)
            .query_async::<()>(&mut source)
            .await
            .unwrap();
    }
    let mv = cluster.begin_slot_move(slot, 0, 1).await.unwrap();
    cluster.migrate_keys(&mv, &[&keys.moved]).await.unwrap();
    assert!(
        get_on(cluster, 0, &keys.moved).await.is_err(),
        "node 0 answers ASK"
    );
    assert_eq!(
        get_on(cluster, 0, &keys.stayed).await.unwrap().as_deref(),
        Some("s")
    );
    mv
}

/// While the slot is half moved: a command, a pipeline that writes and
/// one that only reads each get the answers of a cluster at rest.
async fn commands_and_pipelines_follow_ask(c: &mut RedisConn, keys: &SlotKeys) {
    let SlotKeys {
        moved,
        stayed,
        counter,
        created,
    } = keys;
    let got: Vec<Option<String>> = redis::cmd("MGET").arg(moved).query_async(c).await.unwrap();
    assert_eq!(got, [Some("m".to_owned())], "one command follows ASK");

    // One slot's part of a pipeline: a key the source holds first (its
    // INCR must run once, on the source), then keys on the target and a
    // new key (the source answers ASK for both).
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg(counter);
    pipe.cmd("GET").arg(moved);
    pipe.cmd("SET").arg(created).arg("c").ignore();
    pipe.cmd("GET").arg(created);
    pipe.cmd("GET").arg(stayed);
    let (incremented, got_moved, got_created, got_stayed): (i64, String, String, String) =
        pipe.query_async(c).await.expect("the pipeline meets ASK");
    assert_eq!(
        (
            incremented,
            got_moved.as_str(),
            got_created.as_str(),
            got_stayed.as_str()
        ),
        (11, "m", "c", "s")
    );

    // Reads only (the read-only user's pipelines): the same answers.
    let mut pipe = redis::pipe();
    pipe.cmd("GET")
        .arg(moved)
        .cmd("GET")
        .arg(stayed)
        .cmd("GET")
        .arg(created);
    let reads: (String, String, String) = pipe.query_async(c).await.expect("reads meet ASK");
    assert_eq!(reads, ("m".to_owned(), "s".to_owned(), "c".to_owned()));
}

#[tokio::test]
async fn a_scan_that_slots_moved_under_fails_and_a_fresh_scan_sees_every_key() {
    let cluster = cluster().await;
    let conn = connect(&cluster.url()).await.unwrap();
    let seeded: BTreeSet<String> = (0..3000).map(|i| format!("k:{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &seeded {
        pipe.cmd("SET").arg(k).arg(1).ignore();
    }
    let mut c = conn.clone();
    pipe.query_async::<()>(&mut c).await.unwrap();
    assert_eq!(scan_all(&conn, 100).await.unwrap(), seeded);

    // Slots move from the last primary, not scanned yet, to the first,
    // being scanned: their keys would be seen by no step.
    let (cursor, _): (u64, Vec<String>) =
        scan_step(&conn, 0, None, 10, "a test SCAN").await.unwrap();
    assert_ne!(cursor, 0);
    let moved = cluster.move_slots(2, 0, 200).await.unwrap();
    assert_eq!(moved.len(), 200);
    let err = scan_step::<String, _>(&conn, cursor, None, 10, "a test SCAN")
        .await
        .map(|_| ())
        .expect_err("the SCAN must not go on over a moved slot map");
    let text = err.to_string();
    assert!(matches!(err, EngineError::Resharded { .. }), "{text}");
    assert!(text.contains("slot map changed"), "{text}");
    assert!(text.contains("rerun the same command"), "{text}");
    assert_eq!(scan_all(&conn, 100).await.unwrap(), seeded, "a fresh SCAN");

    // A slot on its way (keys leave one by one before the map changes).
    let slot = *cluster.slots_of(1).await.unwrap().last().unwrap();
    let mv = cluster.begin_slot_move(slot, 1, 2).await.unwrap();
    let err = scan_all(&conn, 100)
        .await
        .expect_err("a SCAN over a moving slot");
    let text = err.to_string();
    assert!(matches!(err, EngineError::Resharded { .. }), "{text}");
    assert!(
        text.contains(&format!("slot {slot} migrating"))
            || text.contains(&format!("slot {slot} importing")),
        "{text}"
    );
    cluster.finish_slot_move(&mv).await.unwrap();
    assert_eq!(
        scan_all(&conn, 100).await.unwrap(),
        seeded,
        "after the move"
    );
}

/// Legacy position keys left anywhere, by a fresh SCAN after resharding.
async fn legacy_left(url: &str) -> Vec<String> {
    let conn = connect(url).await.unwrap();
    scan_all(&conn, 500)
        .await
        .unwrap()
        .into_iter()
        .filter(|k| LegacyPositionsKey::parse(k, &DEFAULT_EXCHANGES).is_some())
        .collect()
}

#[tokio::test]
async fn migration_survives_resharding_mid_run() {
    let cluster = Arc::new(cluster().await);
    let generated = generate(&GenConfig {
        users: 800,
        seed: 0x5e5a_4d00,
        malformed_rate: 0.0,
        ..GenConfig::default()
    });
    let primaries = cluster.primaries().await.unwrap();
    seed::load(&primaries, &generated.keyspace).await.unwrap();
    let url = cluster.url();
    assert!(!legacy_left(&url).await.is_empty());

    // A slot of node 0 holding legacy keys is already on its way to node 1
    // when the run starts, half its keys moved: the run meets ASK and an
    // open move whatever its speed.
    let (first, last) = cluster_slot_ranges(3)[0];
    let legacy_slot = generated
        .keyspace
        .entries
        .iter()
        .filter(|e| LegacyPositionsKey::parse(&e.key, &DEFAULT_EXCHANGES).is_some())
        .map(|e| key_slot(e.key.as_bytes()))
        .find(|s| (first..=last).contains(s))
        .expect("a legacy key on node 0");
    let mv = cluster.begin_slot_move(legacy_slot, 0, 1).await.unwrap();
    cluster.move_keys(&mv, 1).await.unwrap();

    let bin = assert_cmd::cargo::cargo_bin("keyshift");
    let child = Command::new(&bin)
        .args(["migrate", "grid-positions", "--force", "--redis", &url])
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keyshift runs");
    // While it runs: the open move completes, then slots go back and forth
    // between nodes 1 and 2, a few at a time, until the run ends.
    let done = Arc::new(AtomicBool::new(false));
    let resharder = {
        let (cluster, done) = (Arc::clone(&cluster), Arc::clone(&done));
        tokio::spawn(async move {
            cluster.finish_slot_move(&mv).await.unwrap();
            let mut moves = 1;
            while !done.load(Ordering::SeqCst) {
                let (from, to) = if moves % 2 == 1 { (1, 2) } else { (2, 1) };
                cluster.move_slots(from, to, 5).await.unwrap();
                moves += 1;
            }
            moves
        })
    };
    let first_run = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    done.store(true, Ordering::SeqCst);
    let moves = resharder.await.unwrap();
    let stderr = String::from_utf8_lossy(&first_run.stderr).into_owned();
    let code = first_run.status.code();
    eprintln!("first run: exit {code:?} with {moves} slot moves under it");
    // Success, or exit 4 saying why and what to do; never anything else.
    match code {
        Some(0) => {}
        Some(4) => assert!(
            stderr.contains("resharded") && stderr.contains("rerun the same command"),
            "{stderr}"
        ),
        other => panic!("exit {other:?}: {stderr}"),
    }

    // At rest, the same command finishes the job (resuming the run when
    // the first one stopped; nothing to do when it finished).
    let rerun = keyshift_at(&url, &["migrate", "grid-positions", "--force", "--json"]).await;
    assert_eq!(rerun.code, Some(0), "{rerun}");
    if code == Some(4) {
        assert_eq!(rerun.json()["resumed"], true, "{rerun}");
    }
    let verify = keyshift_at(&url, &["verify", "grid-positions"]).await;
    assert_eq!(verify.code, Some(0), "{verify}");
    assert_eq!(legacy_left(&url).await, Vec::<String>::new());
}
