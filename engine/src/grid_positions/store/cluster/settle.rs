//! Before a resumed run scans: users whose legacy key an interrupted run
//! deleted (step 6) before it withdrew its "migrating" marker from their
//! index (step 7). SCAN cannot find them again (their legacy key is gone),
//! so the run's journal does: an outcome `migrated` and no legacy key. The
//! index already holds exactly the plan (written before the delete) and
//! every application write made since, so only the marker goes; nothing
//! is planned again.
//!
//! The same state is left when the legacy key vanished by itself between
//! the outcome (step 5) and the compare-and-delete: expired, its new keys
//! expire with it; deleted by someone, the user keeps the new layout the
//! run wrote (the one case the journal cannot tell from a kill after the
//! delete, see the module doc of `cluster`).

use crate::connection::RedisConn;
use crate::error::Result;
use crate::keys::{migrating_sentinel, LegacyPositionsKey};
use crate::run::journal::{self, Outcome, RunRecord};

use super::scripts::query;

const BATCH: usize = 500;

pub(super) async fn settle_interrupted(conn: &RedisConn, run: &RunRecord) -> Result<usize> {
    let sentinel = migrating_sentinel(&run.run_id);
    let mut settled = 0;
    let mut cursor = 0;
    loop {
        let (next, outcomes) =
            journal::scan_outcomes::<Outcome, _>(conn, &run.run_id, cursor, BATCH).await?;
        let users: Vec<(String, LegacyPositionsKey)> = outcomes
            .into_iter()
            .filter_map(|(key, o)| match o {
                Outcome::Migrated { positions, .. } if positions > 0 => {
                    let legacy = LegacyPositionsKey::parse(&key, &run.exchanges)?;
                    Some((key, legacy))
                }
                _ => None,
            })
            .collect();
        settled += settle_batch(conn, &sentinel, &users).await?;
        cursor = next;
        if cursor == 0 {
            return Ok(settled);
        }
    }
}

async fn settle_batch(
    conn: &RedisConn,
    sentinel: &str,
    users: &[(String, LegacyPositionsKey)],
) -> Result<usize> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (key, _) in users {
        pipe.cmd("EXISTS").arg(key);
    }
    let exists = query(conn, &pipe, "looking for interrupted users").await?;
    // A legacy key still there: the delete has not happened, the scan finds
    // the user and its migration runs again (the marker says whose index).
    let mut pipe = redis::pipe();
    // An index that is not a set is no index of ours: its SREM's error
    // counts as nothing settled, never as a failed run.
    pipe.ignore_errors();
    for ((_, legacy), there) in users.iter().zip(exists) {
        if !redis::from_redis_value::<bool>(there).unwrap_or(true) {
            pipe.cmd("SREM").arg(legacy.index_key()).arg(sentinel);
        }
    }
    let removed = query(conn, &pipe, "removing migration markers").await?;
    let count = removed
        .into_iter()
        .filter(|r| redis::from_redis_value_ref::<i64>(r).is_ok_and(|n| n == 1))
        .count();
    if count > 0 {
        tracing::info!(
            users = count,
            "withdrew the migration marker an interrupted run left after deleting a legacy key"
        );
    }
    Ok(count)
}
