//! The per-user migration steps on a cluster, batched: every step is one
//! pipeline over the batch's users (split per slot by [`RedisConn`]), and
//! the next step starts only when it has been answered. The order and why
//! are in the module doc of `cluster`.

use super::inspect::{inspect, Go, Inspected};
use super::scripts::{
    parse_delete, query, ttl_drifted, unexpected, Cad, Ttl, COMPARE_AND_DELETE, DELETE_IF_OURS,
    DEL_IF_MEMBER, REPLACE_KEY, UNDO_INDEX,
};
use crate::connection::RedisConn;
use crate::error::Result;
use crate::grid_positions::store::standalone::arg_hash_pairs;
use crate::grid_positions::store::{RunContext, UserWrite, WriteOutcome};
use crate::keys::migrating_sentinel;
use crate::run::journal::{sha256_hex, Outcome};

pub(super) async fn migrate_users(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
) -> Result<Vec<WriteOutcome>> {
    let sentinel = migrating_sentinel(&ctx.run_id);
    let inspected = inspect(conn, ctx, &sentinel, users).await?;
    let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; users.len()];
    let mut go: Vec<(usize, Go)> = Vec::new();
    for (i, d) in inspected.into_iter().enumerate() {
        match d {
            Inspected::Conflict { key } => outcomes[i] = Some(WriteOutcome::Conflict { key }),
            Inspected::Vanished => outcomes[i] = Some(WriteOutcome::Changed),
            Inspected::Proceed(g) => go.push((i, g)),
        }
    }
    if !go.is_empty() {
        write_backups(conn, ctx, users, &go).await?;
        write_hashes(conn, ctx, users, &go).await?;
        write_indexes(conn, &sentinel, users, &go).await?;
        // Step 5: the outcome, before the delete. Its TTL is the one read
        // with its own clock, so the expiry it names is the new keys' exactly.
        let applied: Vec<(usize, Ttl)> = go.iter().map(|(i, g)| (*i, g.ttl)).collect();
        record_migrated(conn, ctx, users, &applied).await?;
        let deleted = compare_and_delete(conn, users, &go).await?;
        for &(i, after) in &deleted {
            outcomes[i] = Some(after.outcome());
        }
        finish(conn, ctx, &sentinel, users, &deleted).await?;
    }
    Ok(outcomes.into_iter().map(|o| o.expect("decided")).collect())
}

/// Step 2: the backups, first, so the legacy value can always be restored.
async fn write_backups(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
    go: &[(usize, Go)],
) -> Result<()> {
    let mut pipe = redis::pipe();
    for &(i, _) in go {
        let u = &users[i];
        pipe.cmd("SET")
            .arg(&u.backup_key)
            .arg(&u.expected)
            .arg("EX")
            .arg(ctx.backup_ttl_secs)
            .ignore();
    }
    query(conn, &pipe, "writing backups").await?;
    Ok(())
}

/// Step 3: the hashes, each whole, and an earlier attempt's hashes the
/// plan dropped. No reader looks at them: the index is absent or holds
/// the marker while the legacy key exists.
async fn write_hashes(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
    go: &[(usize, Go)],
) -> Result<()> {
    let mut pipe = redis::pipe();
    for (i, g) in go {
        let u = &users[*i];
        for p in &u.positions {
            pipe.cmd("EVAL")
                .arg(REPLACE_KEY)
                .arg(1)
                .arg(&p.key)
                .arg(g.ttl.expires_at())
                .arg("HSET");
            arg_hash_pairs(&mut pipe, p, ctx, &u.legacy_key);
            pipe.ignore();
        }
        for hash in &g.stale {
            delete_if_ours(&mut pipe, hash, &u.legacy_key, &ctx.migrated_at).ignore();
        }
    }
    query(conn, &pipe, "writing position hashes").await?;
    Ok(())
}

/// Step 4: the index, exactly the plan plus the marker, which keeps the
/// dual-read store on the legacy key while it exists. A user with no
/// position gets no index; one an earlier attempt gave one loses it.
async fn write_indexes(
    conn: &RedisConn,
    sentinel: &str,
    users: &[UserWrite],
    go: &[(usize, Go)],
) -> Result<()> {
    let mut pipe = redis::pipe();
    for (i, g) in go {
        let u = &users[*i];
        if u.positions.is_empty() {
            if g.had_sentinel {
                pipe.cmd("EVAL")
                    .arg(DEL_IF_MEMBER)
                    .arg(1)
                    .arg(&u.index_key)
                    .arg(sentinel)
                    .ignore();
            }
            continue;
        }
        let cmd = pipe
            .cmd("EVAL")
            .arg(REPLACE_KEY)
            .arg(1)
            .arg(&u.index_key)
            .arg(g.ttl.expires_at())
            .arg("SADD")
            .arg(sentinel);
        for p in &u.positions {
            cmd.arg(&p.member);
        }
        cmd.ignore();
    }
    query(conn, &pipe, "writing index sets").await?;
    Ok(())
}

