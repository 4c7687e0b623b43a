//! Positions as the legacy layout keeps them: one JSON value per user and
//! exchange at `{exchange}:positions:{user_id}`.
//!
//! Writes read the value, edit it in Rust ([`super::legacy_value`]: shape
//! and unknown fields kept) and store it with a compare-and-set script, so
//! a concurrent writer's update is never lost: when the value changed in
//! between, the write is read, edited and tried again.
//!
//! The `*_unmigrated` writes are the old application's path while a
//! migration runs: they write only a legacy key that still exists while
//! its user has no index set, so a write after the user's migration is
//! refused ([`LegacyWrite::Moved`] / [`LegacyWrite::Absent`]) instead of
//! bringing the legacy key back behind the new layout.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::Script;

use super::codec::get_legacy;
use super::error::{check_id, ApiError, ApiResult};
use super::legacy_value::{edit_value, read_position, read_positions, read_size, Edit};
use super::steps::{index_state, IndexState};
use super::{Position, PositionObject, PositionStore, Topology, Via};
use crate::grid_positions::plan::Side;
use crate::keys::LegacyPositionsKey;

static CAS_LEGACY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/cas_legacy.lua")));

/// Attempts of one write before it gives up as [`ApiError::Contended`]:
/// every failed attempt means another write succeeded, so only a key
/// rewritten this often in a row runs out.
pub const MAX_WRITE_ATTEMPTS: usize = 1000;

pub struct LegacyStore<C> {
    conn: C,
    via: Via,
}

impl<C: ConnectionLike + Clone + Send + Topology> LegacyStore<C> {
    /// The compare-and-set is one key, the same everywhere; only the
    /// index guard of the `*_unmigrated` writes is a step of its own on a
    /// cluster ([`write_legacy`]).
    pub fn new(conn: C) -> Self {
        let via = Via::of(&conn);
        Self { conn, via }
    }
}

impl<C: ConnectionLike + Clone + Send> LegacyStore<C> {
    /// Upsert into the legacy value only while the user is not migrated:
    /// the key exists and the index set `positions:index:{uid}:{exchange}`
    /// does not (checked atomically with the write). Otherwise nothing is
    /// written and the answer says why.
    pub async fn upsert_unmigrated(
        &self,
        user_id: &str,
        exchange: &str,
        position: &PositionObject,
    ) -> ApiResult<LegacyWrite> {
        check_id("user id", user_id)?;
        check_id("exchange", exchange)?;
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let (key, index) = (keys.key(), keys.index_key());
        write_legacy(
            &self.conn,
            self.via,
            &key,
            Some(&index),
            Edit::Upsert(position),
        )
        .await
    }

    /// Remove from the legacy value only while the user is not migrated, as
    /// [`LegacyStore::upsert_unmigrated`]; `Done(false)`: no such position.
    pub async fn remove_unmigrated(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<LegacyWrite> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let (key, index) = (keys.key(), keys.index_key());
        let edit = Edit::Remove { inst_id, side };
        write_legacy(&self.conn, self.via, &key, Some(&index), edit).await
    }
}

/// What one guarded legacy write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyWrite {
    /// Written (`true`), or nothing to change (`false`).
    Done(bool),
    /// The guard (the user's index set) exists (on a cluster: without a
    /// migration's marker): the user has moved to the new layout; nothing
    /// was written.
    Moved,
    /// The key is absent and the caller asked to write only an existing
    /// key; nothing was written.
    Absent,
}

/// Read, edit, compare-and-set until the value did not change in between.
/// With `guard` (dual-read), only an existing key is written, and only
/// while the guard key (the index set) is absent, or (on a cluster) holds
/// a migration's "migrating" marker.
pub(crate) async fn write_legacy<C: ConnectionLike + Clone + Send>(
    conn: &C,
    via: Via,
    key: &str,
    guard: Option<&str>,
    edit: Edit<'_>,
) -> ApiResult<LegacyWrite> {
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let current = get_legacy(conn, key).await?;
        if guard.is_some() && current.is_none() {
            return Ok(LegacyWrite::Absent);
        }
        let Some(next) = edit_value(key, current.as_deref(), edit)? else {
            return Ok(LegacyWrite::Done(false));
        };
        let mut invocation = CAS_LEGACY.key(key);
        let mut c = conn.clone();
        if let Some(g) = guard {
            if via == Via::Steps {
                // The index lives in another slot: checked first, then the
                // single-key compare-and-set (`super::steps` says why a
                // migration in between cannot lose this write). An index
                // holding a cluster migration's marker is not "moved": the
                // legacy key stays the truth until that migration deletes
                // it, and this write then finds it gone.
                if index_state(conn, g).await? == IndexState::Plain {
                    return Ok(LegacyWrite::Moved);
                }
            } else {
                invocation.key(g);
            }
        }
        let reply: String = invocation
            .arg(if current.is_some() { "1" } else { "0" })
            .arg(current.unwrap_or_default())
            .arg(next)
            .invoke_async(&mut c)
            .await
            .map_err(ApiError::redis("writing legacy positions"))?;
        match reply.as_str() {
            "ok" => return Ok(LegacyWrite::Done(true)),
            "moved" => return Ok(LegacyWrite::Moved),
            _ => continue, // changed under us: read again
        }
    }
    Err(ApiError::Contended {
        key: key.to_owned(),
        attempts: MAX_WRITE_ATTEMPTS,
    })
}

impl<C: ConnectionLike + Clone + Send> PositionStore for LegacyStore<C> {
    async fn all_positions(&self, user_id: &str, exchange: &str) -> ApiResult<Vec<Position>> {
        let key = LegacyPositionsKey::new(exchange, user_id).key();
        let value = get_legacy(&self.conn, &key).await?;
        // The application reads what the migration would write, so the same
        // planner decides sides and field text; an unreadable value is an
        // empty position list to a caller, as the deployed code treats it.
        Ok(read_positions(value.as_deref()))
    }

    async fn get_position(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<Option<Position>> {
        let key = LegacyPositionsKey::new(exchange, user_id).key();
        let value = get_legacy(&self.conn, &key).await?;
        Ok(read_position(value.as_deref(), inst_id, side))
    }

    async fn position_size(&self, user_id: &str, exchange: &str, inst_id: &str) -> ApiResult<f64> {
        let key = LegacyPositionsKey::new(exchange, user_id).key();
        let value = get_legacy(&self.conn, &key).await?;
        Ok(read_size(value.as_deref(), inst_id))
    }

    async fn upsert(
        &self,
        user_id: &str,
        exchange: &str,
        position: &PositionObject,
    ) -> ApiResult<()> {
        check_id("user id", user_id)?;
        check_id("exchange", exchange)?;
        let key = LegacyPositionsKey::new(exchange, user_id).key();
        write_legacy(&self.conn, self.via, &key, None, Edit::Upsert(position)).await?;
        Ok(())
    }

    async fn remove(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<bool> {
        let key = LegacyPositionsKey::new(exchange, user_id).key();
        let edit = Edit::Remove { inst_id, side };
        Ok(write_legacy(&self.conn, self.via, &key, None, edit).await? == LegacyWrite::Done(true))
    }
}
