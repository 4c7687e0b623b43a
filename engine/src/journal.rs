//! The run journal kept in Redis, so a run can be found, verified, resumed
//! and rolled back later. Key layout (all under `keyshift:`, which no
//! migration pattern matches):
//!
//! - `keyshift:runs:{migration}`: sorted set of run ids, scored by start (ms).
//! - `keyshift:run:{run_id}`: the run record, JSON ([`RunRecord`]).
//! - `keyshift:run:{run_id}:users`: hash, legacy key -> outcome JSON ([`Outcome`]).

use serde::{Deserialize, Serialize};

pub const JOURNAL_PREFIX: &str = "keyshift:";

pub fn runs_key(migration: &str) -> String {
    format!("keyshift:runs:{migration}")
}

pub fn run_key(run_id: &str) -> String {
    format!("keyshift:run:{run_id}")
}

pub fn outcomes_key(run_id: &str) -> String {
    format!("keyshift:run:{run_id}:users")
}

/// True for every key the journal owns; digests leave these aside.
pub fn is_journal_key(key: &str) -> bool {
    key.starts_with(JOURNAL_PREFIX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub migration: String,
    /// `YYYYMMDD_HHMMSS` (UTC): the suffix of every backup key of this run.
    pub stamp: String,
    pub state: RunState,
    pub started_at: String,
    pub started_ms: i64,
    pub finished_at: Option<String>,
    pub skip_closed: bool,
    pub exchanges: Vec<String>,
    /// Final counts, once the run has ended.
    pub counts: Option<serde_json::Value>,
    /// Why the run failed, when it did.
    pub error: Option<String>,
}

/// One legacy key's outcome in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    Migrated {
        positions: usize,
        skipped: usize,
        /// Legacy TTL in ms when migrated; -1 when it had none.
        pttl: i64,
        /// Server time of the write, ms since the epoch.
        at: i64,
    },
    Quarantined {
        reason: String,
        detail: String,
    },
    Conflict {
        key: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_json_matches_what_the_lua_writer_produces() {
        // The standalone writer encodes this in Lua with cjson; the field
        // names must stay in step with `Outcome`.
        let lua = r#"{"state":"migrated","positions":3,"skipped":1,"pttl":-1,"at":1700000000000}"#;
        let parsed: Outcome = serde_json::from_str(lua).unwrap();
        assert_eq!(
            parsed,
            Outcome::Migrated {
                positions: 3,
                skipped: 1,
                pttl: -1,
                at: 1_700_000_000_000
            }
        );
    }

    #[test]
    fn journal_keys_are_outside_every_migration_pattern() {
        assert!(is_journal_key(&run_key("r1")));
        assert!(is_journal_key(&outcomes_key("r1")));
        assert!(!is_journal_key("okx:positions:1"));
    }
}
