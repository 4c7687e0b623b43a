//! Positions in the standard layout: a hash per position at
//! `positions:{user_id}:{exchange}:{instId}:{side}` and an index set of
//! `{instId}:{side}` at `positions:index:{user_id}:{exchange}`.
//!
//! Every call is one round trip, as cheap as the layout allows: a get is
//! one HGETALL, a size one MULTI/EXEC of two HMGETs (both sides of the
//! symbol, read together), all positions a read-only script (the hash keys
//! come from the index, so no pipeline can name them up front) that
//! answers one JSON text rather than nested arrays (the client decodes
//! RESP element by element, JSON in one pass), writes a
//! script that writes hash and index together. Native commands where they
//! suffice: a script call costs the server more than the command it wraps
//! (measured by `keyshift bench`). The scripts also serve the dual-read
//! store, which passes its legacy key as a fallback and so needs the
//! script's atomic choice for reads too; this store passes none.
//!
//! `get_position` and `position_size` read the position hashes directly;
//! `all_positions` reads those the index names. So an index member whose
//! hash is gone is no position at all (size 0), the guide's
//! troubleshooting case 3, which the gate's `api` invariant reports.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Script, Value};

use super::codec::{decode, parse_member, size_fields, to_position, Read, Want, Written};
use super::error::{check_id, ApiError, ApiResult};
use super::position::{sorted, SIZE_FIELDS};
use super::{net_size, steps, Position, PositionObject, PositionStore, Topology, Via};
use crate::grid_positions::plan::Side;
use crate::keys::LegacyPositionsKey;

static ALL_POSITIONS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/all_positions.lua")));
static READ_HASHES: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/read_hashes.lua")));
static UPSERT_HASH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/upsert_hash.lua")));
static REMOVE_HASH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/remove_hash.lua")));

pub struct HashStore<C> {
    conn: C,
    via: Via,
}

impl<C: ConnectionLike + Clone + Send + Topology> HashStore<C> {
    /// Scripts and MULTI on one server, single-key steps on a cluster
    /// (`super::steps`), chosen here from the connection.
    pub fn new(conn: C) -> Self {
        let via = Via::of(&conn);
        Self { conn, via }
    }
}

type Fields = BTreeMap<String, String>;

/// Splits a script reply `{'new', x}` / `{'legacy', value}`.
fn split<T: redis::FromRedisValue>(reply: (String, Value)) -> ApiResult<Read<T>> {
    match reply.0.as_str() {
        "legacy" => Ok(Read::Legacy(decode(reply.1)?)),
        _ => Ok(Read::New(decode(reply.1)?)),
    }
}

/// The reads and writes of the new layout; `legacy` is the dual-read
/// fallback key, `None` for the hash store.
pub(crate) async fn all_new<C: ConnectionLike + Clone + Send>(
    conn: &C,
    via: Via,
    keys: &LegacyPositionsKey,
    legacy: Option<&str>,
) -> ApiResult<Read<Vec<Position>>> {
    if via == Via::Steps {
        return steps::all_steps(conn, keys, legacy).await;
    }
    let mut invocation = ALL_POSITIONS.key(keys.index_key());
    if let Some(l) = legacy {
        invocation.key(l);
    }
    let mut c = conn.clone();
    let reply: (String, Value) = invocation
        .arg(keys.position_key(""))
        .invoke_async(&mut c)
        .await
        .map_err(ApiError::redis("reading a user's positions"))?;
    let hashes = match split::<Vec<u8>>(reply)? {
        Read::New(json) => decode_hashes(&json).map_err(|e| ApiError::UnreadableHashes {
            index: keys.index_key(),
            detail: e.to_string(),
        })?,
        Read::Legacy(v) => return Ok(Read::Legacy(v)),
    };
    Ok(Read::New(sorted(
        hashes
            .into_iter()
            .filter_map(|(member, fields)| {
                let (inst_id, side) = parse_member(&member)?;
                to_position(inst_id, side, fields)
            })
            .collect(),
    )))
}

