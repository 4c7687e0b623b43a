//! Images of a keyspace: what the caller read from Redis (or a snapshot
//! file) before and after a migration. The oracle only judges them; the
//! reading is the caller's, so judging stays pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::fields::Fields;
use crate::legacy::Expectation;

use sha2::{Digest as _, Sha256};

/// A key's value, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    String(Vec<u8>),
    Hash(Fields),
    Set(BTreeSet<Vec<u8>>),
    /// Any other type (list, zset, stream, ...), by its type name and a
    /// digest the reader computed of its content.
    Other {
        kind: String,
        digest: String,
    },
    /// A string known only by the SHA-256 (hex) of its bytes: what a run's
    /// journal recorded of a key it left in place.
    StringDigest(String),
}

impl Value {
    pub fn kind(&self) -> &str {
        match self {
            Value::String(_) | Value::StringDigest(_) => "string",
            Value::Hash(_) => "hash",
            Value::Set(_) => "set",
            Value::Other { kind, .. } => kind,
        }
    }

    /// Whether two reads hold the same content (a digest-only string
    /// equals the string whose bytes hash to it).
    pub fn same_content(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::StringDigest(d), Value::String(b))
            | (Value::String(b), Value::StringDigest(d)) => sha256_hex(b) == *d,
            (a, b) => a == b,
        }
    }
}

/// One key as read: its value, its PTTL in ms (-1: none), and the server
/// time of the read in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Value,
    pub pttl_ms: i64,
    pub read_at_ms: i64,
}

/// Keys by name (raw bytes: a name need not be UTF-8), and when the
/// reading ended: a key absent from the image was absent then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub keys: BTreeMap<Vec<u8>, Entry>,
    pub read_until_ms: i64,
}

impl Image {
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, entry: Entry) {
        self.keys.insert(key.into(), entry);
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.keys.get(key.as_bytes())
    }
}

/// The before-image and what is known of how it was taken.
#[derive(Debug, Clone, Default)]
pub struct Before {
    pub image: Image,
    /// Which keys of the image are the whole keyspace's: `true` when the
    /// image holds every key (a seeded keyspace, a full snapshot), so a key
    /// in the after-image that it lacks is new. `false` when it holds the
    /// migration's legacy keys only (taken from a run's backups): other
    /// keys were not seen and are not judged.
    pub complete: bool,
    /// Per legacy key, the backup stamp of the run that migrated it, when
    /// known (a journal's). Then only that backup is judged; other backups
    /// of the key belong to other runs.
    pub stamps: BTreeMap<Vec<u8>, String>,
    /// Per legacy key, the SHA-256 (hex) of the value the migration read,
    /// as its journal recorded it: the backup must hash to it.
    pub recorded_digests: BTreeMap<Vec<u8>, String>,
    /// Per legacy key, DESIGN §2's reading of its value, made once by
    /// [`crate::grid::add_legacy`] (which also says what keys to read):
    /// judging reuses it rather than parsing the value a second time.
    pub expectations: HashMap<Vec<u8>, Expectation>,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let sum = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in sum {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// A key name for a report: UTF-8 as is, other bytes escaped.
pub fn show(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.to_owned(),
        Err(_) => key.escape_ascii().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_only_strings_match_their_bytes() {
        let d = Value::StringDigest(sha256_hex(b"abc"));
        assert!(d.same_content(&Value::String(b"abc".to_vec())));
        assert!(!d.same_content(&Value::String(b"abd".to_vec())));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
