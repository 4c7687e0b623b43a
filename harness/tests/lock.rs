//! The runner lock and idempotency (issue 4, DESIGN §2 last paragraph, §4
//! `idempotent`, §6 exit 5): two runners never overlap, a dead holder's lock
//! is taken over once it expires, a run leaves no lock behind, and a second
//! run on a migrated keyspace writes nothing.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::run::journal::{is_journal_key, runs_key, RunState};
use keyshift_engine::run::lock::{LOCK_KEY, TTL_ENV};
use keyshift_harness::digest::{compare, digest, Digest};
use keyshift_harness::seed::{generate, load, GenConfig};
use support::cli::{keyshift_on, Ran};
use support::{redis, TestRedis};

const OKX_1: &str = r#"[{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"2","avgPx":"65000.5"}]"#;
const BYBIT_7: &str = r#"[{"instId":"ETH-USDT","pos":"-1"}]"#;

/// `keyshift migrate grid-positions --force` as a process the test can
/// start alongside another (the default 30 s lock TTL).
fn migrate_process(url: &str) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("keyshift"));
    cmd.args(["migrate", "grid-positions", "--force", "--redis", url])
        .env_remove(TTL_ENV)
        .env_remove("REDIS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn lock_value(r: &TestRedis) -> Option<String> {
    r.cmd(&["GET", LOCK_KEY]).await
}

async fn run_count(r: &TestRedis) -> usize {
    r.cmd(&["ZCARD", &runs_key("grid-positions")]).await
}

async fn non_journal_digest(r: &TestRedis) -> Digest {
    digest(&r.conn, |k| !is_journal_key(k)).await.unwrap()
}

