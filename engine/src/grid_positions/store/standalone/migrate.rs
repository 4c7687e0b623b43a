//! Phase 2's writes on one server: users cut into groups, each group one
//! call of `lua/migrate_users.lua` (its header gives the layout), all of a
//! batch's small groups in one pipeline.
//!
//! Why groups and not one call per user: the script's own price (its
//! argument tables, the journal's HSET, the DEL, an EXISTS) is paid once
//! per call. Why not a whole batch in one call: while a script runs the
//! server serves nobody else, so a call stays small (at most 64 positions,
//! unless one user has more; calls of up to 200 took the server 2.6 ms
//! each in INFO commandstats, Redis 7.0).

use std::ops::Range;
use std::sync::atomic::Ordering;

use redis::Value;

use super::dump::hash_payload;
use super::{arg_hash_pairs, hash_pairs, unexpected, StandaloneStore, METADATA_PAIRS};
use crate::error::Result;
use crate::grid_positions::store::{PositionWrite, RunContext, UserWrite, WriteOutcome};
use crate::run::journal::sha256_hex;

/// The most positions one call writes, unless one user has more: that user
/// is a call of its own, as large as `max_positions_per_user` allows.
const POSITIONS_PER_CALL: usize = 64;
/// The most users one call migrates.
const USERS_PER_CALL: usize = 16;

/// How a call sends each hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hashes {
    /// One DUMP payload, written by RESTORE.
    Restore,
    /// Field/value pairs, written by HSET.
    Hset,
}

/// What a call did for one user.
enum Reply {
    Done(WriteOutcome),
    /// The server would not RESTORE a payload; nothing of the user is left.
    Refused(String),
}

impl StandaloneStore {
    /// Users in groups of one script call each: every group of small users
    /// in one pipeline, each large user in a round trip of its own (a
    /// pipeline's calls run back to back). Users a RESTORE was refused for
    /// are written again with HSET, as is everything after.
    pub(super) async fn migrate_in_groups(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
    ) -> Result<Vec<WriteOutcome>> {
        let hashes = if self.restore.load(Ordering::Relaxed) {
            Hashes::Restore
        } else {
            Hashes::Hset
        };
        let mut replies = self.write_groups(ctx, users, hashes).await?;
        let refused: Vec<usize> = (0..users.len())
            .filter(|&i| matches!(replies[i], Reply::Refused(_)))
            .collect();
        if let Some(Reply::Refused(why)) = refused.first().map(|&i| &replies[i]) {
            tracing::warn!(
                "the server refused RESTORE ({why}); hashes are written with HSET from now on"
            );
            self.restore.store(false, Ordering::Relaxed);
            let again: Vec<UserWrite> = refused.iter().map(|&i| users[i].clone()).collect();
            let written = self.write_groups(ctx, &again, Hashes::Hset).await?;
            for (i, reply) in refused.into_iter().zip(written) {
                replies[i] = reply;
            }
        }
        replies
            .into_iter()
            .map(|r| match r {
                Reply::Done(o) => Ok(o),
                Reply::Refused(_) => Err(unexpected("a refusal of HSET")),
            })
            .collect()
    }

    async fn write_groups(
        &self,
        ctx: &RunContext,
        users: &[UserWrite],
        hashes: Hashes,
    ) -> Result<Vec<Reply>> {
        let (large, small): (Vec<_>, Vec<_>) = groups(users.iter().map(|u| u.positions.len()))
            .into_iter()
            .partition(|g| g.len() == 1 && users[g.start].positions.len() > POSITIONS_PER_CALL);
        let mut replies: Vec<Option<Reply>> = (0..users.len()).map(|_| None).collect();
        let mut pipe = redis::pipe();
        for g in &small {
            self.add_call(&mut pipe, ctx, &users[g.clone()], hashes);
        }
        let answers = self.query_scripts(&pipe, "migrating users").await?;
        for (g, answer) in small.iter().zip(answers) {
            for (i, reply) in g.clone().zip(parse_reply(answer, g.len())?) {
                replies[i] = Some(reply);
            }
        }
        for g in large {
            let mut pipe = redis::pipe();
            self.add_call(&mut pipe, ctx, &users[g.clone()], hashes);
            let answer = self.query_scripts(&pipe, "migrating users").await?;
            let one = answer
                .into_iter()
                .next()
                .ok_or_else(|| unexpected("migrate reply"))?;
            replies[g.start] = parse_reply(one, 1)?.pop();
        }
        Ok(replies
            .into_iter()
            .map(|r| r.expect("one reply per user"))
            .collect())
    }