/// `all_positions.lua`'s JSON text: `[[member, [field, value, ...]], ...]`.
fn decode_hashes(json: &[u8]) -> serde_json::Result<Vec<(String, Fields)>> {
    let hashes: Vec<(String, Vec<String>)> = serde_json::from_slice(json)?;
    Ok(hashes
        .into_iter()
        .map(|(member, flat)| {
            let mut flat = flat.into_iter();
            let mut fields = Fields::new();
            while let (Some(f), Some(v)) = (flat.next(), flat.next()) {
                fields.insert(f, v);
            }
            (member, fields)
        })
        .collect())
}

/// The hashes of `sides` of one symbol, in that order, present ones only
/// (for [`Want::Size`], with the size fields only).
pub(crate) async fn read_new<C: ConnectionLike + Clone + Send>(
    conn: &C,
    via: Via,
    keys: &LegacyPositionsKey,
    inst_id: &str,
    sides: &[Side],
    want: Want,
    legacy: Option<&str>,
) -> ApiResult<Read<Vec<Position>>> {
    if via == Via::Steps {
        return steps::read_steps(conn, keys, inst_id, sides, want, legacy).await;
    }
    let mut invocation = READ_HASHES.key(keys.index_key());
    for side in sides {
        invocation.key(keys.position_key(&format!("{inst_id}:{}", side.as_str())));
    }
    if let Some(l) = legacy {
        invocation.key(l);
    }
    invocation.arg(sides.len());
    if let Want::Size = want {
        invocation.arg(&SIZE_FIELDS[..]);
    }
    let mut c = conn.clone();
    let reply: (String, Value) = invocation
        .invoke_async(&mut c)
        .await
        .map_err(ApiError::redis("reading position hashes"))?;
    let hashes: Vec<Fields> = match (want, split::<Vec<Value>>(reply)?) {
        (_, Read::Legacy(v)) => return Ok(Read::Legacy(v)),
        (Want::Position, Read::New(hashes)) => {
            hashes.into_iter().map(decode).collect::<ApiResult<_>>()?
        }
        (Want::Size, Read::New(hashes)) => hashes
            .into_iter()
            .map(|h| {
                let values: Vec<Option<String>> = decode(h)?;
                Ok(size_fields(values))
            })
            .collect::<ApiResult<_>>()?,
    };
    Ok(Read::New(
        sides
            .iter()
            .zip(hashes)
            .filter_map(|(side, fields)| to_position(inst_id, *side, fields))
            .collect(),
    ))
}

pub(crate) async fn upsert_new<C: ConnectionLike + Clone + Send>(
    conn: &C,
    via: Via,
    keys: &LegacyPositionsKey,
    position: &PositionObject,
    legacy: Option<&str>,
) -> ApiResult<Written> {
    if via == Via::Steps {
        return steps::upsert_steps(conn, keys, position, legacy).await;
    }
    let member = position.position().index_member();
    let mut invocation = UPSERT_HASH.key(keys.position_key(&member));
    invocation.key(keys.index_key());
    if let Some(l) = legacy {
        invocation.key(l);
    }
    invocation.arg(&member);
    for (field, value) in position.hash_fields() {
        invocation.arg(field).arg(value);
    }
    let mut c = conn.clone();
    let reply: String = invocation
        .invoke_async(&mut c)
        .await
        .map_err(ApiError::redis("writing a position hash and its index"))?;
    Ok(if reply == "legacy" {
        Written::Legacy
    } else {
        Written::New(true)
    })
}

