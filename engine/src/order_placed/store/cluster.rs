//! [`OrderPlacedStore`] for a Redis Cluster. A legacy order-placed key and
//! its `orders:` target hash to different slots (the key names carry no
//! hash tag), so the standalone store's one script per key, which re-checks
//! the plan and RENAMEs, cannot run. Each key's step is instead a sequence
//! of single-key commands, every one of which re-checks what it depends on:
//!
//! Move (target absent when planned):
//! 1. `snapshot_if_planned.lua` on the legacy key: DUMP, PTTL and the
//!    server clock, only while it still holds the planned fields.
//! 2. `RESTORE target pttl payload` without REPLACE: creates the target
//!    with the same type, every field and the remaining TTL, and fails
//!    (BUSYKEY) if a target appeared meanwhile: nothing is overwritten.
//! 3. The `moved` outcome goes into the run's outcome hash.
//! 4. `delete_if_planned.lua` on the legacy key (compare-and-delete). If a
//!    writer changed it after step 1, steps 2-3 are undone (the target is
//!    deleted only if it still holds the copy) and the key is planned again.
//!
//! Drop-equal (target equal when planned): the target is read and compared,
//! the `dropped_equal` outcome recorded, then the legacy key
//! compare-and-deleted (the outcome is withdrawn if that refuses).
//!
//! Resume after a kill: the outcome is recorded before the legacy key is
//! deleted, so no deleted key is ever missing from the journal. A kill
//! between 3 and 4 leaves legacy and an equal target with a `moved`
//! outcome; the rerun plans drop-equal, finds that outcome with the same
//! digest and finishes the move (keeping `moved`, so a rollback renames the
//! target back). A kill between 2 and 3 leaves the same pair without an
//! outcome; the rerun records `dropped_equal`, and a rollback then copies
//! the legacy key back but leaves that target (an extra equal `orders:`
//! key, nothing lost).
//!
//! What is not atomic here, unlike on one server: the TTL is carried as
//! remaining milliseconds (RESTORE's relative TTL), so the target's expiry
//! is later than the legacy key's by the round trip between steps 1 and 2;
//! and a drop-equal compares the target one round trip before deleting the
//! legacy key, so a write to the target in that window (the new application
//! writes only targets) is kept but was not compared.
//!
//! Rollback is the mirror: DUMP the target, RESTORE the legacy key (REPLACE
//! only with `force`; an existing legacy key identical to the target is a
//! rollback resumed after a kill and is left as it is), record the key in
//! the rollback journal, then, for a moved key, delete the target only if
//! it still holds the copy.

use std::sync::LazyLock;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::{Script, Value};

use crate::connection::RedisConn;
use crate::error::{EngineError, Result};
use crate::run::journal::{self, OrderPlacedOutcome};

use super::{KeyRollback, KeyWrite, OrderPlacedStore, WriteKind, WriteOutcome};
use crate::order_placed::plan::Fields;

static SNAPSHOT_IF_PLANNED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/snapshot_if_planned.lua")));
static DELETE_IF_PLANNED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/delete_if_planned.lua")));
static DELETE_IF_DUMP: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/delete_if_dump.lua")));
static DUMP_WITH_TTL: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/dump_with_ttl.lua")));

/// Keys worked on at once: each is a few dependent round trips.
const IN_FLIGHT: usize = 32;

#[derive(Clone)]
pub struct ClusterOrderPlaced {
    conn: RedisConn,
}

impl ClusterOrderPlaced {
    /// Wraps a cluster connection from [`crate::connection::connect`].
    pub fn new(conn: RedisConn) -> Self {
        Self { conn }
    }

    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    async fn apply_one(&self, outcomes_key: &str, w: &KeyWrite) -> Result<WriteOutcome> {
        match w.kind {
            WriteKind::Move => self.move_one(outcomes_key, w).await,
            WriteKind::DropEqual => self.drop_one(outcomes_key, w).await,
        }
    }

