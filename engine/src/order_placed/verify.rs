//! `verify order-placed`: the counts, fields and ttl invariants of DESIGN §4
//! for a Phase 1 run, on a live server. The journal is the record of what
//! was there: each moved or dropped key's outcome holds the digest of its
//! legacy hash and its TTL. Reads only. "untouched" is the gate's check (it
//! needs a digest of the keyspace from before the run). An invariant the
//! run gave nothing to examine reports `not run` with the reason.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::Value;

use crate::connection::scan::scan_step;
use crate::error::{EngineError, Result};
use crate::keys::OrderPlacedKey;
use crate::run::invariant::InvariantResult;
use crate::run::invariant::{VerifyReport, TTL_TOLERANCE_MS};
use crate::run::journal::{
    latest_run_of, outcomes_key, scan_outcomes, OrderPlacedOutcome, RunRecord,
};

use super::plan::{fields_digest, Fields};
use super::runner::Counts;
use super::MIGRATION;

const BATCH: usize = 500;

/// The latest `order-placed` run recorded on this server, if any.
pub async fn latest_run<C: ConnectionLike + Clone + Send>(conn: &C) -> Result<Option<RunRecord>> {
    latest_run_of(conn, MIGRATION).await
}

struct Checks {
    counts: InvariantResult,
    fields: InvariantResult,
    ttl: InvariantResult,
}

pub async fn verify_order_placed<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    progress: &dyn Fn(usize),
) -> Result<VerifyReport> {
    let mut checks = Checks {
        counts: InvariantResult::new(
            "counts",
            "legacy keys found = moved + dropped (equal target) + conflicts + quarantined, as the run recorded; every legacy key left is a recorded conflict or quarantine",
        ),
        fields: InvariantResult::new(
            "fields",
            "each moved or dropped key's target hash equals the legacy hash (journalled digest)",
        ),
        ttl: InvariantResult::new("ttl", "each moved key kept its remaining TTL within tolerance"),
    };
    let mut tally = Counts::default();
    let mut cursor = 0u64;
    loop {
        let (next, batch) = scan_outcomes(conn, &run.run_id, cursor, BATCH).await?;
        progress(batch.len());
        batch.iter().for_each(|(_, o)| tally.count(o));
        check_targets(conn, run, &batch, &mut checks).await?;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    match run.counts.as_ref() {
        Some(recorded) => checks.counts.check(compare_counts(recorded, &tally)),
        None => checks.counts.mismatch(|| {
            format!(
                "run {} has no final counts (state {:?}): it did not finish; rerun the migration",
                run.run_id, run.state
            )
        }),
    }
    sweep_legacy(conn, run, &mut checks.counts).await?;
    explain_not_run(run, &tally, &mut checks);
    Ok(VerifyReport {
        migration: MIGRATION,
        run_id: run.run_id.clone(),
        stamp: run.stamp.clone(),
        invariants: vec![checks.counts, checks.fields, checks.ttl],
    })
}

/// Says why fields or ttl examined nothing: the run moved (or dropped)
/// no key for them to compare.
fn explain_not_run(run: &RunRecord, tally: &Counts, checks: &mut Checks) {
    let id = &run.run_id;
    let (moved, dropped) = (tally.keys_moved, tally.keys_dropped_equal);
    checks.fields.not_run(format!(
        "run {id} moved no key and dropped none: no target to compare"
    ));
    checks.ttl.not_run(match (moved, dropped) {
        (0, 0) => format!("run {id} moved no key: no TTL to carry over"),
        (0, _) => format!(
            "run {id} moved no key: its {dropped} dropped keys left their equal targets' own TTLs"
        ),
        _ => format!("none of the {moved} moved keys' targets is a hash to read (see fields)"),
    });
}

fn compare_counts(recorded: &serde_json::Value, journal: &Counts) -> Result<(), String> {
    let journal_json = serde_json::to_value(journal).expect("counts serialise");
    let fields = [
        "legacy_keys_found",
        "keys_moved",
        "keys_dropped_equal",
        "keys_conflicting",
        "keys_quarantined",
    ];
    let differ: Vec<String> = fields
        .iter()
        .filter(|f| recorded.get(**f) != journal_json.get(**f))
        .map(|f| {
            format!(
                "{f}: run record {:?}, journal {}",
                recorded.get(*f),
                journal_json[f]
            )
        })
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(differ.join("; "))
    }
}

