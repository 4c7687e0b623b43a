//! Regression: one huge user stalled Redis for minutes. A legacy key of
//! 250,000 positions (56 MB) made `migrate grid-positions` send one WATCH
//! over every key the user would create; Redis spent 716 s in it, blocking
//! every other client, and nothing migrated. Now a user above
//! `--max-positions-per-user` (5,000 by default) is quarantined with the
//! reason, the others migrate, and no step holds the server for long.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use support::redis;

const HUGE: &str = "okx:positions:whale";
const HUGE_POSITIONS: usize = 250_000;
const USERS: usize = 200;

fn huge_value() -> String {
    let positions: Vec<String> = (0..HUGE_POSITIONS)
        .map(|i| {
            format!(
                r#"{{"instId":"I{i}-USDT-SWAP","posSide":"long","pos":"{}","avgPx":"1.5","upl":"0","lever":"10","mgnMode":"cross","margin":"10","liqPx":"0.5"}}"#,
                i + 1
            )
        })
        .collect();
    format!("[{}]", positions.join(","))
}

/// The longest command the server ran since SLOWLOG was reset, in µs.
async fn slowest_command_us(conn: &keyshift_engine::connection::RedisConn) -> i64 {
    let mut c = conn.clone();
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    entries
        .iter()
        .filter_map(|e| match e {
            redis::Value::Array(fields) => redis::from_redis_value_ref::<i64>(&fields[2]).ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_huge_user_is_quarantined_and_never_stalls_the_server() {
    let r = redis().await;
    let mut pipe = redis::pipe();
    pipe.set(HUGE, huge_value()).ignore();
    for user in 0..USERS {
        let value = format!(r#"[{{"instId":"BTC-USDT-SWAP","pos":"{}"}}]"#, user + 1);
        pipe.set(format!("okx:positions:u{user}"), value).ignore();
    }
    pipe.cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(10_000)
        .ignore();
    pipe.cmd("SLOWLOG").arg("RESET").ignore();
    let mut c = r.conn.clone();
    pipe.query_async::<()>(&mut c).await.unwrap();

    // A client pinging every 50 ms throughout, as a trading bot would.
    let done = Arc::new(AtomicBool::new(false));
    let pinger = {
        let (conn, done) = (r.conn.clone(), done.clone());
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let at = Instant::now();
                let mut c = conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .unwrap();
                longest = longest.max(at.elapsed());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            longest
        })
    };
    let url = r.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::cargo_bin("keyshift")
            .unwrap()
            .args([
                "migrate",
                "grid-positions",
                "--redis",
                &url,
                "--force",
                "--json",
            ])
            .env_remove("REDIS_URL")
            .timeout(Duration::from_secs(600))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    let longest_ping = pinger.await.unwrap();

    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["totals"]["keys_migrated"], USERS);
    let quarantined = report["quarantined"].as_array().unwrap();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0]["key"], HUGE);
    assert_eq!(quarantined[0]["reason"], "too_many_positions");
    assert_eq!(report["totals"]["positions_quarantined"], HUGE_POSITIONS);
    // Left untouched; no hash or index of it was written.
    assert_eq!(
        r.cmd::<i64>(&["STRLEN", HUGE]).await as usize,
        huge_value().len()
    );
    assert_eq!(
        r.cmd::<i64>(&["EXISTS", "positions:index:whale:okx"]).await,
        0
    );
    // What the server itself measured: no command of the run came near a
    // second (the old WATCH took 716 s). The ping a client saw is printed.
    let slowest = slowest_command_us(&r.conn).await;
    println!("slowest command {slowest} µs, longest ping {longest_ping:?}");
    assert!(
        slowest < 1_000_000,
        "a command held the server {slowest} µs"
    );
}
