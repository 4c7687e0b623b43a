//! What the stores and the cluster steps share below the
//! [`super::PositionStore`] trait: how a read or write of the new layout
//! answers ([`Read`], [`Written`], [`Want`]), how hash replies and index
//! members decode, and the one GET of a legacy value. A leaf of `api`: it
//! imports no store, so the stores and `steps` can all import it.

use std::collections::BTreeMap;

use redis::aio::ConnectionLike;
use redis::Value;

use super::error::{ApiError, ApiResult};
use super::position::SIZE_FIELDS;
use super::Position;
use crate::grid_positions::plan::Side;
use crate::keys::{META_MIGRATED_AT, META_MIGRATED_FROM};

pub(crate) type Fields = BTreeMap<String, String>;

/// A read of the new layout, or (dual-read, index absent) of the legacy key.
pub(crate) enum Read<T> {
    New(T),
    Legacy(Option<Vec<u8>>),
}

/// A write of the new layout, or (dual-read) a redirect to the legacy key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Done; `true` when a position was there before (remove) or written (upsert).
    New(bool),
    /// The user is not migrated (legacy key present, index absent).
    Legacy,
}

pub(crate) fn to_position(inst_id: &str, side: Side, mut fields: Fields) -> Option<Position> {
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

pub(crate) fn parse_member(member: &str) -> Option<(&str, Side)> {
    let (inst_id, side) = member.rsplit_once(':')?;
    let side = match side {
        "long" => Side::Long,
        "short" => Side::Short,
        _ => return None,
    };
    Some((inst_id, side))
}

pub(crate) fn decode<T: redis::FromRedisValue>(v: Value) -> ApiResult<T> {
    redis::from_redis_value(v).map_err(|e| ApiError::redis("decoding a position read")(e.into()))
}

/// What a read of position hashes asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want {
    /// Every field: a get.
    Position,
    /// `pos` and `posSide` only: all a size needs.
    Size,
}

/// An HMGET of [`SIZE_FIELDS`] as fields. A hash that holds neither field
/// reads as absent: it adds nothing to a size either way.
pub(crate) fn size_fields(values: Vec<Option<String>>) -> Fields {
    SIZE_FIELDS
        .iter()
        .zip(values)
        .filter_map(|(name, v)| Some(((*name).to_owned(), v?)))
        .collect()
}

/// One GET of a legacy positions key.
pub(crate) async fn get_legacy<C: ConnectionLike + Clone + Send>(
    conn: &C,
    key: &str,
) -> ApiResult<Option<Vec<u8>>> {
    let mut conn = conn.clone();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .map_err(ApiError::redis("reading legacy positions"))
}
