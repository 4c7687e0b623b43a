//! The orphan sweep of the index invariant: every `positions:` key of the
//! run's exchanges, found by SCAN, whoever wrote it.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;

use super::judge::marked_index;
use crate::connection::scan::scan_step;
use crate::error::{EngineError, Result};
use crate::keys::{is_migrating_sentinel, parse_index_key, PositionHashKey};
use crate::run::invariant::InvariantResult;

/// Orphan sweep by SCAN over every `positions:` key of the run's exchanges:
/// each hash must be in its index and each index member must have a hash.
/// Returns how many position hashes and index sets it examined.
pub(super) async fn sweep_orphans<C: ConnectionLike + Clone + Send>(
    conn: &C,
    exchanges: &[String],
    index: &mut InvariantResult,
) -> Result<usize> {
    let mut swept = 0;
    let mut cursor = 0u64;
    loop {
        let during = "sweeping for orphans";
        let (next, keys): (u64, Vec<String>) =
            scan_step(conn, cursor, Some("positions:*"), 1000, during).await?;
        let mut c = conn.clone();
        let hashes: Vec<PositionHashKey> = keys
            .iter()
            .filter_map(|k| PositionHashKey::parse(k, exchanges))
            .collect();
        let index_keys: Vec<&String> = keys
            .iter()
            .filter(|k| parse_index_key(k, exchanges).is_some())
            .collect();
        swept += hashes.len() + index_keys.len();
        let mut pipe = redis::pipe();
        for h in &hashes {
            pipe.sismember(h.index_key(), h.index_member());
        }
        for k in &index_keys {
            pipe.smembers(*k);
        }
        let replies: Vec<redis::Value> = if hashes.is_empty() && index_keys.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut c)
                .await
                .map_err(EngineError::redis("sweeping for orphans"))?
        };
        let (member_of, sets) = replies.split_at(hashes.len());
        for (h, r) in hashes.iter().zip(member_of) {
            if !redis::from_redis_value_ref::<bool>(r).unwrap_or(false) {
                index.extra(|| {
                    format!(
                        "positions:{}:{}:{}:{} is in no index",
                        h.user_id, h.exchange, h.inst_id, h.side
                    )
                });
            }
        }
        let mut member_keys: BTreeMap<String, String> = BTreeMap::new();
        for (k, r) in index_keys.iter().zip(sets) {
            let (user, exchange) = parse_index_key(k, exchanges).expect("filtered above");
            let members: Vec<String> = redis::from_redis_value_ref(r).unwrap_or_default();
            for m in members {
                if is_migrating_sentinel(&m) {
                    index.extra(|| marked_index(k, &m));
                    continue;
                }
                member_keys.insert(
                    format!("positions:{user}:{exchange}:{m}"),
                    format!("{k} member {m:?}"),
                );
            }
        }
        if !member_keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in member_keys.keys() {
                pipe.exists(key);
            }
            let exists: Vec<bool> = pipe
                .query_async(&mut c)
                .await
                .map_err(EngineError::redis("sweeping for orphans"))?;
            for ((_, what), present) in member_keys.iter().zip(exists) {
                if !present {
                    index.extra(|| format!("{what} has no hash"));
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(swept);
        }
    }
}
