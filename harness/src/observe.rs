//! Reads images of a keyspace for the oracle (keyshift-oracle judges them;
//! reading is this module's): every key of a disposable server, or the
//! keys of a migration's families on any server, by SCAN (never KEYS),
//! typed and bytes-exact, with each key's PTTL and the server time of the
//! read.

use std::collections::BTreeMap;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::keys::escape_glob;
use keyshift_oracle::{sha256_hex, Entry, Image, Value};
use redis::Value as Reply;

/// Keys read per round trip.
const BATCH: usize = 500;

/// The SCAN patterns of grid-positions' families: legacy keys and their
/// backups, position hashes and index sets.
pub fn grid_patterns(exchanges: &[String]) -> Vec<String> {
    let mut patterns: Vec<String> = exchanges
        .iter()
        .map(|ex| format!("{}:positions:*", escape_glob(ex)))
        .collect();
    patterns.push("positions:*".into());
    patterns
}

/// The SCAN patterns of order-placed's families: legacy hashes and their
/// `orders:` targets.
pub fn order_placed_patterns(exchanges: &[String]) -> Vec<String> {
    let mut patterns = Vec::new();
    for ex in exchanges {
        let ex = escape_glob(ex);
        patterns.push(format!("{ex}:user:*:symbol:*:order_placed"));
        patterns.push(format!("orders:{ex}:user:*:symbol:*:order_placed"));
    }
    patterns
}

/// Every key on the server: for disposable servers only (the gate's).
pub async fn read_all(conn: &RedisConn) -> anyhow::Result<Image> {
    read_matching(conn, &[None]).await
}

/// Every key matching one of `patterns` (glob-escaped already).
pub async fn read_families(conn: &RedisConn, patterns: &[String]) -> anyhow::Result<Image> {
    let patterns: Vec<Option<&str>> = patterns.iter().map(|p| Some(p.as_str())).collect();
    read_matching(conn, &patterns).await
}

async fn read_matching(conn: &RedisConn, patterns: &[Option<&str>]) -> anyhow::Result<Image> {
    let mut image = Image::default();
    for_each_key(conn, patterns, &mut |key, entry| {
        image.insert(key, entry);
        Ok(())
    })
    .await?;
    image.read_until_ms = server_time_ms(conn).await?;
    Ok(image)
}

/// Streams every key matching one of `patterns` (`None`: every key) into
/// `sink`, one batch in memory at a time. Patterns should be disjoint: a
/// key two of them match is read twice.
pub async fn for_each_key(
    conn: &RedisConn,
    patterns: &[Option<&str>],
    sink: &mut dyn FnMut(Vec<u8>, Entry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for pattern in patterns {
        let mut cursor = 0u64;
        loop {
            let mut args: Vec<Vec<u8>> = Vec::new();
            if let Some(p) = pattern {
                args.push(b"MATCH".to_vec());
                args.push(p.as_bytes().to_vec());
            }
            args.push(b"COUNT".to_vec());
            args.push(b"1000".to_vec());
            let reply = conn.scan_raw(cursor, &args).await?;
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)?;
            // SCAN may return a key twice; a duplicate is read twice and
            // the sink sees the later read.
            for chunk in keys.chunks(BATCH) {
                let mut batch = Image::default();
                read_into(conn, chunk, &mut batch).await?;
                for (key, entry) in batch.keys {
                    sink(key, entry)?;
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// Exactly these keys (absent ones are left out of the image).
pub async fn read_keys(conn: &RedisConn, keys: &[Vec<u8>]) -> anyhow::Result<Image> {
    let mut image = Image::default();
    for chunk in keys.chunks(BATCH) {
        read_into(conn, chunk, &mut image).await?;
    }
    image.read_until_ms = server_time_ms(conn).await?;
    Ok(image)
}

pub async fn server_time_ms(conn: &RedisConn) -> anyhow::Result<i64> {
    let mut c = conn.clone();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await?;
    Ok(secs * 1000 + micros / 1000)
}

/// Reads `keys` in two round trips: their types and TTLs, then values.
async fn read_into(conn: &RedisConn, keys: &[Vec<u8>], image: &mut Image) -> anyhow::Result<()> {
    let mut c = conn.clone();
    let mut meta = redis::pipe();
    for k in keys {
        meta.cmd("TYPE")
            .arg(k.as_slice())
            .cmd("PTTL")
            .arg(k.as_slice());
    }
    let replies: Vec<Reply> = meta.query_async(&mut c).await?;
    let mut values = redis::pipe();
    let mut kinds = Vec::with_capacity(keys.len());
    for (k, pair) in keys.iter().zip(replies.chunks(2)) {
        let kind: String = redis::from_redis_value(pair[0].clone())?;
        let pttl: i64 = redis::from_redis_value(pair[1].clone())?;
        match kind.as_str() {
            "string" => values.cmd("GET").arg(k.as_slice()),
            "hash" => values.cmd("HGETALL").arg(k.as_slice()),
            "set" => values.cmd("SMEMBERS").arg(k.as_slice()),
            // Gone since SCAN saw it: nothing to read.
            "none" => continue,
            _ => values.cmd("DUMP").arg(k.as_slice()),
        };
        kinds.push((k, kind, pttl));
    }
    if kinds.is_empty() {
        return Ok(());
    }
    values.cmd("TIME");
    let mut replies: Vec<Reply> = values.query_async(&mut c).await?;
    let (secs, micros): (i64, i64) = redis::from_redis_value(replies.pop().expect("TIME"))?;
    let read_at_ms = secs * 1000 + micros / 1000;
    for ((key, kind, pttl), reply) in kinds.into_iter().zip(replies) {
        if matches!(reply, Reply::Nil) {
            continue; // deleted between the two round trips
        }
        let value = match kind.as_str() {
            "string" => Value::String(redis::from_redis_value(reply)?),
            "hash" => {
                let fields: BTreeMap<Vec<u8>, Vec<u8>> = redis::from_redis_value(reply)?;
                Value::Hash(fields)
            }
            "set" => {
                let members: Vec<Vec<u8>> = redis::from_redis_value(reply)?;
                Value::Set(members.into_iter().collect())
            }
            _ => {
                let dump: Vec<u8> = redis::from_redis_value(reply)?;
                Value::Other {
                    digest: sha256_hex(&dump),
                    kind,
                }
            }
        };
        image.insert(
            key.clone(),
            Entry {
                value,
                pttl_ms: pttl,
                read_at_ms,
            },
        );
    }
    Ok(())
}
