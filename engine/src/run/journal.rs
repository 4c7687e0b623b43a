//! The run journal kept in Redis, so a run can be found, verified, resumed
//! and rolled back later. Key layout (all under `keyshift:`, which no
//! migration pattern matches):
//!
//! - `keyshift:runs:{migration}`: sorted set of run ids, scored by start (ms).
//! - `keyshift:run:{run_id}`: the run record, JSON ([`RunRecord`]).
//! - `keyshift:run:{run_id}:users`: hash, legacy key -> outcome JSON ([`Outcome`]).
//!
//! Digests. A `grid-positions` outcome records `digest`: the SHA-256 of the
//! exact bytes of the legacy value, as the migration read them (and, for a
//! migrated key, as it wrote them into the backup), as 64 lowercase hex
//! digits: plain `sha256(value)`, no salt, no key name, no framing. Anyone
//! can re-compute it over a backup's bytes and compare; an entry written
//! before the field existed has `""` (migrated) or none (quarantined).
//! Phase 1's `digest` ([`OrderPlacedOutcome`]) is another thing: a digest
//! of a hash's fields, see `order_placed::plan::fields_digest`.

use redis::aio::ConnectionLike;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{EngineError, Result};

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

/// SHA-256 of `bytes` as 64 lowercase hex digits: the `digest` of a
/// `grid-positions` outcome (see the module doc).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Done,
    /// Stopped by an error; the same command resumes it.
    Failed,
    /// Undone by `keyshift rollback`.
    RolledBack,
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
    /// How many times an interrupted run was resumed.
    #[serde(default)]
    pub resumes: u32,
    /// When it was rolled back, and what the rollback did.
    #[serde(default)]
    pub rollback: Option<serde_json::Value>,
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
        /// SHA-256 (lowercase hex) of the legacy value the migration read
        /// and backed up (see the module doc); `""` in entries journaled
        /// before it was recorded.
        #[serde(default)]
        digest: String,
    },
    Quarantined {
        reason: String,
        detail: String,
        /// SHA-256 (lowercase hex) of the value left in place, when the
        /// key held a string that was read; none for another type, a name
        /// that is not UTF-8, or an entry journaled before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    Conflict {
        key: String,
    },
}

/// One legacy key's outcome in an `order-placed` (Phase 1) run. On one
/// server `moved` and `dropped_equal` are written by the move script in the
/// same atomic step as the move; on a cluster they are recorded before the
/// legacy key's compare-and-delete and withdrawn if it refuses; `digest` is [`crate::order_placed::plan::fields_digest`] of the
/// legacy hash, the record `verify order-placed` compares the target with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OrderPlacedOutcome {
    /// Renamed to its target; `pttl` is the legacy TTL in ms (-1: none).
    Moved {
        fields: usize,
        digest: String,
        pttl: i64,
        /// Server time of the move, ms since the epoch.
        at: i64,
    },
    /// The target already held the same hash; the legacy key was deleted.
    DroppedEqual {
        fields: usize,
        digest: String,
        pttl: i64,
        at: i64,
    },
    /// The target exists and differs: neither key was touched.
    Conflict {
        target: String,
        reason: String,
        detail: String,
    },
    /// Not a hash (or a key keyshift cannot name): left untouched.
    Quarantined { reason: String, detail: String },
}

/// The latest run of `migration`, if one is recorded: the one a new run
/// resumes. Not the run to verify or roll back: a later run that found
/// nothing to do hides an earlier one; those look at [`runs_of`].
pub async fn latest_run_of<C: ConnectionLike + Clone + Send>(
    conn: &C,
    migration: &str,
) -> Result<Option<RunRecord>> {
    match run_ids(conn, migration, 0).await?.into_iter().next() {
        Some(id) => read_run(conn, &id).await.map(Some),
        None => Ok(None),
    }
}

/// Every run of `migration`, oldest first, each with its state (running,
/// done, failed, or rolled back: [`RunState::RolledBack`], with what the
/// rollback did in [`RunRecord::rollback`]).
pub async fn runs_of<C: ConnectionLike + Clone + Send>(
    conn: &C,
    migration: &str,
) -> Result<Vec<RunRecord>> {
    let ids = run_ids(conn, migration, -1).await?;
    let mut runs = Vec::with_capacity(ids.len());
    for id in ids.iter().rev() {
        runs.push(read_run(conn, id).await?);
    }
    Ok(runs)
}

