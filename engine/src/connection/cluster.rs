//! The cluster half of `RedisConn`: the SCAN cursor that names a primary,
//! the primaries from CLUSTER SLOTS, and which slot a pipelined command
//! goes to.

use std::collections::BTreeMap;

use redis::cluster_routing::{Route, SlotAddr};
use redis::{Cmd, Value};

use crate::error::{EngineError, Result};

/// Bits of a cluster SCAN cursor that hold the node's own cursor; the byte
/// above them holds the primary's index.
const NODE_CURSOR_BITS: u32 = 56;
pub(super) const NODE_CURSOR_MAX: u64 = (1 << NODE_CURSOR_BITS) - 1;
/// Primaries a cursor can name.
pub const MAX_PRIMARIES: usize = 256;

/// A primary of a cluster: its address and the first slot it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub host: String,
    pub port: u16,
    pub first_slot: u16,
}

/// `(primary index, node cursor)` as one SCAN cursor.
pub fn encode_cursor(primary: usize, node_cursor: u64) -> Result<u64> {
    if primary >= MAX_PRIMARIES {
        return Err(EngineError::Refused(format!(
            "the cluster has more than {MAX_PRIMARIES} primaries; keyshift's SCAN cursor names at most {MAX_PRIMARIES}"
        )));
    }
    if node_cursor > NODE_CURSOR_MAX {
        return Err(EngineError::Refused(format!(
            "a cluster node answered SCAN with cursor {node_cursor}, wider than the {NODE_CURSOR_BITS} bits keyshift keeps per node; rerun the command (a SCAN restarts from 0 harmlessly)"
        )));
    }
    Ok(((primary as u64) << NODE_CURSOR_BITS) | node_cursor)
}

/// The inverse of [`encode_cursor`].
pub fn decode_cursor(cursor: u64) -> (usize, u64) {
    (
        (cursor >> NODE_CURSOR_BITS) as usize,
        cursor & NODE_CURSOR_MAX,
    )
}

/// The cursor after a node answered `node_next`: the same primary, the
/// next one from its start, or 0 when the last primary is done.
pub fn next_cursor(primary: usize, node_next: u64, primaries: usize) -> Result<u64> {
    if node_next != 0 {
        encode_cursor(primary, node_next)
    } else if primary + 1 < primaries {
        encode_cursor(primary + 1, 0)
    } else {
        Ok(0)
    }
}

/// Primaries from a CLUSTER SLOTS reply, ordered by the first slot each
/// serves (stable while slots stay put).
pub(super) fn primaries_from_slots(reply: Value) -> Result<Vec<Primary>> {
    let bad = || unexpected("CLUSTER SLOTS reply");
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut first: BTreeMap<(String, u16), u16> = BTreeMap::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Array(node))) = (parts.first(), parts.get(2))
        else {
            return Err(bad());
        };
        let host = match node.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(bad()),
        };
        let Some(Value::Int(port)) = node.get(1) else {
            return Err(bad());
        };
        let slot = u16::try_from(*start).map_err(|_| bad())?;
        let port = u16::try_from(*port).map_err(|_| bad())?;
        let entry = first.entry((host, port)).or_insert(slot);
        *entry = (*entry).min(slot);
    }
    let mut primaries: Vec<Primary> = first
        .into_iter()
        .map(|((host, port), first_slot)| Primary {
            host,
            port,
            first_slot,
        })
        .collect();
    primaries.sort_by_key(|p| p.first_slot);
    Ok(primaries)
}

fn unexpected(what: &str) -> EngineError {
    EngineError::Redis {
        during: "reading the cluster topology",
        source: redis::RedisError::from((
            redis::ErrorKind::Client,
            "unexpected reply shape",
            what.to_owned(),
        )),
    }
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
