//! Positions as the legacy layout keeps them: one JSON value per user and
//! exchange at `{exchange}:positions:{user_id}`.

use redis::aio::ConnectionLike;

use super::{Position, PositionStore};
use crate::error::{EngineError, Result};
use crate::keys::LegacyPositionsKey;
use crate::plan::{plan_value, PlanOptions, Side, UserPlan};

pub struct LegacyStore<C> {
    conn: C,
}

impl<C: ConnectionLike + Clone + Send> LegacyStore<C> {
    pub fn new(conn: C) -> Self {
        Self { conn }
    }
}

impl<C: ConnectionLike + Clone + Send> PositionStore for LegacyStore<C> {
    async fn all_positions(&self, user_id: &str, exchange: &str) -> Result<Vec<Position>> {
        let key = LegacyPositionsKey::new(exchange, user_id).key();
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(EngineError::redis("reading legacy positions"))?;
        let Some(value) = value else {
            return Ok(Vec::new());
        };
        // The application reads what the migration would write, so the same
        // planner decides sides and field text; an unreadable value is an
        // empty position list to a caller, as the deployed code treats it.
        let out: Vec<Position> = match plan_value(&value, PlanOptions::default()) {
            UserPlan::Migrate(plan) => plan
                .positions
                .into_iter()
                .map(|p| Position {
                    inst_id: p.inst_id,
                    side: p.side,
                    fields: p.fields.into_iter().collect(),
                })
                .collect(),
            UserPlan::Quarantine { .. } => Vec::new(),
        };
        Ok(super::sorted(out))
    }

    async fn get_position(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> Result<Option<Position>> {
        Ok(self
            .all_positions(user_id, exchange)
            .await?
            .into_iter()
            .find(|p| p.inst_id == inst_id && p.side == side))
    }
}