/// Whether run `run_id` journaled at least one outcome for which `wrote`
/// holds (it migrated something), reading its outcomes in batches until
/// the first one. `T` is the migration's outcome type.
pub async fn wrote_anything<T, C>(
    conn: &C,
    run_id: &str,
    wrote: impl Fn(&T) -> bool,
) -> Result<bool>
where
    T: DeserializeOwned,
    C: ConnectionLike + Clone + Send,
{
    let mut cursor = 0;
    loop {
        let (next, batch) = scan_outcomes::<T, C>(conn, run_id, cursor, 500).await?;
        if batch.iter().any(|(_, o)| wrote(o)) {
            return Ok(true);
        }
        cursor = next;
        if cursor == 0 {
            return Ok(false);
        }
    }
}

/// The ids of the runs of `migration`, newest first, down to rank `last`
/// (-1: all). ZREVRANGE, the one range command the shipped ACL users
/// (docs/acl/) may run.
async fn run_ids<C: ConnectionLike + Clone + Send>(
    conn: &C,
    migration: &str,
    last: i64,
) -> Result<Vec<String>> {
    let mut c = conn.clone();
    redis::cmd("ZREVRANGE")
        .arg(runs_key(migration))
        .arg(0)
        .arg(last)
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("reading the journal"))
}

pub async fn read_run<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run_id: &str,
) -> Result<RunRecord> {
    let mut c = conn.clone();
    let key = run_key(run_id);
    let json: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("reading the journal"))?;
    let json = json.ok_or(EngineError::NoRun)?;
    serde_json::from_str(&json).map_err(|e| EngineError::BadJournal {
        key,
        detail: e.to_string(),
    })
}

/// Creates or updates a run record and files it under its migration.
pub async fn save_run<C: ConnectionLike + Clone + Send>(conn: &C, run: &RunRecord) -> Result<()> {
    let json = serde_json::to_string(run).expect("run record serialises");
    let mut c = conn.clone();
    // Two steps, record first: on a cluster the two keys live in different
    // slots. Apart they are safe: the first save of a run comes before any
    // write of it, so a record that never reached the index leaves nothing
    // to find, and the index never names a record that is not there.
    redis::cmd("SET")
        .arg(run_key(&run.run_id))
        .arg(json)
        .query_async::<()>(&mut c)
        .await
        .map_err(EngineError::redis("saving the run record"))?;
    redis::cmd("ZADD")
        .arg(runs_key(&run.migration))
        .arg(run.started_ms)
        .arg(&run.run_id)
        .query_async::<()>(&mut c)
        .await
        .map_err(EngineError::redis("saving the run record"))
}

/// Records outcomes (legacy key, outcome JSON) in the outcome hash at `key`.
pub async fn record_outcomes<C: ConnectionLike + Clone + Send>(
    conn: &C,
    key: &str,
    outcomes: &[(String, String)],
) -> Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut c = conn.clone();
    redis::cmd("HSET")
        .arg(key)
        .arg(outcomes)
        .query_async::<()>(&mut c)
        .await
        .map_err(EngineError::redis("recording outcomes in the journal"))
}

/// Streams a run's outcomes in HSCAN batches of about `count`; `T` is the
/// migration's outcome type ([`Outcome`], [`OrderPlacedOutcome`]).
pub async fn scan_outcomes<T: DeserializeOwned, C: ConnectionLike + Clone + Send>(
    conn: &C,
    run_id: &str,
    cursor: u64,
    count: usize,
) -> Result<(u64, Vec<(String, T)>)> {
    scan_outcomes_at(conn, &outcomes_key(run_id), cursor, count).await
}

/// [`scan_outcomes`] over the outcome hash at `key`.
pub async fn scan_outcomes_at<T: DeserializeOwned, C: ConnectionLike + Clone + Send>(
    conn: &C,
    key: &str,
    cursor: u64,
    count: usize,
) -> Result<(u64, Vec<(String, T)>)> {
    let mut c = conn.clone();
    let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
        .arg(key)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("reading run outcomes"))?;
    let mut out = Vec::with_capacity(flat.len() / 2);
    for pair in flat.chunks_exact(2) {
        let outcome = serde_json::from_str(&pair[1]).map_err(|e| EngineError::BadJournal {
            key: key.to_owned(),
            detail: format!("{}: {e}", pair[0]),
        })?;
        out.push((pair[0].clone(), outcome));
    }
    Ok((next, out))
}

