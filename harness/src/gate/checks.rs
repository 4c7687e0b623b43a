//! The gate's own invariants, beyond what `verify` checks on a live server.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use futures_util::future::try_join_all;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use keyshift_engine::api::{
    ApiError, DualReadStore, HashStore, LegacyStore, Position, PositionStore,
};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::Side;
use keyshift_engine::grid_positions::runner::MigrationReport;
use keyshift_engine::keys::{parse_index_key, BackupKey, LegacyPositionsKey, PositionHashKey};
use keyshift_engine::run::invariant::InvariantResult;
use keyshift_engine::run::journal::{outcomes_key, Outcome, RunRecord};
use serde::de::DeserializeOwned;

use crate::digest::{compare, Digest, DigestDiff};
use crate::report::InvariantEntry;
use crate::seed::Generated;

pub async fn redis_version(conn: &RedisConn) -> String {
    let mut c = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned()
}

/// Every outcome of a run, legacy key -> outcome (the migration's outcome
/// type: [`Outcome`], or `OrderPlacedOutcome` for Phase 1).
pub async fn read_outcomes<T: DeserializeOwned>(
    conn: &RedisConn,
    run_id: &str,
) -> anyhow::Result<BTreeMap<String, T>> {
    let mut c = conn.clone();
    let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(outcomes_key(run_id))
        .query_async(&mut c)
        .await?;
    raw.into_iter()
        .map(|(k, v)| Ok((k, serde_json::from_str(&v)?)))
        .collect()
}

fn migrated(outcomes: &BTreeMap<String, Outcome>) -> impl Iterator<Item = (&String, &Outcome)> {
    outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Migrated { .. }))
}

/// Writes each migrated key's backup back under its legacy name, with the
/// TTL it had left, into `target`; returns the restored key names.
pub async fn restore_backups(
    source: &RedisConn,
    target: &RedisConn,
    run: &RunRecord,
    outcomes: &BTreeMap<String, Outcome>,
) -> anyhow::Result<HashSet<String>> {
    let mut restored = HashSet::new();
    let entries: Vec<(&String, &Outcome)> = migrated(outcomes).collect();
    for chunk in entries.chunks(500) {
        let mut pipe = redis::pipe();
        for (key, _) in chunk {
            let legacy = LegacyPositionsKey::parse(key, &run.exchanges)
                .ok_or_else(|| anyhow::anyhow!("journal names {key}, which is not a legacy key"))?;
            pipe.get(legacy.backup_key(&run.stamp));
        }
        pipe.cmd("TIME");
        let mut c = source.clone();
        let mut values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let (secs, micros): (i64, i64) =
            redis::from_redis_value(values.pop().expect("TIME reply"))?;
        let now = secs * 1000 + micros / 1000;
        let mut write = redis::pipe();
        for ((key, outcome), value) in chunk.iter().zip(values) {
            let Some(value) = redis::from_redis_value::<Option<Vec<u8>>>(value)? else {
                continue; // a missing backup is the backup invariant's finding
            };
            let Outcome::Migrated { pttl, at, .. } = outcome else {
                unreachable!()
            };
            let cmd = write.cmd("SET").arg(key.as_str()).arg(value);
            if *pttl > 0 {
                cmd.arg("PX").arg((*pttl - (now - *at)).max(1));
            }
            restored.insert((*key).clone());
        }
        // Every backup of the chunk may be missing (the backup invariant's
        // finding); an empty pipeline is a client error.
        if !write.is_empty() {
            let mut t = target.clone();
            write.query_async::<()>(&mut t).await?;
        }
    }
    Ok(restored)
}

/// TTLs tick down between two digests: the tolerance of a comparison is
/// the time since the first of the two began, plus a second.
pub fn slack_since(t: Instant) -> i64 {
    t.elapsed().as_millis() as i64 + 1_000
}

/// Turns a digest comparison into an invariant result.
pub fn diff_invariant(id: &str, description: &str, diff: &DigestDiff) -> InvariantEntry {
    let mut r = InvariantResult::new(id, description);
    fold_diff(&mut r, diff, "");
    InvariantEntry::from_result(r)
}

/// Adds a digest comparison's findings to an invariant.
pub fn fold_diff(r: &mut InvariantResult, diff: &DigestDiff, context: &str) {
    let ctx = if context.is_empty() {
        String::new()
    } else {
        format!(" ({context})")
    };
    for _ in 0..diff.matching {
        r.ok();
    }
    for k in &diff.missing {
        r.mismatch(|| format!("{k}: missing{ctx}"));
    }
    for k in &diff.changed {
        r.mismatch(|| format!("{k}: content changed{ctx}"));
    }
    for k in &diff.ttl_changed {
        r.mismatch(|| format!("{k}: TTL changed{ctx}"));
    }
    for k in &diff.extra {
        r.extra(|| format!("{k}: unexpected key{ctx}"));
    }
}