    async fn move_one(&self, outcomes_key: &str, w: &KeyWrite) -> Result<WriteOutcome> {
        let Some(snap) = self.snapshot(w).await? else {
            return Ok(WriteOutcome::Changed);
        };
        let mut c = self.conn.clone();
        let restored = redis::cmd("RESTORE")
            .arg(&w.target_key)
            .arg(snap.pttl.max(0))
            .arg(&snap.payload)
            .query_async::<()>(&mut c)
            .await;
        match restored {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYKEY") => return Ok(WriteOutcome::Changed),
            Err(e) => return Err(EngineError::redis("creating an order-placed target")(e)),
        }
        let outcome = OrderPlacedOutcome::Moved {
            fields: w.expected.len(),
            digest: w.digest.clone(),
            pttl: snap.pttl,
            at: snap.at,
        };
        self.record(outcomes_key, &w.legacy_key, &outcome).await?;
        if self.delete_if_planned(&w.legacy_key, &w.expected).await? {
            return Ok(WriteOutcome::Moved { pttl_ms: snap.pttl });
        }
        // A writer changed the legacy key after the copy: withdraw the copy
        // and the outcome, and let the runner plan the key again.
        self.unrecord(outcomes_key, &w.legacy_key).await?;
        self.delete_if_planned(&w.target_key, &w.expected).await?;
        Ok(WriteOutcome::Changed)
    }

    async fn drop_one(&self, outcomes_key: &str, w: &KeyWrite) -> Result<WriteOutcome> {
        if let Some(OrderPlacedOutcome::Moved { digest, pttl, .. }) =
            self.outcome(outcomes_key, &w.legacy_key).await?
        {
            if digest == w.digest {
                // A move killed after its target and outcome were written:
                // finish it as the move it was.
                return Ok(
                    if self.delete_if_planned(&w.legacy_key, &w.expected).await? {
                        WriteOutcome::Moved { pttl_ms: pttl }
                    } else {
                        WriteOutcome::Changed
                    },
                );
            }
        }
        let mut c = self.conn.clone();
        let mut target: Fields = match redis::cmd("HGETALL")
            .arg(&w.target_key)
            .query_async(&mut c)
            .await
        {
            Ok(fields) => fields,
            // Turned into another type since the plan: plan again.
            Err(e) if e.code() == Some("WRONGTYPE") => return Ok(WriteOutcome::Changed),
            Err(e) => return Err(EngineError::redis("reading an order-placed target")(e)),
        };
        // `expected` is sorted by field (`KeyRead::hash`).
        target.sort();
        if target != w.expected {
            return Ok(WriteOutcome::Changed);
        }
        let Some(snap) = self.snapshot(w).await? else {
            return Ok(WriteOutcome::Changed);
        };
        let outcome = OrderPlacedOutcome::DroppedEqual {
            fields: w.expected.len(),
            digest: w.digest.clone(),
            pttl: snap.pttl,
            at: snap.at,
        };
        self.record(outcomes_key, &w.legacy_key, &outcome).await?;
        if self.delete_if_planned(&w.legacy_key, &w.expected).await? {
            return Ok(WriteOutcome::Dropped);
        }
        self.unrecord(outcomes_key, &w.legacy_key).await?;
        Ok(WriteOutcome::Changed)
    }

    /// Step 1: the legacy key's copy, if it still holds the plan's fields.
    async fn snapshot(&self, w: &KeyWrite) -> Result<Option<Snapshot>> {
        let mut invocation = SNAPSHOT_IF_PLANNED.key(&w.legacy_key);
        planned_args(&mut invocation, &w.expected);
        let mut c = self.conn.clone();
        let reply: Vec<Value> = invocation
            .invoke_async(&mut c)
            .await
            .map_err(EngineError::redis("copying a legacy order-placed hash"))?;
        match reply.as_slice() {
            [Value::BulkString(state), Value::BulkString(payload), Value::Int(pttl), Value::Int(at)]
                if state == b"ok" =>
            {
                Ok(Some(Snapshot {
                    payload: payload.clone(),
                    pttl: *pttl,
                    at: *at,
                }))
            }
            [Value::BulkString(state)] if state == b"changed" => Ok(None),
            _ => Err(bad_reply("the order-placed snapshot script", &reply)),
        }
    }

    async fn delete_if_planned(&self, key: &str, expected: &Fields) -> Result<bool> {
        let mut invocation = DELETE_IF_PLANNED.key(key);
        planned_args(&mut invocation, expected);
        let mut c = self.conn.clone();
        let deleted: i64 = invocation
            .invoke_async(&mut c)
            .await
            .map_err(EngineError::redis("deleting an order-placed key"))?;
        Ok(deleted == 1)
    }

    async fn record(&self, outcomes_key: &str, legacy: &str, o: &OrderPlacedOutcome) -> Result<()> {
        let json = serde_json::to_string(o).expect("outcome serialises");
        journal::record_outcomes(&self.conn, outcomes_key, &[(legacy.to_owned(), json)]).await
    }

