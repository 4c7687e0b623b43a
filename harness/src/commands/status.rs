//! `keyshift status`: the recorded runs and the lock, read-only.

use keyshift_engine::grid_positions::runner::MIGRATION;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::run::journal::{outcomes_key, runs_of, RunRecord};
use keyshift_engine::run::lock::{Holder, LOCK_KEY};
use serde::Serialize;

use crate::exit::Outcome;

#[derive(Serialize)]
struct RunStatus {
    #[serde(flatten)]
    run: RunRecord,
    /// Legacy keys settled so far (migrated, quarantined or in conflict).
    settled: u64,
}

#[derive(Serialize)]
struct Status {
    lock: Option<Holder>,
    lock_expires_in_ms: Option<i64>,
    runs: Vec<RunStatus>,
}

pub async fn run(url: &str, json: bool) -> anyhow::Result<Outcome> {
    let conn = connect(url).await?;
    let mut c = conn.clone();
    let lock: Option<String> = redis::cmd("GET").arg(LOCK_KEY).query_async(&mut c).await?;
    let pttl: i64 = redis::cmd("PTTL").arg(LOCK_KEY).query_async(&mut c).await?;
    let mut runs = Vec::new();
    // Newest first.
    for run in runs_of(&conn, MIGRATION).await?.into_iter().rev() {
        let settled: u64 = redis::cmd("HLEN")
            .arg(outcomes_key(&run.run_id))
            .query_async(&mut c)
            .await?;
        runs.push(RunStatus { run, settled });
    }
    let status = Status {
        lock: lock.as_deref().and_then(|v| serde_json::from_str(v).ok()),
        lock_expires_in_ms: lock.is_some().then_some(pttl),
        runs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(Outcome::Done);
    }
    match &status.lock {
        Some(h) => println!(
            "lock: held by `{}` (pid {} on {}) since {}, expires in {} ms unless renewed",
            h.command, h.pid, h.host, h.since, pttl
        ),
        None => println!("lock: free"),
    }
    if status.runs.is_empty() {
        println!("no runs recorded");
    }
    for r in &status.runs {
        println!(
            "{}  {:<11} started {}  finished {}  stamp {}  settled {}{}",
            r.run.run_id,
            format!("{:?}", r.run.state).to_lowercase(),
            r.run.started_at,
            r.run.finished_at.as_deref().unwrap_or("-"),
            r.run.stamp,
            r.settled,
            if r.run.resumes > 0 {
                format!("  resumed {}x", r.run.resumes)
            } else {
                String::new()
            }
        );
    }
    Ok(Outcome::Done)
}
