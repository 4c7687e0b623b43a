//! The gate's Phase 1 (`order-placed`) and Phase 1.5 (`cleanup-legacy`),
//! run before Phase 2 on the same seeded server. Each returns its phase
//! report; expectations come from the seeded keyspace model, classified by
//! the schema, not from what the engine reports.

use std::collections::BTreeMap;
use std::time::Instant;

use keyshift_engine::cleanup_legacy::{cleanup_legacy, Cleanup, CleanupOptions};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::keys::schema::Schema;
use keyshift_engine::keys::OrderPlacedKey;
use keyshift_engine::order_placed::plan::KeyPlanner;
use keyshift_engine::order_placed::store::OrderPlacedStore;
use keyshift_engine::order_placed::{
    migrate_order_placed, verify::latest_run, verify_order_placed, OrderPlacedOptions,
};
use keyshift_engine::run::invariant::InvariantResult;
use keyshift_engine::run::journal::{is_journal_key, OrderPlacedOutcome};

use super::checks::{diff_invariant, fold_diff, read_outcomes, slack_since};
use crate::commands::locked;
use crate::digest::{compare, digest, Digest};
use crate::report::{InvariantEntry, PhaseReport};

/// Phase 1 through `store`, checked on `conn` (the same server); `seeded`
/// names the keys the server was given (the model's, or a snapshot's as
/// loaded); the runner plans with `planner`; `pre` is the digest taken
/// before it, at `pre_at`.
pub async fn order_placed<S: OrderPlacedStore>(
    store: &S,
    conn: &RedisConn,
    seeded: &[&str],
    exchanges: &[String],
    planner: KeyPlanner,
    pre: &Digest,
    pre_at: Instant,
) -> anyhow::Result<PhaseReport> {
    let mut opts = OrderPlacedOptions::new(exchanges.to_vec());
    opts.planner = planner;
    opts.dry_run = true;
    let plan = migrate_order_placed(store, &opts, &|_| {}).await?;
    opts.dry_run = false;
    let report = locked(
        conn,
        "gate: migrate order-placed",
        migrate_order_placed(store, &opts, &|_| {}),
    )
    .await?;
    let run = latest_run(conn)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the order-placed run left no journal record"))?;
    let verified = verify_order_placed(conn, &run, &|_| {}).await?;

    // Every legacy order-placed key the model holds is found, and the plan
    // foresaw exactly what the run did.
    let expected = seeded
        .iter()
        .filter(|k| OrderPlacedKey::parse(k, exchanges).is_some())
        .count();
    let mut invariants: Vec<InvariantEntry> = Vec::new();
    for mut inv in verified.invariants {
        if inv.id == "counts" {
            inv.check(if report.totals.legacy_keys_found == expected {
                Ok(())
            } else {
                Err(format!(
                    "seeded {expected} legacy order-placed keys, the run found {}",
                    report.totals.legacy_keys_found
                ))
            });
            inv.check(if plan.totals == report.totals {
                Ok(())
            } else {
                Err(format!(
                    "the dry-run plan predicted {:?}, the run did {:?}",
                    plan.totals, report.totals
                ))
            });
        }
        invariants.push(InvariantEntry::from_result(inv));
    }

    // Untouched: everything but the keys this run moved or dropped and
    // their targets.
    let outcomes: BTreeMap<String, OrderPlacedOutcome> = read_outcomes(conn, &run.run_id).await?;
    let owned = |k: &str| {
        is_journal_key(k)
            || matches!(
                outcomes.get(k),
                Some(OrderPlacedOutcome::Moved { .. } | OrderPlacedOutcome::DroppedEqual { .. })
            )
            || OrderPlacedKey::parse_target(k, exchanges).is_some_and(|t| {
                matches!(
                    outcomes.get(&t.key()),
                    Some(OrderPlacedOutcome::Moved { .. })
                )
            })
    };
    let after = digest(conn, |k| !owned(k)).await?;
    let diff = compare(&pre.filtered(|k| !owned(k)), &after, slack_since(pre_at));
    invariants.push(diff_invariant(
        "untouched",
        "every key outside the keys Phase 1 moved or dropped (and their targets) is unchanged",
        &diff,
    ));
    let t = &report.totals;
    Ok(PhaseReport {
        name: "order-placed".into(),
        summary: format!(
            "Legacy keys {} (moved {}, dropped as equal {}, conflicts {}, quarantined {}); {:.2} s.",
            t.legacy_keys_found,
            t.keys_moved,
            t.keys_dropped_equal,
            t.keys_conflicting,
            t.keys_quarantined,
            report.elapsed_ms as f64 / 1000.0
        ),
        for_review: report
            .quarantined
            .iter()
            .chain(&report.conflicts)
            .map(|f| (f.key.clone(), format!("{}: {}", f.reason, f.detail)))
            .collect(),
        details: serde_json::to_value(&report)?,
        invariants,
    })
}

/// Phase 1.5 on `conn`, checked against the keyspace as Phase 1 left it.
pub async fn cleanup_legacy_cache(
    conn: &RedisConn,
    seeded: &[&str],
) -> anyhow::Result<PhaseReport> {
    let pre_at = Instant::now();
    let pre = digest(conn, |k| !is_journal_key(k)).await?;
    let schema = Schema::builtin();
    let is_cache = |k: &str| {
        schema
            .classify(k)
            .is_some_and(|m| schema.patterns()[m.index].cleanup)
    };
    let expected = seeded.iter().filter(|k| is_cache(k)).count() as u64;
    let opts = CleanupOptions::default();
    let cleanup = Cleanup::new(&schema, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = locked(
        conn,
        "gate: cleanup-legacy",
        cleanup_legacy(conn, cleanup, &|_| {}),
    )
    .await?;

    let mut counts = InvariantResult::new(
        "counts",
        "every seeded legacy position-cache key is deleted, and only those",
    );
    counts.check(if report.deleted == expected && report.wrong_type == 0 {
        Ok(())
    } else {
        Err(format!(
            "seeded {expected} legacy cache keys; deleted {}, wrong type {}",
            report.deleted, report.wrong_type
        ))
    });
    let after_all = digest(conn, |k| !is_journal_key(k)).await?;
    for k in after_all.keys.keys().filter(|k| is_cache(k)) {
        counts.mismatch(|| format!("{k}: a legacy cache key is still there"));
    }
    let mut untouched = InvariantResult::new(
        "untouched",
        "every key that is not a legacy position-cache key is unchanged (standard position:{uid}:{exchange}:{symbol}:{side} included)",
    );
    let keep = |k: &str| !is_cache(k) && !is_journal_key(k);
    fold_diff(
        &mut untouched,
        &compare(
            &pre.filtered(keep),
            &after_all.filtered(keep),
            slack_since(pre_at),
        ),
        "",
    );
    Ok(PhaseReport {
        name: "cleanup-legacy".into(),
        summary: format!(
            "Processed: {} keys (deleted {}, wrong type {}, vanished {}); {:.2} s.",
            report.processed,
            report.deleted,
            report.wrong_type,
            report.vanished,
            report.elapsed_ms as f64 / 1000.0
        ),
        for_review: report
            .wrong_type_samples
            .iter()
            .map(|m| {
                (
                    m.key.clone(),
                    format!("a {} where a string belongs: kept", m.actual),
                )
            })
            .collect(),
        details: serde_json::to_value(&report)?,
        invariants: vec![
            InvariantEntry::from_result(counts),
            InvariantEntry::from_result(untouched),
        ],
    })
}
