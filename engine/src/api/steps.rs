//! The new-layout reads and writes on a Redis Cluster, where a user's keys
//! (legacy value, index set, one hash per position) hash to different slots
//! and no script or MULTI may name two of them. Each operation becomes
//! single-key commands in an order chosen so that what a concurrent reader
//! can see in between is, where possible, an answer it could also have got
//! before or after the write:
//!
//! - upsert: the hash first (one single-key script: replace whole, keep its
//!   TTL, or take the index's read just before), then the index member. A
//!   reader that lists the index never meets a member without its hash.
//! - remove: the index member first, then the hash. `all_positions` stops
//!   listing the position at once; until the hash goes (the next round
//!   trip) a `get_position` of exactly that position still finds it.
//! - dual-read route (index absent and legacy key present: legacy): index
//!   first, then the legacy key, and when that is gone too the index once
//!   more. The migration writes the index before it deletes the legacy key,
//!   so a user moving in between is read from one layout or the other,
//!   never as "no positions".
//! - guarded legacy write (dual-read, `*_unmigrated`): the index is checked,
//!   then the legacy value is written by the single-key compare-and-set. If
//!   the migration moves the user in between, its compare-and-delete of the
//!   legacy key sees the value changed and the migration reads it again; if
//!   it deleted the key first, the compare-and-set finds it gone and the
//!   write is routed again.
//! - dual-read write while both the index and the legacy key exist (a user
//!   between the cluster migration's index step and its compare-and-delete
//!   of the legacy key, or a stray legacy key): the same edit goes first
//!   into the legacy key by compare-and-set if it still exists
//!   (`mirror_legacy`), then the new layout is written as on one server.
//!   The cluster migration keeps the legacy key as the truth until its last
//!   step and redoes a user whose legacy key changed, rewriting the new
//!   layout from it, so an acknowledged write must be there too; legacy
//!   first, because a redo that read the legacy key before this edit then
//!   fails its compare-and-delete and reads again, while one that already
//!   deleted the key leaves the new-layout write standing. It costs a GET
//!   per new-layout write. For a stray legacy key this edits a key the
//!   standalone store would leave alone (invisible to reads either way).
//!
//! What stops being atomic on a cluster, honestly: an upsert or remove is
//! two steps, so a client killed between them leaves a hash without its
//! index member (upsert: invisible to `all_positions`, found by a get) or
//! the reverse (remove: a member whose hash is gone, which reads as no
//! position and which the gate's `api` invariant reports); the next write
//! of that position repairs either. A size reads the long and short hashes
//! in one pipeline, not one transaction, so a write between the two reads
//! can make a size mix before and after. The standalone stores keep their
//! scripts and MULTI; these steps run only on a cluster connection.
//!
//! Known residual race (with the cluster migration's redo, not in these
//! steps alone): if a redo's compare-and-delete fails and its undo deletes
//! the index between this store's legacy edit and its SADD, the SADD makes
//! an index of one member while the legacy key still holds the user, and
//! the next attempt reports that user as a conflict (the legacy key keeps
//! every write; reads see the one-member index until it is resolved).
//! `dual_read_writes_through_a_cluster_migration_are_all_read_back`
//! exercises writers through a migration.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Script, Value};

use super::error::{ApiError, ApiResult};
use super::hash_store::{decode, parse_member, size_fields, to_position, Read, Want, Written};
use super::legacy_store::mirror_legacy;
use super::legacy_value::Edit;
use super::position::{sorted, SIZE_FIELDS};
use super::{Position, PositionObject};
use crate::keys::LegacyPositionsKey;
use crate::plan::Side;

static REPLACE_HASH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/replace_hash.lua")));

type Fields = BTreeMap<String, String>;

async fn exists<C: ConnectionLike + Clone + Send>(conn: &C, key: &str) -> ApiResult<bool> {
    let mut c = conn.clone();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("checking a user's index set"))
}

async fn get<C: ConnectionLike + Clone + Send>(conn: &C, key: &str) -> ApiResult<Option<Vec<u8>>> {
    let mut c = conn.clone();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("reading legacy positions"))
}

/// Dual-read route: `Some(value)` when the user reads from the legacy key
/// (index absent), `None` when from the new layout. The index is looked at
/// again when the legacy key is absent too, so a migration finishing in
/// between routes to the new layout instead of to "nothing".
async fn legacy_route<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    legacy: &str,
) -> ApiResult<Option<Option<Vec<u8>>>> {
    let index = keys.index_key();
    if exists(conn, &index).await? {
        return Ok(None);
    }
    let value = get(conn, legacy).await?;
    if value.is_none() && exists(conn, &index).await? {
        return Ok(None);
    }
    Ok(Some(value))
}