/// Every key outside what this run owns is unchanged: quarantined legacy
/// keys, neighbours, older backups, everything unknown.
pub fn untouched(
    pre: &Digest,
    post: &Digest,
    run: &RunRecord,
    exchanges: &[String],
    outcomes: &BTreeMap<String, Outcome>,
    ttl_slack_ms: i64,
) -> InvariantEntry {
    let owned = |k: &str| {
        matches!(outcomes.get(k), Some(Outcome::Migrated { .. }))
            || BackupKey::parse(k, exchanges).is_some_and(|b| b.stamp == run.stamp)
            || PositionHashKey::parse(k, exchanges).is_some()
            || parse_index_key(k, exchanges).is_some()
    };
    let diff = compare(
        &pre.filtered(|k| !owned(k)),
        &post.filtered(|k| !owned(k)),
        ttl_slack_ms,
    );
    diff_invariant(
        "untouched",
        "every key outside the migration's patterns is unchanged (type-aware digest)",
        &diff,
    )
}

/// A second run writes nothing and migrates nothing.
pub fn idempotent(diff: &DigestDiff, second: &MigrationReport) -> InvariantEntry {
    let mut r = InvariantResult::new("idempotent", "a second run writes nothing");
    fold_diff(&mut r, diff, "second run");
    r.check(if second.totals.keys_migrated == 0 {
        Ok(())
    } else {
        Err(format!(
            "the second run migrated {} keys",
            second.totals.keys_migrated
        ))
    });
    InvariantEntry::from_result(r)
}

/// The seeded truth, made by the generator independently of the engine:
/// every generated malformed key is quarantined with its reason, every
/// well-formed one migrated, and the position totals agree. The plan (dry
/// run) must have predicted exactly what the run did.
pub fn check_truth(
    r: &mut InvariantResult,
    generated: &Generated,
    plan: &MigrationReport,
    run: &MigrationReport,
    outcomes: &BTreeMap<String, Outcome>,
) {
    let truth = &generated.truth;
    let generated_keys: HashSet<&str> = generated
        .keyspace
        .entries
        .iter()
        .map(|e| e.key.as_str())
        .collect();
    let mut migrated_keys = 0;
    let mut migrated_positions = 0;
    for (key, outcome) in outcomes
        .iter()
        .filter(|(k, _)| generated_keys.contains(k.as_str()))
    {
        match (outcome, truth.quarantined.get(key.as_str())) {
            (
                Outcome::Migrated {
                    positions, skipped, ..
                },
                None,
            ) => {
                migrated_keys += 1;
                migrated_positions += positions + skipped;
                // Without --skip-closed nothing may be skipped: a planner
                // that drops closed positions re-plans its own backups
                // consistently, so only this count catches it.
                r.check(if *skipped == 0 || run.skip_closed {
                    Ok(())
                } else {
                    Err(format!(
                        "{key}: {skipped} position(s) skipped without --skip-closed"
                    ))
                });
            }
            (Outcome::Quarantined { reason, .. }, Some(expected)) => {
                r.check(if reason == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "{key}: quarantined as {reason}, generated as {expected}"
                    ))
                })
            }
            (o, expected) => {
                r.mismatch(|| format!("{key}: outcome {o:?}, generator expected {expected:?}"))
            }
        }
    }
    let expected_keys = truth.well_formed_legacy_keys;
    r.check(if migrated_keys == expected_keys && migrated_positions == truth.positions {
        Ok(())
    } else {
        Err(format!(
            "generated {expected_keys} well-formed keys / {} positions; migrated {migrated_keys} / {migrated_positions}",
            truth.positions
        ))
    });
    plan_foresaw_run(r, plan, run);
}

/// The dry-run plan predicted exactly what the run did (a run that met
/// conflicts is not held to it).
pub fn plan_foresaw_run(r: &mut InvariantResult, plan: &MigrationReport, run: &MigrationReport) {
    r.check(
        if plan.totals == run.totals || run.totals.keys_conflicting > 0 {
            Ok(())
        } else {
            Err(format!(
                "the dry-run plan predicted {:?}, the run did {:?}",
                plan.totals, run.totals
            ))
        },
    );
}

/// A symbol no seeded user holds: every store must answer no position and
/// size 0 for it.
pub const ABSENT_SYMBOL: &str = "KEYSHIFT-ABSENT-PROBE";

