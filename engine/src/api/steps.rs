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
//!   Two writers of one position can so leave at worst a member without
//!   its hash (reads as absent: the remove won), never a hash without its
//!   member.
//!
//! Dual-read route (reads and writes alike), from the index set's state,
//! read in one round trip (`index_state.lua`, or SMEMBERS where the
//! members are needed anyway):
//! - index absent: the legacy key; when that is absent too, the index is
//!   looked at once more, so a user whose migration finished in between is
//!   read from the new layout, not as "no positions";
//! - index present without a "migrating" marker (`keys::migrating_sentinel`):
//!   the new layout; a legacy key beside it is invisible, as on one server;
//! - index present with a marker: the user is mid-migration
//!   (`crate::grid_positions::store::cluster`). While the legacy key exists it is the truth and
//!   takes reads and writes; once the migration's compare-and-delete has
//!   removed it, the new layout does (the index then holds exactly the
//!   migrated positions), before the marker itself goes. No moment answers
//!   "no positions" for a user who has some.
//!
//! Why a write cannot be lost against a migration: a write routed to the
//! legacy key is a compare-and-set of that key (`legacy_store`); if the
//! migration deleted it in between, the compare-and-set finds it gone and
//! the write is routed again (now: the new layout); if not, the
//! migration's compare-and-delete finds the value changed and redoes the
//! user from it. A write routed to the new layout happens only once the
//! legacy key is gone, and from then on the migration touches no member or
//! hash of the user, only its own marker. The guarded legacy write
//! (`*_unmigrated`) is refused (`Moved`) only for an index without a marker.
//!
//! New-layout reads skip marker members; so does the hash store.
//!
//! What stops being atomic on a cluster, honestly: an upsert or remove is
//! two steps, so a client killed between them leaves a hash without its
//! index member (upsert: invisible to `all_positions`, found by a get) or
//! the reverse (remove: a member whose hash is gone, which reads as no
//! position and which the gate's `api` invariant reports); the next write
//! of that position repairs either. A size reads the long and short hashes
//! in one pipeline, not one transaction, so a write between the two reads
//! can make a size mix before and after. A route is read, then followed:
//! a write that follows it is re-checked as above, a read answers from the
//! layout that was the user's when it looked. The standalone stores keep
//! their scripts and MULTI; these steps run only on a cluster connection.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Script, Value};

use super::codec::{
    decode, get_legacy, parse_member, size_fields, to_position, Read, Want, Written,
};
use super::error::{ApiError, ApiResult};
use super::position::{sorted, SIZE_FIELDS};
use super::{Position, PositionObject};
use crate::grid_positions::plan::Side;
use crate::keys::{is_migrating_sentinel, LegacyPositionsKey, MIGRATING_SENTINEL_PREFIX};

static REPLACE_HASH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/replace_hash.lua")));
static INDEX_STATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/index_state.lua")));

type Fields = BTreeMap<String, String>;

/// A user's index set as the dual-read route sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexState {
    Absent,
    /// Present, no "migrating" marker: the user reads the new layout.
    Plain,
    /// Present with a marker: mid-migration, the legacy key decides.
    Marked,
}

impl IndexState {
    fn of_members(members: &[String]) -> Self {
        if members.iter().any(|m| is_migrating_sentinel(m)) {
            IndexState::Marked
        } else if members.is_empty() {
            IndexState::Absent
        } else {
            IndexState::Plain
        }
    }
}

/// The index's state in one round trip.
pub(crate) async fn index_state<C: ConnectionLike + Clone + Send>(
    conn: &C,
    index: &str,
) -> ApiResult<IndexState> {
    let mut c = conn.clone();
    let (exists, marked): (i64, i64) = INDEX_STATE
        .key(index)
        .arg(MIGRATING_SENTINEL_PREFIX)
        .invoke_async(&mut c)
        .await
        .map_err(ApiError::redis("checking a user's index set"))?;
    Ok(match (exists, marked) {
        (0, _) => IndexState::Absent,
        (_, 0) => IndexState::Plain,
        _ => IndexState::Marked,
    })
}

async fn exists<C: ConnectionLike + Clone + Send>(conn: &C, key: &str) -> ApiResult<bool> {
    let mut c = conn.clone();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("checking a legacy positions key"))
}

async fn smembers<C: ConnectionLike + Clone + Send>(
    conn: &C,
    index: &str,
) -> ApiResult<Vec<String>> {
    let mut c = conn.clone();
    redis::cmd("SMEMBERS")
        .arg(index)
        .query_async(&mut c)
        .await
        .map_err(ApiError::redis("reading a user's index set"))
}

/// Dual-read route from an index state already read: `Some(value)` when
/// the user reads from the legacy key, `None` when from the new layout.
async fn legacy_route<C: ConnectionLike + Clone + Send>(
    conn: &C,
    index: &str,
    state: IndexState,
    legacy: &str,
) -> ApiResult<Option<Option<Vec<u8>>>> {
    match state {
        IndexState::Plain => Ok(None),
        IndexState::Marked => Ok(get_legacy(conn, legacy).await?.map(Some)),
        IndexState::Absent => {
            let value = get_legacy(conn, legacy).await?;
            if value.is_none() && index_state(conn, index).await? != IndexState::Absent {
                return Ok(None);
            }
            Ok(Some(value))
        }
    }
}

/// [`super::hash_store::all_new`] on a cluster: the index, then its hashes
/// in one pipeline (split per node by the cluster connection).
pub(crate) async fn all_steps<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    legacy: Option<&str>,
) -> ApiResult<Read<Vec<Position>>> {
    let index = keys.index_key();
    let mut members = smembers(conn, &index).await?;
    if let Some(l) = legacy {
        let state = IndexState::of_members(&members);
        if let Some(value) = legacy_route(conn, &index, state, l).await? {
            return Ok(Read::Legacy(value));
        }
        // The legacy key went since the members were read (or the index
        // came): a migration may have rewritten them before its delete.
        if state != IndexState::Plain {
            members = smembers(conn, &index).await?;
        }
    }
    members.retain(|m| !is_migrating_sentinel(m));
    if members.is_empty() {
        return Ok(Read::New(Vec::new()));
    }
    let mut pipe = redis::pipe();
    for m in &members {
        pipe.hgetall(keys.position_key(m));
    }
    let mut c = conn.clone();
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
        let index = keys.index_key();
        let state = index_state(conn, &index).await?;
        if let Some(value) = legacy_route(conn, &index, state, l).await? {
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

/// Dual-read write route: the write belongs to the legacy key while it
/// exists and the index is absent or marked (the user is not migrated, or
/// mid-migration).
async fn routes_to_legacy<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &LegacyPositionsKey,
    legacy: Option<&str>,
) -> ApiResult<bool> {
    let Some(l) = legacy else {
        return Ok(false);
    };
    Ok(index_state(conn, &keys.index_key()).await? != IndexState::Plain && exists(conn, l).await?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::migrating_sentinel;

    #[test]
    fn index_state_sees_a_marker_whatever_else_the_set_holds() {
        let m = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let marker = migrating_sentinel("run-1");
        assert_eq!(IndexState::of_members(&[]), IndexState::Absent);
        assert_eq!(IndexState::of_members(&m(&["A:long"])), IndexState::Plain);
        assert_eq!(
            IndexState::of_members(&m(&["A:long", &marker])),
            IndexState::Marked
        );
        // A marker alone (every position removed mid-migration) still is one.
        assert_eq!(IndexState::of_members(&m(&[&marker])), IndexState::Marked);
    }
}
