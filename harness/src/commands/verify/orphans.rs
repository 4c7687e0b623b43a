//! Migrated-looking hashes no judged run accounts for, found by one SCAN
//! over `positions:*` and questions the server answers: verify holds one
//! SCAN batch, not a set of every key it read (at a million users that
//! set outgrew the rest of verify).
//!
//! A hash was judged with its user when the user's latest judged outcome
//! is `migrated` and the hash is in the user's index (the index and its
//! members are read with the user) or is one the user's backup implies
//! (read too). So a hash in its index is its index's matter: an index
//! whose user no judged run migrated has its members read and judged as
//! orphans. A hash in no index is read and judged as an orphan unless its
//! user was migrated and the backup implies it.

use keyshift_engine::connection::RedisConn;
use keyshift_engine::run::journal::{Outcome, RunRecord};
use keyshift_oracle::grid::{expected_keys, orphan};
use keyshift_oracle::keys::{classify, index_key, GridKey};
use keyshift_oracle::{GridOptions, Judgement, Verdict};
use redis::Value as Reply;

use super::journal::latest_of;
use crate::observe::read_keys;

/// Keys asked of SCAN per call.
const SCAN_COUNT: usize = 1000;

/// Judges the orphans of `positions:*` into `verdict`'s index invariant;
/// `judged` newest first.
pub async fn sweep(
    conn: &RedisConn,
    judged: &[&RunRecord],
    opts: &GridOptions,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let mut index = Judgement::new("index", "");
    let mut cursor = 0u64;
    loop {
        let args = [
            b"MATCH".to_vec(),
            b"positions:*".to_vec(),
            b"COUNT".to_vec(),
            SCAN_COUNT.to_string().into_bytes(),
        ];
        let reply = conn.scan_raw(cursor, &args).await?;
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)?;
        let candidates = unaccounted(conn, judged, opts, &keys).await?;
        let image = read_keys(conn, &candidates).await?;
        for (k, e) in &image.keys {
            orphan(k, e, &mut index);
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if let Some(mine) = verdict.invariants.iter_mut().find(|j| j.id == "index") {
        mine.absorb(&index);
        let why = mine.not_run_reason.take();
        *mine = mine.clone().finish(why.as_deref().unwrap_or(""));
    }
    Ok(())
}

fn legacy_key(user: &str, exchange: &str) -> String {
    format!("{exchange}:positions:{user}")
}

/// Of one SCAN batch, the position hashes no judged user accounts for.
async fn unaccounted(
    conn: &RedisConn,
    judged: &[&RunRecord],
    opts: &GridOptions,
    keys: &[Vec<u8>],
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut hashes: Vec<(&[u8], String, String)> = Vec::new();
    let mut indexes: Vec<(&[u8], String)> = Vec::new();
    for key in keys {
        match classify(key, &opts.exchanges) {
            GridKey::Hash {
                user,
                exchange,
                member,
            } => hashes.push((key, index_key(user, exchange), member.to_owned())),
            GridKey::Index { user, exchange } => indexes.push((key, legacy_key(user, exchange))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    // Hashes in no index: accounted for only when the backup implies them.
    let in_index: Vec<bool> = if hashes.is_empty() {
        Vec::new()
    } else {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (_, index, member) in &hashes {
            pipe.cmd("SISMEMBER").arg(index).arg(member);
        }
        let replies: Vec<Reply> = pipe.query_async(&mut conn.clone()).await?;
        // An index that is not a set (WRONGTYPE) holds no hash.
        replies.iter().map(|r| matches!(r, Reply::Int(1))).collect()
    };
    let loose: Vec<&[u8]> = hashes
        .iter()
        .zip(&in_index)
        .filter(|(_, indexed)| !**indexed)
        .map(|((key, _, _), _)| *key)
        .collect();
    let legacy: Vec<String> = loose
        .iter()
        .map(|k| match classify(k, &opts.exchanges) {
            GridKey::Hash { user, exchange, .. } => legacy_key(user, exchange),
            _ => unreachable!("classified as a hash above"),
        })
        .collect();
    let latest = latest_of(conn, judged, &legacy).await?;
    // Each migrated user's backup, for the hashes it implies.
    let backups: Vec<Option<String>> = latest
        .iter()
        .zip(&legacy)
        .map(|(latest, legacy)| match latest {
            Some((run, Outcome::Migrated { .. })) => Some(format!("{legacy}:backup:{}", run.stamp)),
            _ => None,
        })
        .collect();
    let values = replies(conn, "GET", backups.iter().flatten()).await?;
    let mut values = values.into_iter();
    for ((key, legacy), backup) in loose.into_iter().zip(&legacy).zip(&backups) {
        let value = match backup {
            Some(_) => values.next().unwrap_or(Reply::Nil),
            None => Reply::Nil,
        };
        let implied = match value {
            Reply::BulkString(v) => expected_keys(legacy, &v, opts)
                .iter()
                .any(|k| k.as_bytes() == key),
            _ => false,
        };
        if !implied {
            out.push(key.to_vec());
        }
    }
    // Indexes of users no judged run migrated: their members are orphans
    // to judge.
    let names: Vec<String> = indexes.iter().map(|(_, l)| l.clone()).collect();
    let latest = latest_of(conn, judged, &names).await?;
    let unclaimed: Vec<&[u8]> = indexes
        .iter()
        .zip(latest)
        .filter(|(_, latest)| !matches!(latest, Some((_, Outcome::Migrated { .. }))))
        .map(|((key, _), _)| *key)
        .collect();
    let members = replies(conn, "SMEMBERS", unclaimed.iter()).await?;
    for (key, members) in unclaimed.into_iter().zip(members) {
        // Not a set (WRONGTYPE): it names no hash.
        let Reply::Array(members) = members else {
            continue;
        };
        let GridKey::Index { user, exchange } = classify(key, &opts.exchanges) else {
            unreachable!("classified as an index above")
        };
        for m in members {
            if let Reply::BulkString(m) = m {
                let mut hash = format!("positions:{user}:{exchange}:").into_bytes();
                hash.extend_from_slice(&m);
                out.push(hash);
            }
        }
    }
    Ok(out)
}

/// `command KEY` for each key, in one round trip; an error reply stays in
/// its place.
async fn replies<K: redis::ToRedisArgs>(
    conn: &RedisConn,
    command: &str,
    keys: impl Iterator<Item = K>,
) -> anyhow::Result<Vec<Reply>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut n = 0;
    for key in keys {
        pipe.cmd(command).arg(key);
        n += 1;
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    Ok(pipe.query_async(&mut conn.clone()).await?)
}
