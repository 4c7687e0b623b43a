//! Seeding: the keyspace model, JSON fixtures, the seeded generator, and
//! writing a keyspace into a Redis server we created (or as raw RESP).

pub mod fixtures;
pub mod generator;
pub mod model;
mod positions;
pub mod truth;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use futures_util::stream::{self, TryStreamExt};

use crate::backend::Nodes;

pub use fixtures::{load_fixture_dir, load_fixture_file, parse_fixture};
pub use generator::{generate, ExchangeTruth, GenConfig, Generated, Truth};
pub use model::{KeyEntry, KeyValue, Keyspace};

/// Commands per pipeline when loading.
const BATCH: usize = 1000;
/// Pipelines in flight at once on the multiplexed connection.
const IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A fixture file that does not follow the format; `index` is the
    /// position of the offending entry in `keys`, when there is one.
    #[error("{}{}: {message}", file.display(), index.map(|i| format!(": keys[{i}]")).unwrap_or_default())]
    Fixture {
        file: PathBuf,
        index: Option<usize>,
        message: String,
    },
    #[error("key {key:?} is defined in both {} and {}", first.display(), second.display())]
    DuplicateFixtureKey {
        key: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("key {key:?} appears more than once in the keyspace")]
    DuplicateKey { key: String },
    #[error("key {key:?}: {reason}")]
    InvalidEntry { key: String, reason: String },
    #[error("refusing to seed: the server already holds {keys} key(s); seeding is only for servers we created")]
    NotEmpty { keys: i64 },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Checks what Redis could not represent or what would make loading
/// ambiguous: repeated keys, empty collections, a TTL of 0.
pub fn validate(ks: &Keyspace) -> Result<(), SeedError> {
    let mut seen = HashSet::with_capacity(ks.entries.len());
    for e in &ks.entries {
        if !seen.insert(e.key.as_str()) {
            return Err(SeedError::DuplicateKey { key: e.key.clone() });
        }
        if e.value.is_empty_collection() {
            return Err(SeedError::InvalidEntry {
                key: e.key.clone(),
                reason: format!("an empty {} cannot exist in Redis", e.value.kind()),
            });
        }
        if e.ttl_ms == Some(0) {
            return Err(SeedError::InvalidEntry {
                key: e.key.clone(),
                reason: "ttl_ms 0 would delete the key; omit it for a persistent key".into(),
            });
        }
    }
    Ok(())
}

/// Groups the entries' commands into batches of about `BATCH` commands;
/// an entry's commands never straddle two batches, so batches may run
/// concurrently.
fn batches<'a>(
    entries: impl Iterator<Item = &'a KeyEntry> + 'a,
) -> impl Iterator<Item = Vec<Vec<Vec<u8>>>> + 'a {
    let mut entries = entries.peekable();
    std::iter::from_fn(move || {
        entries.peek()?;
        let mut batch = Vec::with_capacity(BATCH + 8);
        while batch.len() < BATCH {
            let Some(e) = entries.next() else { break };
            batch.extend(model::entry_commands(e));
        }
        Some(batch)
    })
}

/// Writes `ks` into the server behind `target`, pipelined in batches of
/// about 1000 commands, with `PEXPIRE` for TTLs. `target` is a standalone
/// server's connection or a cluster's
/// [`Primaries`](crate::backend::Primaries): each entry goes to the primary
/// owning its key, and an entry's commands all name that one key, so
/// nothing crosses slots. Refuses a deployment that already holds any key
/// (`DBSIZE` of every primary must be 0): seeding is only for servers we
/// created.
pub async fn load<N: Nodes + ?Sized>(target: &N, ks: &Keyspace) -> Result<(), SeedError> {
    validate(ks)?;
    let conns = target.connections();
    let mut keys: i64 = 0;
    for conn in &conns {
        let mut conn = conn.clone();
        let n: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
        keys += n;
    }
    if keys != 0 {
        return Err(SeedError::NotEmpty { keys });
    }
    let mut per_node: Vec<Vec<&KeyEntry>> = vec![Vec::new(); conns.len()];
    for e in &ks.entries {
        let owner = target.index_for_key(e.key.as_bytes()).min(conns.len() - 1);
        per_node[owner].push(e);
    }
    let work = per_node.iter().enumerate().flat_map(|(node, entries)| {
        batches(entries.iter().copied()).map(move |batch| Ok::<_, SeedError>((node, batch)))
    });
    stream::iter(work)
        .map_ok(|(node, batch)| {
            let mut conn = conns[node].clone();
            async move {
                let mut pipe = redis::pipe();
                for args in batch {
                    let mut cmd = redis::Cmd::new();
                    for a in args {
                        cmd.arg(a);
                    }
                    pipe.add_command(cmd);
                }
                pipe.query_async::<()>(&mut conn).await?;
                Ok(())
            }
        })
        .try_buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// Writes the same commands `load` sends, as raw RESP, for
/// `redis-cli --pipe`. Invalid keyspaces (see [`validate`]) are refused
/// with `InvalidInput`.
pub fn write_resp(ks: &Keyspace, out: &mut impl Write) -> std::io::Result<()> {
    validate(ks).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    for batch in batches(ks.entries.iter()) {
        for args in batch {
            write!(out, "*{}\r\n", args.len())?;
            for a in args {
                write!(out, "${}\r\n", a.len())?;
                out.write_all(&a)?;
                out.write_all(b"\r\n")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_is_plain_redis_protocol() {
        let mut ks = Keyspace::new();
        ks.push(KeyEntry::new("a", KeyValue::String(b"x\r\ny".to_vec())).with_ttl(Some(10)));
        let mut out = Vec::new();
        write_resp(&ks, &mut out).unwrap();
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$4\r\nx\r\ny\r\n*3\r\n$7\r\nPEXPIRE\r\n$1\r\na\r\n$2\r\n10\r\n"
        );
    }

    #[test]
    fn validate_rejects_duplicates_empty_and_zero_ttl() {
        let s = |k: &str| KeyEntry::new(k, KeyValue::String(b"v".to_vec()));
        let dup = Keyspace {
            entries: vec![s("a"), s("a")],
        };
        assert!(matches!(
            validate(&dup),
            Err(SeedError::DuplicateKey { .. })
        ));
        let empty = Keyspace {
            entries: vec![KeyEntry::new("h", KeyValue::Hash(vec![]))],
        };
        assert!(matches!(
            validate(&empty),
            Err(SeedError::InvalidEntry { .. })
        ));
        let zero = Keyspace {
            entries: vec![s("a").with_ttl(Some(0))],
        };
        assert!(matches!(
            validate(&zero),
            Err(SeedError::InvalidEntry { .. })
        ));
    }

    #[test]
    fn batches_keep_an_entry_together() {
        let fields: Vec<_> = (0..600)
            .map(|i| (format!("f{i}"), "v".to_owned()))
            .collect();
        let mut ks = Keyspace::new();
        for i in 0..999 {
            ks.push(KeyEntry::new(format!("s{i}"), KeyValue::String(vec![])));
        }
        ks.push(KeyEntry::new("big", KeyValue::Hash(fields)).with_ttl(Some(1)));
        let b: Vec<_> = batches(ks.entries.iter()).collect();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), 999 + 3);
    }
}
