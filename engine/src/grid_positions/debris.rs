//! `cleanup-migration grid-positions`: removes the debris of an interrupted
//! run — keys it created for users whose legacy key still exists and whose
//! migration the journal does not record as done. Only keys provably
//! written by that run are touched: hashes whose `migrated_from` names the
//! user's legacy key and whose `migrated_at` is the run's, the index
//! members of exactly those hashes, the run's "migrating" marker in such a
//! user's index set (a cluster run, `keys::migrating_sentinel`), and
//! backups carrying the run's stamp.

use std::collections::{BTreeMap, BTreeSet};

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::connection::scan::scan_step;
use crate::error::{EngineError, Result};
use crate::keys::{
    migrating_sentinel, parse_index_key, LegacyPositionsKey, PositionHashKey, META_MIGRATED_AT,
    META_MIGRATED_FROM,
};
use crate::run::journal::{outcomes_key, RunRecord, RunState};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Debris {
    pub hashes: Vec<String>,
    /// Index set -> the members to remove.
    pub index_members: BTreeMap<String, Vec<String>>,
    pub backups: Vec<String>,
}

impl Debris {
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty() && self.index_members.is_empty() && self.backups.is_empty()
    }

    pub fn key_count(&self) -> usize {
        self.hashes.len() + self.index_members.len() + self.backups.len()
    }
}

/// Finds the debris of `run`, reading only (SCAN, never KEYS).
pub async fn find_debris<C: ConnectionLike + Clone + Send>(
    conn: &C,
    run: &RunRecord,
) -> Result<Debris> {
    let mut debris = Debris::default();
    if !matches!(run.state, RunState::Running | RunState::Failed) {
        return Ok(debris);
    }
    let backup_suffix = format!(":backup:{}", run.stamp);
    let sentinel = migrating_sentinel(&run.run_id);
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) =
            scan_step(conn, cursor, None, 1000, "scanning for debris").await?;
        let hashes: Vec<PositionHashKey> = keys
            .iter()
            .filter_map(|k| PositionHashKey::parse(k, &run.exchanges))
            .collect();
        let backups: Vec<(&String, String)> = keys
            .iter()
            .filter_map(|k| {
                let legacy = k.strip_suffix(&backup_suffix)?;
                LegacyPositionsKey::parse(legacy, &run.exchanges).map(|_| (k, legacy.to_owned()))
            })
            .collect();
        let indexes: Vec<(&String, LegacyPositionsKey)> = keys
            .iter()
            .filter_map(|k| {
                let (user, exchange) = parse_index_key(k, &run.exchanges)?;
                Some((k, LegacyPositionsKey::new(&exchange, &user)))
            })
            .collect();
        if !hashes.is_empty() || !backups.is_empty() || !indexes.is_empty() {
            let mut pipe = redis::pipe();
            for h in &hashes {
                let key = format!(
                    "positions:{}:{}:{}",
                    h.user_id,
                    h.exchange,
                    h.index_member()
                );
                pipe.cmd("HMGET")
                    .arg(key)
                    .arg(META_MIGRATED_FROM)
                    .arg(META_MIGRATED_AT);
                let legacy = LegacyPositionsKey::new(&h.exchange, &h.user_id).key();
                pipe.exists(&legacy)
                    .hexists(outcomes_key(&run.run_id), &legacy);
            }
            for (_, legacy) in &backups {
                pipe.exists(legacy)
                    .hexists(outcomes_key(&run.run_id), legacy);
            }
            for (key, legacy) in &indexes {
                pipe.sismember(*key, &sentinel)
                    .exists(legacy.key())
                    .hexists(outcomes_key(&run.run_id), legacy.key());
            }
            let mut c = conn.clone();
            let replies: Vec<redis::Value> = pipe
                .query_async(&mut c)
                .await
                .map_err(EngineError::redis("reading debris candidates"))?;
            let (for_hashes, rest) = replies.split_at(hashes.len() * 3);
            let (for_backups, for_indexes) = rest.split_at(backups.len() * 2);
            // A cluster run's "migrating" marker in the index of a user it
            // had not migrated yet (legacy key still there, no outcome).
            for ((key, _), r) in indexes.iter().zip(for_indexes.chunks_exact(3)) {
                let marked: bool = redis::from_redis_value_ref(&r[0]).unwrap_or(false);
                let legacy_exists: bool = redis::from_redis_value_ref(&r[1]).unwrap_or(false);
                let settled: bool = redis::from_redis_value_ref(&r[2]).unwrap_or(true);
                if marked && legacy_exists && !settled {
                    debris
                        .index_members
                        .entry((*key).clone())
                        .or_default()
                        .push(sentinel.clone());
                }
            }
            for (h, r) in hashes.iter().zip(for_hashes.chunks_exact(3)) {
                let meta: (Option<String>, Option<String>) =
                    redis::from_redis_value_ref(&r[0]).unwrap_or((None, None));
                let legacy_exists: bool = redis::from_redis_value_ref(&r[1]).unwrap_or(false);
                let settled: bool = redis::from_redis_value_ref(&r[2]).unwrap_or(true);
                let legacy = LegacyPositionsKey::new(&h.exchange, &h.user_id);
                let ours = meta.0.as_deref() == Some(legacy.key().as_str())
                    && meta.1.as_deref() == Some(run.started_at.as_str());
                if ours && legacy_exists && !settled {
                    debris.hashes.push(format!(
                        "positions:{}:{}:{}",
                        h.user_id,
                        h.exchange,
                        h.index_member()
                    ));
                    debris
                        .index_members
                        .entry(legacy.index_key())
                        .or_default()
                        .push(h.index_member());
                }
            }
            for ((key, _), r) in backups.iter().zip(for_backups.chunks_exact(2)) {
                let legacy_exists: bool = redis::from_redis_value_ref(&r[0]).unwrap_or(false);
                let settled: bool = redis::from_redis_value_ref(&r[1]).unwrap_or(true);
                if legacy_exists && !settled {
                    debris.backups.push((*key).clone());
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    debris.hashes.sort();
    debris.backups.sort();
    Ok(debris)
}

/// Deletes exactly the keys and members listed; returns how many went.
pub async fn remove_debris<C: ConnectionLike + Clone + Send>(
    conn: &C,
    debris: &Debris,
) -> Result<i64> {
    let mut pipe = redis::pipe();
    for k in debris.hashes.iter().chain(&debris.backups) {
        pipe.del(k);
    }
    for (index, members) in &debris.index_members {
        let unique: BTreeSet<&String> = members.iter().collect();
        pipe.srem(index, unique.into_iter().collect::<Vec<_>>());
    }
    let mut c = conn.clone();
    let counts: Vec<i64> = pipe
        .query_async(&mut c)
        .await
        .map_err(EngineError::redis("removing debris"))?;
    Ok(counts.into_iter().sum())
}
