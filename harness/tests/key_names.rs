//! Regression: key names are bytes. A legacy key whose name is not UTF-8
//! (`okx:positions:\xff\xfebin`) made `migrate grid-positions` and its dry
//! run exit 4 "Incompatible type - Cannot convert from UTF-8" on every
//! rerun, without naming the key, and migrate nothing. Keys the SCAN
//! pattern matched that are not legacy keys (`okx:positions:a:b`,
//! `okx:positions:`, `OKX:positions:upper`) were dropped without a word.
//! Now the binary name is quarantined and shown escaped, the others are
//! listed as skipped with why, and every ordinary user migrates.

mod support;

use std::time::Duration;

use assert_cmd::Command;
use support::{redis, TestRedis};

const BINARY: &[u8] = b"okx:positions:\xff\xfebin";
const BINARY_SHOWN: &str = r"okx:positions:\xff\xfebin";
const USERS: usize = 200;

async fn seed(r: &TestRedis) {
    let mut pipe = redis::pipe();
    for user in 0..USERS {
        let value = format!(r#"[{{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"{user}"}}]"#);
        pipe.set(format!("okx:positions:u{user}"), value).ignore();
    }
    pipe.set(BINARY, r#"[{"instId":"ETH-USDT-SWAP","pos":"1"}]"#)
        .ignore();
    for odd in ["okx:positions:a:b", "okx:positions:", "OKX:positions:upper"] {
        pipe.set(odd, "[]").ignore();
    }
    let mut c = r.conn.clone();
    pipe.query_async::<()>(&mut c).await.unwrap();
}

fn migrate(url: &str, extra: &str) -> (Option<i32>, serde_json::Value) {
    let out = Command::cargo_bin("keyshift")
        .unwrap()
        .args(["migrate", "grid-positions", "--redis", url, "--json", extra])
        .env_remove("REDIS_URL")
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

fn listed<'a>(report: &'a serde_json::Value, list: &str) -> Vec<(&'a str, &'a str)> {
    report[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["key"].as_str().unwrap(), f["detail"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_binary_legacy_name_is_quarantined_by_its_escaped_name_and_the_rest_migrate() {
    let r = redis().await;
    seed(&r).await;
    for extra in ["--dry-run", "--force"] {
        let (code, report) = migrate(&r.url(), extra);
        assert_eq!(code, Some(3), "{extra}: {report:#}");
        assert_eq!(report["totals"]["keys_migrated"], USERS, "{extra}");
        let quarantined = listed(&report, "quarantined");
        assert_eq!(quarantined.len(), 1, "{extra}: {quarantined:?}");
        assert_eq!(quarantined[0].0, BINARY_SHOWN);
        assert!(quarantined[0].1.contains("not UTF-8"), "{quarantined:?}");
        let skipped = listed(&report, "skipped");
        assert_eq!(report["skipped_keys"], 3, "{extra}: {skipped:?}");
        let reason = |key: &str| skipped.iter().find(|(k, _)| *k == key).map(|(_, d)| *d);
        assert!(reason("okx:positions:a:b").unwrap().contains("holds ':'"));
        assert!(reason("okx:positions:").unwrap().contains("empty"));
        assert!(reason("OKX:positions:upper")
            .unwrap()
            .contains("not lower case"));
    }
    // Left untouched, byte for byte; the ordinary users are migrated.
    let mut c = r.conn.clone();
    let kept: Option<Vec<u8>> = redis::cmd("GET")
        .arg(BINARY)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some(&br#"[{"instId":"ETH-USDT-SWAP","pos":"1"}]"#[..])
    );
    assert_eq!(r.cmd::<i64>(&["EXISTS", "okx:positions:u7"]).await, 0);
    assert_eq!(r.cmd::<i64>(&["EXISTS", "positions:index:u7:okx"]).await, 1);
    assert_eq!(r.cmd::<i64>(&["EXISTS", "okx:positions:a:b"]).await, 1);
    // The binary name does not trip verify either.
    Command::cargo_bin("keyshift")
        .unwrap()
        .args(["verify", "grid-positions", "--redis", &r.url()])
        .env_remove("REDIS_URL")
        .timeout(Duration::from_secs(300))
        .assert()
        .code(0);
}
