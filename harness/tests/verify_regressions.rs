//! Regressions: each wrong verdict `keyshift verify grid-positions` gave
//! when it judged the engine's own record (issue 15), replayed through the
//! binary as scripts call it. verify now judges the keyspace with the
//! oracle, against every run not rolled back.

mod support;

use std::time::Duration;

use support::cli::{keyshift_on, Ran};
use support::{redis, TestRedis};

/// Twelve users on okx with two positions each (one long/short-mode
/// short with a positive pos), and a TTL on two of them.
async fn seeded() -> TestRedis {
    let r = redis().await;
    for uid in 1..=12 {
        let value = format!(
            r#"[{{"instId":"BTC-USDT-SWAP","posSide":"short","pos":"{uid}","avgPx":"3.50","lever":10}},{{"instId":"ETH-USDT-SWAP","posSide":"net","pos":"-2","upl":1e5}}]"#
        );
        if uid <= 2 {
            r.set_px(&format!("okx:positions:{uid}"), value, 3_600_000)
                .await;
        } else {
            r.set(&format!("okx:positions:{uid}"), value).await;
        }
    }
    r
}

async fn migrate(r: &TestRedis) -> Ran {
    keyshift_on(r, &["migrate", "grid-positions", "--force"]).await
}

async fn verify(r: &TestRedis) -> Ran {
    keyshift_on(r, &["verify", "grid-positions"]).await
}

fn line<'a>(ran: &'a Ran, id: &str) -> &'a str {
    ran.stdout
        .lines()
        .find(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.get(1) == Some(&id)
                || (words.first() == Some(&"NOT") && words.get(2) == Some(&id))
        })
        .unwrap_or_else(|| panic!("no {id} line:\n{ran}"))
}

fn fails(ran: &Ran, id: &str) {
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(
        line(ran, id).starts_with("FAIL"),
        "{id} did not fail:\n{ran}"
    );
}

async fn backup_key(r: &TestRedis, legacy: &str) -> String {
    let keys: Vec<String> = r.keys().await;
    keys.into_iter()
        .find(|k| k.starts_with(&format!("{legacy}:backup:")))
        .unwrap_or_else(|| panic!("no backup of {legacy}"))
}

#[tokio::test]
async fn verify_passes_a_clean_migration() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    let ran = verify(&r).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    for id in ["counts", "index", "fields", "backup", "ttl"] {
        assert!(line(&ran, id).starts_with("PASS"), "{ran}");
    }
}

#[tokio::test]
async fn an_empty_newest_run_no_longer_hides_a_deleted_hash_and_a_dropped_field() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    // A second run finds nothing left to migrate: an empty newest run.
    assert_eq!(migrate(&r).await.code, Some(0));
    let _: () = r.cmd(&["DEL", "positions:3:okx:ETH-USDT-SWAP:short"]).await;
    let _: () = r
        .cmd(&["SREM", "positions:index:3:okx", "ETH-USDT-SWAP:short"])
        .await;
    let _: () = r
        .cmd(&["HDEL", "positions:4:okx:BTC-USDT-SWAP:short", "lever"])
        .await;
    let ran = verify(&r).await;
    fails(&ran, "fields");
    fails(&ran, "index");
    fails(&ran, "counts");
    assert!(ran.stdout.contains("lacks field \"lever\""), "{ran}");
}

#[tokio::test]
async fn a_backup_one_space_longer_fails_backup() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    let backup = backup_key(&r, "okx:positions:5").await;
    let _: i64 = r.cmd(&["APPEND", &backup, " "]).await;
    let ran = verify(&r).await;
    fails(&ran, "backup");
    assert!(ran.stdout.contains(&backup), "{ran}");
}

#[tokio::test]
async fn a_backup_ttl_cut_to_five_seconds_fails_backup() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    let backup = backup_key(&r, "okx:positions:6").await;
    let _: i64 = r.cmd(&["PEXPIRE", &backup, "5000"]).await;
    let ran = verify(&r).await;
    fails(&ran, "backup");
    assert!(ran.stdout.contains("expected 7 days"), "{ran}");
}

#[tokio::test]
async fn a_deleted_quarantined_legacy_key_fails_counts() {
    let r = seeded().await;
    r.set("okx:positions:bad", "not json at all").await;
    assert_eq!(migrate(&r).await.code, Some(3), "quarantined");
    let _: () = r.cmd(&["DEL", "okx:positions:bad"]).await;
    let ran = verify(&r).await;
    fails(&ran, "counts");
    assert!(
        ran.stdout.contains("quarantined legacy key vanished"),
        "{ran}"
    );
}

#[tokio::test]
async fn a_hash_planted_for_a_user_no_run_knows_is_reported() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    let _: () = r
        .cmd(&[
            "HSET",
            "positions:999:okx:SOL-USDT-SWAP:long",
            "instId",
            "SOL-USDT-SWAP",
            "migrated_from",
            "okx:positions:999",
        ])
        .await;
    let _: () = r
        .cmd(&["SADD", "positions:index:999:okx", "SOL-USDT-SWAP:long"])
        .await;
    let ran = verify(&r).await;
    fails(&ran, "index");
    assert!(
        ran.stdout.contains("positions:999:okx:SOL-USDT-SWAP:long"),
        "{ran}"
    );
}

