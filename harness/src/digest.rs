//! A type-aware digest of a keyspace, for the "untouched" and "rollback"
//! invariants: per key its type, a SHA-256 of a canonical encoding of its
//! content, and its TTL.
//!
//! Canonical encoding (every byte string is prefixed by its length as a
//! big-endian u64): the type name; then for a string its bytes; a hash its
//! field count and (field, value) pairs sorted by field; a list its length
//! and items in order; a set its size and members sorted; a zset its size
//! and (member, score as big-endian f64 bits) in Redis order (score, then
//! member); any other type its `DUMP` payload.
//!
//! Keys that are not UTF-8 are named by their lossy UTF-8 form.

use std::collections::{BTreeMap, BTreeSet};

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, Value};
use sha2::{Digest as _, Sha256};

use crate::backend::Nodes;
use crate::seed::{KeyValue, Keyspace};

/// Keys per SCAN call and per read pipeline.
const SCAN_COUNT: usize = 1000;
/// Times a key that changed between TYPE and its read is re-read.
const RETRIES: usize = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digest {
    pub keys: BTreeMap<String, KeyDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDigest {
    /// Redis's `TYPE` name.
    pub kind: String,
    pub sha256: [u8; 32],
    /// Remaining TTL; `None` when persistent.
    pub ttl_ms: Option<i64>,
}

/// The difference between two digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DigestDiff {
    /// In `before`, not in `after`.
    pub missing: Vec<String>,
    /// In `after`, not in `before`.
    pub extra: Vec<String>,
    /// In both, with another type or content.
    pub changed: Vec<String>,
    /// In both, same content, TTL differs beyond the tolerance or
    /// persistent on one side only.
    pub ttl_changed: Vec<String>,
    /// Keys looked at: the union of both sides.
    pub processed: usize,
    /// Keys in both with the same content and TTL.
    pub matching: usize,
}

impl DigestDiff {
    /// Nothing missing, extra, changed or with a changed TTL.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.changed.is_empty()
            && self.ttl_changed.is_empty()
    }
}

impl Digest {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys passing `filter`, with their digests.
    pub fn filtered(&self, filter: impl Fn(&str) -> bool) -> Digest {
        let keys = self
            .keys
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Digest { keys }
    }
}

/// A TTL is unchanged when both are persistent, or both have one and they
/// differ by at most `tolerance_ms`.
pub fn ttl_matches(a: Option<i64>, b: Option<i64>, tolerance_ms: i64) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= tolerance_ms,
        _ => false,
    }
}

/// Compares two digests (a pure function). `ttl_tolerance_ms` should
/// cover the time elapsed between them.
pub fn compare(before: &Digest, after: &Digest, ttl_tolerance_ms: i64) -> DigestDiff {
    let mut d = DigestDiff::default();
    for (k, b) in &before.keys {
        match after.keys.get(k) {
            None => d.missing.push(k.clone()),
            Some(a) if a.kind != b.kind || a.sha256 != b.sha256 => d.changed.push(k.clone()),
            Some(a) if !ttl_matches(b.ttl_ms, a.ttl_ms, ttl_tolerance_ms) => {
                d.ttl_changed.push(k.clone())
            }
            Some(_) => d.matching += 1,
        }
    }
    d.extra = after
        .keys
        .keys()
        .filter(|k| !before.keys.contains_key(*k))
        .cloned()
        .collect();
    d.processed = before.keys.len() + d.extra.len();
    d
}

/// Canonical content of one key.
enum Content {
    String(Vec<u8>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    ZSet(Vec<(Vec<u8>, f64)>),
    Dump(Vec<u8>),
}

fn feed(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_be_bytes());
    h.update(b);
}

