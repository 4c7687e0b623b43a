//! verify walks the runs' journals a batch at a time: each legacy key is
//! judged once, with the newest run that met it without a conflict, and a
//! journal that changes under the walk is refused rather than misread.

mod support;

use std::collections::BTreeMap;

use keyshift_engine::run::journal::{outcomes_key, Outcome, RunRecord, RunState};
use keyshift_harness::commands::verify::journal::{journaled, LatestOutcomes};
use support::cluster::run_record;
use support::{redis, TestRedis};

fn run(id: &str, stamp: &str) -> RunRecord {
    RunRecord {
        stamp: stamp.into(),
        ..run_record(id, RunState::Done)
    }
}

fn migrated(positions: usize) -> Outcome {
    Outcome::Migrated {
        positions,
        skipped: 0,
        pttl: -1,
        at: 0,
        digest: String::new(),
    }
}

async fn journal(r: &TestRedis, run: &RunRecord, outcomes: &[(String, Outcome)]) {
    let mut c = r.conn.clone();
    for part in outcomes.chunks(1000) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(outcomes_key(&run.run_id));
        for (key, outcome) in part {
            cmd.arg(key).arg(serde_json::to_string(outcome).unwrap());
        }
        cmd.query_async::<()>(&mut c).await.unwrap();
    }
}

fn filler(n: usize) -> Vec<(String, Outcome)> {
    (0..n)
        .map(|i| (format!("okx:positions:f{i}"), migrated(1)))
        .collect()
}

#[tokio::test]
async fn each_key_comes_once_with_the_newest_run_that_met_it_without_a_conflict() {
    let r = redis().await;
    let (old, new) = (run("old", "20261201_000000"), run("new", "20261202_000000"));
    let mut old_outcomes = filler(2500);
    for key in ["a", "b", "c"] {
        old_outcomes.push((format!("okx:positions:{key}"), migrated(1)));
    }
    journal(&r, &old, &old_outcomes).await;
    let conflict = Outcome::Conflict {
        key: "positions:index:c:okx".into(),
    };
    journal(
        &r,
        &new,
        &[
            ("okx:positions:b".into(), migrated(2)),
            ("okx:positions:c".into(), conflict),
            ("okx:positions:d".into(), migrated(2)),
        ],
    )
    .await;
    let runs = vec![&new, &old];
    assert_eq!(journaled(&r.conn, &runs).await.unwrap(), 2503 + 3);
    let mut walk = LatestOutcomes::new(r.conn.clone(), runs);
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(chunk) = walk.next_chunk(250).await.unwrap() {
        assert!(chunk.len() <= 250);
        for (key, stamp, _) in chunk {
            seen.entry(key).or_default().push(stamp);
        }
    }
    assert_eq!(seen.len(), 2500 + 4);
    assert!(
        seen.values().all(|stamps| stamps.len() == 1),
        "each key once"
    );
    let stamp = |k: &str| seen[&format!("okx:positions:{k}")][0].clone();
    assert_eq!(stamp("a"), old.stamp);
    assert_eq!(stamp("b"), new.stamp, "the newer run has the last word");
    assert_eq!(stamp("c"), old.stamp, "a conflict is not an outcome");
    assert_eq!(stamp("d"), new.stamp);
}

#[tokio::test]
async fn a_journal_written_to_during_the_walk_is_refused() {
    let r = redis().await;
    let only = run("busy", "20261203_000000");
    journal(&r, &only, &filler(3000)).await;
    let mut walk = LatestOutcomes::new(r.conn.clone(), vec![&only]);
    assert!(walk.next_chunk(1).await.unwrap().is_some());
    journal(&r, &only, &[("okx:positions:late".into(), migrated(1))]).await;
    let refused = loop {
        match walk.next_chunk(1000).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the walk ended as if nothing had changed"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        refused.contains("changed while verify read it"),
        "{refused}"
    );
}
