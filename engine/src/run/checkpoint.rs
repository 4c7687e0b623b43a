//! Checkpoints: where `keyshift scenario` strikes a fault timed by
//! progress. With `KEYSHIFT_CHECKPOINTS=N[,M...]` set (the harness sets it
//! for the migrator it starts; nobody else has a reason to), a run stops
//! after the first batch that leaves at least N outcomes in its journal,
//! says so on stderr (`keyshift-checkpoint: COUNT`) and waits for a line
//! on stdin before it goes on. The fault then lands at that point of the
//! run, every time, instead of wherever a poller caught the run racing on.
//! Unset, it costs nothing: no round trip, no read of stdin.

use tokio::io::AsyncBufReadExt;

use crate::connection::RedisConn;
use crate::error::{EngineError, Result};

pub const CHECKPOINTS_ENV: &str = "KEYSHIFT_CHECKPOINTS";
/// What the run prints on stderr when it stops at one.
pub const CHECKPOINT_LINE: &str = "keyshift-checkpoint: ";

/// The journal lengths to stop at, ascending; empty or malformed: none.
pub fn parse(value: &str) -> Vec<usize> {
    let mut at: Vec<usize> = value
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    at.sort_unstable();
    at.dedup();
    at
}

/// The checkpoints still ahead of a run, and where its journal is.
pub struct Checkpoints {
    ahead: Vec<usize>,
    /// The journal's length when last read.
    journaled: usize,
    conn: RedisConn,
    outcomes_key: String,
}

impl Checkpoints {
    /// From [`CHECKPOINTS_ENV`]; none when it is unset.
    pub fn from_env(conn: &RedisConn, outcomes_key: &str) -> Self {
        let ahead = std::env::var(CHECKPOINTS_ENV)
            .map(|v| parse(&v))
            .unwrap_or_default();
        Checkpoints {
            ahead,
            journaled: 0,
            conn: conn.clone(),
            outcomes_key: outcomes_key.to_owned(),
        }
    }

    /// Whether a checkpoint is still ahead.
    pub fn ahead(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// How many more keys fit before the next checkpoint (at least one):
    /// the size of the next batch.
    pub fn room(&self) -> usize {
        self.ahead.first().map_or(usize::MAX, |next| {
            next.saturating_sub(self.journaled).max(1)
        })
    }

    /// Reads the journal's length and stops when it has reached the next
    /// checkpoint. Called before the first batch (a resumed run's journal
    /// holds the earlier invocations' outcomes; `0` stops there) and after
    /// each batch.
    pub async fn stop_if_reached(&mut self) -> Result<()> {
        if self.ahead() {
            self.journaled = self.journal_length().await?;
            self.wait_if_reached().await;
        }
        Ok(())
    }

    /// Says so on stderr and waits for the harness's line on stdin (EOF
    /// goes on too) when the journal has reached the next checkpoint.
    async fn wait_if_reached(&mut self) {
        let journaled = self.journaled;
        if self.ahead.first().is_none_or(|&next| journaled < next) {
            return;
        }
        self.ahead.retain(|&n| n > journaled);
        eprintln!("{CHECKPOINT_LINE}{journaled}");
        let mut line = String::new();
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        // A read error is a harness gone: carry on as if released.
        let _ = stdin.read_line(&mut line).await;
    }

    async fn journal_length(&self) -> Result<usize> {
        let mut c = self.conn.clone();
        redis::cmd("HLEN")
            .arg(&self.outcomes_key)
            .query_async(&mut c)
            .await
            .map_err(EngineError::redis("reading the journal at a checkpoint"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_parse_sorted_and_skip_what_is_not_a_count() {
        assert_eq!(parse("97, 12,97,x,"), vec![12, 97]);
        assert!(parse("").is_empty());
    }
}