/// Records the outcome `migrated` of each `(user, TTL)` in the journal.
async fn record_migrated(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
    which: &[(usize, Ttl)],
) -> Result<()> {
    let outcomes: Vec<(String, String)> = which
        .iter()
        .map(|&(i, ttl)| {
            let u = &users[i];
            (u.legacy_key.clone(), migrated_outcome(u, ttl.pttl, ttl.at))
        })
        .collect();
    crate::run::journal::record_outcomes(conn, &ctx.outcomes_key, &outcomes).await
}

/// The journal's `migrated` outcome of `u`, as JSON: its legacy TTL
/// `pttl` (ms) as read at server time `at` (ms), and the digest of the
/// legacy value as the runner read it, the bytes the backup holds.
fn migrated_outcome(u: &UserWrite, pttl: i64, at: i64) -> String {
    let outcome = Outcome::Migrated {
        positions: u.positions.len(),
        skipped: u.skipped_closed,
        pttl,
        at,
        digest: sha256_hex(&u.expected),
    };
    serde_json::to_string(&outcome).expect("outcome serialises")
}

/// What step 6 found for one user, and so what step 7 does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterDelete {
    /// Deleted with the TTL the new keys have: only the marker goes.
    Done(Ttl),
    /// Deleted, but a writer moved its TTL since: the new keys and the
    /// outcome take the TTL it had at the delete, then the marker goes.
    Drifted(Ttl),
    /// Expired: the new keys expire at that same instant, so they are
    /// left to go with it (an application write made to them since goes
    /// too, as it would have with the legacy key).
    Expired,
    /// Changed, or deleted by someone (nothing to migrate): undone.
    Undo,
}

impl AfterDelete {
    /// The compare-and-delete's reply for a user whose new keys took `applied`.
    fn of(applied: Ttl, cad: Cad) -> Self {
        match cad {
            Cad::Deleted(at_delete) if ttl_drifted(applied, at_delete) => Self::Drifted(at_delete),
            Cad::Deleted(_) => Self::Done(applied),
            Cad::Changed => Self::Undo,
            Cad::Gone { now_ms } if applied.expired_by(now_ms) => Self::Expired,
            Cad::Gone { .. } => Self::Undo,
        }
    }

    fn outcome(self) -> WriteOutcome {
        match self {
            Self::Done(kept) | Self::Drifted(kept) => WriteOutcome::Migrated { pttl_ms: kept.pttl },
            Self::Expired | Self::Undo => WriteOutcome::Changed,
        }
    }
}

/// Step 6: compare-and-delete of each legacy key.
async fn compare_and_delete(
    conn: &RedisConn,
    users: &[UserWrite],
    go: &[(usize, Go)],
) -> Result<Vec<(usize, AfterDelete)>> {
    let mut pipe = redis::pipe();
    for &(i, _) in go {
        pipe.cmd("EVAL")
            .arg(COMPARE_AND_DELETE)
            .arg(1)
            .arg(&users[i].legacy_key)
            .arg(&users[i].expected);
    }
    let replies = query(conn, &pipe, "deleting migrated legacy keys").await?;
    if replies.len() != go.len() {
        return Err(unexpected("compare-and-delete replies"));
    }
    go.iter()
        .zip(replies)
        .map(|((i, g), reply)| Ok((*i, AfterDelete::of(g.ttl, parse_delete(reply)?))))
        .collect()
}

/// Step 7: the new layout is the user's; the marker goes (after the TTL
/// a writer moved is carried over, so a kill in between leaves the
/// marker for the resumed run's settle pass, never a wrong expiry).
/// Users whose legacy key changed are undone; expired ones forgotten.
async fn finish(
    conn: &RedisConn,
    ctx: &RunContext,
    sentinel: &str,
    users: &[UserWrite],
    deleted: &[(usize, AfterDelete)],
) -> Result<()> {
    let which = |wanted: fn(AfterDelete) -> bool| -> Vec<usize> {
        deleted
            .iter()
            .filter(|(_, after)| wanted(*after))
            .map(|&(i, _)| i)
            .collect()
    };
    let drifted: Vec<(usize, Ttl)> = deleted
        .iter()
        .filter_map(|&(i, after)| match after {
            AfterDelete::Drifted(ttl) => Some((i, ttl)),
            _ => None,
        })
        .collect();
    if !drifted.is_empty() {
        carry_ttl(conn, users, &drifted).await?;
        record_migrated(conn, ctx, users, &drifted).await?;
    }
    let mut pipe = redis::pipe();
    let marked = which(|a| !matches!(a, AfterDelete::Undo));
    for &i in marked.iter().filter(|&&i| !users[i].positions.is_empty()) {
        pipe.cmd("SREM")
            .arg(&users[i].index_key)
            .arg(sentinel)
            .ignore();
    }
    query(conn, &pipe, "removing migration markers").await?;
    let undone = which(|a| a == AfterDelete::Undo);
    if !undone.is_empty() {
        undo(conn, ctx, sentinel, users, &undone).await?;
    }
    let expired = which(|a| a == AfterDelete::Expired);
    if !expired.is_empty() {
        forget(conn, ctx, users, &expired).await?;
    }
    Ok(())
}

