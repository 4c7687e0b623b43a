//! The per-user rollback steps on a cluster, batched like the migration's:
//! read, restore the legacy key (only if absent), delete what the run
//! created, record. Each step repeats harmlessly after a kill.

use std::collections::BTreeMap;

use redis::Value;

use super::scripts::{query, unexpected};
use crate::connection::RedisConn;
use crate::error::Result;
use crate::grid_positions::store::{RollbackOutcome, UserRollback};

/// What reading one user's legacy key and backup decided.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    NoBackup,
    Changed,
    /// Restore (`None` when the legacy key already holds the backup: an
    /// interrupted rollback restored it) and delete.
    Go {
        restore: Option<Vec<u8>>,
    },
}

/// The decision for one user from its backup and legacy reads.
fn decide(backup: Option<Vec<u8>>, legacy: &LegacyState, force: bool) -> Decision {
    let Some(backup) = backup else {
        return Decision::NoBackup;
    };
    match legacy {
        LegacyState::Absent => Decision::Go {
            restore: Some(backup),
        },
        LegacyState::Holds(v) if *v == backup => Decision::Go { restore: None },
        _ if force => Decision::Go {
            restore: Some(backup),
        },
        _ => Decision::Changed,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LegacyState {
    Absent,
    Holds(Vec<u8>),
    /// Not a string (a GET refused it).
    Other,
}

pub(super) async fn rollback_users(
    conn: &RedisConn,
    journal_key: &str,
    users: &[UserRollback],
) -> Result<Vec<RollbackOutcome>> {
    let (mut decisions, had_index) = read(conn, users).await?;
    restore(conn, users, &mut decisions).await?;
    let deleted = delete_created(conn, users, &decisions, &had_index).await?;
    let mut outcomes = Vec::with_capacity(users.len());
    let mut journal = Vec::new();
    for (i, (u, d)) in users.iter().zip(decisions).enumerate() {
        outcomes.push(match d {
            Decision::NoBackup => RollbackOutcome::NoBackup,
            Decision::Changed => RollbackOutcome::Changed,
            Decision::Go { .. } if u.expires_at_ms == 0 => {
                journal.push((u.legacy_key.clone(), "expired"));
                RollbackOutcome::Expired {
                    deleted: deleted[&i],
                }
            }
            Decision::Go { .. } => {
                journal.push((u.legacy_key.clone(), "restored"));
                RollbackOutcome::Restored {
                    deleted: deleted[&i],
                }
            }
        });
    }
    if !journal.is_empty() {
        let mut c = conn.clone();
        redis::cmd("HSET")
            .arg(journal_key)
            .arg(&journal)
            .query_async::<()>(&mut c)
            .await
            .map_err(crate::error::EngineError::redis("recording the rollback"))?;
    }
    if outcomes.len() != users.len() {
        return Err(unexpected("rollback replies"));
    }
    Ok(outcomes)
}

/// Reads each user's backup and legacy key, deciding what to do, and
/// whether its index exists (so that its removal counts as a deleted key).
async fn read(conn: &RedisConn, users: &[UserRollback]) -> Result<(Vec<Decision>, Vec<bool>)> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for u in users {
        pipe.cmd("GET").arg(&u.backup_key);
        pipe.cmd("GET").arg(&u.legacy_key);
        pipe.cmd("EXISTS").arg(&u.index_key);
    }
    let reads = query(conn, &pipe, "reading backups for the rollback").await?;
    Ok(users
        .iter()
        .zip(reads.chunks_exact(3))
        .map(|(u, r)| {
            let backup: Option<Vec<u8>> = redis::from_redis_value_ref(&r[0]).ok().flatten();
            let legacy = match &r[1] {
                Value::Nil => LegacyState::Absent,
                Value::BulkString(v) => LegacyState::Holds(v.clone()),
                _ => LegacyState::Other,
            };
            let had_index = redis::from_redis_value_ref::<bool>(&r[2]).unwrap_or(false);
            (decide(backup, &legacy, u.force), had_index)
        })
        .collect())
}

/// Restores each legacy key to restore: SET NX, so a writer that recreated
/// the key meanwhile wins (unless forced); its reply says whether it did,
/// and a user it did not restore becomes [`Decision::Changed`].
async fn restore(
    conn: &RedisConn,
    users: &[UserRollback],
    decisions: &mut [Decision],
) -> Result<()> {
    let mut restoring = Vec::new();
    let mut pipe = redis::pipe();
    for (i, (u, d)) in users.iter().zip(decisions.iter()).enumerate() {
        if let Decision::Go {
            restore: Some(value),
        } = d
        {
            if u.expires_at_ms == 0 {
                continue;
            }
            let cmd = pipe.cmd("SET").arg(&u.legacy_key).arg(value);
            if u.expires_at_ms > 0 {
                cmd.arg("PXAT").arg(u.expires_at_ms);
            }
            if !u.force {
                cmd.arg("NX");
            }
            restoring.push(i);
        }
    }
    let replies = query(conn, &pipe, "restoring legacy keys").await?;
    for (i, reply) in restoring.into_iter().zip(replies) {
        if reply == Value::Nil {
            decisions[i] = Decision::Changed;
        }
    }
    Ok(())
}

/// Deletes exactly what the run created for each user going ahead; how
/// many keys went per user (its hashes, and its index if that emptied it).
async fn delete_created(
    conn: &RedisConn,
    users: &[UserRollback],
    decisions: &[Decision],
    had_index: &[bool],
) -> Result<BTreeMap<usize, i64>> {
    let mut pipe = redis::pipe();
    let mut deleting = Vec::new();
    for (i, (u, d)) in users.iter().zip(decisions).enumerate() {
        if !matches!(d, Decision::Go { .. }) {
            continue;
        }
        for h in &u.hashes {
            pipe.del(h);
        }
        if !u.members.is_empty() {
            pipe.cmd("SREM").arg(&u.index_key).arg(&u.members).ignore();
        }
        deleting.push(i);
    }
    let deleted = query(conn, &pipe, "deleting migrated keys").await?;
    let mut deleted = deleted.into_iter();
    let mut counts: BTreeMap<usize, i64> = BTreeMap::new();
    for &i in &deleting {
        let n: i64 = (0..users[i].hashes.len())
            .map(|_| {
                deleted
                    .next()
                    .and_then(|v| redis::from_redis_value::<i64>(v).ok())
                    .unwrap_or(0)
            })
            .sum();
        counts.insert(i, n);
    }
    let mut pipe = redis::pipe();
    for &i in &deleting {
        pipe.cmd("EXISTS").arg(&users[i].index_key);
    }
    let after = query(conn, &pipe, "deleting migrated keys").await?;
    for (&i, exists) in deleting.iter().zip(after) {
        let gone = !redis::from_redis_value::<bool>(exists).unwrap_or(true);
        if had_index[i] && gone {
            *counts.get_mut(&i).expect("counted") += 1;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_key_holding_the_backup_is_an_interrupted_restore() {
        let b = b"[1]".to_vec();
        assert_eq!(
            decide(Some(b.clone()), &LegacyState::Holds(b.clone()), false),
            Decision::Go { restore: None }
        );
        assert_eq!(
            decide(Some(b.clone()), &LegacyState::Absent, false),
            Decision::Go {
                restore: Some(b.clone())
            }
        );
    }

    #[test]
    fn a_rewritten_legacy_key_is_left_alone_unless_forced() {
        let b = b"[1]".to_vec();
        for legacy in [LegacyState::Holds(b"[2]".to_vec()), LegacyState::Other] {
            assert_eq!(decide(Some(b.clone()), &legacy, false), Decision::Changed);
            assert_eq!(
                decide(Some(b.clone()), &legacy, true),
                Decision::Go {
                    restore: Some(b.clone())
                }
            );
        }
        assert_eq!(decide(None, &LegacyState::Absent, true), Decision::NoBackup);
    }
}
