//! Reads images of a keyspace for the oracle (keyshift-oracle judges them;
//! reading is this module's): every key of a disposable server, or the
//! keys of a migration's families on any server, by SCAN (never KEYS),
//! typed and bytes-exact, with each key's PTTL and the server time of the
//! read.

use keyshift_engine::connection::RedisConn;
use keyshift_engine::keys::escape_glob;
use keyshift_oracle::{sha256_hex, Entry, Fields, Image, Value};

use crate::wire::{Reader, Reply};

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
    read_matching(&Reader::from(conn), &[None]).await
}

/// Every key matching one of `patterns` (glob-escaped already).
pub async fn read_families(reader: &Reader, patterns: &[String]) -> anyhow::Result<Image> {
    let patterns: Vec<Option<&str>> = patterns.iter().map(|p| Some(p.as_str())).collect();
    read_matching(reader, &patterns).await
}

async fn read_matching(reader: &Reader, patterns: &[Option<&str>]) -> anyhow::Result<Image> {
    let mut image = Image::default();
    for_each_key(reader, patterns, &mut |key, entry| {
        image.insert(key, entry);
        Ok(())
    })
    .await?;
    image.read_until_ms = server_time_ms(reader).await?;
    Ok(image)
}

/// Streams every key matching one of `patterns` (`None`: every key) into
/// `sink`, one batch in memory at a time. Patterns should be disjoint: a
/// key two of them match is read twice.
pub async fn for_each_key(
    reader: &Reader,
    patterns: &[Option<&str>],
    sink: &mut dyn FnMut(Vec<u8>, Entry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for pattern in patterns {
        let mut cursor = 0u64;
        loop {
            let mut args: Vec<&[u8]> = Vec::new();
            if let Some(p) = pattern {
                args.push(b"MATCH");
                args.push(p.as_bytes());
            }
            args.push(b"COUNT");
            args.push(b"1000");
            let (next, keys) = reader.scan(cursor, &args).await?;
            // SCAN may return a key twice; a duplicate is read twice and
            // the sink sees the later read.
            for chunk in keys.chunks(BATCH) {
                let mut batch = Image::default();
                read_into(reader, chunk, &mut batch).await?;
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

/// Exactly these keys (absent ones are left out of the image); the
/// image's `read_until_ms` is the server time of the last read (0 when
/// `keys` is empty: nothing was read).
pub async fn read_keys(reader: &Reader, keys: &[Vec<u8>]) -> anyhow::Result<Image> {
    let mut image = Image::default();
    for chunk in keys.chunks(BATCH) {
        read_into(reader, chunk, &mut image).await?;
    }
    Ok(image)
}

pub async fn server_time_ms(reader: &Reader) -> anyhow::Result<i64> {
    let mut time = redis::pipe();
    time.cmd("TIME");
    time_ms(reader.query(time).await?.last())
}

/// The type a key's name gives it in the grid families (position hashes,
/// index sets, legacy keys and backups): read in the same round trip as
/// its TYPE and PTTL. `None`: TYPE first, then the read that fits.
fn named_kind(key: &[u8]) -> Option<&'static str> {
    if key.starts_with(b"positions:index:") {
        Some("set")
    } else if key.starts_with(b"positions:") {
        Some("hash")
    } else if key
        .windows(b":positions:".len())
        .any(|w| w == b":positions:")
    {
        Some("string")
    } else {
        None
    }
}

/// The command that reads a key of `kind` whole (DUMP for the types the
/// oracle only compares by digest).
fn read_command(kind: &str) -> &'static str {
    match kind {
        "string" => "GET",
        "hash" => "HGETALL",
        "set" => "SMEMBERS",
        _ => "DUMP",
    }
}

/// Reads `keys` into `image`. A key whose name says what it is gets its
/// PTTL and its value in one round trip, with no TYPE: a missing key
/// answers PTTL -2 and an empty reply, one of another type WRONGTYPE.
/// Any other key (a name that says nothing, a type not the one named, a
/// key that came or went between the two reads) gets TYPE and PTTL, then
/// the read its type calls for.
async fn read_into(reader: &Reader, keys: &[Vec<u8>], image: &mut Image) -> anyhow::Result<()> {
    let named: Vec<Option<&str>> = keys.iter().map(|k| named_kind(k)).collect();
    let mut first = redis::pipe();
    for (k, named) in keys.iter().zip(&named) {
        match named {
            Some(kind) => {
                first.cmd("PTTL").arg(k.as_slice());
                first.cmd(read_command(kind)).arg(k.as_slice());
            }
            None => {
                first.cmd("TYPE").arg(k.as_slice());
                first.cmd("PTTL").arg(k.as_slice());
            }
        }
    }
    first.cmd("TIME");
    let replies = reader.query(first).await?;
    let read_at_ms = time_ms(replies.last())?;
    image.read_until_ms = image.read_until_ms.max(read_at_ms);
    let mut replies = replies.iter();
    let mut next = || {
        replies
            .next()
            .ok_or_else(|| anyhow::anyhow!("a reply short"))
    };
    let mut untyped: Vec<&Vec<u8>> = Vec::new();
    let mut typed: Vec<(&Vec<u8>, String, i64)> = Vec::new();
    for (k, named) in keys.iter().zip(named) {
        match named {
            Some(kind) => {
                let pttl = next()?.int()?;
                let reply = next()?;
                match (pttl, &reply) {
                    (-2, r) if empty(r) => {} // not there
                    (_, r) if pttl != -2 && readable(r) && !empty(r) => {
                        let entry = Entry {
                            value: decode(kind, &reply)?,
                            pttl_ms: pttl,
                            read_at_ms,
                        };
                        image.insert(k.clone(), entry);
                    }
                    _ => untyped.push(k),
                }
            }
            None => {
                let kind = type_name(&next()?)?;
                let pttl = next()?.int()?;
                if kind != "none" {
                    typed.push((k, kind, pttl));
                }
            }
        }
    }
    if !untyped.is_empty() {
        let mut types = redis::pipe();
        for k in &untyped {
            types.cmd("TYPE").arg(k.as_slice());
            types.cmd("PTTL").arg(k.as_slice());
        }
        let replies = reader.query(types).await?;
        let mut replies = replies.iter();
        for k in untyped {
            let (Some(kind), Some(pttl)) = (replies.next(), replies.next()) else {
                anyhow::bail!("a reply short");
            };
            let kind = type_name(&kind)?;
            // Gone since it was listed: nothing to read.
            if kind != "none" {
                typed.push((k, kind, pttl.int()?));
            }
        }
    }
    if typed.is_empty() {
        return Ok(());
    }
    let mut values = redis::pipe();
    for (k, kind, _) in &typed {
        values.cmd(read_command(kind)).arg(k.as_slice());
    }
    values.cmd("TIME");
    let replies = reader.query(values).await?;
    let read_at_ms = time_ms(replies.last())?;
    image.read_until_ms = image.read_until_ms.max(read_at_ms);
    for ((key, kind, pttl), reply) in typed.into_iter().zip(replies.iter()) {
        if reply == Reply::Nil {
            continue; // deleted between the two round trips
        }
        let entry = Entry {
            value: decode(&kind, &reply)?,
            pttl_ms: pttl,
            read_at_ms,
        };
        image.insert(key.clone(), entry);
    }
    Ok(())
}

fn type_name(reply: &Reply) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(reply.data()?).into_owned())
}

/// What a read of a missing key answers (a nil string, an empty hash or
/// set): Redis keeps no empty hash or set.
fn empty(reply: &Reply) -> bool {
    match reply {
        Reply::Nil => true,
        Reply::Items(items) => items.is_empty(),
        _ => false,
    }
}

/// A value reply (not a nil of a key deleted meanwhile, nor an error).
fn readable(reply: &Reply) -> bool {
    !matches!(reply, Reply::Nil | Reply::Error(_))
}

fn time_ms(reply: Option<Reply>) -> anyhow::Result<i64> {
    let reply = reply.ok_or_else(|| anyhow::anyhow!("no reply to TIME"))?;
    let [secs, micros] = reply.items()? else {
        anyhow::bail!("TIME answered {reply:?}");
    };
    Ok(secs.int_text()? * 1000 + micros.int_text()? / 1000)
}

/// A value of `kind` as the oracle holds it.
fn decode(kind: &str, reply: &Reply) -> anyhow::Result<Value> {
    Ok(match kind {
        "string" => Value::String(reply.data()?.to_vec()),
        "hash" => {
            let items = reply.items()?;
            if items.len() % 2 != 0 {
                anyhow::bail!("HGETALL answered an odd number of items");
            }
            let pairs = items
                .chunks_exact(2)
                .map(|pair| Ok((pair[0].data()?, pair[1].data()?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Value::Hash(Fields::from_pairs(pairs))
        }
        "set" => {
            let members = reply.items()?.iter().map(|m| Ok(m.data()?.to_vec()));
            Value::Set(members.collect::<anyhow::Result<_>>()?)
        }
        _ => Value::Other {
            digest: sha256_hex(reply.data()?),
            kind: kind.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_the_type_of_the_grid_families_only() {
        assert_eq!(named_kind(b"positions:index:7:okx"), Some("set"));
        assert_eq!(named_kind(b"positions:7:okx:BTC-USDT:long"), Some("hash"));
        assert_eq!(named_kind(b"okx:positions:7"), Some("string"));
        assert_eq!(
            named_kind(b"okx:positions:7:backup:20261207_000000"),
            Some("string")
        );
        assert_eq!(
            named_kind(b"orders:okx:user:7:symbol:BTC:order_placed"),
            None
        );
        assert_eq!(named_kind(b"session:7"), None);
    }
}
