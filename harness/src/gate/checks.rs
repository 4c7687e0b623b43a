//! The gate's own invariants, beyond what `verify` checks on a live server.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use keyshift_engine::api::{HashStore, LegacyStore, PositionStore};
use keyshift_engine::invariant::InvariantResult;
use keyshift_engine::journal::{outcomes_key, Outcome, RunRecord};
use keyshift_engine::keys::{parse_index_key, BackupKey, LegacyPositionsKey, PositionHashKey};
use keyshift_engine::migrate::MigrationReport;
use redis::aio::MultiplexedConnection;

use crate::digest::{compare, Digest, DigestDiff};
use crate::report::InvariantEntry;
use crate::seed::Generated;

pub async fn redis_version(conn: &MultiplexedConnection) -> String {
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

/// Every outcome of a run, legacy key -> outcome.
pub async fn read_outcomes(
    conn: &MultiplexedConnection,
    run_id: &str,
) -> anyhow::Result<BTreeMap<String, Outcome>> {
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
    source: &MultiplexedConnection,
    target: &MultiplexedConnection,
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
        let mut t = target.clone();
        write.query_async::<()>(&mut t).await?;
    }
    Ok(restored)
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
                r.ok();
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

/// Legacy reads on the old data (the restored backups) equal hash-store
/// reads on the new data: all positions, each position, each symbol's size.
pub async fn api(
    old: &MultiplexedConnection,
    new: &MultiplexedConnection,
    outcomes: &BTreeMap<String, Outcome>,
    exchanges: &[String],
) -> anyhow::Result<InvariantEntry> {
    let legacy = LegacyStore::new(old.clone());
    let hashes = HashStore::new(new.clone());
    let users: Vec<LegacyPositionsKey> = migrated(outcomes)
        .filter_map(|(k, _)| LegacyPositionsKey::parse(k, exchanges))
        .collect();
    let findings: Vec<Vec<Result<(), String>>> = stream::iter(users)
        .map(|user| {
            let (legacy, hashes) = (&legacy, &hashes);
            async move { compare_user(legacy, hashes, &user).await }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut r = InvariantResult::new(
        "api",
        "position size, all positions and one position read the same from the legacy store on old data and the hash store on new data",
    );
    for f in findings.into_iter().flatten() {
        r.check(f);
    }
    Ok(InvariantEntry::from_result(r))
}

async fn compare_user<A: PositionStore, B: PositionStore>(
    legacy: &A,
    hashes: &B,
    user: &LegacyPositionsKey,
) -> anyhow::Result<Vec<Result<(), String>>> {
    let (uid, ex) = (user.user_id.as_str(), user.exchange.as_str());
    let old = legacy.all_positions(uid, ex).await?;
    let new = hashes.all_positions(uid, ex).await?;
    let mut out = vec![if old == new {
        Ok(())
    } else {
        Err(format!(
            "{}: all_positions differ ({} legacy, {} hash)",
            user.key(),
            old.len(),
            new.len()
        ))
    }];
    let symbols: BTreeSet<&str> = old.iter().map(|p| p.inst_id.as_str()).collect();
    for symbol in symbols {
        let (a, b) = (
            legacy.position_size(uid, ex, symbol).await?,
            hashes.position_size(uid, ex, symbol).await?,
        );
        out.push(if a.to_bits() == b.to_bits() {
            Ok(())
        } else {
            Err(format!(
                "{}: position_size({symbol}) legacy {a} != hash {b}",
                user.key()
            ))
        });
    }
    for p in &old {
        let got = hashes.get_position(uid, ex, &p.inst_id, p.side).await?;
        out.push(if got.as_ref() == Some(p) {
            Ok(())
        } else {
            Err(format!(
                "{}: get_position({}, {}) differs",
                user.key(),
                p.inst_id,
                p.side.as_str()
            ))
        });
    }
    Ok(out)
}
