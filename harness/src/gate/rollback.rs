//! The gate's second half for Phase 2: rollback must give back the
//! pre-migration keyspace (backups and journal aside, TTLs within a second),
//! a fresh migration must verify again, and one more run must write nothing.

use std::time::{Duration, Instant};

use keyshift_engine::invariant::InvariantResult;
use keyshift_engine::journal::{is_journal_key, latest_run};
use keyshift_engine::keys::BackupKey;
use keyshift_engine::migrate::{migrate_grid_positions, MigrateOptions};
use keyshift_engine::rollback::{rollback_grid_positions, RollbackOptions};
use keyshift_engine::standalone::StandaloneStore;
use keyshift_engine::verify::verify_grid_positions;
use redis::aio::MultiplexedConnection;

use super::checks;
use crate::commands::locked;
use crate::digest::{compare, digest, Digest};
use crate::report::InvariantEntry;

/// How far a restored TTL may be from the TTL before the migration, once
/// the time between the two digests is accounted for.
const TTL_TOLERANCE_MS: i64 = 1_000;

/// The pre-migration digest and when and how fast it was taken.
pub struct Before<'a> {
    pub digest: &'a Digest,
    pub taken: Instant,
    pub took: Duration,
}

/// Runs rollback, re-migration and a last idempotent run; returns the
/// `rollback` and `idempotent` entries and the second run's verify results.
pub async fn rollback_then_migrate_again(
    store: &StandaloneStore,
    conn: &MultiplexedConnection,
    before: Before<'_>,
    opts: &MigrateOptions,
) -> anyhow::Result<(InvariantEntry, Vec<InvariantResult>, InvariantEntry)> {
    let run = latest_run(conn).await?;
    let rollback = locked(
        conn,
        "gate: rollback grid-positions",
        rollback_grid_positions(store, conn, &run, &RollbackOptions::default()),
    )
    .await?;
    let ours = |k: &str| {
        is_journal_key(k)
            || BackupKey::parse(k, &run.exchanges).is_some_and(|b| b.stamp == run.stamp)
    };
    let mut c = conn.clone();
    let elapsed = before.taken.elapsed();
    let started = Instant::now();
    let after = digest(&mut c, |k| !ours(k)).await?;
    let took = started.elapsed().max(before.took);
    let expected = shifted(&before.digest.filtered(|k| !ours(k)), elapsed);
    let diff = compare(
        &expected,
        &after,
        TTL_TOLERANCE_MS + took.as_millis() as i64,
    );
    let mut result = InvariantResult::new(
        "rollback",
        "migrate then rollback gives the pre-migration keyspace (backups and journal aside), TTLs within 1 s",
    );
    checks::fold_diff(&mut result, &diff, "after rollback");
    for f in rollback.changed.iter().chain(&rollback.skipped) {
        result.mismatch(|| format!("{}: {} — {}", f.key, f.reason, f.detail));
    }

    // Migrate again from the restored keyspace; it must verify as the first did.
    let again = locked(
        conn,
        "gate: migrate grid-positions",
        migrate_grid_positions(store, opts, &|_| {}),
    )
    .await?;
    let run2 = latest_run(conn).await?;
    let mut verified = verify_grid_positions(conn, &run2, &|_| {})
        .await?
        .invariants;
    for v in &mut verified {
        v.check(
            if run2.run_id != run.run_id && again.totals.keys_migrated == rollback.restored {
                Ok(())
            } else {
                Err(format!(
                    "the second migration migrated {} keys, the rollback restored {}",
                    again.totals.keys_migrated, rollback.restored
                ))
            },
        );
    }

    // And once more: nothing left to do, nothing written.
    let third_at = Instant::now();
    let not_journal = |k: &str| !is_journal_key(k);
    let before_third = digest(&mut c, not_journal).await?;
    let third = locked(
        conn,
        "gate: migrate grid-positions",
        migrate_grid_positions(store, opts, &|_| {}),
    )
    .await?;
    let after_third = digest(&mut c, not_journal).await?;
    let slack = third_at.elapsed().as_millis() as i64 + TTL_TOLERANCE_MS;
    let idempotent = checks::idempotent(&compare(&before_third, &after_third, slack), &third);
    Ok((InvariantEntry::from_result(result), verified, idempotent))
}

/// A digest as it should read `elapsed` later: every TTL that much lower.
fn shifted(d: &Digest, elapsed: Duration) -> Digest {
    let mut out = d.clone();
    for k in out.keys.values_mut() {
        if let Some(t) = k.ttl_ms.as_mut() {
            *t -= elapsed.as_millis() as i64;
        }
    }
    out
}