async fn seed_generated(r: &TestRedis, users: usize, seed: u64) {
    let g = generate(&GenConfig {
        users,
        seed,
        ..GenConfig::default()
    });
    load(&r.conn, &g.keyspace).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_runners_exactly_one_proceeds() {
    let r = redis().await;
    // Big enough that a debug build migrates for seconds: the two overlap.
    seed_generated(&r, 2000, 41).await;
    let before = non_journal_digest(&r).await;

    // Both started at once; each one's end is timed.
    let started = Instant::now();
    let mut runners = Vec::new();
    for _ in 0..2 {
        let child = migrate_process(&r.url()).spawn().expect("spawn keyshift");
        let pid = child.id();
        let waiter = tokio::task::spawn_blocking(move || {
            let out = child.wait_with_output().expect("wait");
            (ran(out), started.elapsed())
        });
        runners.push((pid, waiter));
    }
    // While they run, the lock names one of them; and when the first ends
    // (the loser), the other still holds it.
    let holder_pid = |v: Option<String>| {
        v.map(|v| {
            let holder: serde_json::Value = serde_json::from_str(&v).expect("holder JSON");
            holder["pid"].as_u64().expect("holder pid") as u32
        })
    };
    let mut holders_seen = Vec::new();
    let mut holder_when_first_ended = None;
    while !runners.iter().all(|(_, w)| w.is_finished()) {
        let first_ended = runners.iter().any(|(_, w)| w.is_finished());
        let holder = holder_pid(lock_value(&r).await);
        if first_ended && holder_when_first_ended.is_none() {
            holder_when_first_ended = Some(holder);
        }
        if let Some(pid) = holder.filter(|p| !holders_seen.contains(p)) {
            holders_seen.push(pid);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut ends = Vec::new();
    for (pid, waiter) in runners {
        let (ran, at) = waiter.await.expect("runner thread");
        ends.push((pid, ran, at));
    }

    let winners: Vec<_> = ends
        .iter()
        .filter(|(_, ran, _)| matches!(ran.code, Some(0 | 3)))
        .collect();
    let losers: Vec<_> = ends
        .iter()
        .filter(|(_, ran, _)| ran.code == Some(5))
        .collect();
    let all: Vec<String> = ends
        .iter()
        .map(|(pid, ran, at)| format!("pid {pid} after {at:?}: {ran}"))
        .collect();
    assert!(
        winners.len() == 1 && losers.len() == 1,
        "exactly one proceeds (0/3), the other exits 5:\n{}",
        all.join("\n")
    );
    let (winner_pid, _, winner_end) = winners[0];
    let (loser_pid, loser, loser_end) = losers[0];
    assert!(
        loser_end < winner_end,
        "they overlapped: the loser ended while the winner ran\n{}",
        all.join("\n")
    );
    assert_eq!(
        holder_when_first_ended,
        Some(Some(*winner_pid)),
        "the winner held the lock when the loser ended (loser pid {loser_pid})"
    );
    assert_eq!(
        holders_seen,
        vec![*winner_pid],
        "only the winner ever held the lock (loser pid {loser_pid})"
    );
    assert!(
        loser.stderr.contains(&format!("(pid {winner_pid} on "))
            && loser.stderr.contains(" since ")
            && loser.stderr.contains("migrate grid-positions"),
        "the loser names the holder and since when: {loser}"
    );
    assert!(loser.stdout.is_empty(), "the loser reports no run: {loser}");

    // The end state is one complete run that verifies.
    assert_eq!(run_count(&r).await, 1, "the loser recorded no run");
    let run = latest_run(&r.conn).await.unwrap();
    assert_eq!(run.state, RunState::Done, "{run:?}");
    assert_eq!(run.resumes, 0, "{run:?}");
    let verified = keyshift_on(&r, &["verify", "grid-positions"]).await;
    assert_eq!(verified.code, Some(0), "{verified}");
    assert_eq!(lock_value(&r).await, None, "the winner released the lock");
    assert_ne!(non_journal_digest(&r).await, before, "the winner migrated");
}

#[tokio::test]
async fn a_dead_holders_lock_is_taken_after_expiry() {
    let r = redis().await;
    r.set("okx:positions:1", OKX_1).await;
    r.set("bybit:positions:7", BYBIT_7).await;
    let dead = serde_json::json!({
        "command": "migrate grid-positions",
        "host": "gone-host",
        "pid": 424242,
        "since": "2020-01-02T03:04:05Z",
        "token": "dead-runner",
    })
    .to_string();
    const TTL_MS: u64 = 1500;
    r.set_px(LOCK_KEY, &dead, TTL_MS).await;
    let set_at = Instant::now();

    let refused = keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(refused.code, Some(5), "{refused}");
    assert!(
        set_at.elapsed() < Duration::from_millis(TTL_MS),
        "refused at once, not after waiting for the lock ({:?})",
        set_at.elapsed()
    );
    assert!(
        refused.stderr.contains("pid 424242 on gone-host")
            && refused.stderr.contains("since 2020-01-02T03:04:05Z"),
        "names the holder and since when: {refused}"
    );
    assert_eq!(
        r.keys().await,
        ["bybit:positions:7", LOCK_KEY, "okx:positions:1"],
        "nothing written, no journal"
    );
    assert_eq!(
        lock_value(&r).await.as_deref(),
        Some(dead.as_str()),
        "lock untouched"
    );

    // The holder never renews: once its lock expires, the next runner takes it.
    while lock_value(&r).await.is_some() {
        assert!(
            set_at.elapsed() < Duration::from_millis(TTL_MS * 4),
            "the lock never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took_over = keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(took_over.code, Some(0), "{took_over}");
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", "okx:positions:1", "bybit:positions:7"])
            .await,
        0,
        "both legacy keys migrated"
    );
    assert_eq!(lock_value(&r).await, None, "and the lock released");
    let verified = keyshift_on(&r, &["verify", "grid-positions"]).await;
    assert_eq!(verified.code, Some(0), "{verified}");
}

#[tokio::test]
async fn lock_is_released_after_a_run() {
    // A clean run (exit 0), then one that quarantines a key (exit 3).
    let r = redis().await;
    r.set("okx:positions:1", OKX_1).await;
    let ran = keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert_eq!(r.cmd::<i64>(&["EXISTS", LOCK_KEY]).await, 0, "after exit 0");

    let r = redis().await;
    r.set("okx:positions:1", OKX_1).await;
    r.set("okx:positions:2", "not json").await;
    let ran = keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(ran.code, Some(3), "{ran}");
    assert_eq!(r.cmd::<i64>(&["EXISTS", LOCK_KEY]).await, 0, "after exit 3");

    // And the next runner gets it at once.
    let again = keyshift_on(&r, &["migrate", "grid-positions", "--force"]).await;
    assert_eq!(again.code, Some(3), "{again}");
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", LOCK_KEY]).await,
        0,
        "after a rerun"
    );
}

#[tokio::test]
async fn idempotent_second_run_writes_nothing() {
    let r = redis().await;
    seed_generated(&r, 300, 17).await;
    let first = keyshift_on(&r, &["migrate", "grid-positions", "--force", "--json"]).await;
    assert!(matches!(first.code, Some(0 | 3)), "{first}");
    assert!(
        first.json()["totals"]["keys_migrated"].as_u64().unwrap() > 0,
        "{first}"
    );
    let after_first = non_journal_digest(&r).await;
    let between = Instant::now();

    let second = keyshift_on(&r, &["migrate", "grid-positions", "--force", "--json"]).await;
    assert_eq!(second.code, first.code, "{second}");
    let report = second.json();
    assert_eq!(report["resumed"], false, "a new run, the first was done");
    for count in ["keys_migrated", "positions_migrated", "keys_conflicting"] {
        assert_eq!(report["totals"][count], 0, "{count}: {report:#}");
    }
    assert_eq!(
        report["totals"]["keys_quarantined"],
        first.json()["totals"]["keys_quarantined"],
        "the same keys are still quarantined, untouched"
    );
    let after_second = non_journal_digest(&r).await;
    // TTLs only count down between the two digests.
    let tolerance = between.elapsed().as_millis() as i64 + 1000;
    let diff = compare(&after_first, &after_second, tolerance);
    assert!(diff.is_clean(), "the second run wrote: {diff:?}");
    assert_eq!(diff.matching, after_first.len());
    assert_eq!(run_count(&r).await, 2);
    let verified = keyshift_on(&r, &["verify", "grid-positions"]).await;
    assert_eq!(verified.code, Some(0), "{verified}");
}