/// [`super::hash_store::all_new`] on a cluster: the index, then its hashes
/// in one pipeline (split per node by the cluster connection).
pub(crate) async fn all_steps<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    legacy: Option<&str>,
) -> ApiResult<Read<Vec<Position>>> {
    if let Some(l) = legacy {
        if let Some(value) = legacy_route(conn, keys, l).await? {
            return Ok(Read::Legacy(value));
        }
    }
    let mut c = conn.clone();
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.index_key())
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("reading a user's index set"))?;
    if members.is_empty() {
        return Ok(Read::New(Vec::new()));
    }
    let mut pipe = redis::pipe();
    for m in &members {
        pipe.hgetall(keys.position_key(m));
    }
    let hashes: Vec<Fields> = pipe
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("reading a user's positions"))?;
    Ok(Read::New(sorted(
        members
            .iter()
            .zip(hashes)
            .filter_map(|(member, fields)| {
                let (inst_id, side) = parse_member(member)?;
                to_position(inst_id, side, fields)
            })
            .collect(),
    )))
}

/// [`super::hash_store::read_new`] on a cluster.
pub(crate) async fn read_steps<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    inst_id: &str,
    sides: &[Side],
    want: Want,
    legacy: Option<&str>,
) -> ApiResult<Read<Vec<Position>>> {
    if let Some(l) = legacy {
        if let Some(value) = legacy_route(conn, keys, l).await? {
            return Ok(Read::Legacy(value));
        }
    }
    Ok(Read::New(
        read_sides(conn, keys, inst_id, sides, want).await?,
    ))
}

/// The hashes of `sides` of one symbol in one non-transactional pipeline,
/// present ones only.
pub(crate) async fn read_sides<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    inst_id: &str,
    sides: &[Side],
    want: Want,
) -> ApiResult<Vec<Position>> {
    let mut pipe = redis::pipe();
    for side in sides {
        let key = keys.position_key(&format!("{inst_id}:{}", side.as_str()));
        match want {
            Want::Position => pipe.hgetall(key),
            Want::Size => pipe.cmd("HMGET").arg(key).arg(&SIZE_FIELDS[..]),
        };
    }
    let mut c = conn.clone();
    let replies: Vec<Value> = pipe
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("reading position hashes"))?;
    let mut found = Vec::new();
    for (side, reply) in sides.iter().zip(replies) {
        let fields: Fields = match want {
            Want::Position => decode(reply)?,
            Want::Size => size_fields(decode(reply)?),
        };
        found.extend(to_position(inst_id, *side, fields));
    }
    Ok(found)
}

/// Dual-read write guard: the user is not migrated (legacy key present,
/// index absent), so the write belongs to the legacy key.
async fn routes_to_legacy<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    legacy: Option<&str>,
) -> ApiResult<bool> {
    let Some(l) = legacy else {
        return Ok(false);
    };
    Ok(!exists(conn, &keys.index_key()).await? && exists(conn, l).await?)
}

/// [`super::hash_store::upsert_new`] on a cluster: hash, then index.
pub(crate) async fn upsert_steps<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    position: &PositionObject,
    legacy: Option<&str>,
) -> ApiResult<Written> {
    if routes_to_legacy(conn, keys, legacy).await? {
        return Ok(Written::Legacy);
    }
    if let Some(l) = legacy {
        mirror_legacy(conn, l, Edit::Upsert(position)).await?;
    }
    let member = position.position().index_member();
    let index = keys.index_key();
    let mut c = conn.clone();
    let index_pttl: i64 = redis::cmd("PTTL")
        .arg(&index)
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("reading a user's index TTL"))?;
    let mut invocation = REPLACE_HASH.key(keys.position_key(&member));
    invocation.arg(index_pttl);
    for (field, value) in position.hash_fields() {
        invocation.arg(field).arg(value);
    }
    invocation
        .invoke_async::<()>(&mut c)
        .await
        .map_err(ApiError::redis("writing a position hash"))?;
    redis::cmd("SADD")
        .arg(&index)
        .arg(&member)
        .query_async::<()>(&mut c)
        .await
        .map_err(ApiError::redis("adding a position to its index"))?;
    Ok(Written::New(true))
}

/// [`super::hash_store::remove_new`] on a cluster: index, then hash.
pub(crate) async fn remove_steps<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    member: &str,
    legacy: Option<&str>,
) -> ApiResult<Written> {
    if routes_to_legacy(conn, keys, legacy).await? {
        return Ok(Written::Legacy);
    }
    if let (Some(l), Some((inst_id, side))) = (legacy, parse_member(member)) {
        mirror_legacy(conn, l, Edit::Remove { inst_id, side }).await?;
    }
    let mut c = conn.clone();
    redis::cmd("SREM")
        .arg(keys.index_key())
        .arg(member)
        .query_async::<()>(&mut c)
        .await
        .map_err(ApiError::redis("removing a position from its index"))?;
    let removed: u64 = redis::cmd("DEL")
        .arg(keys.position_key(member))
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("removing a position hash"))?;
    Ok(Written::New(removed == 1))
}