pub(crate) async fn remove_new<C: ConnectionLike + Clone + Send>(
    conn: &C,
    via: Via,
    keys: &LegacyPositionsKey,
    member: &str,
    legacy: Option<&str>,
) -> ApiResult<Written> {
    if via == Via::Steps {
        return steps::remove_steps(conn, keys, member, legacy).await;
    }
    let mut invocation = REMOVE_HASH.key(keys.position_key(member));
    invocation.key(keys.index_key());
    if let Some(l) = legacy {
        invocation.key(l);
    }
    let mut c = conn.clone();
    let reply: String =
        invocation
            .arg(member)
            .invoke_async(&mut c)
            .await
            .map_err(ApiError::redis(
                "removing a position hash and its index member",
            ))?;
    Ok(match reply.as_str() {
        "legacy" => Written::Legacy,
        "removed" => Written::New(true),
        _ => Written::New(false),
    })
}

/// The hash store never passes a fallback, so every read is `New`.
fn new_only<T>(read: Read<T>) -> T {
    match read {
        Read::New(t) => t,
        Read::Legacy(_) => unreachable!("no legacy key was passed"),
    }
}

impl<C: ConnectionLike + Clone + Send> PositionStore for HashStore<C> {
    async fn all_positions(&self, user_id: &str, exchange: &str) -> ApiResult<Vec<Position>> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        Ok(new_only(all_new(&self.conn, self.via, &keys, None).await?))
    }

    async fn get_position(
        &self,
        user_id: &str,
        exchange: &str,
        inst_id: &str,
        side: Side,
    ) -> ApiResult<Option<Position>> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let key = keys.position_key(&format!("{inst_id}:{}", side.as_str()));
        let mut c = self.conn.clone();
        let fields: Fields = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(ApiError::redis("reading a position hash"))?;
        Ok(to_position(inst_id, side, fields))
    }

    async fn position_size(&self, user_id: &str, exchange: &str, inst_id: &str) -> ApiResult<f64> {
        let keys = LegacyPositionsKey::new(exchange, user_id);
        let sides = [Side::Long, Side::Short];
        if self.via == Via::Steps {
            let found = steps::read_sides(&self.conn, &keys, inst_id, &sides, Want::Size).await?;
            return Ok(net_size(&found, inst_id));
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for side in sides {
            pipe.cmd("HMGET")
                .arg(keys.position_key(&format!("{inst_id}:{}", side.as_str())))
                .arg(&SIZE_FIELDS[..]);
        }
        let mut c = self.conn.clone();
        let hashes: Vec<Vec<Option<String>>> = pipe
            .query_async(&mut c)
            .await
            .map_err(ApiError::redis("reading position hashes"))?;
        let found: Vec<Position> = sides
            .into_iter()
            .zip(hashes)
            .filter_map(|(side, values)| to_position(inst_id, side, size_fields(values)))
            .collect();
        Ok(net_size(&found, inst_id))
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
        upsert_new(&self.conn, self.via, &keys, position, None).await?;
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
        let member = format!("{inst_id}:{}", side.as_str());
        Ok(remove_new(&self.conn, self.via, &keys, &member, None).await? == Written::New(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_positions_json_decodes_to_each_members_fields() {
        // As Redis's cjson writes it: `/` escaped, non-ASCII as is.
        let json = r#"[["BTC-USDT:long",["instId","BTC-USDT","note","a\/b \"q\" é","pos","3"]],["ETH:short",["instId","ETH","pos","-1"]]]"#;
        let hashes = decode_hashes(json.as_bytes()).unwrap();
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0].0, "BTC-USDT:long");
        assert_eq!(hashes[0].1["note"], "a/b \"q\" é");
        assert_eq!(hashes[0].1["pos"], "3");
        assert_eq!(hashes[1].1.len(), 2);
        assert!(decode_hashes(b"[]").unwrap().is_empty());
    }

    #[test]
    fn all_positions_json_that_is_not_text_is_an_error() {
        assert!(decode_hashes(b"[[\"A:long\",[\"f\",\"\xff\"]]]").is_err());
        assert!(decode_hashes(b"{}").is_err());
    }
}
