//! The keyspace model: what a seeded Redis holds, independent of where it
//! came from (fixtures, the generator) and of how it is written (a live
//! connection, raw RESP for `redis-cli --pipe`).

/// A whole keyspace: every key, its value and its TTL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keyspace {
    pub entries: Vec<KeyEntry>,
}

/// One key. Keys are UTF-8 strings; string values are bytes, so a
/// malformed or binary legacy value can be modelled.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub key: String,
    pub value: KeyValue,
    /// Remaining time to live in milliseconds; `None` means persistent.
    pub ttl_ms: Option<u64>,
}

/// A Redis value of one of the five core types. Collections keep the order
/// they are written in; Redis semantics apply when loaded (a repeated hash
/// field or zset member: the last one wins; a repeated set member: one).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    String(Vec<u8>),
    Hash(Vec<(String, String)>),
    List(Vec<String>),
    Set(Vec<String>),
    ZSet(Vec<(String, f64)>),
}

impl KeyValue {
    /// The name Redis's `TYPE` answers for this value.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyValue::String(_) => "string",
            KeyValue::Hash(_) => "hash",
            KeyValue::List(_) => "list",
            KeyValue::Set(_) => "set",
            KeyValue::ZSet(_) => "zset",
        }
    }

    /// A collection with no element cannot exist in Redis.
    pub fn is_empty_collection(&self) -> bool {
        match self {
            KeyValue::String(_) => false,
            KeyValue::Hash(v) => v.is_empty(),
            KeyValue::List(v) | KeyValue::Set(v) => v.is_empty(),
            KeyValue::ZSet(v) => v.is_empty(),
        }
    }
}

impl KeyEntry {
    pub fn new(key: impl Into<String>, value: KeyValue) -> Self {
        KeyEntry {
            key: key.into(),
            value,
            ttl_ms: None,
        }
    }

    pub fn with_ttl(mut self, ttl_ms: Option<u64>) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }
}

impl Keyspace {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn push(&mut self, entry: KeyEntry) {
        self.entries.push(entry);
    }

    /// Appends every entry of `other` (no duplicate check; `load` checks).
    pub fn extend(&mut self, other: Keyspace) {
        self.entries.extend(other.entries);
    }

    /// The entry for `key`, if any (linear scan; for tests).
    pub fn get(&self, key: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// Elements per write command, so one huge collection does not become one
/// huge command.
const CHUNK: usize = 512;

/// A score as Redis parses it: Rust's shortest round-trip form (`Debug`,
/// which switches to exponent notation for huge and tiny values), which
/// `strtod` reads back to the same double (`inf`/`-inf` included).
pub(crate) fn score_arg(score: f64) -> Vec<u8> {
    format!("{score:?}").into_bytes()
}

/// The write commands for one entry, each as its argument vector: one
/// `SET`, or `HSET`/`RPUSH`/`SADD`/`ZADD` in chunks, then `PEXPIRE` when the
/// entry has a TTL. The caller rejects empty collections and TTL 0 first.
pub(crate) fn entry_commands(e: &KeyEntry) -> Vec<Vec<Vec<u8>>> {
    let key = e.key.as_bytes();
    let mut out = Vec::new();
    let head = |name: &str| vec![name.as_bytes().to_vec(), key.to_vec()];
    match &e.value {
        KeyValue::String(v) => {
            let mut c = head("SET");
            c.push(v.clone());
            out.push(c);
        }
        KeyValue::Hash(fields) => {
            for chunk in fields.chunks(CHUNK) {
                let mut c = head("HSET");
                for (f, v) in chunk {
                    c.push(f.as_bytes().to_vec());
                    c.push(v.as_bytes().to_vec());
                }
                out.push(c);
            }
        }
        KeyValue::List(items) | KeyValue::Set(items) => {
            let name = if matches!(e.value, KeyValue::List(_)) {
                "RPUSH"
            } else {
                "SADD"
            };
            for chunk in items.chunks(CHUNK) {
                let mut c = head(name);
                c.extend(chunk.iter().map(|s| s.as_bytes().to_vec()));
                out.push(c);
            }
        }
        KeyValue::ZSet(members) => {
            for chunk in members.chunks(CHUNK) {
                let mut c = head("ZADD");
                for (m, s) in chunk {
                    c.push(score_arg(*s));
                    c.push(m.as_bytes().to_vec());
                }
                out.push(c);
            }
        }
    }
    if let Some(ttl) = e.ttl_ms {
        let mut c = head("PEXPIRE");
        c.push(ttl.to_string().into_bytes());
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_chunk_and_expire() {
        let fields: Vec<_> = (0..1000)
            .map(|i| (format!("f{i}"), "v".to_owned()))
            .collect();
        let e = KeyEntry::new("h", KeyValue::Hash(fields)).with_ttl(Some(5000));
        let cmds = entry_commands(&e);
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].len(), 2 + 2 * CHUNK);
        assert_eq!(
            cmds[2],
            vec![b"PEXPIRE".to_vec(), b"h".to_vec(), b"5000".to_vec()]
        );
    }

    #[test]
    fn scores_round_trip() {
        for s in [
            0.1,
            -2.5,
            1e300,
            1e-300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            3.0,
        ] {
            let text = String::from_utf8(score_arg(s)).unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), s);
        }
        assert_eq!(score_arg(f64::INFINITY), b"inf");
    }
}
