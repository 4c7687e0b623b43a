//! The store deployed during the transition (DESIGN §3): index first,
//! legacy fallback.
//!
//! Reads: while the user's index set `positions:index:{uid}:{exchange}`
//! exists, every answer comes from the new layout exactly as
//! [`super::HashStore`] gives it; otherwise from the legacy key exactly as
//! [`super::LegacyStore`] gives it. The choice and the read are one script,
//! so a migration running in between cannot split an answer. When both
//! exist (a legacy key written after the user migrated), the index wins and
//! the legacy key is invisible; the next migration run reports it as a
//! conflict.
//!
//! Writes go where reads come from, so a reader always sees its writes:
//! a user with a legacy key and no index (not migrated yet) is written in
//! the legacy layout, which the migration then moves; everyone else (a
//! migrated user, a user whose last position was removed, a new user) in
//! the new layout. Writing the new layout for a user not yet migrated would
//! create the index and hide every legacy position of that user from this
//! very store. Each write re-checks the route atomically (the scripts'
//! guard keys) and follows it if a migration moved the user in between.
//!
//! On a Redis Cluster (`super::steps`) the choice and the read are
//! separate single-key steps, and an index set may hold a cluster
//! migration's "migrating" marker: such an index routes to the legacy key
//! while that exists and to the new layout once the migration has deleted
//! it; marker members are never read as positions.

use redis::aio::ConnectionLike;

use super::codec::{Read, Want, Written};
use super::error::{check_id, ApiError, ApiResult};
use super::hash_store::{all_new, read_new, remove_new, upsert_new};
use super::legacy_store::{write_legacy, LegacyWrite, MAX_WRITE_ATTEMPTS};
use super::legacy_value::{read_position, read_positions, read_size, Edit};
use super::{net_size, Position, PositionObject, PositionStore, Topology, Via};
use crate::grid_positions::plan::Side;
use crate::keys::LegacyPositionsKey;

pub struct DualReadStore<C> {
    conn: C,
    via: Via,
}

impl<C: ConnectionLike + Clone + Send + Topology> DualReadStore<C> {
    /// Scripts on one server, single-key steps on a cluster (`super::steps`
    /// says what a reader can see between them), chosen here.
    pub fn new(conn: C) -> Self {
        let via = Via::of(&conn);
        Self { conn, via }
    }
}

impl<C: ConnectionLike + Clone + Send> DualReadStore<C> {
    /// Upsert or remove along the route; `true` when something changed
    /// (remove: a position was there).
    async fn write(&self, keys: &LegacyPositionsKey, edit: Edit<'_>) -> ApiResult<bool> {
        let (legacy, index) = (keys.key(), keys.index_key());
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let written = match edit {
                Edit::Upsert(p) => upsert_new(&self.conn, self.via, keys, p, Some(&legacy)).await?,
                Edit::Remove { inst_id, side } => {
                    let member = format!("{inst_id}:{}", side.as_str());
                    remove_new(&self.conn, self.via, keys, &member, Some(&legacy)).await?
                }
            };
            match written {
                Written::New(changed) => return Ok(changed),
                Written::Legacy => {}
            }
            match write_legacy(&self.conn, self.via, &legacy, Some(&index), edit).await? {
                LegacyWrite::Done(changed) => return Ok(changed),
                // Migrated, or the legacy key deleted, in between: route again.
                LegacyWrite::Moved | LegacyWrite::Absent => {}
            }
        }
        Err(ApiError::Contended {
            key: legacy,
            attempts: MAX_WRITE_ATTEMPTS,
        })
    }
}

impl<C: ConnectionLike + Clone + Send> PositionStore for DualReadStore<C> {
    async fn all_positions(&self, user_id: &str, exchange: &str) -> ApiResult<Vec<Position>> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        Ok(
            match all_new(&self.conn, self.via, &keys, Some(&keys.key())).await? {
                Read::New(positions) => positions,
                Read::Legacy(value) => read_positions(value.as_deref()),
            },
        )
    }

    async fn get_position(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<Option<Position>> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let (legacy, want) = (keys.key(), Want::Position);
        let read = read_new(
            &self.conn,
            self.via,
            &keys,
            inst_id,
            &[side],
            want,
            Some(&legacy),
        )
        .await?;
        Ok(match read {
            Read::New(mut found) => found.pop(),
            Read::Legacy(value) => read_position(value.as_deref(), inst_id, side),
        })
    }

    async fn position_size(&self, user_id: &str, exchange: &str, inst_id: &str) -> ApiResult<f64> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let (legacy, want, sides) = (keys.key(), Want::Size, [Side::Long, Side::Short]);
        let read = read_new(
            &self.conn,
            self.via,
            &keys,
            inst_id,
            &sides,
            want,
            Some(&legacy),
        )
        .await?;
        Ok(match read {
            Read::New(found) => net_size(&found, inst_id),
            Read::Legacy(value) => read_size(value.as_deref(), inst_id),
        })
    }

    async fn upsert(
        &self,
        user_id: &str,
        exchange: &str,
        position: &PositionObject,
    ) -> ApiResult<()> {
        check_id("user id", user_id)?;
        check_id("exchange", exchange)?;
        let keys = LegacyPositionsKey::new(exchange, user_id);
        self.write(&keys, Edit::Upsert(position)).await?;
        Ok(())
    }

    async fn remove(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<bool> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        self.write(&keys, Edit::Remove { inst_id, side }).await
    }
}
