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
    let seek = Seek {
        run,
        backup_suffix: format!(":backup:{}", run.stamp),
        sentinel: migrating_sentinel(&run.run_id),
        outcomes_key: outcomes_key(&run.run_id),
    };
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) =
            scan_step(conn, cursor, None, 1000, "scanning for debris").await?;
        let candidates = seek.candidates(&keys);
        if !candidates.is_empty() {
            let mut c = conn.clone();
            let replies: Vec<redis::Value> = seek
                .ask(&candidates)
                .query_async(&mut c)
                .await
                .map_err(EngineError::redis("reading debris candidates"))?;
            seek.judge(&candidates, &replies, &mut debris);
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

/// What debris of one run looks like.
struct Seek<'a> {
    run: &'a RunRecord,
    /// Ends the key of a backup this run wrote.
    backup_suffix: String,
    /// The run's "migrating" marker.
    sentinel: String,
    /// The run's journal of per-user outcomes.
    outcomes_key: String,
}

/// The keys of one SCAN step this run may have written.
struct Candidates<'k> {
    hashes: Vec<PositionHashKey>,
    /// Each backup with its user's legacy key.
    backups: Vec<(&'k String, String)>,
    /// Each index set with its user's legacy key.
    indexes: Vec<(&'k String, LegacyPositionsKey)>,
}

impl Candidates<'_> {
    fn is_empty(&self) -> bool {
        self.hashes.is_empty() && self.backups.is_empty() && self.indexes.is_empty()
    }
}

impl Seek<'_> {
    fn candidates<'k>(&self, keys: &'k [String]) -> Candidates<'k> {
        let exchanges = &self.run.exchanges;
        Candidates {
            hashes: keys
                .iter()
                .filter_map(|k| PositionHashKey::parse(k, exchanges))
                .collect(),
            backups: keys
                .iter()
                .filter_map(|k| {
                    let legacy = k.strip_suffix(&self.backup_suffix)?;
                    LegacyPositionsKey::parse(legacy, exchanges).map(|_| (k, legacy.to_owned()))
                })
                .collect(),
            indexes: keys
                .iter()
                .filter_map(|k| {
                    let (user, exchange) = parse_index_key(k, exchanges)?;
                    Some((k, LegacyPositionsKey::new(&exchange, &user)))
                })
                .collect(),
        }
    }

    /// One pipeline asking, per candidate, what [`Seek::judge`] needs:
    /// for a hash its metadata, for an index whether it holds the marker,
    /// and for each whether its user is still unmigrated.
    fn ask(&self, candidates: &Candidates) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for h in &candidates.hashes {
            let legacy = LegacyPositionsKey::new(&h.exchange, &h.user_id);
            pipe.cmd("HMGET")
                .arg(legacy.position_key(&h.index_member()))
                .arg(META_MIGRATED_FROM)
                .arg(META_MIGRATED_AT);
            self.ask_unmigrated(&mut pipe, &legacy.key());
        }
        for (_, legacy) in &candidates.backups {
            self.ask_unmigrated(&mut pipe, legacy);
        }
        for (key, legacy) in &candidates.indexes {
            pipe.sismember(*key, &self.sentinel);
            self.ask_unmigrated(&mut pipe, &legacy.key());
        }
        pipe
    }

    /// Two replies: the legacy key exists; the journal has its outcome.
    fn ask_unmigrated(&self, pipe: &mut redis::Pipeline, legacy_key: &str) {
        pipe.exists(legacy_key)
            .hexists(&self.outcomes_key, legacy_key);
    }

    /// Adds to `debris` what the replies to [`Seek::ask`] show is the run's.
    fn judge(&self, candidates: &Candidates, replies: &[redis::Value], debris: &mut Debris) {
        let (for_hashes, rest) = replies.split_at(candidates.hashes.len() * 3);
        let (for_backups, for_indexes) = rest.split_at(candidates.backups.len() * 2);
        // A cluster run's "migrating" marker in the index of a user it
        // had not migrated yet (legacy key still there, no outcome).
        for ((key, _), r) in candidates.indexes.iter().zip(for_indexes.chunks_exact(3)) {
            let marked: bool = redis::from_redis_value_ref(&r[0]).unwrap_or(false);
            if marked && unmigrated(&r[1..]) {
                debris
                    .index_members
                    .entry((*key).clone())
                    .or_default()
                    .push(self.sentinel.clone());
            }
        }
        for (h, r) in candidates.hashes.iter().zip(for_hashes.chunks_exact(3)) {
            let meta: (Option<String>, Option<String>) =
                redis::from_redis_value_ref(&r[0]).unwrap_or((None, None));
            let legacy = LegacyPositionsKey::new(&h.exchange, &h.user_id);
            let ours = meta.0.as_deref() == Some(legacy.key().as_str())
                && meta.1.as_deref() == Some(self.run.started_at.as_str());
            if ours && unmigrated(&r[1..]) {
                debris.hashes.push(legacy.position_key(&h.index_member()));
                debris
                    .index_members
                    .entry(legacy.index_key())
                    .or_default()
                    .push(h.index_member());
            }
        }
        for ((key, _), r) in candidates.backups.iter().zip(for_backups.chunks_exact(2)) {
            if unmigrated(r) {
                debris.backups.push((*key).clone());
            }
        }
    }
}

/// The replies of [`Seek::ask_unmigrated`]: the legacy key is still there
/// and the journal records no outcome for it (an unreadable reply counts
/// as the safe answer: not debris).
fn unmigrated(r: &[redis::Value]) -> bool {
    let legacy_exists: bool = redis::from_redis_value_ref(&r[0]).unwrap_or(false);
    let settled: bool = redis::from_redis_value_ref(&r[1]).unwrap_or(true);
    legacy_exists && !settled
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
