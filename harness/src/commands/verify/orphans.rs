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
use keyshift_oracle::keys::{
    backup_key, classify, index_key, legacy_key, member_hash_key, GridKey,
};
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

/// Of one SCAN batch, the position hashes no judged user accounts for.
async fn unaccounted(
    conn: &RedisConn,
    judged: &[&RunRecord],
    opts: &GridOptions,
    keys: &[Vec<u8>],
) -> anyhow::Result<Vec<Vec<u8>>> {
    // (key, user, exchange, member): member `None` for an index.
    let found: Vec<(&[u8], &str, &str, Option<&str>)> = keys
        .iter()
        .filter_map(|key| match classify(key, &opts.exchanges) {
            GridKey::Hash {
                user,
                exchange,
                member,
            } => Some((key.as_slice(), user, exchange, Some(member))),
            GridKey::Index { user, exchange } => Some((key.as_slice(), user, exchange, None)),
            _ => None,
        })
        .collect();
    let mut in_index = redis::pipe();
    for (_, user, exchange, member) in &found {
        if let Some(member) = member {
            in_index
                .cmd("SISMEMBER")
                .arg(index_key(user, exchange))
                .arg(*member);
        }
    }
    // An index that is not a set (WRONGTYPE) holds no hash.
    let mut in_index = query(conn, in_index)
        .await?
        .into_iter()
        .map(|r| matches!(r, Reply::Int(1)));
    // A hash in its index is the index's matter; what is left: hashes in
    // no index, and every index, each with its user's latest outcome.
    let left: Vec<_> = found
        .into_iter()
        .filter(|(_, _, _, member)| member.is_none() || in_index.next() == Some(false))
        .collect();
    let legacy: Vec<String> = left.iter().map(|(_, u, ex, _)| legacy_key(u, ex)).collect();
    let latest = latest_of(conn, judged, &legacy).await?;
    let migrated =
        |l: &Option<(&RunRecord, Outcome)>| matches!(l, Some((_, Outcome::Migrated { .. })));
    // A loose hash of a migrated user is accounted for when its backup
    // implies it; an index of a user no judged run migrated has members to
    // judge.
    let mut asks = redis::pipe();
    for ((key, _, _, member), (legacy, latest)) in left.iter().zip(legacy.iter().zip(&latest)) {
        match (member, latest) {
            (Some(_), Some((run, Outcome::Migrated { .. }))) => {
                asks.cmd("GET").arg(backup_key(legacy, &run.stamp));
            }
            (None, l) if !migrated(l) => {
                asks.cmd("SMEMBERS").arg(*key);
            }
            _ => {}
        }
    }
    let mut answers = query(conn, asks).await?.into_iter();
    let mut out = Vec::new();
    for ((key, user, exchange, member), (legacy, latest)) in
        left.iter().zip(legacy.iter().zip(&latest))
    {
        match (member, migrated(latest)) {
            (Some(_), true) => {
                let implied = match answers.next() {
                    Some(Reply::BulkString(v)) => expected_keys(legacy, &v, opts)
                        .iter()
                        .any(|k| k.as_bytes() == *key),
                    _ => false,
                };
                if !implied {
                    out.push(key.to_vec());
                }
            }
            (Some(_), false) => out.push(key.to_vec()),
            (None, false) => {
                // Not a set (WRONGTYPE): it names no hash.
                if let Some(Reply::Array(members)) = answers.next() {
                    out.extend(members.into_iter().filter_map(|m| match m {
                        Reply::BulkString(m) => Some(member_hash_key(user, exchange, &m)),
                        _ => None,
                    }));
                }
            }
            (None, true) => {}
        }
    }
    Ok(out)
}

/// A pipeline's replies, errors left in their places; nothing to send,
/// nothing asked.
async fn query(conn: &RedisConn, mut pipe: redis::Pipeline) -> anyhow::Result<Vec<Reply>> {
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    pipe.ignore_errors();
    Ok(pipe.query_async(&mut conn.clone()).await?)
}