fn sha(kind: &str, content: Content) -> [u8; 32] {
    let mut h = Sha256::new();
    feed(&mut h, kind.as_bytes());
    let count = |h: &mut Sha256, n: usize| h.update((n as u64).to_be_bytes());
    match content {
        Content::String(b) | Content::Dump(b) => feed(&mut h, &b),
        Content::Hash(mut pairs) => {
            pairs.sort();
            count(&mut h, pairs.len());
            for (f, v) in &pairs {
                feed(&mut h, f);
                feed(&mut h, v);
            }
        }
        Content::List(items) => {
            count(&mut h, items.len());
            items.iter().for_each(|i| feed(&mut h, i));
        }
        Content::Set(mut items) => {
            items.sort();
            count(&mut h, items.len());
            items.iter().for_each(|i| feed(&mut h, i));
        }
        Content::ZSet(mut members) => {
            members.sort_by(|(ma, sa), (mb, sb)| sa.total_cmp(sb).then_with(|| ma.cmp(mb)));
            count(&mut h, members.len());
            for (m, s) in &members {
                feed(&mut h, m);
                h.update(s.to_bits().to_be_bytes());
            }
        }
    }
    h.finalize().into()
}

/// The digest `digest` would read after `ks` is loaded, computed from the
/// model with Redis semantics (last hash field / zset score wins, set
/// members are unique). TTLs as given; empty collections are absent.
pub fn digest_keyspace(ks: &Keyspace) -> Digest {
    let mut keys = BTreeMap::new();
    for e in &ks.entries {
        if e.value.is_empty_collection() {
            continue;
        }
        let content = match &e.value {
            KeyValue::String(b) => Content::String(b.clone()),
            KeyValue::Hash(p) => {
                let m: BTreeMap<&str, &str> =
                    p.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
                Content::Hash(m.into_iter().map(|(f, v)| (f.into(), v.into())).collect())
            }
            KeyValue::List(items) => {
                Content::List(items.iter().map(|s| s.clone().into_bytes()).collect())
            }
            KeyValue::Set(items) => {
                let s: BTreeSet<&str> = items.iter().map(String::as_str).collect();
                Content::Set(s.into_iter().map(|m| m.as_bytes().to_vec()).collect())
            }
            KeyValue::ZSet(ms) => {
                let m: BTreeMap<&str, f64> = ms.iter().map(|(m, s)| (m.as_str(), *s)).collect();
                Content::ZSet(m.into_iter().map(|(m, s)| (m.into(), s)).collect())
            }
        };
        let kind = e.value.kind();
        let ttl_ms = e.ttl_ms.map(|t| t as i64);
        keys.insert(
            e.key.clone(),
            KeyDigest {
                kind: kind.into(),
                sha256: sha(kind, content),
                ttl_ms,
            },
        );
    }
    Digest { keys }
}

fn malformed(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::UnexpectedReturnType, what))
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Map(m) => Some(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

fn score(v: Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(d),
        Value::Int(i) => Some(i as f64),
        v => std::str::from_utf8(&bytes(v)?).ok()?.parse().ok(),
    }
}

/// Decodes a read reply for `kind`; `None` if the key changed under us.
fn decode(kind: &str, v: Value) -> Option<Content> {
    if let Value::ServerError(_) | Value::Nil = v {
        return None;
    }
    Some(match kind {
        "string" => Content::String(bytes(v)?),
        "hash" => {
            let mut it = items(v)?.into_iter();
            let mut pairs = Vec::new();
            while let Some(f) = it.next() {
                pairs.push((bytes(f)?, bytes(it.next()?)?));
            }
            Content::Hash(pairs)
        }
        "list" => Content::List(items(v)?.into_iter().map(bytes).collect::<Option<_>>()?),
        "set" => Content::Set(items(v)?.into_iter().map(bytes).collect::<Option<_>>()?),
        "zset" => {
            let mut out = Vec::new();
            let mut it = items(v)?.into_iter().peekable();
            while let Some(x) = it.next() {
                // RESP3 nests [member, score]; RESP2 is flat.
                let (m, s) = match x {
                    Value::Array(p) if p.len() == 2 => {
                        let [m, s]: [Value; 2] = p.try_into().ok()?;
                        (m, s)
                    }
                    m => (m, it.next()?),
                };
                out.push((bytes(m)?, score(s)?));
            }
            Content::ZSet(out)
        }
        _ => Content::Dump(bytes(v)?),
    })
}

