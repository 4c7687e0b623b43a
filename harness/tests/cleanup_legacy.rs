//! `keyshift cleanup-legacy` (Phase 1.5) on a real disposable Redis: it
//! deletes the legacy position-cache keys and nothing else, by exact name.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use keyshift_harness::digest::{compare, digest};
use keyshift_harness::seed::{self, generate, load_fixture_dir, GenConfig};
use support::cli::{keyshift, keyshift_on, run};
use support::{redis, TestRedis};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");
/// The test runs in seconds; TTLs drift by that much between digests.
const TTL_TOLERANCE_MS: i64 = 30_000;

/// Legacy cache keys whose ids hold glob characters: each must go by its
/// exact name, and the near-misses in `GLOB_NEIGHBOURS` stay.
const GLOB_LEGACY: &[&str] = &[
    "position:*:*",
    "position:u?1:BTC-USDT-SWAP",
    "position:[ab]:ETH",
    r"position:a\b:ETH",
    "user:*:position:*:long",
    "user:[u]:position:SOL:short",
];
/// Keys a glob delete of the names above would also take (`*` and `?`
/// match `:` in Redis globs), none of them a legacy cache key.
const GLOB_NEIGHBOURS: &[&str] = &[
    // Standard cache keys, with and without glob characters.
    "position:*:okx:*:long",
    "position:u1:okx:BTC-USDT-SWAP:long",
    "position:fx-std-1:bybit:ETH-USDT-SWAP:short",
    // Unknown keys.
    "position:1:BTC:extra",
    "position:",
    "user:1:position:BTC:net",
    "user:a:b:position:SOL:long",
    "user:u:position:SOL:short:x",
];

/// Seeds generated users, the fixtures and the glob keys; returns the
/// keys cleanup-legacy must delete, decided by hand from DESIGN §1.
async fn seed_all(db: &TestRedis) -> BTreeSet<String> {
    let g = generate(&GenConfig {
        users: 500,
        seed: 3,
        ..Default::default()
    });
    let mut ks = g.keyspace.clone();
    ks.extend(load_fixture_dir(Path::new(FIXTURES)).unwrap());
    seed::load(&db.conn, &ks).await.unwrap();
    for k in GLOB_LEGACY.iter().chain(GLOB_NEIGHBOURS) {
        db.set_px(k, "{}", 300_000).await;
    }
    let doomed: BTreeSet<String> = ks
        .entries
        .iter()
        .map(|e| e.key.clone())
        .filter(|k| {
            let p: Vec<&str> = k.split(':').collect();
            matches!(p.as_slice(), ["position", _, _])
                || matches!(p.as_slice(), ["user", _, "position", _, "long" | "short"])
        })
        .chain(GLOB_LEGACY.iter().map(|k| (*k).to_owned()))
        .collect();
    assert_eq!(
        doomed.len(),
        g.truth.position_cache_keys + 2 + GLOB_LEGACY.len(),
        "the generator's cache keys, the fixture's two, the glob ones"
    );
    doomed
}

fn processed_line(n: usize) -> String {
    format!("\nProcessed: {n} keys\n")
}

#[tokio::test]
async fn deletes_legacy_cache_keys_only() {
    let db = redis().await;
    let doomed = seed_all(&db).await;
    let keep = |k: &str| !doomed.contains(k);
    let before = digest(&db.conn, keep).await.unwrap();
    let all_before = db.keys().await.len();

    let ran = keyshift_on(&db, &["cleanup-legacy", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains(&processed_line(doomed.len())), "{ran}");
    assert!(
        ran.stdout
            .contains(&format!("Deleted: {} keys", doomed.len())),
        "{ran}"
    );

    let after_keys: BTreeSet<String> = db.keys().await.into_iter().collect();
    let left: Vec<&String> = doomed.intersection(&after_keys).collect();
    assert!(left.is_empty(), "legacy cache keys left: {left:?}");
    assert_eq!(after_keys.len(), all_before - doomed.len());
    let after = digest(&db.conn, keep).await.unwrap();
    let diff = compare(&before, &after, TTL_TOLERANCE_MS);
    assert!(diff.is_clean(), "other keys changed: {diff:?}");
    for k in GLOB_NEIGHBOURS {
        assert!(after_keys.contains(*k), "{k} was deleted");
    }

    // Nothing left to do: a second run deletes nothing.
    let ran = keyshift_on(&db, &["cleanup-legacy", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains(&processed_line(0)), "{ran}");
}

#[tokio::test]
async fn dry_run_lists_and_deletes_nothing() {
    let db = redis().await;
    let doomed = seed_all(&db).await;
    let before = digest(&db.conn, |_| true).await.unwrap();

    let ran = keyshift_on(&db, &["cleanup-legacy", "--dry-run"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stdout.contains("Dry run: nothing was deleted"), "{ran}");
    assert!(
        ran.stdout
            .contains(&format!("Would delete: {} keys", doomed.len())),
        "{ran}"
    );
    assert!(ran.stdout.contains(&processed_line(doomed.len())), "{ran}");
    let listed: Vec<&str> = ran
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.strip_suffix('"'))
        .collect();
    assert_eq!(listed.len(), 20.min(doomed.len()), "{ran}");
    for k in &listed {
        let k = k.replace(r"\\", r"\");
        assert!(doomed.contains(&k), "{k} listed but not a legacy cache key");
    }

    let after = digest(&db.conn, |_| true).await.unwrap();
    let diff = compare(&before, &after, TTL_TOLERANCE_MS);
    assert!(diff.is_clean(), "a dry run changed the keyspace: {diff:?}");
}

#[tokio::test]
async fn refuses_without_force_off_a_terminal() {
    let db = redis().await;
    db.set("position:1:BTC", "{}").await;
    let url = db.url();
    let mut cmd = keyshift(&["cleanup-legacy", "--redis", &url]);
    cmd.write_stdin("yes\n");
    let ran = run(cmd).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("--force"), "{ran}");
    assert_eq!(db.keys().await, ["position:1:BTC"]);
}

#[tokio::test]
async fn a_key_of_another_type_is_reported_and_kept() {
    let db = redis().await;
    db.set("position:1:BTC", "{}").await;
    db.cmd::<i64>(&["HSET", "position:2:BTC", "a", "b"]).await;
    db.cmd::<i64>(&["RPUSH", "user:3:position:ETH:long", "x"])
        .await;

    let ran = keyshift_on(&db, &["cleanup-legacy", "--force"]).await;
    assert_eq!(ran.code, Some(3), "{ran}");
    assert!(ran.stdout.contains("\"position:2:BTC\" is a hash"), "{ran}");
    assert!(
        ran.stdout
            .contains("\"user:3:position:ETH:long\" is a list"),
        "{ran}"
    );
    assert!(ran.stdout.contains(&processed_line(3)), "{ran}");
    assert_eq!(
        db.keys().await,
        ["position:2:BTC", "user:3:position:ETH:long"]
    );
}

#[tokio::test]
async fn a_schema_without_cleanup_patterns_is_refused() {
    let db = redis().await;
    db.set("position:1:BTC", "{}").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("schema.toml");
    std::fs::write(
        &file,
        "exchanges = [\"okx\"]\n[placeholders.u]\nkind = \"id\"\n[[pattern]]\nid = \"p\"\nfamily = \"f\"\nkind = \"legacy\"\ntemplate = \"position:{u}:BTC\"\ntype = \"string\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let ran = keyshift_on(&db, &["cleanup-legacy", "--force", "--schema", path]).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("cleanup = true"), "{ran}");
    assert_eq!(db.keys().await, ["position:1:BTC"]);
}
