//! Step 1 of a cluster migration (see the module doc of `cluster`): what
//! is already there for each user of the batch, and so whether its steps
//! may go on.

use std::collections::BTreeSet;

use super::scripts::{hash_key_of, parse_ttl, query, unexpected, Ttl, READ_TTL};
use crate::connection::RedisConn;
use crate::error::Result;
use crate::grid_positions::store::{RunContext, UserWrite};
use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};

/// What inspecting one user's targets decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Inspected {
    /// Write, carrying the legacy key's TTL over.
    Proceed(Go),
    /// A key the migration would create exists and is not this run's.
    Conflict { key: String },
    /// The legacy key is already gone (expired or deleted since read).
    Vanished,
}

/// A user the steps go on with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Go {
    pub(super) ttl: Ttl,
    /// The index holds this run's marker: an earlier attempt of this run.
    pub(super) had_sentinel: bool,
    /// Hashes of that attempt's members the plan no longer has (deleted
    /// in step 3 if still ours).
    pub(super) stale: Vec<String>,
}

/// Whether a hash's metadata says this run wrote it for `legacy_key`.
fn ours(meta: &[Option<String>], legacy_key: &str, migrated_at: &str) -> bool {
    matches!(meta, [Some(from), Some(at)] if from == legacy_key && at == migrated_at)
}

/// Whether a hash read as `kind` + `meta` may be (re)written by this run.
fn writable(kind: &str, meta: &[Option<String>], legacy_key: &str, migrated_at: &str) -> bool {
    match kind {
        "none" => true,
        "hash" => ours(meta, legacy_key, migrated_at),
        _ => false,
    }
}

/// Asks who wrote `hash`: its TYPE and its metadata; answered by
/// [`next_writable`].
fn ask_owner(pipe: &mut redis::Pipeline, hash: &str) {
    pipe.cmd("TYPE").arg(hash);
    pipe.cmd("HMGET")
        .arg(hash)
        .arg(META_MIGRATED_FROM)
        .arg(META_MIGRATED_AT);
}

/// Reads the two replies of one [`ask_owner`]: may this run (re)write the
/// hash of `legacy_key`'s user?
fn next_writable(
    replies: &mut impl Iterator<Item = redis::Value>,
    legacy_key: &str,
    migrated_at: &str,
) -> bool {
    let kind: String = replies
        .next()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or_default();
    let meta: Vec<Option<String>> = replies
        .next()
        .and_then(|v| redis::from_redis_value(v).ok())
        .unwrap_or_default();
    writable(&kind, &meta, legacy_key, migrated_at)
}

/// Step 1 for the batch: the legacy TTL, the index's members, and who
/// wrote each planned hash; then who wrote the hashes of an earlier
/// attempt's members the plan no longer has (a second round trip, only
/// when there are such members).
pub(super) async fn inspect(
    conn: &RedisConn,
    ctx: &RunContext,
    sentinel: &str,
    users: &[UserWrite],
) -> Result<Vec<Inspected>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for u in users {
        pipe.cmd("EVAL").arg(READ_TTL).arg(1).arg(&u.legacy_key);
        pipe.cmd("SMEMBERS").arg(&u.index_key);
        for p in &u.positions {
            ask_owner(&mut pipe, &p.key);
        }
    }
    let replies = query(conn, &pipe, "inspecting migration targets").await?;
    let mut replies = replies.into_iter();
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let ttl = parse_ttl(&replies.next().ok_or_else(|| unexpected("inspection"))?)?;
        // Not a set (SMEMBERS refused it): someone else's key.
        let members: Option<BTreeSet<String>> =
            replies.next().and_then(|v| redis::from_redis_value(v).ok());
        let mut conflict = None;
        for p in &u.positions {
            // A hash of an earlier attempt of this run is ours to rewrite.
            if !next_writable(&mut replies, &u.legacy_key, &ctx.migrated_at) && conflict.is_none() {
                conflict = Some(p.key.clone());
            }
        }
        let members = members.unwrap_or_else(|| {
            if !u.positions.is_empty() {
                conflict.get_or_insert_with(|| u.index_key.clone());
            }
            BTreeSet::new()
        });
        let had_sentinel = members.contains(sentinel);
        // An index beside the legacy key without this run's marker is
        // someone else's (a stray one, an earlier run's user whose legacy
        // key came back, or another run mid-migration), as on one server.
        if !members.is_empty() && !had_sentinel && conflict.is_none() && !u.positions.is_empty() {
            conflict = Some(u.index_key.clone());
        }
        let planned: BTreeSet<&str> = u.positions.iter().map(|p| p.member.as_str()).collect();
        let stale = if had_sentinel {
            members
                .iter()
                .filter(|m| m.as_str() != sentinel && !planned.contains(m.as_str()))
                .map(|m| hash_key_of(&u.index_key, m))
                .collect()
        } else {
            Vec::new()
        };
        out.push(match conflict {
            Some(key) => Inspected::Conflict { key },
            // Gone since the runner read it: nothing to migrate, nothing
            // written (the runner reads again and finds it absent).
            None if ttl.pttl == -2 => Inspected::Vanished,
            None => Inspected::Proceed(Go {
                ttl,
                had_sentinel,
                stale,
            }),
        });
    }
    stale_conflicts(conn, ctx, users, &mut out).await?;
    Ok(out)
}

/// An earlier attempt's member the plan dropped whose hash is no longer
/// this run's (an application wrote it after that attempt deleted the
/// legacy key, which came back since): rewriting the index would leave that
/// hash without its member, so the user is a conflict instead.
async fn stale_conflicts(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
    out: &mut [Inspected],
) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for d in out.iter() {
        if let Inspected::Proceed(g) = d {
            for hash in &g.stale {
                ask_owner(&mut pipe, hash);
            }
        }
    }
    let replies = query(conn, &pipe, "inspecting migration targets").await?;
    let mut replies = replies.into_iter();
    for (u, d) in users.iter().zip(out.iter_mut()) {
        let Inspected::Proceed(g) = d else { continue };
        let mut conflict = None;
        for hash in &g.stale {
            if !next_writable(&mut replies, &u.legacy_key, &ctx.migrated_at) && conflict.is_none() {
                conflict = Some(hash.clone());
            }
        }
        if let Some(key) = conflict {
            *d = Inspected::Conflict { key };
        }
    }
    Ok(())
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
    fn only_an_absent_key_or_our_own_hash_is_writable() {
        let at = "2026-01-01T00:00:00Z";
        let mine = [Some("l".to_owned()), Some(at.to_owned())];
        assert!(writable("none", &[], "l", at));
        assert!(writable("hash", &mine, "l", at));
        assert!(!writable("hash", &[None, None], "l", at));
        assert!(!writable("string", &mine, "l", at));
        // An unreadable TYPE reply is never taken as "free".
        assert!(!writable("", &[], "l", at));
    }
}