fn read_cmd(kind: &str, key: &[u8]) -> redis::Cmd {
    let (name, extra): (&str, &[&str]) = match kind {
        "string" => ("GET", &[]),
        "hash" => ("HGETALL", &[]),
        "list" => ("LRANGE", &["0", "-1"]),
        "set" => ("SMEMBERS", &[]),
        "zset" => ("ZRANGE", &["0", "-1", "WITHSCORES"]),
        _ => ("DUMP", &[]),
    };
    let mut c = redis::cmd(name);
    c.arg(key);
    for a in extra {
        c.arg(*a);
    }
    c
}

/// Reads one batch of keys into `out`: TYPE for all, then the read and
/// PTTL for all; a key that vanished is skipped, one that changed type in
/// between is read again.
async fn read_batch<C: ConnectionLike + Send>(
    conn: &mut C,
    mut keys: Vec<(Vec<u8>, String)>,
    out: &mut BTreeMap<String, KeyDigest>,
) -> Result<(), RedisError> {
    for _ in 0..RETRIES {
        if keys.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for (k, _) in &keys {
            p.cmd("TYPE").arg(k);
        }
        let kinds: Vec<String> = p.query_async(conn).await?;
        let mut p = redis::pipe();
        p.ignore_errors();
        for ((k, _), kind) in keys.iter().zip(&kinds) {
            p.add_command(read_cmd(kind, k));
            p.cmd("PTTL").arg(k);
        }
        let replies: Vec<Value> = p.query_async(conn).await?;
        let mut again = Vec::new();
        let mut replies = replies.into_iter();
        for ((k, name), kind) in keys.into_iter().zip(kinds) {
            let (read, pttl) = (replies.next(), replies.next());
            let (Some(read), Some(Value::Int(pttl))) = (read, pttl) else {
                return Err(malformed("unexpected PTTL reply while digesting"));
            };
            if kind == "none" || pttl == -2 {
                continue; // deleted since SCAN
            }
            match decode(&kind, read) {
                Some(content) => {
                    let ttl_ms = (pttl >= 0).then_some(pttl);
                    let sha256 = sha(&kind, content);
                    out.insert(
                        name,
                        KeyDigest {
                            kind,
                            sha256,
                            ttl_ms,
                        },
                    );
                }
                None => again.push((k, name)),
            }
        }
        keys = again;
    }
    if keys.is_empty() {
        Ok(())
    } else {
        Err(malformed("keys kept changing type while digesting"))
    }
}

/// Digests every key of the live keyspace that passes `filter`, by SCAN
/// (never KEYS) of every primary, reading in pipelined batches of up to
/// 1000 keys. `target` is a standalone server's connection or a cluster's
/// [`Primaries`](crate::backend::Primaries): SCAN lists a node's own keys,
/// and every read is a single-key command sent to that node.
pub async fn digest<N: Nodes + ?Sized>(
    target: &N,
    filter: impl Fn(&str) -> bool,
) -> Result<Digest, RedisError> {
    let mut keys = BTreeMap::new();
    for mut conn in target.connections() {
        digest_node(&mut conn, &filter, &mut keys).await?;
    }
    Ok(Digest { keys })
}

