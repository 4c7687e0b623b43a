//! The cluster half of `RedisConn`: the SCAN cursor that names a primary
//! and the slot map it was read under, the primaries from CLUSTER SLOTS,
//! what a node's CLUSTER NODES says about slots on the move, and which
//! slot a pipelined command goes to.

use std::collections::BTreeMap;

use redis::cluster_routing::{Route, SlotAddr};
use redis::{Cmd, Value};

use crate::error::{EngineError, Result};

/// Bits of a cluster SCAN cursor that hold the node's own cursor. Above
/// them, [`SLOT_MAP_BITS`] of the slot map's fingerprint, then a byte for
/// the primary's index. 36 bits cover a hash table of 2^36 buckets per
/// node, beyond any server's memory.
const NODE_CURSOR_BITS: u32 = 36;
pub(super) const NODE_CURSOR_MAX: u64 = (1 << NODE_CURSOR_BITS) - 1;
/// Bits of the slot map's fingerprint a cursor carries: a reshard between
/// two SCAN steps goes unnoticed by it with odds of 1 in 2^20, and then
/// only when no node still shows the move (see `scan_raw`).
const SLOT_MAP_BITS: u32 = 20;
const SLOT_MAP_MASK: u64 = (1 << SLOT_MAP_BITS) - 1;
/// Primaries a cursor can name.
pub const MAX_PRIMARIES: usize = 256;

/// A primary of a cluster: its address, node id and the first slot it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub host: String,
    pub port: u16,
    /// The node id (CLUSTER SLOTS names it since Redis 4; `host:port`
    /// when it does not).
    pub id: String,
    pub first_slot: u16,
}

/// One SCAN cursor over a cluster, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCursor {
    /// Index of the primary being scanned (by first slot).
    pub primary: usize,
    /// The fingerprint of the slot map the SCAN began under.
    pub slot_map: u32,
    /// That primary's own SCAN cursor.
    pub node_cursor: u64,
}

/// A [`ClusterCursor`] as one SCAN cursor.
pub fn encode_cursor(c: ClusterCursor) -> Result<u64> {
    if c.primary >= MAX_PRIMARIES {
        return Err(EngineError::Refused(format!(
            "the cluster has more than {MAX_PRIMARIES} primaries; keyshift's SCAN cursor names at most {MAX_PRIMARIES}"
        )));
    }
    if c.node_cursor > NODE_CURSOR_MAX {
        return Err(EngineError::Refused(format!(
            "a cluster node answered SCAN with cursor {}, wider than the {NODE_CURSOR_BITS} bits keyshift keeps per node; rerun the command (a SCAN restarts from 0 harmlessly)",
            c.node_cursor
        )));
    }
    Ok(((c.primary as u64) << (NODE_CURSOR_BITS + SLOT_MAP_BITS))
        | ((u64::from(c.slot_map) & SLOT_MAP_MASK) << NODE_CURSOR_BITS)
        | c.node_cursor)
}

/// The inverse of [`encode_cursor`].
pub fn decode_cursor(cursor: u64) -> ClusterCursor {
    ClusterCursor {
        primary: (cursor >> (NODE_CURSOR_BITS + SLOT_MAP_BITS)) as usize,
        slot_map: ((cursor >> NODE_CURSOR_BITS) & SLOT_MAP_MASK) as u32,
        node_cursor: cursor & NODE_CURSOR_MAX,
    }
}

/// The cursor after a node answered `node_next` to the step at `at`: the
/// same primary, the next one from its start, or 0 when the last primary
/// is done.
pub fn next_cursor(at: ClusterCursor, node_next: u64, primaries: usize) -> Result<u64> {
    if node_next != 0 {
        encode_cursor(ClusterCursor {
            node_cursor: node_next,
            ..at
        })
    } else if at.primary + 1 < primaries {
        encode_cursor(ClusterCursor {
            primary: at.primary + 1,
            node_cursor: 0,
            ..at
        })
    } else {
        Ok(0)
    }
}

