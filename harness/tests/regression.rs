//! Regression tests, each named for the failure it replays and run through
//! the same check the gate runs.

mod support;

use keyshift_engine::grid_positions::latest_run;
use keyshift_harness::gate::checks;
use keyshift_harness::report::{InvariantEntry, Status};
use support::{exchanges, redis, TestRedis};

/// Legacy values of three users: a hedged pair, a net short, an
/// object-shaped value.
const USERS: [(&str, &str); 3] = [
    (
        "okx:positions:u1",
        r#"[{"instId":"BTC-USDT-SWAP","posSide":"long","pos":"3"},{"instId":"BTC-USDT-SWAP","posSide":"short","pos":"1"},{"instId":"ETH-USDT-SWAP","posSide":"net","pos":"-2"}]"#,
    ),
    (
        "binance:positions:u2",
        r#"[{"instId":"SOLUSDT","pos":"-0.5","extra":{"a":1}}]"#,
    ),
    (
        "bybit:positions:u3",
        r#"{"XRPUSDT":{"instId":"XRPUSDT","pos":"7"}}"#,
    ),
];

/// The old data in one server, the migrated data in another, and the
/// gate's `api` invariant over them.
struct Migrated {
    old: TestRedis,
    new: TestRedis,
}

impl Migrated {
    async fn new() -> Self {
        let (old, new) = (redis().await, redis().await);
        for (key, value) in USERS {
            old.set(key, value).await;
            new.set(key, value).await;
        }
        assert_eq!(new.migrate().await.totals.keys_migrated, USERS.len());
        Self { old, new }
    }

    async fn api(&self) -> InvariantEntry {
        let run = latest_run(&self.new.conn).await.unwrap();
        let outcomes = checks::read_outcomes(&self.new.conn, &run.run_id)
            .await
            .unwrap();
        checks::api(&self.old.conn, &self.new.conn, &outcomes, &exchanges())
            .await
            .unwrap()
    }
}

/// The migration guide's troubleshooting case 3: the index set is there but
/// the position hashes are gone, so the application reads position size 0
/// (and no positions) where the legacy data had some.
#[tokio::test]
async fn guide_case_3_index_present_hashes_gone_reads_size_zero() {
    let m = Migrated::new().await;
    let clean = m.api().await;
    assert_eq!(clean.status, Status::Pass, "{:?}", clean.samples);
    // Per user all positions, then per symbol (held ones and the absent
    // probe) one size and two gets: 3 users, 3 + 2 + 2 symbols.
    assert_eq!(clean.processed, 3 + 3 * (3 + 2 + 2));

    let hashes: Vec<String> = m
        .new
        .keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with("positions:u1:okx:"))
        .collect();
    assert_eq!(hashes.len(), 3);
    for h in &hashes {
        m.new.cmd::<()>(&["DEL", h]).await;
    }
    let members: Vec<String> = m.new.cmd(&["SMEMBERS", "positions:index:u1:okx"]).await;
    assert_eq!(members.len(), 3, "the index set is still there");

    let broken = m.api().await;
    assert_eq!(broken.status, Status::Fail);
    // u1: all positions, 2 sizes, 3 gets; the other users still agree.
    assert_eq!(broken.mismatched, 1 + 2 + 3, "{:?}", broken.samples);
    let size = broken
        .samples
        .iter()
        .find(|s| s.contains("position_size(ETH-USDT-SWAP)"))
        .unwrap_or_else(|| panic!("no size finding in {:?}", broken.samples));
    assert_eq!(
        size,
        "okx:positions:u1: position_size(ETH-USDT-SWAP): legacy (old data) -2, hash 0, dual-read 0"
    );
}