async fn digest_node<C: ConnectionLike + Send>(
    conn: &mut C,
    filter: &impl Fn(&str) -> bool,
    keys: &mut BTreeMap<String, KeyDigest>,
) -> Result<(), RedisError> {
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        let wanted: Vec<(Vec<u8>, String)> = batch
            .into_iter()
            .map(|k| {
                let name = String::from_utf8_lossy(&k).into_owned();
                (k, name)
            })
            // SCAN may return a key twice; the first read is enough.
            .filter(|(_, name)| filter(name) && !keys.contains_key(name))
            .collect();
        read_batch(conn, wanted, keys).await?;
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::KeyEntry;

    fn kd(kind: &str, b: u8, ttl: Option<i64>) -> KeyDigest {
        KeyDigest {
            kind: kind.into(),
            sha256: [b; 32],
            ttl_ms: ttl,
        }
    }

    fn dig(entries: &[(&str, KeyDigest)]) -> Digest {
        Digest {
            keys: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn compare_sorts_every_key_into_one_bucket() {
        let before = dig(&[
            ("same", kd("string", 1, None)),
            ("gone", kd("string", 2, None)),
            ("edited", kd("hash", 3, None)),
            ("retyped", kd("hash", 4, None)),
            ("ttl_ok", kd("string", 5, Some(10_000))),
            ("ttl_far", kd("string", 6, Some(10_000))),
            ("ttl_lost", kd("string", 7, Some(10_000))),
            ("ttl_gained", kd("string", 8, None)),
        ]);
        let after = dig(&[
            ("same", kd("string", 1, None)),
            ("edited", kd("hash", 9, None)),
            ("retyped", kd("set", 4, None)),
            ("ttl_ok", kd("string", 5, Some(9_500))),
            ("ttl_far", kd("string", 6, Some(2_000))),
            ("ttl_lost", kd("string", 7, None)),
            ("ttl_gained", kd("string", 8, Some(5))),
            ("new", kd("string", 1, None)),
        ]);
        let d = compare(&before, &after, 1_000);
        assert_eq!(d.missing, ["gone"]);
        assert_eq!(d.extra, ["new"]);
        assert_eq!(d.changed, ["edited", "retyped"]);
        assert_eq!(d.ttl_changed, ["ttl_far", "ttl_gained", "ttl_lost"]);
        assert_eq!((d.processed, d.matching), (9, 2));
        assert!(!d.is_clean());
        let same = compare(&before, &before, 0);
        assert!(same.is_clean());
        assert_eq!((same.processed, same.matching), (8, 8));
    }

    #[test]
    fn model_digest_follows_redis_semantics() {
        let one = |v: KeyValue| {
            digest_keyspace(&Keyspace {
                entries: vec![KeyEntry::new("k", v)],
            })
            .keys["k"]
                .sha256
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let h = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            one(KeyValue::Set(s(&["b", "a", "b"]))),
            one(KeyValue::Set(s(&["a", "b"])))
        );
        assert_ne!(
            one(KeyValue::List(s(&["b", "a"]))),
            one(KeyValue::List(s(&["a", "b"])))
        );
        assert_eq!(
            one(KeyValue::Hash(h(&[("f", "1"), ("g", "2"), ("f", "3")]))),
            one(KeyValue::Hash(h(&[("g", "2"), ("f", "3")])))
        );
        // Length prefixes: ["ab", "c"] is not ["a", "bc"].
        assert_ne!(
            one(KeyValue::List(s(&["ab", "c"]))),
            one(KeyValue::List(s(&["a", "bc"])))
        );
        // Same bytes, different type.
        assert_ne!(
            one(KeyValue::List(s(&["a"]))),
            one(KeyValue::Set(s(&["a"])))
        );
        let z = |v: &[(&str, f64)]| {
            KeyValue::ZSet(v.iter().map(|(m, s)| (m.to_string(), *s)).collect())
        };
        assert_eq!(
            one(z(&[("a", 1.0), ("b", 2.0), ("a", 3.0)])),
            one(z(&[("b", 2.0), ("a", 3.0)]))
        );
        assert_ne!(one(z(&[("a", 1.0)])), one(z(&[("a", 1.5)])));
        let ks = Keyspace {
            entries: vec![
                KeyEntry::new("e", KeyValue::List(vec![])),
                KeyEntry::new("t", KeyValue::String(vec![])).with_ttl(Some(7)),
            ],
        };
        let d = digest_keyspace(&ks);
        assert_eq!(d.len(), 1);
        assert_eq!(d.keys["t"].ttl_ms, Some(7));
    }

    #[test]
    fn decodes_resp2_and_resp3_zsets() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let flat = Value::Array(vec![b("a"), b("1.5"), b("b"), b("inf")]);
        let nested = Value::Array(vec![
            Value::Array(vec![b("a"), Value::Double(1.5)]),
            Value::Array(vec![b("b"), Value::Double(f64::INFINITY)]),
        ]);
        let (Some(Content::ZSet(x)), Some(Content::ZSet(y))) =
            (decode("zset", flat), decode("zset", nested))
        else {
            panic!("zset decode");
        };
        assert_eq!(x, y);
        assert!(decode("string", Value::Nil).is_none());
    }
}