/// Which node serves each slot, as a short fingerprint: equal for two
/// readings of the same map whatever their range boundaries (CLUSTER
/// SLOTS and CLUSTER NODES split ranges differently).
pub(super) fn slot_map_fingerprint<'a>(
    ranges: impl IntoIterator<Item = (u16, u16, &'a str)>,
) -> u32 {
    let mut ranges: Vec<(u16, u16, &str)> = ranges.into_iter().collect();
    ranges.sort();
    let mut merged: Vec<(u16, u16, &str)> = Vec::with_capacity(ranges.len());
    for (first, last, id) in ranges {
        match merged.last_mut() {
            Some(prev) if prev.2 == id && u32::from(prev.1) + 1 == u32::from(first) => {
                prev.1 = last
            }
            _ => merged.push((first, last, id)),
        }
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (first, last, id) in merged {
        for byte in format!("{first}-{last}={id};").bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    ((hash ^ (hash >> 20) ^ (hash >> 40)) & SLOT_MAP_MASK) as u32
}

/// The cluster as CLUSTER SLOTS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// Ordered by the first slot each serves (stable while slots stay put).
    pub primaries: Vec<Primary>,
    pub fingerprint: u32,
}

/// The slot map of a CLUSTER SLOTS reply.
pub(super) fn slot_map_from_slots(reply: Value) -> Result<SlotMap> {
    let bad = || unexpected("CLUSTER SLOTS reply");
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut first: BTreeMap<(String, u16), (u16, String)> = BTreeMap::new();
    let mut owners: Vec<(u16, u16, String)> = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(bad());
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(h)) => Some(String::from_utf8_lossy(h).into_owned()),
            Some(Value::SimpleString(h)) => Some(h.clone()),
            _ => None,
        };
        let host = text(node.first()).ok_or_else(bad)?;
        let Some(Value::Int(port)) = node.get(1) else {
            return Err(bad());
        };
        let slot = u16::try_from(*start).map_err(|_| bad())?;
        let end = u16::try_from(*end).map_err(|_| bad())?;
        let port = u16::try_from(*port).map_err(|_| bad())?;
        let id = text(node.get(2)).unwrap_or_else(|| format!("{host}:{port}"));
        owners.push((slot, end, id.clone()));
        let entry = first.entry((host, port)).or_insert((slot, id));
        entry.0 = entry.0.min(slot);
    }
    let mut primaries: Vec<Primary> = first
        .into_iter()
        .map(|((host, port), (first_slot, id))| Primary {
            host,
            port,
            id,
            first_slot,
        })
        .collect();
    primaries.sort_by_key(|p| p.first_slot);
    let fingerprint = slot_map_fingerprint(owners.iter().map(|(f, l, id)| (*f, *l, id.as_str())));
    Ok(SlotMap {
        primaries,
        fingerprint,
    })
}

/// What one node's CLUSTER NODES says: the slot map as it sees it, and the
/// slots it is itself moving (a node shows only its own moves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeView {
    pub fingerprint: u32,
    /// "slot 5461 migrating to node ID", "slot 5461 importing from node ID".
    pub moving: Vec<String>,
}

/// Reads a CLUSTER NODES reply (one line per node: id, address, flags,
/// master, ping, pong, epoch, link state, then its slots: `0-5460`, `7`,
/// and on the `myself` line `[slot->-target]` / `[slot-<-source]`).
pub(super) fn node_view(text: &str) -> Result<NodeView> {
    let bad = || unexpected("CLUSTER NODES reply");
    let mut owners: Vec<(u16, u16, &str)> = Vec::new();
    let mut moving = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(bad());
        }
        let (id, myself) = (fields[0], fields[2].split(',').any(|f| f == "myself"));
        for token in &fields[8..] {
            if let Some(inner) = token.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                if myself {
                    moving.push(match (inner.split_once("->-"), inner.split_once("-<-")) {
                        (Some((slot, to)), _) => format!("slot {slot} migrating to node {to}"),
                        (_, Some((slot, from))) => {
                            format!("slot {slot} importing from node {from}")
                        }
                        _ => format!("slot move {inner}"),
                    });
                }
                continue;
            }
            let (first, last) = token.split_once('-').unwrap_or((token, token));
            let first: u16 = first.parse().map_err(|_| bad())?;
            let last: u16 = last.parse().map_err(|_| bad())?;
            owners.push((first, last, id));
        }
    }
    Ok(NodeView {
        fingerprint: slot_map_fingerprint(owners),
        moving,
    })
}

fn unexpected(what: &str) -> EngineError {
    EngineError::unexpected_reply("reading the cluster topology", what)
}

