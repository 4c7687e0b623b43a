//! The application's data layer (DESIGN §3), modelled so the harness can
//! prove callers see the same answers before and after a migration.
//!
//! - `position`: what callers read ([`Position`]) and write
//!   ([`PositionObject`]), and the signed net size; pure.
//! - [`PositionStore`]: grid positions, one trait and three stores:
//!   [`LegacyStore`] (`{exchange}:positions:{uid}` JSON), [`HashStore`]
//!   (hash per position + index set), [`DualReadStore`] (index first,
//!   legacy fallback; its module says where its writes go).
//!   `legacy_value` holds the pure edits of a legacy value.
//! - `cache`: the trading cache (`position:{uid}:{exchange}:{symbol}:{side}`).
//! - `order_placed`: the grid order-placed flags, standard and legacy keys.
//! - `error`: [`ApiError`].
//!
//! Upsert semantics, the same in every store: a position is filed under
//! the (instId, side) the migration gives it and replaces whatever was
//! there whole (every field the caller passes is kept, known or not; a
//! field it leaves out is gone, as in a legacy value). It keeps the
//! position's TTL; a new one takes its user's (the legacy value's, or the
//! index set's). Removing the last position leaves an empty legacy value
//! (`[]` / `{}`, TTL kept) and, in the new layout, no hash and no index.
//!
//! The scripts read keys named by the index and write several keys of one
//! user at once: a standalone server, as the standalone migration store.
//! On a Redis Cluster a user's keys span slots, so each store, when built
//! on a cluster connection ([`Topology`]), runs the same operations as
//! ordered single-key steps instead (`steps`: the order, and what stops
//! being atomic). Single-key scripts (the legacy compare-and-set, the
//! order-placed reset) and the trading cache run unchanged on both.

mod cache;
mod codec;
mod dual_read;
mod error;
mod hash_store;
mod legacy_store;
mod legacy_value;
mod order_placed;
mod position;
mod steps;

pub use cache::{cache_key, TradingCache, DEFAULT_CACHE_EXCHANGE, POSITION_CACHE_TTL_SECS};
pub use dual_read::DualReadStore;
pub use error::{ApiError, ApiResult};
pub use hash_store::HashStore;
pub use legacy_store::{LegacyStore, LegacyWrite, MAX_WRITE_ATTEMPTS};
pub use order_placed::{FlagsLayout, OrderPlacedFlags};
pub use position::{net_size, Position, PositionObject};

use crate::connection::RedisConn;
use crate::grid_positions::plan::Side;

/// Whether a connection reaches a Redis Cluster: the one fact the stores
/// need to pick their variant, read once in their constructors.
pub trait Topology {
    fn is_cluster(&self) -> bool;
}

impl Topology for RedisConn {
    fn is_cluster(&self) -> bool {
        RedisConn::is_cluster(self)
    }
}

impl Topology for redis::aio::MultiplexedConnection {
    fn is_cluster(&self) -> bool {
        false
    }
}

/// How a store reaches the new layout: multi-key scripts and MULTI (one
/// server), or single-key steps (a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Scripts,
    Steps,
}

impl Via {
    pub(crate) fn of<C: Topology>(conn: &C) -> Self {
        if conn.is_cluster() {
            Via::Steps
        } else {
            Via::Scripts
        }
    }
}

/// The read and write operations of DESIGN §3 for grid positions.
#[allow(async_fn_in_trait)]
pub trait PositionStore {
    /// Every position of a user on an exchange, sorted by (instId, side).
    async fn all_positions(&self, user_id: &str, exchange: &str) -> ApiResult<Vec<Position>>;
    /// One position, if present.
    async fn get_position(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<Option<Position>>;
    /// Signed net size of a symbol: long +|pos|, short -|pos|, net as stored.
    async fn position_size(&self, user_id: &str, exchange: &str, inst_id: &str) -> ApiResult<f64> {
        Ok(net_size(
            &self.all_positions(user_id, exchange).await?,
            inst_id,
        ))
    }
    /// Writes one position at its (instId, side), replacing one there.
    async fn upsert(
        &self,
        user_id: &str,
        exchange: &str,
        position: &PositionObject,
    ) -> ApiResult<()>;
    /// Removes the position at (instId, side); `true` when there was one.
    async fn remove(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<bool>;
}
