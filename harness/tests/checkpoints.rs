//! Checkpoints (`KEYSHIFT_CHECKPOINTS`): where `keyshift scenario` lands a
//! fault timed by progress. A run stops with exactly the journal length
//! asked for, says so, and goes on when released: the fault's place in the
//! run does not depend on how fast a poller catches the run.

mod support;

use std::process::Stdio;
use std::time::Duration;

use keyshift_engine::run::checkpoint::{CHECKPOINTS_ENV, CHECKPOINT_LINE};
use keyshift_engine::run::journal::{outcomes_key, runs_key};
use support::{redis, TestRedis};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const USERS: usize = 30;

async fn seeded() -> TestRedis {
    let r = redis().await;
    for uid in 0..USERS {
        let value = format!(r#"[{{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"{uid}"}}]"#);
        r.set(&format!("okx:positions:{uid}"), value).await;
    }
    r
}

async fn journaled(r: &TestRedis) -> usize {
    let ids: Vec<String> = r
        .cmd(&["ZRANGE", &runs_key("grid-positions"), "0", "-1"])
        .await;
    r.cmd(&["HLEN", &outcomes_key(&ids[0])]).await
}

#[tokio::test]
async fn a_run_stops_at_each_checkpoint_with_exactly_that_many_outcomes_and_goes_on_when_released()
{
    let r = seeded().await;
    let mut child = tokio::process::Command::new(assert_cmd::cargo::cargo_bin("keyshift"))
        .args(["migrate", "grid-positions", "--force", "--redis", &r.url()])
        .env(CHECKPOINTS_ENV, "7,19")
        .env_remove("REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("keyshift starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    for expected in [7, 19] {
        let line = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), stderr.next_line())
                .await
                .expect("a checkpoint within a minute")
                .unwrap()
                .expect("stderr open until the run ends");
            if line.starts_with(CHECKPOINT_LINE) {
                break line;
            }
        };
        assert_eq!(line, format!("{CHECKPOINT_LINE}{expected}"));
        // Stopped: the journal stays where the checkpoint says.
        assert_eq!(journaled(&r).await, expected);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(journaled(&r).await, expected, "it waits to be released");
        stdin.write_all(b"\n").await.unwrap();
    }
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(journaled(&r).await, USERS);
}
