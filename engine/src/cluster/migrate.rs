//! The per-user migration steps on a cluster, batched: every step is one
//! pipeline over the batch's users (split per slot by [`RedisConn`]), and
//! the next step starts only when it has been answered. The order and why
//! are in the module doc of `cluster`.

use redis::Value;

use crate::connection::RedisConn;
use crate::error::{EngineError, Result};
use crate::journal::Outcome;
use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::store::{RunContext, UserWrite, WriteOutcome};

/// Replaces a hash with exactly the given fields. KEYS[1] the hash;
/// ARGV[1] the Unix time (ms) it expires at, or -1; ARGV[2..] field/value
/// pairs. An absolute time, so the legacy key and its new keys expire
/// together however long the steps between took.
const REPLACE_HASH: &str = r"
redis.call('DEL', KEYS[1])
for first = 2, #ARGV, 2000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, first, math.min(first + 1999, #ARGV)))
end
local at = tonumber(ARGV[1])
if at > 0 then redis.call('PEXPIREAT', KEYS[1], at) end
return 1";

/// Adds members to a set and gives it an expiry. KEYS[1] the set; ARGV[1]
/// expiry as for REPLACE_HASH; ARGV[2..] members. Adds, never replaces:
/// members the dual-read store added since the legacy key was deleted stay.
const ADD_TO_SET: &str = r"
for first = 2, #ARGV, 2000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, first, math.min(first + 1999, #ARGV)))
end
local at = tonumber(ARGV[1])
if at > 0 then redis.call('PEXPIREAT', KEYS[1], at) end
return 1";

/// Deletes the legacy key iff it still holds the planned value.
/// KEYS[1] legacy key; ARGV[1] the value planned from.
const COMPARE_AND_DELETE: &str = r"
local current = redis.pcall('GET', KEYS[1])
if type(current) ~= 'string' or current ~= ARGV[1] then return {'changed'} end
local pttl = redis.call('PTTL', KEYS[1])
local now = redis.call('TIME')
redis.call('DEL', KEYS[1])
return {'deleted', pttl, now[1], now[2]}";

/// The legacy key's PTTL and its node's clock, read together.
const READ_TTL: &str = r"
local now = redis.call('TIME')
return {redis.call('PTTL', KEYS[1]), now[1], now[2]}";

/// An expiry moved by less than this (ms) is rounding, not a writer.
const TTL_SLACK_MS: i64 = 50;

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
}

/// What inspecting one user's targets decided.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Inspected {
    /// Write, carrying the legacy key's TTL over.
    Proceed { ttl: Ttl },
    /// A key the migration would create exists and is not this run's.
    Conflict { key: String },
}

/// Whether a hash's metadata says this run wrote it for `legacy_key`.
fn ours(meta: &[Option<String>], legacy_key: &str, migrated_at: &str) -> bool {
    matches!(meta, [Some(from), Some(at)] if from == legacy_key && at == migrated_at)
}

