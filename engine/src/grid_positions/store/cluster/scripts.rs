//! The single-key scripts of the cluster steps and the pure decoding of
//! their replies. Each script names one key, so it runs on that key's
//! node whatever slot the user's other keys hash to.
//!
//! The scripts are in `grid_positions/lua/`, code only: EVAL sends a
//! script's text with every call (one per position hash), so each one's
//! contract (KEYS, ARGV, reply) is written here instead.

use redis::Value;

use crate::connection::RedisConn;
use crate::error::{EngineError, Result};
pub(super) use crate::grid_positions::store::standalone::unexpected;

/// Replaces a key with exactly the given elements: a position hash with
/// its field/value pairs (ARGV[2] `HSET`), or an index set with the
/// planned members and the run's "migrating" marker (`SADD`; while the
/// marker is there and the legacy key exists no application writes the
/// set, so nothing of anyone else's is in it). KEYS[1] the key; ARGV[1]
/// the Unix time (ms) it expires at, or -1; ARGV[3..] the elements. An
/// absolute time, so the legacy key and its new keys expire together
/// however long the steps between took.
pub(super) const REPLACE_KEY: &str = include_str!("../../lua/replace_key.lua");

/// Deletes a position hash only if this run wrote it for this legacy key
/// (its metadata), so a hash an application rewrote since stays.
/// KEYS[1] the hash; ARGV[1] legacy key; ARGV[2] the run's migrated_at.
pub(super) const DELETE_IF_OURS: &str = include_str!("../../lua/delete_hash_if_ours.lua");

/// Withdraws the run's marker and the given members from an index set,
/// only if the set still holds the marker (else someone else owns it now).
/// KEYS[1] the set; ARGV[1] the marker; ARGV[2..] members.
pub(super) const UNDO_INDEX: &str = include_str!("../../lua/undo_index.lua");

/// Deletes a set only if it holds the given member (the run's marker).
/// KEYS[1] the set; ARGV[1] the member.
pub(super) const DEL_IF_MEMBER: &str = include_str!("../../lua/delete_set_if_member.lua");

/// Deletes the legacy key iff it still holds the planned value, and says
/// which of three things it found. KEYS[1] legacy key; ARGV[1] the value
/// planned from. Replies {'deleted', pttl, secs, micros}, {'changed'}
/// (another value, or not a string) or {'gone', secs, micros} (absent).
pub(super) const COMPARE_AND_DELETE: &str = include_str!("../../lua/compare_and_delete_legacy.lua");

/// The legacy key's PTTL and its node's clock, read together.
pub(super) const READ_TTL: &str = include_str!("../../lua/read_ttl_with_clock.lua");

/// An expiry moved by less than this (ms) is rounding, not a writer.
pub(super) const TTL_SLACK_MS: i64 = 50;

/// A legacy TTL as read: `pttl` ms left (-1: none) at server time `at` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ttl {
    pub(super) pttl: i64,
    pub(super) at: i64,
}

impl Ttl {
    /// The Unix time (ms) the key expires at; -1 for none.
    pub(super) fn expires_at(self) -> i64 {
        if self.pttl > 0 {
            self.at + self.pttl
        } else {
            -1
        }
    }

    /// Whether a key with this TTL has expired by server time `now_ms`
    /// (within the slack of two nodes' clocks).
    pub(super) fn expired_by(self, now_ms: i64) -> bool {
        let at = self.expires_at();
        at > 0 && now_ms + TTL_SLACK_MS >= at
    }
}

/// What the compare-and-delete of one legacy key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cad {
    /// Deleted; the TTL it had then.
    Deleted(Ttl),
    /// It holds another value (a writer): not deleted.
    Changed,
    /// Absent (expired, or deleted by someone) at server time `now_ms`.
    Gone { now_ms: i64 },
}

/// The TTL at the delete is not the one applied: a writer set or removed it.
pub(super) fn ttl_drifted(applied: Ttl, at_delete: Ttl) -> bool {
    match (applied.expires_at(), at_delete.expires_at()) {
        (-1, -1) => false,
        (-1, _) | (_, -1) => true,
        (a, b) => (a - b).abs() > TTL_SLACK_MS,
    }
}