    async fn unrecord(&self, outcomes_key: &str, legacy: &str) -> Result<()> {
        let mut c = self.conn.clone();
        redis::cmd("HDEL")
            .arg(outcomes_key)
            .arg(legacy)
            .query_async::<()>(&mut c)
            .await
            .map_err(EngineError::redis(
                "withdrawing an outcome from the journal",
            ))
    }

    async fn outcome(
        &self,
        outcomes_key: &str,
        legacy: &str,
    ) -> Result<Option<OrderPlacedOutcome>> {
        let mut c = self.conn.clone();
        let json: Option<String> = redis::cmd("HGET")
            .arg(outcomes_key)
            .arg(legacy)
            .query_async(&mut c)
            .await
            .map_err(EngineError::redis("reading the journal"))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    async fn rollback_one(&self, journal_key: &str, k: &KeyRollback) -> Result<String> {
        let mut c = self.conn.clone();
        let target: Option<(Vec<u8>, i64)> = DUMP_WITH_TTL
            .key(&k.target_key)
            .invoke_async(&mut c)
            .await
            .map_err(EngineError::redis("copying an order-placed target"))?;
        let legacy: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(&k.legacy_key)
            .query_async(&mut c)
            .await
            .map_err(EngineError::redis("reading a legacy order-placed key"))?;
        let Some((payload, target_expires_at)) = target else {
            return Ok(if legacy.is_some() && !k.force {
                "changed"
            } else {
                "no_target"
            }
            .to_owned());
        };
        // Identical to the target: this rollback's own copy, made before a
        // kill; anything else is a legacy key written since the migration.
        let resumed = legacy.as_deref() == Some(payload.as_slice());
        if legacy.is_some() && !resumed && !k.force {
            return Ok("changed".to_owned());
        }
        // Absolute, as on one server: the restored key expires when the
        // legacy key would have, not a round trip later.
        let expires_at = if k.moved {
            target_expires_at
        } else {
            k.expires_at_ms
        };
        let state = if !k.moved && expires_at == 0 {
            "expired"
        } else {
            if !resumed {
                let mut restore = redis::cmd("RESTORE");
                restore
                    .arg(&k.legacy_key)
                    .arg(expires_at.max(0))
                    .arg(&payload);
                if expires_at > 0 {
                    restore.arg("ABSTTL");
                }
                if k.force {
                    restore.arg("REPLACE");
                }
                match restore.query_async::<()>(&mut c).await {
                    Ok(()) => {}
                    Err(e) if e.code() == Some("BUSYKEY") => return Ok("changed".to_owned()),
                    Err(e) => return Err(EngineError::redis("restoring a legacy key")(e)),
                }
            }
            "restored"
        };
        redis::cmd("HSET")
            .arg(journal_key)
            .arg(&k.legacy_key)
            .arg(state)
            .query_async::<()>(&mut c)
            .await
            .map_err(EngineError::redis("recording a rollback in the journal"))?;
        if k.moved {
            // Renamed back on one server; here the target goes only if it
            // still holds what was copied.
            DELETE_IF_DUMP
                .key(&k.target_key)
                .arg(&payload)
                .invoke_async::<i64>(&mut c)
                .await
                .map_err(EngineError::redis("deleting a rolled-back target"))?;
        }
        Ok(state.to_owned())
    }
}

struct Snapshot {
    payload: Vec<u8>,
    pttl: i64,
    at: i64,
}

fn planned_args(invocation: &mut redis::ScriptInvocation<'_>, expected: &Fields) {
    invocation.arg(expected.len());
    for (f, v) in expected {
        invocation.arg(f).arg(v);
    }
}

fn bad_reply(what: &'static str, reply: &[Value]) -> EngineError {
    EngineError::unexpected_reply(what, format!("{reply:?}"))
}

impl OrderPlacedStore for ClusterOrderPlaced {
    fn journal_conn(&self) -> &RedisConn {
        &self.conn
    }

    async fn rollback_keys(&self, journal_key: &str, keys: &[KeyRollback]) -> Result<Vec<String>> {
        stream::iter(keys)
            .map(|k| self.rollback_one(journal_key, k))
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn apply(&self, outcomes_key: &str, writes: &[KeyWrite]) -> Result<Vec<WriteOutcome>> {
        stream::iter(writes)
            .map(|w| self.apply_one(outcomes_key, w))
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }
}