pub(super) async fn migrate_users(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
) -> Result<Vec<WriteOutcome>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let inspected = inspect(conn, ctx, users).await?;
    let go: Vec<(usize, Ttl)> = inspected
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match d {
            Inspected::Proceed { ttl } => Some((i, *ttl)),
            Inspected::Conflict { .. } => None,
        })
        .collect();
    let mut outcomes: Vec<Option<WriteOutcome>> = inspected
        .into_iter()
        .map(|d| match d {
            Inspected::Conflict { key } => Some(WriteOutcome::Conflict { key }),
            Inspected::Proceed { .. } => None,
        })
        .collect();
    if go.is_empty() {
        return Ok(outcomes.into_iter().map(|o| o.expect("decided")).collect());
    }

    // Step 2: backups.
    let mut pipe = redis::pipe();
    for &(i, _) in &go {
        let u = &users[i];
        pipe.cmd("SET")
            .arg(&u.backup_key)
            .arg(&u.expected)
            .arg("EX")
            .arg(ctx.backup_ttl_secs)
            .ignore();
    }
    query(conn, &pipe, "writing backups").await?;

    // Step 3: the hashes, each whole. No index names them yet, so no
    // reader sees them.
    let mut pipe = redis::pipe();
    for &(i, ttl) in &go {
        let u = &users[i];
        for p in &u.positions {
            let cmd = pipe
                .cmd("EVAL")
                .arg(REPLACE_HASH)
                .arg(1)
                .arg(&p.key)
                .arg(ttl.expires_at());
            for (f, v) in &p.fields {
                cmd.arg(f).arg(v);
            }
            cmd.arg(META_MIGRATED_AT)
                .arg(&ctx.migrated_at)
                .arg(META_MIGRATED_FROM)
                .arg(&u.legacy_key)
                .ignore();
        }
    }
    query(conn, &pipe, "writing position hashes").await?;

    // Step 4: the outcome, before the delete. Its TTL is the one read with
    // its own clock, so the expiry it names is the new keys' exactly.
    let record = |i: usize, ttl: Ttl| {
        let u = &users[i];
        let o = Outcome::Migrated {
            positions: u.positions.len(),
            skipped: u.skipped_closed,
            pttl: ttl.pttl,
            at: ttl.at,
        };
        (
            u.legacy_key.clone(),
            serde_json::to_string(&o).expect("outcome serialises"),
        )
    };
    let migrated: Vec<(String, String)> = go.iter().map(|&(i, ttl)| record(i, ttl)).collect();
    crate::journal::record_outcomes(conn, &ctx.outcomes_key, &migrated).await?;

    // Step 5: compare-and-delete.
    let mut pipe = redis::pipe();
    for &(i, _) in &go {
        pipe.cmd("EVAL")
            .arg(COMPARE_AND_DELETE)
            .arg(1)
            .arg(&users[i].legacy_key)
            .arg(&users[i].expected);
    }
    let replies = query(conn, &pipe, "deleting migrated legacy keys").await?;
    let mut changed = Vec::new();
    let mut deleted = Vec::new();
    let mut drifted = Vec::new();
    for (&(i, ttl), reply) in go.iter().zip(replies) {
        match parse_delete(reply)? {
            Some(at_delete) => {
                let kept = if ttl_drifted(ttl, at_delete) {
                    drifted.push((i, at_delete));
                    at_delete
                } else {
                    ttl
                };
                deleted.push((i, kept));
                outcomes[i] = Some(WriteOutcome::Migrated { pttl_ms: kept.pttl });
            }
            None => {
                changed.push(i);
                outcomes[i] = Some(WriteOutcome::Changed);
            }
        }
    }

    // Step 6: the index, which makes the new layout the user's. Only the
    // members whose hash is still there: between steps 5 and 6 the user has
    // no layout the dual-read store sees, and a position it removed then
    // (its hash deleted) must not come back as a member without a hash.
    let mut pipe = redis::pipe();
    for &(i, _) in &deleted {
        for p in &users[i].positions {
            pipe.exists(&p.key);
        }
    }
    let present = query(conn, &pipe, "writing index sets").await?;
    let mut present = present.into_iter();
    let mut indexes = Vec::with_capacity(deleted.len());
    for &(i, ttl) in &deleted {
        let u = &users[i];
        let members: Vec<&str> = u
            .positions
            .iter()
            .filter(|_| {
                present
                    .next()
                    .and_then(|v| redis::from_redis_value::<bool>(v).ok())
                    .unwrap_or(true)
            })
            .map(|p| p.member.as_str())
            .collect();
        indexes.push((u.index_key.as_str(), members, ttl));
    }
    add_to_indexes(conn, indexes.iter().cloned()).await?;
    // A removal that landed between the check and the SADD: its hash is
    // gone, so its member goes too. (From the SADD on, the dual-read store
    // removes members itself.)
    drop_members_without_hash(conn, users, &indexes).await?;
    if !changed.is_empty() {
        undo(conn, ctx, users, &changed).await?;
    }
    if !drifted.is_empty() {
        carry_ttl(conn, users, &drifted).await?;
        let fixed: Vec<(String, String)> = drifted.iter().map(|&(i, t)| record(i, t)).collect();
        crate::journal::record_outcomes(conn, &ctx.outcomes_key, &fixed).await?;
    }
    Ok(outcomes.into_iter().map(|o| o.expect("decided")).collect())
}

