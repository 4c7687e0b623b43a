//! Rollback by glob, the way three of the mutants do it: restore the legacy
//! key from its backup, then delete whatever a SCAN pattern built from the
//! user id finds, instead of exactly the keys the run created.

use keyshift_engine::connection::RedisConn;
use keyshift_engine::error::{EngineError, Result};
use keyshift_engine::grid_positions::store::{RollbackOutcome, UserRollback};
use keyshift_engine::keys::{parse_index_key, DEFAULT_EXCHANGES};

use crate::catalogue::GlobRollback;

const DURING: &str = "rolling back by glob";

pub async fn rollback_users(
    conn: &RedisConn,
    how: GlobRollback,
    journal_key: &str,
    users: &[UserRollback],
) -> Result<Vec<RollbackOutcome>> {
    let mut c = conn.clone();
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let backup: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&u.backup_key)
            .query_async(&mut c)
            .await
            .map_err(EngineError::redis(DURING))?;
        let Some(backup) = backup else {
            out.push(RollbackOutcome::NoBackup);
            continue;
        };
        let Some((user_id, exchange)) = parse_index_key(&u.index_key, &DEFAULT_EXCHANGES) else {
            out.push(RollbackOutcome::NoBackup);
            continue;
        };
        let mut doomed = scan_all(conn, &how.pattern(&user_id, &exchange)).await?;
        if how.delete_index {
            doomed.push(u.index_key.clone());
        }
        let mut pipe = redis::pipe();
        match u.expires_at_ms {
            0 => {}
            t if t > 0 => {
                pipe.cmd("SET")
                    .arg(&u.legacy_key)
                    .arg(&backup)
                    .arg("PXAT")
                    .arg(t);
            }
            _ => {
                pipe.cmd("SET").arg(&u.legacy_key).arg(&backup);
            }
        }
        let deleted = doomed.len() as i64;
        if !doomed.is_empty() {
            pipe.del(&doomed);
        }
        let state = if u.expires_at_ms == 0 {
            "expired"
        } else {
            "restored"
        };
        pipe.hset(journal_key, &u.legacy_key, state);
        pipe.query_async::<()>(&mut c)
            .await
            .map_err(EngineError::redis(DURING))?;
        out.push(if u.expires_at_ms == 0 {
            RollbackOutcome::Expired { deleted }
        } else {
            RollbackOutcome::Restored { deleted }
        });
    }
    Ok(out)
}

/// Every key matching `pattern`, by SCAN.
async fn scan_all(conn: &RedisConn, pattern: &str) -> Result<Vec<String>> {
    let mut c = conn.clone();
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .map_err(EngineError::redis(DURING))?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return Ok(keys);
        }
    }
}