fn delete_if_ours<'p>(
    pipe: &'p mut redis::Pipeline,
    hash: &str,
    legacy_key: &str,
    migrated_at: &str,
) -> &'p mut redis::Pipeline {
    pipe.cmd("EVAL")
        .arg(DELETE_IF_OURS)
        .arg(1)
        .arg(hash)
        .arg(legacy_key)
        .arg(migrated_at)
}

/// Removes what an attempt wrote for users whose legacy key changed (or
/// was deleted) under it: each planned hash only if still ours, then the
/// marker and the members of exactly the hashes deleted, only if the index
/// still holds the marker; then the backup and the outcome. A hash an
/// application rewrote since (possible only once the legacy key was gone)
/// stays, with its member.
pub(super) async fn undo(
    conn: &RedisConn,
    ctx: &RunContext,
    sentinel: &str,
    users: &[UserWrite],
    undone: &[usize],
) -> Result<()> {
    let mut pipe = redis::pipe();
    for &i in undone {
        let u = &users[i];
        for p in &u.positions {
            delete_if_ours(&mut pipe, &p.key, &u.legacy_key, &ctx.migrated_at);
        }
    }
    let deleted = query(conn, &pipe, "undoing an attempt the legacy key outran").await?;
    let mut deleted = deleted.into_iter();
    let mut pipe = redis::pipe();
    for &i in undone {
        let u = &users[i];
        let gone: Vec<&str> = u
            .positions
            .iter()
            .filter(|_| {
                deleted
                    .next()
                    .and_then(|v| redis::from_redis_value::<i64>(v).ok())
                    .is_some_and(|n| n == 1)
            })
            .map(|p| p.member.as_str())
            .collect();
        if !u.positions.is_empty() {
            pipe.cmd("EVAL")
                .arg(UNDO_INDEX)
                .arg(1)
                .arg(&u.index_key)
                .arg(sentinel)
                .arg(gone)
                .ignore();
        }
    }
    query(conn, &pipe, "undoing an attempt the legacy key outran").await?;
    forget(conn, ctx, users, undone).await
}

/// Drops the backup and the outcome of users this attempt did not migrate.
async fn forget(
    conn: &RedisConn,
    ctx: &RunContext,
    users: &[UserWrite],
    which: &[usize],
) -> Result<()> {
    let mut pipe = redis::pipe();
    for &i in which {
        let u = &users[i];
        pipe.del(&u.backup_key).ignore();
        pipe.hdel(&ctx.outcomes_key, &u.legacy_key).ignore();
    }
    query(conn, &pipe, "withdrawing an attempt's outcome").await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delete_reply_decides_outcome_and_step_7() {
        let applied = Ttl {
            pttl: 60_000,
            at: 1_000,
        };
        let moved = Ttl {
            pttl: 5_000,
            at: 2_000,
        };
        let same = Ttl {
            pttl: 59_000,
            at: 2_000,
        };
        let of = |cad| AfterDelete::of(applied, cad);
        assert_eq!(of(Cad::Deleted(same)), AfterDelete::Done(applied));
        assert_eq!(of(Cad::Deleted(moved)), AfterDelete::Drifted(moved));
        assert_eq!(of(Cad::Changed), AfterDelete::Undo);
        assert_eq!(of(Cad::Gone { now_ms: 61_000 }), AfterDelete::Expired);
        // Gone before its expiry: someone deleted it.
        assert_eq!(of(Cad::Gone { now_ms: 30_000 }), AfterDelete::Undo);
        assert_eq!(
            AfterDelete::Drifted(moved).outcome(),
            WriteOutcome::Migrated { pttl_ms: 5_000 }
        );
        assert_eq!(
            AfterDelete::Done(applied).outcome(),
            WriteOutcome::Migrated { pttl_ms: 60_000 }
        );
        assert_eq!(AfterDelete::Expired.outcome(), WriteOutcome::Changed);
    }
}