/// Calls `each` with every HSCAN batch (about `count`) of the outcome hash
/// at `key`, until the hash is walked.
pub async fn for_each_outcome_batch<T, C>(
    conn: &C,
    key: &str,
    count: usize,
    mut each: impl AsyncFnMut(Vec<(String, T)>) -> Result<()>,
) -> Result<()>
where
    T: DeserializeOwned,
    C: ConnectionLike + Clone + Send,
{
    let mut cursor = 0;
    loop {
        let (next, batch) = scan_outcomes_at(conn, key, cursor, count).await?;
        each(batch).await?;
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}

/// What a runner starts a run of, or resumes its latest run with.
pub struct RunStart<'a> {
    pub migration: &'static str,
    pub skip_closed: bool,
    pub exchanges: &'a [String],
    /// A dry run writes nothing: no new record, no resumed one.
    pub dry_run: bool,
}

/// Starts a run, or continues `last` (the latest run of the migration) when
/// it was interrupted (its runner died or failed): same run id, same stamp,
/// same `started_at`, so the end state is the one an uninterrupted run
/// gives. `refuse` says why `last` cannot be resumed with this run's
/// options, if it cannot. The caller holds the runner lock, so a `running`
/// record has no live runner. Returns the record and whether it resumed;
/// unless a dry run, the record is saved with `save`.
pub async fn begin_or_resume(
    start: RunStart<'_>,
    last: Option<RunRecord>,
    refuse: impl FnOnce(&RunRecord) -> Option<String>,
    save: impl AsyncFnOnce(&RunRecord) -> Result<()>,
) -> Result<(RunRecord, bool)> {
    if let Some(mut last) = last.clone() {
        if matches!(last.state, RunState::Running | RunState::Failed) {
            if let Some(why) = refuse(&last) {
                return Err(EngineError::Refused(why));
            }
            if !start.dry_run {
                last.state = RunState::Running;
                last.error = None;
                last.resumes += 1;
                save(&last).await?;
            }
            return Ok((last, true));
        }
    }
    let mut now = chrono::Utc::now();
    let mut stamp = now.format("%Y%m%d_%H%M%S").to_string();
    // Runs are found by their one-second stamp (`--backup-stamp`), and
    // Phase 2's backups are named by it: a run started in the same second
    // as the last one would share both, so it waits for the next second.
    while last.as_ref().is_some_and(|l| l.stamp == stamp) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        now = chrono::Utc::now();
        stamp = now.format("%Y%m%d_%H%M%S").to_string();
    }
    let migration = start.migration;
    let record = RunRecord {
        run_id: format!(
            "{migration}-{stamp}-{:04x}",
            now.timestamp_subsec_nanos() & 0xffff
        ),
        migration: migration.to_owned(),
        stamp,
        state: RunState::Running,
        started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        started_ms: now.timestamp_millis(),
        finished_at: None,
        skip_closed: start.skip_closed,
        exchanges: start.exchanges.to_vec(),
        counts: None,
        error: None,
        resumes: 0,
        rollback: None,
    };
    if !start.dry_run {
        save(&record).await?;
    }
    Ok((record, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_json_matches_what_the_lua_writer_produces() {
        // The standalone writer encodes this in Lua with cjson; the field
        // names must stay in step with `Outcome`.
        let digest = sha256_hex(b"[]");
        let lua = format!(
            r#"{{"state":"migrated","positions":3,"skipped":1,"pttl":-1,"at":1700000000000,"digest":"{digest}"}}"#
        );
        let parsed: Outcome = serde_json::from_str(&lua).unwrap();
        let migrated = Outcome::Migrated {
            positions: 3,
            skipped: 1,
            pttl: -1,
            at: 1_700_000_000_000,
            digest,
        };
        assert_eq!(parsed, migrated);
        assert_eq!(serde_json::to_string(&migrated).unwrap(), lua);
    }

    #[test]
    fn outcomes_journaled_before_the_digest_still_read() {
        let old = r#"{"state":"migrated","positions":3,"skipped":1,"pttl":-1,"at":17}"#;
        assert!(matches!(
            serde_json::from_str(old).unwrap(),
            Outcome::Migrated { digest, .. } if digest.is_empty()
        ));
        let old = r#"{"state":"quarantined","reason":"not_json","detail":"x"}"#;
        assert!(matches!(
            serde_json::from_str(old).unwrap(),
            Outcome::Quarantined { digest: None, .. }
        ));
    }

    #[test]
    fn the_digest_is_plain_sha256_in_lowercase_hex() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn order_placed_outcome_json_matches_the_move_script() {
        // engine/src/lua/move_order_placed.lua formats these by hand.
        let lua = r#"{"state":"dropped_equal","fields":2,"digest":"ab","pttl":-1,"at":17}"#;
        assert_eq!(
            serde_json::from_str::<OrderPlacedOutcome>(lua).unwrap(),
            OrderPlacedOutcome::DroppedEqual {
                fields: 2,
                digest: "ab".into(),
                pttl: -1,
                at: 17
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