/// SADDs each user's members to its index with the legacy expiry; users
/// with no member get no index, as on one server.
pub(super) async fn add_to_indexes<'a>(
    conn: &RedisConn,
    indexes: impl Iterator<Item = (&'a str, Vec<&'a str>, Ttl)>,
) -> Result<()> {
    let mut pipe = redis::pipe();
    for (index, members, ttl) in indexes {
        if members.is_empty() {
            continue;
        }
        pipe.cmd("EVAL")
            .arg(ADD_TO_SET)
            .arg(1)
            .arg(index)
            .arg(ttl.expires_at())
            .arg(members)
            .ignore();
    }
    query(conn, &pipe, "writing index sets").await?;
    Ok(())
}

async fn drop_members_without_hash(
    conn: &RedisConn,
    users: &[UserWrite],
    indexes: &[(&str, Vec<&str>, Ttl)],
) -> Result<()> {
    let by_index: std::collections::HashMap<&str, &UserWrite> =
        users.iter().map(|u| (u.index_key.as_str(), u)).collect();
    let hash_of = |index: &str, member: &str| {
        by_index
            .get(index)
            .and_then(|u| u.positions.iter().find(|p| p.member == member))
            .map(|p| p.key.clone())
    };
    let added: Vec<(&str, &str, String)> = indexes
        .iter()
        .flat_map(|(index, members, _)| {
            members
                .iter()
                .filter_map(move |m| Some((*index, *m, hash_of(index, m)?)))
        })
        .collect();
    let mut pipe = redis::pipe();
    for (.., hash) in &added {
        pipe.exists(hash);
    }
    let present = query(conn, &pipe, "checking index members").await?;
    let mut pipe = redis::pipe();
    for ((index, member, _), there) in added.iter().zip(present) {
        if !redis::from_redis_value::<bool>(there).unwrap_or(true) {
            pipe.cmd("SREM").arg(*index).arg(*member).ignore();
        }
    }
    query(conn, &pipe, "checking index members").await?;
    Ok(())
}

/// Step 1 for the batch: the legacy TTL, whether the index exists, and who
/// wrote each planned hash.
async fn inspect(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
) -> Result<Vec<Inspected>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for u in users {
        pipe.cmd("EVAL").arg(READ_TTL).arg(1).arg(&u.legacy_key);
        pipe.cmd("EXISTS").arg(&u.index_key);
        for p in &u.positions {
            pipe.cmd("TYPE").arg(&p.key);
            pipe.cmd("HMGET")
                .arg(&p.key)
                .arg(META_MIGRATED_FROM)
                .arg(META_MIGRATED_AT);
        }
    }
    let replies = query(conn, &pipe, "inspecting migration targets").await?;
    let mut replies = replies.into_iter();
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let ttl = parse_ttl(&replies.next().ok_or_else(|| unexpected("inspection"))?)?;
        let index_exists: bool = replies
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(true);
        let mut conflict = None;
        for p in &u.positions {
            let kind: String = replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let meta: Vec<Option<String>> = replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            // A hash of an earlier attempt of this run is ours to rewrite.
            let mine = match kind.as_str() {
                "none" => true,
                "hash" => ours(&meta, &u.legacy_key, &ctx.migrated_at),
                _ => false,
            };
            if !mine && conflict.is_none() {
                conflict = Some(p.key.clone());
            }
        }
        // This run writes the index only after the legacy key is gone: one
        // beside a legacy key is someone else's (an earlier run's user
        // whose legacy key came back), as on one server.
        if index_exists && conflict.is_none() && !u.positions.is_empty() {
            conflict = Some(u.index_key.clone());
        }
        out.push(match conflict {
            Some(key) => Inspected::Conflict { key },
            None => Inspected::Proceed { ttl },
        });
    }
    Ok(out)
}

