//! Each legacy key's latest outcome across the judged runs, streamed from
//! their journals by HSCAN a batch at a time: verify holds a few batches,
//! never a whole journal (a million users journal a million outcomes).
//!
//! A key's latest outcome is the one of the newest judged run that met it
//! without a conflict. Runs are walked newest first; a key an older run
//! journaled is judged with that run only when no newer judged run has it,
//! which the newer journals answer (HMGET), not memory.

use std::collections::VecDeque;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::run::journal::{outcomes_key, scan_outcomes_at, Outcome, RunRecord};

use crate::error::HarnessError;

/// A legacy key, the backup stamp of the run that last met it, and the
/// outcome that run journaled.
pub type Latest = (String, String, Outcome);

/// Outcomes asked of HSCAN per call.
const SCAN_COUNT: usize = 1000;

/// The outcomes the journals of `runs` hold, in all (progress only: the
/// conflicts and the keys newer runs met again are among them).
pub async fn journaled(conn: &RedisConn, runs: &[&RunRecord]) -> anyhow::Result<u64> {
    if runs.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for run in runs {
        pipe.cmd("HLEN").arg(outcomes_key(&run.run_id));
    }
    let lens: Vec<u64> = pipe.query_async(&mut conn.clone()).await?;
    Ok(lens.iter().sum())
}

/// The latest judged outcome of each of `keys` among `runs` (newest
/// first): the first of them that met the key without a conflict.
pub async fn latest_of<'r>(
    conn: &RedisConn,
    runs: &[&'r RunRecord],
    keys: &[String],
) -> anyhow::Result<Vec<Option<(&'r RunRecord, Outcome)>>> {
    if runs.is_empty() || keys.is_empty() {
        return Ok(vec![None; keys.len()]);
    }
    // One HMGET a journal (the read-only user has HMGET, not HGET).
    let mut pipe = redis::pipe();
    for run in runs {
        pipe.cmd("HMGET").arg(outcomes_key(&run.run_id)).arg(keys);
    }
    let per_run: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn.clone()).await?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let mut latest = None;
        for (run, replies) in runs.iter().zip(&per_run) {
            let Some(json) = replies.get(i).and_then(Option::as_ref) else {
                continue;
            };
            let outcome: Outcome = serde_json::from_str(json).map_err(|e| {
                keyshift_engine::EngineError::BadJournal {
                    key: outcomes_key(&run.run_id),
                    detail: format!("{key}: {e}"),
                }
            })?;
            if !matches!(outcome, Outcome::Conflict { .. }) {
                latest = Some((*run, outcome));
                break;
            }
        }
        out.push(latest);
    }
    Ok(out)
}

/// Walks the judged runs' journals, newest run first.
pub struct LatestOutcomes<'r> {
    conn: RedisConn,
    /// The judged runs, newest first.
    runs: Vec<&'r RunRecord>,
    /// The run being walked, and where its HSCAN is.
    at: usize,
    cursor: u64,
    /// HLEN of that run's journal when its walk began, and how many
    /// outcomes HSCAN has given since.
    len: Option<u64>,
    seen: u64,
    ready: VecDeque<Latest>,
}

impl<'r> LatestOutcomes<'r> {
    /// `runs` newest first.
    pub fn new(conn: RedisConn, runs: Vec<&'r RunRecord>) -> Self {
        Self {
            conn,
            runs,
            at: 0,
            cursor: 0,
            len: None,
            seen: 0,
            ready: VecDeque::new(),
        }
    }

    /// Up to `n` more keys with their latest outcome; `None` when every
    /// journal is walked.
    pub async fn next_chunk(&mut self, n: usize) -> anyhow::Result<Option<Vec<Latest>>> {
        while self.ready.len() < n && self.at < self.runs.len() {
            self.walk().await?;
        }
        if self.ready.is_empty() {
            return Ok(None);
        }
        let n = n.min(self.ready.len());
        Ok(Some(self.ready.drain(..n).collect()))
    }

    /// One HSCAN call over the current run's journal.
    async fn walk(&mut self) -> anyhow::Result<()> {
        let run = self.runs[self.at];
        let key = outcomes_key(&run.run_id);
        let len = match self.len {
            Some(len) => len,
            None => {
                let len = hlen(&self.conn, &key).await?;
                self.len = Some(len);
                len
            }
        };
        let (next, batch) =
            scan_outcomes_at::<Outcome, _>(&self.conn, &key, self.cursor, SCAN_COUNT).await?;
        self.seen += batch.len() as u64;
        let batch: Vec<(String, Outcome)> = batch
            .into_iter()
            .filter(|(_, o)| !matches!(o, Outcome::Conflict { .. }))
            .collect();
        // Only an older run's keys need asking whether a newer run has them.
        let newer = if self.at == 0 {
            vec![None; batch.len()]
        } else {
            let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
            latest_of(&self.conn, &self.runs[..self.at], &keys).await?
        };
        for ((legacy, outcome), newer) in batch.into_iter().zip(newer) {
            if newer.is_none() {
                self.ready.push_back((legacy, run.stamp.clone(), outcome));
            }
        }
        self.cursor = next;
        if next == 0 {
            // HSCAN gives an entry twice only when the hash was resized
            // during the walk, which takes writes: a journal that kept its
            // length and gave that many entries gave each once.
            let after = hlen(&self.conn, &key).await?;
            if after != len || self.seen != len {
                return Err(HarnessError::Usage(format!(
                    "the journal of run {} changed while verify read it ({len} outcomes, then \
                     {after}; {} read): verify a run that has stopped, once no migration runs",
                    run.run_id, self.seen
                ))
                .into());
            }
            self.at += 1;
            self.cursor = 0;
            self.len = None;
            self.seen = 0;
        }
        Ok(())
    }
}

async fn hlen(conn: &RedisConn, key: &str) -> anyhow::Result<u64> {
    Ok(redis::cmd("HLEN")
        .arg(key)
        .query_async(&mut conn.clone())
        .await?)
}