/// Every read of DESIGN §3 answers the same for every migrated user from
/// the legacy store on the old data (the restored backups), the hash store
/// on the new data and the dual-read store on the new data: all positions;
/// the size of every symbol any of them holds, and of one none holds; one
/// position for each of those symbols on each side, absent ones included.
pub async fn api(
    old: &RedisConn,
    new: &RedisConn,
    outcomes: &BTreeMap<String, Outcome>,
    exchanges: &[String],
) -> anyhow::Result<InvariantEntry> {
    let legacy = LegacyStore::new(old.clone());
    let hashes = HashStore::new(new.clone());
    let dual = DualReadStore::new(new.clone());
    let users: Vec<LegacyPositionsKey> = migrated(outcomes)
        .filter_map(|(k, _)| LegacyPositionsKey::parse(k, exchanges))
        .collect();
    let findings: Vec<Vec<Result<(), String>>> = stream::iter(users)
        .map(|user| {
            let (legacy, hashes, dual) = (&legacy, &hashes, &dual);
            async move { compare_user(legacy, hashes, dual, &user).await }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let mut r = InvariantResult::new(
        "api",
        "all positions, position size of every symbol held (and of one not held) and one position per symbol and side (absent included) read the same from the legacy store on old data and the hash and dual-read stores on new data",
    );
    for f in findings.into_iter().flatten() {
        r.check(f);
    }
    Ok(InvariantEntry::from_result(r))
}

/// One check per call: legacy on old data, hash and dual-read on new agree.
fn agree<T: PartialEq>(
    user: &LegacyPositionsKey,
    call: &str,
    [legacy, hash, dual]: [&T; 3],
    show: impl Fn(&T) -> String,
) -> Result<(), String> {
    if legacy == hash && legacy == dual {
        Ok(())
    } else {
        Err(format!(
            "{}: {call}: legacy (old data) {}, hash {}, dual-read {}",
            user.key(),
            show(legacy),
            show(hash),
            show(dual)
        ))
    }
}

fn show_positions(ps: &[Position]) -> String {
    let members: Vec<String> = ps.iter().map(Position::index_member).collect();
    format!("[{}]", members.join(", "))
}

fn show_position(p: &Option<Position>) -> String {
    match p {
        None => "none".into(),
        Some(p) => format!(
            "{} fields, pos {}",
            p.fields.len(),
            p.fields.get("pos").map_or("-", String::as_str)
        ),
    }
}

/// Every read of one user on one exchange, each call on all three stores.
pub async fn compare_user<A: PositionStore, B: PositionStore, D: PositionStore>(
    legacy: &A,
    hashes: &B,
    dual: &D,
    user: &LegacyPositionsKey,
) -> anyhow::Result<Vec<Result<(), String>>> {
    let (uid, ex) = (user.user_id.as_str(), user.exchange.as_str());
    let (old, new, via_dual) = tokio::try_join!(
        legacy.all_positions(uid, ex),
        hashes.all_positions(uid, ex),
        dual.all_positions(uid, ex),
    )?;
    let mut out = vec![agree(
        user,
        "all_positions",
        [&old, &new, &via_dual],
        |ps| show_positions(ps),
    )];
    let symbols: BTreeSet<&str> = old
        .iter()
        .chain(&new)
        .chain(&via_dual)
        .map(|p| p.inst_id.as_str())
        .chain([ABSENT_SYMBOL])
        .collect();
    let per_symbol = symbols.into_iter().map(|symbol| async move {
        let sizes = tokio::try_join!(
            legacy.position_size(uid, ex, symbol),
            hashes.position_size(uid, ex, symbol),
            dual.position_size(uid, ex, symbol),
        )?;
        let mut checks = vec![agree(
            user,
            &format!("position_size({symbol})"),
            [&sizes.0.to_bits(), &sizes.1.to_bits(), &sizes.2.to_bits()],
            |bits| f64::from_bits(*bits).to_string(),
        )];
        for side in [Side::Long, Side::Short] {
            let got = tokio::try_join!(
                legacy.get_position(uid, ex, symbol, side),
                hashes.get_position(uid, ex, symbol, side),
                dual.get_position(uid, ex, symbol, side),
            )?;
            checks.push(agree(
                user,
                &format!("get_position({symbol}, {})", side.as_str()),
                [&got.0, &got.1, &got.2],
                show_position,
            ));
        }
        Ok::<_, ApiError>(checks)
    });
    for checks in try_join_all(per_symbol).await? {
        out.extend(checks);
    }
    Ok(out)
}