/// Removes what an attempt wrote for users whose legacy key changed: no
/// index named its hashes yet, so no reader saw them.
async fn undo(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
    changed: &[usize],
) -> Result<()> {
    let mut pipe = redis::pipe();
    for &i in changed {
        let u = &users[i];
        for p in &u.positions {
            pipe.del(&p.key).ignore();
        }
        pipe.del(&u.backup_key).ignore();
        pipe.hdel(&ctx.outcomes_key, &u.legacy_key).ignore();
    }
    query(conn, &pipe, "undoing an attempt the legacy key outran").await?;
    Ok(())
}

/// Gives the new keys the TTL the legacy key had when it was deleted.
async fn carry_ttl(conn: &RedisConn, users: &[UserWrite], drifted: &[(usize, Ttl)]) -> Result<()> {
    let mut pipe = redis::pipe();
    for &(i, ttl) in drifted {
        let u = &users[i];
        let keys = u
            .positions
            .iter()
            .map(|p| p.key.as_str())
            .chain((!u.positions.is_empty()).then_some(u.index_key.as_str()));
        for key in keys {
            match ttl.expires_at() {
                -1 => pipe.cmd("PERSIST").arg(key).ignore(),
                at => pipe.cmd("PEXPIREAT").arg(key).arg(at).ignore(),
            };
        }
    }
    query(conn, &pipe, "carrying a changed TTL over").await?;
    Ok(())
}

/// The TTL at the delete is not the one applied: a writer set or removed it.
fn ttl_drifted(applied: Ttl, at_delete: Ttl) -> bool {
    match (applied.expires_at(), at_delete.expires_at()) {
        (-1, -1) => false,
        (-1, _) | (_, -1) => true,
        (a, b) => (a - b).abs() > TTL_SLACK_MS,
    }
}

fn parse_delete(reply: Value) -> Result<Option<Ttl>> {
    let bad = || unexpected("compare-and-delete reply");
    let parts: Vec<Value> = redis::from_redis_value(reply).map_err(|_| bad())?;
    let state: String = parts
        .first()
        .and_then(|v| redis::from_redis_value_ref(v).ok())
        .ok_or_else(bad)?;
    match state.as_str() {
        "deleted" => ttl_of(&parts[1..]).map(Some).ok_or_else(bad),
        "changed" => Ok(None),
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

fn parse_ttl(reply: &Value) -> Result<Ttl> {
    let parts: Vec<Value> =
        redis::from_redis_value_ref(reply).map_err(|_| unexpected("TTL read reply"))?;
    ttl_of(&parts).ok_or_else(|| unexpected("TTL read reply"))
}

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

pub(super) fn unexpected(what: &str) -> EngineError {
    EngineError::Redis {
        during: "decoding a script reply",
        source: redis::RedisError::from((
            redis::ErrorKind::Client,
            "unexpected reply shape",
            what.to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_runs_metadata_makes_a_hash_ours() {
        let at = "2026-01-01T00:00:00Z";
        let some = |s: &str| Some(s.to_owned());
        assert!(ours(
            &[some("okx:positions:7"), some(at)],
            "okx:positions:7",
            at
        ));
        assert!(!ours(
            &[some("okx:positions:7"), some("earlier")],
            "okx:positions:7",
            at
        ));
        assert!(!ours(
            &[some("okx:positions:8"), some(at)],
            "okx:positions:7",
            at
        ));
        assert!(!ours(&[None, None], "okx:positions:7", at));
    }

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
            Some(Ttl { pttl: 5, at: 2_003 })
        );
        assert_eq!(
            parse_delete(Value::Array(vec![bulk("changed")])).unwrap(),
            None
        );
        assert!(parse_delete(Value::Array(vec![bulk("what")])).is_err());
        assert!(parse_delete(Value::Array(vec![bulk("deleted"), Value::Int(5)])).is_err());
    }
}