/// Reads the target of every moved or dropped key in `batch` and checks
/// its digest and (moved keys) its TTL.
async fn check_targets<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    batch: &[(String, OrderPlacedOutcome)],
    checks: &mut Checks,
) -> Result<()> {
    let mut settled = Vec::new();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (legacy, outcome) in batch {
        let (fields, digest, pttl, at, moved) = match outcome {
            OrderPlacedOutcome::Moved {
                fields,
                digest,
                pttl,
                at,
            } => (*fields, digest, *pttl, *at, true),
            OrderPlacedOutcome::DroppedEqual {
                fields, digest, at, ..
            } => (*fields, digest, -1, *at, false),
            _ => continue,
        };
        let k = OrderPlacedKey::parse(legacy, &run.exchanges).ok_or_else(|| {
            EngineError::BadJournal {
                key: outcomes_key(&run.run_id),
                detail: format!("{legacy} is not a legacy order-placed key"),
            }
        })?;
        let target = k.target_key();
        pipe.hgetall(&target).pttl(&target);
        settled.push((target, fields, digest, pttl, at, moved));
    }
    if settled.is_empty() {
        return Ok(());
    }
    pipe.cmd("TIME");
    let mut c = conn.clone();
    let replies: Vec<redis::RedisResult<Value>> = pipe
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("reading order-placed targets"))?;
    let now_ms = replies
        .last()
        .and_then(|r| r.as_ref().ok())
        .and_then(|v| redis::from_redis_value_ref::<(i64, i64)>(v).ok())
        .map_or_else(
            || chrono::Utc::now().timestamp_millis(),
            |(s, us)| s * 1000 + us / 1000,
        );
    for ((target, fields, digest, pttl, at, moved), r) in settled.into_iter().zip(replies.chunks(2))
    {
        let hash = match &r[0] {
            Ok(v) => redis::from_redis_value_ref::<Fields>(v).ok(),
            Err(_) => None,
        };
        let actual_ttl = match &r[1] {
            Ok(v) => redis::from_redis_value_ref::<i64>(v).unwrap_or(-2),
            Err(_) => -2,
        };
        let Some(hash) = hash else {
            checks
                .fields
                .mismatch(|| format!("{target}: not a hash any more"));
            continue;
        };
        if hash.is_empty() && moved && pttl > 0 && now_ms - at >= pttl - TTL_TOLERANCE_MS {
            // Carried its TTL and expired since: what the legacy key would
            // have done.
            checks.fields.ok();
            checks.ttl.ok();
            continue;
        }
        checks.fields.check(if hash.is_empty() {
            Err(format!("{target}: missing"))
        } else if hash.len() != fields || fields_digest(&hash) != *digest {
            Err(format!(
                "{target}: {} field(s), digest {}; the legacy hash had {fields}, digest {digest}",
                hash.len(),
                fields_digest(&hash)
            ))
        } else {
            Ok(())
        });
        if moved && !hash.is_empty() {
            checks
                .ttl
                .check(ttl_carried(&target, actual_ttl, pttl, at, now_ms));
        }
    }
    Ok(())
}

fn ttl_carried(
    key: &str,
    actual: i64,
    legacy_pttl: i64,
    at: i64,
    now_ms: i64,
) -> Result<(), String> {
    if legacy_pttl <= 0 {
        return if actual == -1 {
            Ok(())
        } else {
            Err(format!(
                "{key}: TTL {actual} ms, but the legacy key had none"
            ))
        };
    }
    let expected = legacy_pttl - (now_ms - at).max(0);
    if actual > 0 && (actual - expected).abs() <= TTL_TOLERANCE_MS {
        Ok(())
    } else {
        Err(format!(
            "{key}: TTL {actual} ms, expected about {expected} ms"
        ))
    }
}

/// Every legacy key still on the server must be one the run left on
/// purpose (a conflict or a quarantine); one recorded as moved or dropped
/// has reappeared (a writer still uses the old layout), one not recorded
/// was missed or created since.
async fn sweep_legacy<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
    counts: &mut InvariantResult,
) -> Result<()> {
    let pattern = match run.exchanges.as_slice() {
        [one] => OrderPlacedKey::scan_pattern(Some(one)),
        _ => OrderPlacedKey::scan_pattern(None),
    };
    let journal = outcomes_key(&run.run_id);
    let mut cursor = 0u64;
    loop {
        let during = "sweeping for legacy keys";
        let (next, keys): (u64, Vec<Vec<u8>>) =
            scan_step(conn, cursor, Some(&pattern), 1000, during).await?;
        let mut c = conn.clone();
        let legacy: Vec<String> = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .filter(|k| OrderPlacedKey::parse(k, &run.exchanges).is_some())
            .collect();
        if !legacy.is_empty() {
            let recorded: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&journal)
                .arg(&legacy)
                .query_async(&mut c)
                .await
                .map_err(EngineError::redis("reading run outcomes"))?;
            let mut by_key: HashMap<&str, Option<OrderPlacedOutcome>> = HashMap::new();
            for (k, json) in legacy.iter().zip(recorded) {
                by_key.insert(k, json.and_then(|j| serde_json::from_str(&j).ok()));
            }
            for (k, outcome) in by_key {
                counts.check(match outcome {
                    Some(OrderPlacedOutcome::Conflict { .. })
                    | Some(OrderPlacedOutcome::Quarantined { .. }) => Ok(()),
                    Some(_) => Err(format!(
                        "{k}: reappeared after the run moved or dropped it (a writer still uses the old key)"
                    )),
                    None => Err(format!(
                        "{k}: a legacy key this run did not account for (missed, or written since)"
                    )),
                });
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}
