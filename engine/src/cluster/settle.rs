//! Before a resumed run scans: users whose legacy key an interrupted run
//! deleted (step 5) but whose index it had not written yet (step 6). SCAN
//! cannot find them again (their legacy key is gone), so the run's journal
//! does: an outcome `migrated`, no legacy key, no index, and this run's own
//! hashes in place. Their members are planned again from the backup (the
//! value the hashes were written from) and added to the index.

use crate::connection::RedisConn;
use crate::error::Result;
use crate::journal::{self, Outcome, RunRecord};
use crate::keys::{LegacyPositionsKey, META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::plan::{plan_value, PlanOptions, UserPlan};

use super::migrate::{add_to_indexes, query, Ttl};

const BATCH: usize = 500;

/// One migrated user of the journal, as the settle pass needs it.
struct Migrated {
    legacy: LegacyPositionsKey,
    key: String,
    ttl: Ttl,
}

pub(super) async fn settle_interrupted(conn: &RedisConn, run: &RunRecord) -> Result<usize> {
    let mut settled = 0;
    let mut cursor = 0;
    loop {
        let (next, outcomes) =
            journal::scan_outcomes::<Outcome, _>(conn, &run.run_id, cursor, BATCH).await?;
        let users: Vec<Migrated> = outcomes
            .into_iter()
            .filter_map(|(key, o)| match o {
                Outcome::Migrated {
                    positions,
                    pttl,
                    at,
                    ..
                } if positions > 0 => Some(Migrated {
                    legacy: LegacyPositionsKey::parse(&key, &run.exchanges)?,
                    key,
                    ttl: Ttl { pttl, at },
                }),
                _ => None,
            })
            .collect();
        settled += settle_batch(conn, run, &users).await?;
        cursor = next;
        if cursor == 0 {
            return Ok(settled);
        }
    }
}

async fn settle_batch(conn: &RedisConn, run: &RunRecord, users: &[Migrated]) -> Result<usize> {
    if users.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for u in users {
        pipe.cmd("EXISTS").arg(&u.key);
        pipe.cmd("EXISTS").arg(u.legacy.index_key());
        pipe.cmd("GET").arg(u.legacy.backup_key(&run.stamp));
    }
    let replies = query(conn, &pipe, "looking for interrupted users").await?;
    let opts = PlanOptions {
        skip_closed: run.skip_closed,
    };
    // Users with neither key: their planned members and hashes.
    let mut pending: Vec<(&Migrated, Vec<(String, String)>)> = Vec::new();
    for (u, r) in users.iter().zip(replies.chunks_exact(3)) {
        let legacy_exists: bool = redis::from_redis_value_ref(&r[0]).unwrap_or(true);
        let index_exists: bool = redis::from_redis_value_ref(&r[1]).unwrap_or(true);
        let backup: Option<Vec<u8>> = redis::from_redis_value_ref(&r[2]).ok().flatten();
        let (false, false, Some(backup)) = (legacy_exists, index_exists, backup) else {
            continue;
        };
        let UserPlan::Migrate(plan) = plan_value(&backup, opts) else {
            continue;
        };
        let planned = plan
            .positions
            .iter()
            .map(|p| {
                let member = p.index_member();
                (u.legacy.position_key(&member), member)
            })
            .collect();
        pending.push((u, planned));
    }
    if pending.is_empty() {
        return Ok(0);
    }
    // Only the members whose hash this run wrote and nobody removed since:
    // a user who removed every position has rightly no index.
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (_, planned) in &pending {
        for (hash, _) in planned {
            pipe.cmd("HMGET")
                .arg(hash)
                .arg(META_MIGRATED_FROM)
                .arg(META_MIGRATED_AT);
        }
    }
    let metas = query(conn, &pipe, "looking for interrupted users").await?;
    let mut metas = metas.into_iter();
    let mut indexes = Vec::new();
    for (u, planned) in &pending {
        let mut members = Vec::new();
        for (_, member) in planned {
            let meta: Vec<Option<String>> = metas
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            if matches!(meta.as_slice(), [Some(from), Some(at)] if *from == u.key && *at == run.started_at)
            {
                members.push(member.as_str());
            }
        }
        if !members.is_empty() {
            indexes.push((u, members));
        }
    }
    let count = indexes.len();
    let keys: Vec<String> = indexes.iter().map(|(u, _)| u.legacy.index_key()).collect();
    add_to_indexes(
        conn,
        indexes
            .into_iter()
            .zip(&keys)
            .map(|((u, members), key)| (key.as_str(), members, u.ttl)),
    )
    .await?;
    if count > 0 {
        tracing::info!(
            users = count,
            "finished users an interrupted run left without their index"
        );
    }
    Ok(count)
}
