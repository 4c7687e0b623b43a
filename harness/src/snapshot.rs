//! `keyshift snapshot`'s file: a before-image of one migration's key
//! families, written as it is read (one JSON line per key, bounded
//! memory) and read back by `verify --before FILE`.
//!
//! Bytes-exact: key names, values, hash fields and set members are
//! base64. The first line names the migration, exchanges and time; the
//! last line counts the keys, so a file cut short is refused, not judged.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use keyshift_engine::connection::RedisConn;
use keyshift_oracle::{Entry, Image, Value};
use serde::{Deserialize, Serialize};

use crate::error::HarnessError;
use crate::observe::{for_each_key, server_time_ms};
use crate::wire::Reader;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub keyshift_snapshot: u32,
    pub migration: String,
    pub exchanges: Vec<String>,
    pub patterns: Vec<String>,
    pub started_at_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    k: String,
    t: String,
    /// string: base64; hash: [[field, value]]; set: [member]; other: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<serde_json::Value>,
    /// Other types: the digest of their DUMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    pttl: i64,
    at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Trailer {
    end: bool,
    keys: u64,
    finished_at_ms: i64,
}

fn b64(bytes: &[u8]) -> serde_json::Value {
    serde_json::Value::String(B64.encode(bytes))
}

fn line_of(key: &[u8], e: &Entry) -> Line {
    let (v, d) = match &e.value {
        Value::String(b) => (Some(b64(b)), None),
        Value::Hash(h) => (
            Some(serde_json::Value::Array(
                h.iter()
                    .map(|(f, v)| serde_json::Value::Array(vec![b64(f), b64(v)]))
                    .collect(),
            )),
            None,
        ),
        Value::Set(m) => (
            Some(serde_json::Value::Array(m.iter().map(|x| b64(x)).collect())),
            None,
        ),
        Value::Other { digest, .. } => (None, Some(digest.clone())),
        Value::StringDigest(d) => (None, Some(d.clone())),
    };
    Line {
        k: B64.encode(key),
        t: e.value.kind().to_owned(),
        v,
        d,
        pttl: e.pttl_ms,
        at: e.read_at_ms,
    }
}

/// Streams the keys matching `patterns` into `out`; returns how many.
pub async fn write(
    conn: &RedisConn,
    migration: &str,
    exchanges: &[String],
    patterns: &[String],
    out: &Path,
) -> anyhow::Result<u64> {
    let file = std::fs::File::create(out).map_err(|e| {
        HarnessError::Usage(format!("--out {}: cannot create it ({e})", out.display()))
    })?;
    let reader = Reader::from(conn);
    let mut w = BufWriter::new(file);
    let header = Header {
        keyshift_snapshot: FORMAT_VERSION,
        migration: migration.to_owned(),
        exchanges: exchanges.to_vec(),
        patterns: patterns.to_vec(),
        started_at_ms: server_time_ms(&reader).await?,
    };
    serde_json::to_writer(&mut w, &header)?;
    w.write_all(b"\n")?;
    let mut keys = 0u64;
    let patterns: Vec<Option<&str>> = patterns.iter().map(|p| Some(p.as_str())).collect();
    for_each_key(&reader, &patterns, &mut |key, entry| {
        serde_json::to_writer(&mut w, &line_of(&key, &entry))?;
        w.write_all(b"\n")?;
        keys += 1;
        Ok(())
    })
    .await?;
    let trailer = Trailer {
        end: true,
        keys,
        finished_at_ms: server_time_ms(&reader).await?,
    };
    serde_json::to_writer(&mut w, &trailer)?;
    w.write_all(b"\n")?;
    w.flush()?;
    Ok(keys)
}

fn bad(file: &Path, line: usize, why: impl std::fmt::Display) -> anyhow::Error {
    HarnessError::Usage(format!(
        "--before {}: line {line}: {why}; take a new one with `keyshift snapshot`",
        file.display()
    ))
    .into()
}

fn bytes(file: &Path, n: usize, v: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    let s = v
        .as_str()
        .ok_or_else(|| bad(file, n, "expected base64 text"))?;
    B64.decode(s).map_err(|e| bad(file, n, e))
}

fn value_of(file: &Path, n: usize, line: &Line) -> anyhow::Result<Value> {
    let v = || line.v.as_ref().ok_or_else(|| bad(file, n, "no value"));
    let list = |v: &serde_json::Value| -> anyhow::Result<Vec<serde_json::Value>> {
        v.as_array()
            .cloned()
            .ok_or_else(|| bad(file, n, "expected a list"))
    };
    Ok(match line.t.as_str() {
        "string" => Value::String(bytes(file, n, v()?)?),
        "hash" => {
            let mut h = Vec::new();
            for pair in list(v()?)? {
                let pair = list(&pair)?;
                let [f, x] = pair.as_slice() else {
                    return Err(bad(file, n, "a hash field is not a pair"));
                };
                h.push((bytes(file, n, f)?, bytes(file, n, x)?));
            }
            Value::Hash(h.into_iter().collect())
        }
        "set" => Value::Set(
            list(v()?)?
                .iter()
                .map(|m| bytes(file, n, m))
                .collect::<anyhow::Result<_>>()?,
        ),
        kind => Value::Other {
            kind: kind.to_owned(),
            digest: line.d.clone().ok_or_else(|| bad(file, n, "no digest"))?,
        },
    })
}

/// Reads a snapshot file back: its header and its image.
pub fn read(file: &Path) -> anyhow::Result<(Header, Image)> {
    let f = std::fs::File::open(file).map_err(|e| {
        HarnessError::Usage(format!("--before {}: cannot open it ({e})", file.display()))
    })?;
    let mut lines = std::io::BufReader::new(f).lines();
    let first = lines.next().ok_or_else(|| bad(file, 1, "empty file"))??;
    let header: Header = serde_json::from_str(&first)
        .map_err(|e| bad(file, 1, format!("not a keyshift snapshot ({e})")))?;
    if header.keyshift_snapshot != FORMAT_VERSION {
        return Err(bad(
            file,
            1,
            format!(
                "format {} is not {FORMAT_VERSION}",
                header.keyshift_snapshot
            ),
        ));
    }
    let mut image = Image::default();
    let mut n = 1;
    for text in lines {
        n += 1;
        let text = text?;
        if let Ok(t) = serde_json::from_str::<Trailer>(&text) {
            // Lines, not distinct keys: SCAN may return a key twice.
            if t.keys != n as u64 - 2 {
                return Err(bad(
                    file,
                    n,
                    format!(
                        "the trailer counts {} keys, the file holds {}",
                        t.keys,
                        n - 2
                    ),
                ));
            }
            image.read_until_ms = t.finished_at_ms;
            return Ok((header, image));
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(file, n, e))?;
        let key = B64.decode(&line.k).map_err(|e| bad(file, n, e))?;
        let value = value_of(file, n, &line)?;
        image.insert(
            key,
            Entry {
                value,
                pttl_ms: line.pttl,
                read_at_ms: line.at,
            },
        );
    }
    Err(bad(
        file,
        n,
        "the file ends before its trailer: it was cut short",
    ))
}