    /// One call's keys and arguments, as the script's header lays them out.
    fn add_call(
        &self,
        pipe: &mut redis::Pipeline,
        ctx: &RunContext,
        users: &[UserWrite],
        hashes: Hashes,
    ) {
        let keys: usize = users.iter().map(|u| 3 + u.positions.len()).sum();
        pipe.cmd("EVALSHA")
            .arg(&self.migrate_sha)
            .arg(1 + keys)
            .arg(&ctx.outcomes_key);
        for u in users {
            pipe.arg(&u.legacy_key);
        }
        for u in users {
            pipe.arg(&u.backup_key);
        }
        for u in users {
            pipe.arg(&u.index_key);
        }
        for u in users {
            for p in &u.positions {
                pipe.arg(&p.key);
            }
        }
        pipe.arg(ctx.backup_ttl_secs).arg(match hashes {
            Hashes::Restore => "restore",
            Hashes::Hset => "hset",
        });
        let per_position = match hashes {
            Hashes::Restore => |_: &PositionWrite| 2,
            Hashes::Hset => |p: &PositionWrite| 2 + 2 * (p.fields.len() + METADATA_PAIRS),
        };
        for u in users {
            let span: usize = u.positions.iter().map(per_position).sum();
            pipe.arg(u.positions.len())
                .arg(u.skipped_closed)
                .arg(sha256_hex(&u.expected))
                .arg(&u.expected)
                .arg(span);
            for p in &u.positions {
                pipe.arg(&p.member);
                match hashes {
                    Hashes::Restore => {
                        pipe.arg(self.payload(p, ctx, &u.legacy_key));
                    }
                    Hashes::Hset => {
                        pipe.arg(p.fields.len() + METADATA_PAIRS);
                        arg_hash_pairs(pipe, p, ctx, &u.legacy_key);
                    }
                }
            }
        }
    }

    /// The RESTORE payload of the hash [`arg_hash_pairs`] would HSET.
    fn payload(&self, p: &PositionWrite, ctx: &RunContext, legacy_key: &str) -> Vec<u8> {
        hash_payload(hash_pairs(p, ctx, legacy_key), self.listpack)
    }
}

/// Consecutive users cut into calls, from their position counts.
fn groups(positions: impl Iterator<Item = usize>) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut in_group = 0;
    for (i, n) in positions.enumerate() {
        match groups.last_mut() {
            Some(g) if g.len() < USERS_PER_CALL && in_group + n <= POSITIONS_PER_CALL => {
                g.end = i + 1;
                in_group += n;
            }
            _ => {
                groups.push(i..i + 1);
                in_group = n;
            }
        }
    }
    groups
}

/// One reply per user of a call.
fn parse_reply(answer: Value, users: usize) -> Result<Vec<Reply>> {
    let Value::Array(items) = answer else {
        return Err(unexpected("migrate reply"));
    };
    if items.len() != users {
        return Err(unexpected("migrate reply of another length"));
    }
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Int(pttl_ms) => Ok(Reply::Done(WriteOutcome::Migrated { pttl_ms })),
            Value::BulkString(s) if s == b"changed" => Ok(Reply::Done(WriteOutcome::Changed)),
            Value::Array(parts) => match (parts.first().and_then(text).as_deref(), parts.get(1)) {
                (Some("conflict"), Some(key)) => Ok(Reply::Done(WriteOutcome::Conflict {
                    key: text(key).unwrap_or_default(),
                })),
                (Some("refused"), why) => {
                    Ok(Reply::Refused(why.and_then(text).unwrap_or_default()))
                }
                _ => Err(unexpected("migrate reply")),
            },
            _ => Err(unexpected("migrate reply")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_cut_into_calls_by_positions_and_count() {
        let (p, u) = (POSITIONS_PER_CALL, USERS_PER_CALL);
        // Positions fill a call up to the bound and no further.
        assert_eq!(groups([p / 2, p / 2, 1].into_iter()), [0..2, 2..3]);
        assert_eq!(groups([p / 2, p / 2 - 1, 1].into_iter()), vec![0..3]);
        // Users too, however few their positions.
        assert_eq!(
            groups(std::iter::repeat_n(0, 2 * u + 1)),
            [0..u, u..2 * u, 2 * u..2 * u + 1]
        );
        // A user past the bound is a call of its own.
        assert_eq!(groups([3, p + 1, 3].into_iter()), [0..1, 1..2, 2..3]);
        assert_eq!(groups(std::iter::empty()), Vec::<Range<usize>>::new());
    }

    #[test]
    fn a_reply_names_each_users_outcome() {
        let answer = Value::Array(vec![
            Value::Int(-1),
            Value::BulkString(b"changed".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"conflict".to_vec()),
                Value::BulkString(b"positions:index:7:okx".to_vec()),
            ]),
            Value::Array(vec![
                Value::BulkString(b"refused".to_vec()),
                Value::BulkString(b"NOPERM".to_vec()),
            ]),
        ]);
        let replies = parse_reply(answer, 4).unwrap();
        assert!(matches!(
            replies[0],
            Reply::Done(WriteOutcome::Migrated { pttl_ms: -1 })
        ));
        assert!(matches!(replies[1], Reply::Done(WriteOutcome::Changed)));
        assert!(
            matches!(&replies[2], Reply::Done(WriteOutcome::Conflict { key }) if key == "positions:index:7:okx")
        );
        assert!(matches!(&replies[3], Reply::Refused(why) if why == "NOPERM"));
        assert!(parse_reply(Value::Array(vec![]), 1).is_err());
    }
}