pub(super) fn parse_delete(reply: Value) -> Result<Cad> {
    let bad = || unexpected("compare-and-delete reply");
    let parts: Vec<Value> = redis::from_redis_value(reply).map_err(|_| bad())?;
    let state: String = parts
        .first()
        .and_then(|v| redis::from_redis_value_ref(v).ok())
        .ok_or_else(bad)?;
    match state.as_str() {
        "deleted" => ttl_of(&parts[1..]).map(Cad::Deleted).ok_or_else(bad),
        "changed" => Ok(Cad::Changed),
        "gone" => {
            let mut with_ttl = vec![Value::Int(-2)];
            with_ttl.extend_from_slice(&parts[1..]);
            let t = ttl_of(&with_ttl).ok_or_else(bad)?;
            Ok(Cad::Gone { now_ms: t.at })
        }
        _ => Err(bad()),
    }
}

/// `[pttl, secs, micros]` as a script returns them.
fn ttl_of(parts: &[Value]) -> Option<Ttl> {
    let int = |v: &Value| -> Option<i64> { redis::from_redis_value_ref(v).ok() };
    match parts {
        [pttl, secs, micros] => Some(Ttl {
            pttl: int(pttl)?,
            at: int(secs)? * 1000 + int(micros)? / 1000,
        }),
        _ => None,
    }
}

pub(super) fn parse_ttl(reply: &Value) -> Result<Ttl> {
    let parts: Vec<Value> =
        redis::from_redis_value_ref(reply).map_err(|_| unexpected("TTL read reply"))?;
    ttl_of(&parts).ok_or_else(|| unexpected("TTL read reply"))
}

/// The hash key of `member` in the index set `index_key`
/// (`positions:index:{uid}:{ex}` -> `positions:{uid}:{ex}:{member}`).
pub(super) fn hash_key_of(index_key: &str, member: &str) -> String {
    let user = index_key
        .strip_prefix("positions:index:")
        .unwrap_or(index_key);
    format!("positions:{user}:{member}")
}

/// Sends one step's pipeline. An empty one (no user needs the step, or
/// an empty batch) sends nothing, so no step checks for that itself.
pub(super) async fn query(
    conn: &RedisConn,
    pipe: &redis::Pipeline,
    during: &'static str,
) -> Result<Vec<Value>> {
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = conn.clone();
    pipe.query_async(&mut c)
        .await
        .map_err(EngineError::redis(during))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_drift_is_a_moved_expiry_not_elapsed_time() {
        let ttl = |pttl, at| Ttl { pttl, at };
        assert!(!ttl_drifted(ttl(-1, 0), ttl(-1, 9_000)));
        // Read later, same expiry: no drift however long the steps took.
        assert!(!ttl_drifted(ttl(60_000, 1_000), ttl(50_000, 11_000)));
        assert!(ttl_drifted(ttl(-1, 0), ttl(60_000, 0)));
        assert!(ttl_drifted(ttl(60_000, 0), ttl(-1, 0)));
        assert!(ttl_drifted(ttl(600_000, 0), ttl(60_000, 1_000)));
    }

    #[test]
    fn a_gone_legacy_key_counts_as_expired_only_past_its_expiry() {
        let ttl = Ttl {
            pttl: 1_000,
            at: 10_000,
        };
        assert!(ttl.expired_by(11_000));
        assert!(ttl.expired_by(11_000 - TTL_SLACK_MS));
        assert!(!ttl.expired_by(10_500));
        // No expiry: it can only have been deleted.
        assert!(!Ttl { pttl: -1, at: 0 }.expired_by(i64::MAX / 2));
    }

    #[test]
    fn compare_and_delete_replies_decode() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let deleted = Value::Array(vec![
            bulk("deleted"),
            Value::Int(5),
            bulk("2"),
            bulk("3000"),
        ]);
        assert_eq!(
            parse_delete(deleted).unwrap(),
            Cad::Deleted(Ttl { pttl: 5, at: 2_003 })
        );
        assert_eq!(
            parse_delete(Value::Array(vec![bulk("changed")])).unwrap(),
            Cad::Changed
        );
        assert_eq!(
            parse_delete(Value::Array(vec![bulk("gone"), bulk("7"), bulk("1000")])).unwrap(),
            Cad::Gone { now_ms: 7_001 }
        );
        assert!(parse_delete(Value::Array(vec![bulk("what")])).is_err());
        assert!(parse_delete(Value::Array(vec![bulk("deleted"), Value::Int(5)])).is_err());
        assert!(parse_delete(Value::Array(vec![bulk("gone")])).is_err());
    }

    #[test]
    fn a_member_names_its_hash_beside_the_index() {
        assert_eq!(
            hash_key_of("positions:index:7:okx", "BTC-USDT:long"),
            "positions:7:okx:BTC-USDT:long"
        );
    }
}
