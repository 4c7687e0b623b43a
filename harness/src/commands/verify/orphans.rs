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

use super::journal::latest_of;
use crate::observe::read_keys;
use crate::wire::{Reader, Reply};

/// Keys asked of SCAN per call.
const SCAN_COUNT: usize = 1000;

/// Judges the orphans of `positions:*` (for the index invariant, see
/// [`absorb`]); `judged` newest first.
pub async fn sweep(
    conn: &RedisConn,
    reader: &Reader,
    judged: &[&RunRecord],
    opts: &GridOptions,
) -> anyhow::Result<Judgement> {
    let mut index = Judgement::new("index", "");
    let count = SCAN_COUNT.to_string();
    let args: [&[u8]; 4] = [b"MATCH", b"positions:*", b"COUNT", count.as_bytes()];
    let mut cursor = 0u64;
    loop {
        let (next, keys) = reader.scan(cursor, &args).await?;
        let candidates = unaccounted(conn, reader, judged, opts, &keys).await?;
        let image = read_keys(reader, &candidates).await?;
        for (k, e) in &image.keys {
            orphan(k, e, &mut index);
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(index)
}

/// Adds the sweep's findings to `verdict`'s index invariant.
pub fn absorb(verdict: &mut Verdict, orphans: &Judgement) {
    if let Some(mine) = verdict.invariants.iter_mut().find(|j| j.id == "index") {
        mine.absorb(orphans);
        let why = mine.not_run_reason.take();
        *mine = mine.clone().finish(why.as_deref().unwrap_or(""));
    }
}

/// Of one SCAN batch, the position hashes no judged user accounts for.
async fn unaccounted(
    conn: &RedisConn,
    reader: &Reader,
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
    let in_index = reader.query(in_index).await?;
    let mut in_index = in_index.iter().map(|r| r == Reply::Int(1));
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
    let answers = reader.query(asks).await?;
    let mut answers = answers.iter();
    let mut out = Vec::new();
    for ((key, user, exchange, member), (legacy, latest)) in
        left.iter().zip(legacy.iter().zip(&latest))
    {
        match (member, migrated(latest)) {
            (Some(_), true) => {
                let implied = match answers.next() {
                    Some(Reply::Data(v)) => expected_keys(legacy, v, opts)
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
                if let Some(Reply::Items(members)) = answers.next() {
                    out.extend(members.iter().filter_map(|m| match m {
                        Reply::Data(m) => Some(member_hash_key(user, exchange, m)),
                        _ => None,
                    }));
                }
            }
            (None, true) => {}
        }
    }
    Ok(out)
}