#[tokio::test]
async fn carried_over_ttls_that_ran_out_count_as_expired_not_missing() {
    let r = redis().await;
    for uid in 1..=4 {
        let v = format!(r#"[{{"instId":"BTC-USDT-SWAP","pos":"{uid}"}}]"#);
        r.set_px(&format!("okx:positions:{uid}"), v, 2_500).await;
    }
    r.set(
        "okx:positions:9",
        r#"[{"instId":"BTC-USDT-SWAP","pos":"1"}]"#,
    )
    .await;
    assert_eq!(migrate(&r).await.code, Some(0));
    // Waits for Redis to expire the keys (not a timing assertion).
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let gone: i64 = r
        .cmd(&["EXISTS", "positions:1:okx:BTC-USDT-SWAP:long"])
        .await;
    assert_eq!(gone, 0, "the carried-over TTL ran out");
    let ran = verify(&r).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(line(&ran, "fields").contains("expired 4"), "{ran}");
}

#[tokio::test]
async fn verify_after_rollback_says_the_run_was_rolled_back() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    let back = keyshift_on(&r, &["rollback", "grid-positions", "--force"]).await;
    assert_eq!(back.code, Some(0), "{back}");
    let ran = verify(&r).await;
    assert!(ran.stdout.contains("rolled back"), "{ran}");
    assert!(!ran.stdout.contains("reappeared"), "{ran}");
    // Nothing was judged, and not run is not pass.
    assert_eq!(ran.code, Some(1), "{ran}");
    assert!(line(&ran, "fields").starts_with("NOT RUN"), "{ran}");
}

#[tokio::test]
async fn verify_before_a_snapshot_needs_no_journal() {
    let r = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("before.jsonl");
    let file = file.to_str().unwrap();
    let snap = keyshift_on(&r, &["snapshot", "grid-positions", "--out", file]).await;
    assert_eq!(snap.code, Some(0), "{snap}");
    assert_eq!(migrate(&r).await.code, Some(0));
    // The journal gone: verify --before judges from the snapshot alone.
    let journal: Vec<String> = r.cmd(&["KEYS", "keyshift:*"]).await;
    for k in journal {
        let _: () = r.cmd(&["DEL", &k]).await;
    }
    let ran = keyshift_on(&r, &["verify", "grid-positions", "--before", file]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    let _: () = r
        .cmd(&[
            "HSET",
            "positions:7:okx:BTC-USDT-SWAP:short",
            "avgPx",
            "3.5",
        ])
        .await;
    let ran = keyshift_on(&r, &["verify", "grid-positions", "--before", file]).await;
    fails(&ran, "fields");
}

#[tokio::test]
async fn a_snapshot_cut_short_is_refused() {
    let r = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("before.jsonl");
    let path = file.to_str().unwrap();
    let snap = keyshift_on(&r, &["snapshot", "grid-positions", "--out", path]).await;
    assert_eq!(snap.code, Some(0), "{snap}");
    let text = std::fs::read_to_string(&file).unwrap();
    let cut: Vec<&str> = text.lines().collect();
    std::fs::write(&file, cut[..cut.len() - 2].join("\n")).unwrap();
    let ran = keyshift_on(&r, &["verify", "grid-positions", "--before", path]).await;
    assert_eq!(ran.code, Some(2), "{ran}");
    assert!(ran.stderr.contains("cut short"), "{ran}");
}

#[tokio::test]
async fn a_migrated_looking_hash_in_no_index_is_reported_for_a_known_user_and_an_unknown_one() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    // User 5 was migrated; user 998 no run knows. Neither hash is in an
    // index, nor does user 5's backup hold SOL.
    for (hash, legacy) in [
        ("positions:5:okx:SOL-USDT-SWAP:long", "okx:positions:5"),
        ("positions:998:okx:SOL-USDT-SWAP:long", "okx:positions:998"),
    ] {
        let _: () = r
            .cmd(&[
                "HSET",
                hash,
                "instId",
                "SOL-USDT-SWAP",
                "migrated_from",
                legacy,
            ])
            .await;
    }
    // Not migrated-looking: a new-layout writer's, not an orphan.
    let _: () = r
        .cmd(&[
            "HSET",
            "positions:997:okx:SOL-USDT-SWAP:long",
            "instId",
            "SOL",
        ])
        .await;
    let ran = verify(&r).await;
    fails(&ran, "index");
    assert!(line(&ran, "index").ends_with("extra 2"), "{ran}");
    for hash in [
        "positions:5:okx:SOL-USDT-SWAP:long",
        "positions:998:okx:SOL-USDT-SWAP:long",
    ] {
        assert!(ran.stdout.contains(hash), "{hash}:\n{ran}");
    }
    assert!(!ran.stdout.contains("positions:997"), "{ran}");
}

#[tokio::test]
async fn a_hash_dropped_from_its_index_is_judged_with_its_user_not_as_an_orphan() {
    let r = seeded().await;
    assert_eq!(migrate(&r).await.code, Some(0));
    let _: () = r
        .cmd(&["SREM", "positions:index:7:okx", "ETH-USDT-SWAP:short"])
        .await;
    let ran = verify(&r).await;
    fails(&ran, "index");
    assert!(
        ran.stdout.contains("lacks [\"ETH-USDT-SWAP:short\"]"),
        "{ran}"
    );
    assert!(!ran.stdout.contains("no run migrated"), "{ran}");
    for id in ["fields", "counts", "backup", "ttl"] {
        assert!(line(&ran, id).starts_with("PASS"), "{ran}");
    }
}
