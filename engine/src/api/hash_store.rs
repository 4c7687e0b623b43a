//! Positions in the standard layout: a hash per position at
//! `positions:{user_id}:{exchange}:{instId}:{side}` and an index set of
//! `{instId}:{side}` at `positions:index:{user_id}:{exchange}`.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;

use super::{Position, PositionStore};
use crate::error::{EngineError, Result};
use crate::keys::{LegacyPositionsKey, META_MIGRATED_AT, META_MIGRATED_FROM};
use crate::plan::Side;

pub struct HashStore<C> {
    conn: C,
}

impl<C: ConnectionLike + Clone + Send> HashStore<C> {
    pub fn new(conn: C) -> Self {
        Self { conn }
    }
}

fn to_position(
    inst_id: &str,
    side: Side,
    mut fields: BTreeMap<String, String>,
) -> Option<Position> {
    if fields.is_empty() {
        return None;
    }
    fields.remove(META_MIGRATED_AT);
    fields.remove(META_MIGRATED_FROM);
    Some(Position {
        inst_id: inst_id.to_owned(),
        side,
        fields,
    })
}

fn parse_member(member: &str) -> Option<(&str, Side)> {
    let (inst_id, side) = member.rsplit_once(':')?;
    let side = match side {
        "long" => Side::Long,
        "short" => Side::Short,
        _ => return None,
    };
    Some((inst_id, side))
}

impl<C: ConnectionLike + Clone + Send> PositionStore for HashStore<C> {
    async fn all_positions(&self, user_id: &str, exchange: &str) -> Result<Vec<Position>> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let mut conn = self.conn.clone();
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.index_key())
            .query_async(&mut conn)
            .await
            .map_err(EngineError::redis("reading the position index"))?;
        members.sort();
        let members: Vec<(&str, Side)> = members.iter().filter_map(|m| parse_member(m)).collect();
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (inst_id, side) in &members {
            pipe.hgetall(keys.position_key(&format!("{inst_id}:{}", side.as_str())));
        }
        let hashes: Vec<BTreeMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(EngineError::redis("reading position hashes"))?;
        let out: Vec<Position> = members
            .into_iter()
            .zip(hashes)
            .filter_map(|((inst_id, side), fields)| to_position(inst_id, side, fields))
            .collect();
        Ok(super::sorted(out))
    }

    async fn get_position(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> Result<Option<Position>> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let mut conn = self.conn.clone();
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.position_key(&format!("{inst_id}:{}", side.as_str())))
            .query_async(&mut conn)
            .await
            .map_err(EngineError::redis("reading a position hash"))?;
        Ok(to_position(inst_id, side, fields))
    }
}