/// The primary of a command's key slot, `None` for a command with no key,
/// several keys or a key elsewhere than first: those go one by one through
/// redis-rs's own routing (every primary, split per slot, ...).
pub(super) fn route_of(cmd: &Cmd) -> Option<Route> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(a) => Some(a),
        _ => None,
    });
    let name = args.next()??.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let _script = args.next()??;
            let numkeys: usize = std::str::from_utf8(args.next()??).ok()?.parse().ok()?;
            if numkeys == 0 {
                return None;
            }
            args.next()??
        }
        // One key: routed as any single-key command.
        b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" | b"MGET" => {
            let key = args.next()??;
            if args.next().is_some() {
                return None;
            }
            key
        }
        _ if ROUTED_BY_REDIS_RS.contains(&name.as_slice()) => return None,
        _ => args.next()??,
    };
    Some(Route::with_key(key, SlotAddr::Master))
}

/// Commands whose first argument is not their only key.
const ROUTED_BY_REDIS_RS: &[&[u8]] = &[
    b"ACL",
    b"BITOP",
    b"BLMPOP",
    b"BZMPOP",
    b"CLIENT",
    b"CLUSTER",
    b"COMMAND",
    b"CONFIG",
    b"COPY",
    b"DBSIZE",
    b"DEBUG",
    b"DEL",
    b"DISCARD",
    b"EXEC",
    b"EXISTS",
    b"FLUSHALL",
    b"FLUSHDB",
    b"FUNCTION",
    b"INFO",
    b"KEYS",
    b"LATENCY",
    b"LMOVE",
    b"LMPOP",
    b"MEMORY",
    b"MGET",
    b"MIGRATE",
    b"MSET",
    b"MSETNX",
    b"MULTI",
    b"OBJECT",
    b"PFCOUNT",
    b"PFMERGE",
    b"PING",
    b"RANDOMKEY",
    b"RENAME",
    b"RENAMENX",
    b"RPOPLPUSH",
    b"SCAN",
    b"SCRIPT",
    b"SDIFF",
    b"SDIFFSTORE",
    b"SINTER",
    b"SINTERCARD",
    b"SINTERSTORE",
    b"SLOWLOG",
    b"SMOVE",
    b"SORT",
    b"SUNION",
    b"SUNIONSTORE",
    b"TIME",
    b"TOUCH",
    b"UNLINK",
    b"UNWATCH",
    b"WAIT",
    b"WATCH",
    b"XGROUP",
    b"XINFO",
    b"XREAD",
    b"XREADGROUP",
    b"ZDIFF",
    b"ZDIFFSTORE",
    b"ZINTER",
    b"ZINTERCARD",
    b"ZINTERSTORE",
    b"ZMPOP",
    b"ZRANGESTORE",
    b"ZUNION",
    b"ZUNIONSTORE",
];

/// True for a command that only reads its key: a slot's reads may go all
/// at once (their order does not matter), its writes go in order.
pub(super) fn only_reads(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => READS.contains(&name.to_ascii_uppercase().as_slice()),
        _ => false,
    }
}

/// Single-key commands that write nothing.
const READS: &[&[u8]] = &[
    b"DUMP",
    b"EVALSHA_RO",
    b"EVAL_RO",
    b"EXISTS",
    b"GET",
    b"GETRANGE",
    b"HEXISTS",
    b"HGET",
    b"HGETALL",
    b"HKEYS",
    b"HLEN",
    b"HMGET",
    b"HSCAN",
    b"HSTRLEN",
    b"HVALS",
    b"LINDEX",
    b"LLEN",
    b"LRANGE",
    b"MGET",
    b"PEXPIRETIME",
    b"PTTL",
    b"SCARD",
    b"SISMEMBER",
    b"SMEMBERS",
    b"SMISMEMBER",
    b"SSCAN",
    b"STRLEN",
    b"TTL",
    b"TYPE",
    b"ZCARD",
    b"ZRANGE",
    b"ZRANGEBYSCORE",
    b"ZREVRANGE",
    b"ZSCAN",
    b"ZSCORE",
];

pub(super) fn is_scan(cmd: &Cmd) -> Option<(u64, Vec<Vec<u8>>)> {
    let mut args = cmd.args_iter();
    match args.next() {
        Some(redis::Arg::Simple(name)) if name.eq_ignore_ascii_case(b"SCAN") => {}
        _ => return None,
    }
    let cursor = match args.next() {
        Some(redis::Arg::Simple(c)) => std::str::from_utf8(c).ok()?.parse().ok()?,
        _ => return None,
    };
    let rest = args
        .map(|a| match a {
            redis::Arg::Simple(a) => Some(a.to_vec()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((cursor, rest))
}
