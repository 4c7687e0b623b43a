//! Which engines the gate drives. The gate checks invariants on whatever
//! stores it is handed, so the production engines and deliberately broken
//! ones (the keyshift-mutants crate) run through the very same pipeline:
//! the verifier is tested by the engines it must catch.

use keyshift_engine::connection::RedisConn;
use keyshift_engine::error::Result;
use keyshift_engine::grid_positions::plan::{plan_value, Planner};
use keyshift_engine::grid_positions::store::cluster::GridStore;
use keyshift_engine::grid_positions::store::GridPositionsStore;
use keyshift_engine::order_placed::plan::{plan_key, KeyPlanner};
use keyshift_engine::order_placed::store::OrderPlacedStore;
use keyshift_engine::order_placed::AnyOrderPlaced;

/// The stores of one gate run: Phase 2 (grid-positions, migrate and
/// rollback) and Phase 1 (order-placed). Each is opened on the gate's
/// seeded server; `conn` is the gate's own connection to it. The runners
/// plan with the shipped planners unless an engine set names others: a
/// bug inside the plan cannot be reached from a store.
#[allow(async_fn_in_trait)]
pub trait Engines {
    type Grid: GridPositionsStore;
    type OrderPlaced: OrderPlacedStore;

    async fn grid(&self, url: &str, conn: &RedisConn) -> Result<Self::Grid>;
    async fn order_placed(&self, url: &str, conn: &RedisConn) -> Result<Self::OrderPlaced>;

    /// What Phase 2's runner plans each legacy value with.
    fn grid_planner(&self) -> Planner {
        plan_value
    }

    /// What Phase 1's runner plans each legacy key with.
    fn order_placed_planner(&self) -> KeyPlanner {
        plan_key
    }
}

/// What `keyshift gate` runs: the engines that ship.
#[derive(Debug, Clone, Copy, Default)]
pub struct Production;

impl Engines for Production {
    type Grid = GridStore;
    type OrderPlaced = AnyOrderPlaced;

    async fn grid(&self, url: &str, conn: &RedisConn) -> Result<GridStore> {
        GridStore::open(url, conn.clone()).await
    }

    async fn order_placed(&self, _url: &str, conn: &RedisConn) -> Result<AnyOrderPlaced> {
        AnyOrderPlaced::open(conn.clone()).await
    }
}
