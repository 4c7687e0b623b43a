//! `keyshift validate`: SCAN a live keyspace (never KEYS), classify every
//! key against a [`Schema`], check the Redis type of each classified key,
//! and count per pattern with a few sample keys each. Read-only.
//!
//! The counting is the pure [`Tally`]; [`validate`] only feeds it from
//! SCAN and TYPE. A report's size is bounded by the schema, never by the
//! keyspace: a 10M-key server gives the same few lines.
//!
//! A legacy positions key whose user already has an index set is counted
//! apart as well, as reappeared after migration: a writer still uses the
//! old layout, and its writes are invisible to every reader of the new one.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use crate::connection::RedisConn;
use serde::Serialize;

use crate::connection::scan;
use crate::error::{EngineError, Result};
use crate::keys::schema::{Kind, RedisType, Schema};
use crate::keys::LegacyPositionsKey;

pub use crate::connection::scan::key_count;

#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// SCAN COUNT per step.
    pub scan_count: usize,
    /// Sample keys kept per pattern (and for unknown keys).
    pub samples: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            scan_count: 1000,
            samples: 5,
        }
    }
}

/// A key whose Redis type is not its pattern's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeMismatch {
    pub key: String,
    #[serde(rename = "type")]
    pub actual: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatternCount {
    pub id: String,
    pub family: String,
    pub kind: Kind,
    pub template: String,
    #[serde(rename = "type")]
    pub expected_type: &'static str,
    /// Keys of this pattern, type mismatches included.
    pub count: u64,
    pub samples: Vec<String>,
    pub type_mismatches: u64,
    pub mismatch_samples: Vec<TypeMismatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnknownKeys {
    pub count: u64,
    pub samples: Vec<String>,
}

/// Legacy positions keys whose user has an index set: written after the
/// user's migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReappearedKeys {
    pub count: u64,
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidateReport {
    /// Distinct keys SCAN returned.
    pub keys_scanned: u64,
    /// Keys of legacy patterns; validate passes when this is 0.
    pub legacy_keys: u64,
    pub type_mismatches: u64,
    /// Keys gone (expired, deleted) between SCAN and their type check.
    pub vanished: u64,
    pub passed: bool,
    pub patterns: Vec<PatternCount>,
    pub unknown: UnknownKeys,
    /// Legacy keys (counted in `legacy_keys` too) that reappeared after
    /// their user's migration.
    pub reappeared: ReappearedKeys,
    pub elapsed_ms: u64,
}

impl ValidateReport {
    pub fn pattern(&self, id: &str) -> Option<&PatternCount> {
        self.patterns.iter().find(|p| p.id == id)
    }
}

/// Remembers which keys a SCAN already returned (SCAN may return a key
/// twice) by a 64-bit fingerprint: 8 bytes a key, and two distinct keys
/// share one with odds of about n²/2^65 (3 in a million at 10M keys).
#[derive(Debug, Default)]
pub struct SeenKeys {
    hasher: RandomState,
    seen: HashSet<u64>,
}

impl SeenKeys {
    /// True the first time `key` is offered.
    pub fn first_time(&mut self, key: &[u8]) -> bool {
        self.seen.insert(self.hasher.hash_one(key))
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The pure counting behind validate: feed it every scanned key, then the
/// TYPE of each key it asks about.
#[derive(Debug)]
pub struct Tally<'s> {
    schema: &'s Schema,
    samples: usize,
    seen: SeenKeys,
    vanished: u64,
    patterns: Vec<PatternCount>,
    unknown: UnknownKeys,
    reappeared: ReappearedKeys,
}

impl<'s> Tally<'s> {
    pub fn new(schema: &'s Schema, samples: usize) -> Self {
        let patterns = schema
            .patterns()
            .iter()
            .map(|p| PatternCount {
                id: p.id.clone(),
                family: p.family.clone(),
                kind: p.kind,
                template: p.template.clone(),
                expected_type: p.redis_type.as_str(),
                count: 0,
                samples: Vec::new(),
                type_mismatches: 0,
                mismatch_samples: Vec::new(),
            })
            .collect();
        Tally {
            schema,
            samples,
            seen: SeenKeys::default(),
            vanished: 0,
            patterns,
            unknown: UnknownKeys::default(),
            reappeared: ReappearedKeys::default(),
        }
    }

    /// The index set to look for beside a key of `pattern`: set for a
    /// legacy grid positions key, whose user has migrated once it exists.
    pub fn index_of(&self, pattern: usize, key: &[u8]) -> Option<String> {
        if self.schema.patterns()[pattern].kind != Kind::Legacy {
            return None;
        }
        let key = std::str::from_utf8(key).ok()?;
        LegacyPositionsKey::parse(key, self.schema.exchanges()).map(|k| k.index_key())
    }

    /// Records the `TYPE` reply for a key [`Tally::key`] asked about and,
    /// for a key with an [`Tally::index_of`], whether that index exists.
    pub fn typed_beside(&mut self, pattern: usize, key: &[u8], actual: &str, index: bool) {
        self.typed(pattern, key, actual);
        if index && actual != "none" {
            self.reappeared.count += 1;
            if self.reappeared.samples.len() < self.samples {
                self.reappeared.samples.push(shown(key));
            }
        }
    }

    /// Records a scanned key. Returns the pattern index when the key's
    /// type must be checked; such a key is counted by [`Tally::typed`].
    pub fn key(&mut self, key: &[u8]) -> Option<usize> {
        if !self.seen.first_time(key) {
            return None;
        }
        let Some(m) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| self.schema.classify(k))
        else {
            self.unknown.count += 1;
            if self.unknown.samples.len() < self.samples {
                self.unknown.samples.push(shown(key));
            }
            return None;
        };
        if self.schema.patterns()[m.index].redis_type == RedisType::Any {
            self.count(m.index, key);
            return None;
        }
        Some(m.index)
    }

    /// Records the `TYPE` reply for a key [`Tally::key`] asked about.
    pub fn typed(&mut self, pattern: usize, key: &[u8], actual: &str) {
        if actual == "none" {
            self.vanished += 1;
            return;
        }
        self.count(pattern, key);
        if !self.schema.patterns()[pattern].redis_type.admits(actual) {
            let p = &mut self.patterns[pattern];
            p.type_mismatches += 1;
            if p.mismatch_samples.len() < self.samples {
                p.mismatch_samples.push(TypeMismatch {
                    key: shown(key),
                    actual: actual.to_owned(),
                });
            }
        }
    }

    fn count(&mut self, pattern: usize, key: &[u8]) {
        let p = &mut self.patterns[pattern];
        p.count += 1;
        if p.samples.len() < self.samples {
            p.samples.push(shown(key));
        }
    }

    pub fn finish(self, elapsed_ms: u64) -> ValidateReport {
        let legacy_keys = self
            .patterns
            .iter()
            .filter(|p| p.kind == Kind::Legacy)
            .map(|p| p.count)
            .sum();
        ValidateReport {
            keys_scanned: self.seen.len() as u64,
            legacy_keys,
            type_mismatches: self.patterns.iter().map(|p| p.type_mismatches).sum(),
            vanished: self.vanished,
            passed: legacy_keys == 0,
            patterns: self.patterns,
            unknown: self.unknown,
            reappeared: self.reappeared,
            elapsed_ms,
        }
    }
}

/// A key's name for a report: as it is, or, when it is not UTF-8, with
/// its bytes escaped (`\xff`), so the operator can find it exactly.
pub(crate) fn shown(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(name) => name.to_owned(),
        Err(_) => crate::keys::escape_key(key),
    }
}

/// One SCAN step over every key (no MATCH: each key is classified here).
pub(crate) async fn scan_step(
    conn: &RedisConn,
    cursor: u64,
    count: usize,
) -> Result<(u64, Vec<Vec<u8>>)> {
    scan::scan_step(conn, cursor, None, count, "scanning the keyspace").await
}

/// `TYPE` of each key, in one pipeline.
pub(crate) async fn types_of<K: AsRef<[u8]>>(conn: &RedisConn, keys: &[K]) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("TYPE").arg(k.as_ref());
    }
    let mut conn = conn.clone();
    pipe.query_async(&mut conn)
        .await
        .map_err(EngineError::redis("reading key types"))
}

/// `EXISTS` of each key, in one pipeline.
async fn exist(conn: &RedisConn, keys: &[&str]) -> Result<Vec<bool>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.exists(*k);
    }
    let mut conn = conn.clone();
    pipe.query_async(&mut conn)
        .await
        .map_err(EngineError::redis("looking for index sets"))
}

/// Classifies every key of the server. `progress` is called with the
/// number of keys each SCAN step returned. The TYPE checks of one step
/// run while the next step is scanned.
pub async fn validate(
    conn: &RedisConn,
    schema: &Schema,
    opts: &ValidateOptions,
    progress: &dyn Fn(usize),
) -> Result<ValidateReport> {
    let started = Instant::now();
    let mut tally = Tally::new(schema, opts.samples);
    let mut cursor = Some(0u64);
    // (pattern, key, index set to look for)
    let mut checks: Vec<(usize, Vec<u8>, Option<String>)> = Vec::new();
    while cursor.is_some() || !checks.is_empty() {
        let keys: Vec<&[u8]> = checks.iter().map(|(_, k, _)| k.as_slice()).collect();
        let indexes: Vec<&str> = checks.iter().filter_map(|(.., i)| i.as_deref()).collect();
        let scan = async {
            match cursor {
                Some(c) => scan_step(conn, c, opts.scan_count).await.map(Some),
                None => Ok(None),
            }
        };
        let (scanned, types, exists) =
            futures_util::future::try_join3(scan, types_of(conn, &keys), exist(conn, &indexes))
                .await?;
        let mut exists = exists.into_iter();
        for ((pattern, key, index), t) in checks.iter().zip(&types) {
            let migrated = index.is_some() && exists.next().unwrap_or(false);
            tally.typed_beside(*pattern, key, t, migrated);
        }
        checks.clear();
        if let Some((next, keys)) = scanned {
            progress(keys.len());
            for key in keys {
                if let Some(pattern) = tally.key(&key) {
                    let index = tally.index_of(pattern, &key);
                    checks.push((pattern, key, index));
                }
            }
            cursor = (next != 0).then_some(next);
        }
    }
    Ok(tally.finish(started.elapsed().as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_not_utf8_is_shown_escaped_not_mangled() {
        assert_eq!(
            shown(b"okx:positions:\xff\xfebin"),
            r"okx:positions:\xff\xfebin"
        );
        assert_eq!(shown("okx:positions:é".as_bytes()), "okx:positions:é");
    }

    fn run(keys: &[(&[u8], &str)]) -> ValidateReport {
        let schema = Schema::builtin();
        let mut t = Tally::new(&schema, 2);
        for (key, ty) in keys {
            if let Some(p) = t.key(key) {
                t.typed(p, key, ty);
            }
        }
        t.finish(0)
    }

    #[test]
    fn counts_per_pattern_with_bounded_samples() {
        let r = run(&[
            (b"okx:positions:1", "string"),
            (b"okx:positions:2", "string"),
            (b"okx:positions:3", "list"),
            (b"positions:index:1:okx", "set"),
            (b"session:1", "string"),
            (b"orders:okx:user:1:symbol:X:orders", "zset"),
        ]);
        let legacy = r.pattern("grid_positions.legacy").unwrap();
        assert_eq!(legacy.count, 3);
        assert_eq!(legacy.samples, ["okx:positions:1", "okx:positions:2"]);
        assert_eq!(legacy.type_mismatches, 1);
        assert_eq!(
            legacy.mismatch_samples,
            [TypeMismatch {
                key: "okx:positions:3".into(),
                actual: "list".into()
            }]
        );
        assert_eq!(r.pattern("grid_positions.index").unwrap().count, 1);
        assert_eq!(r.pattern("order_placed.orders").unwrap().count, 1);
        assert_eq!(r.unknown.count, 1);
        assert_eq!(
            (r.keys_scanned, r.legacy_keys, r.type_mismatches),
            (6, 3, 1)
        );
        assert!(!r.passed);
    }

    #[test]
    fn legacy_positions_key_beside_its_index_is_reappeared() {
        let schema = Schema::builtin();
        let mut t = Tally::new(&schema, 5);
        let mut feed = |key: &[u8], ty: &str, index_exists: bool| {
            let p = t.key(key).expect("typed pattern");
            let index = t.index_of(p, key);
            t.typed_beside(p, key, ty, index.is_some() && index_exists);
            index
        };
        assert_eq!(
            feed(b"okx:positions:u1", "string", true).as_deref(),
            Some("positions:index:u1:okx")
        );
        assert!(feed(b"okx:positions:u2", "string", false).is_some());
        // Gone before its type check: neither counted nor reappeared.
        assert!(feed(b"okx:positions:u3", "none", true).is_some());
        // Not a legacy positions key: never looked up.
        assert_eq!(feed(b"positions:index:u1:okx", "set", true), None);
        assert_eq!(
            feed(b"okx:user:u1:symbol:X:order_placed", "hash", true),
            None
        );
        let r = t.finish(0);
        assert_eq!(r.reappeared.count, 1);
        assert_eq!(r.reappeared.samples, ["okx:positions:u1"]);
        assert_eq!(r.legacy_keys, 3);
        assert!(!r.passed);
    }

    #[test]
    fn a_key_scan_returns_twice_counts_once() {
        let r = run(&[
            (b"okx:positions:1", "string"),
            (b"okx:positions:1", "string"),
            (b"x", ""),
            (b"x", ""),
        ]);
        assert_eq!(r.pattern("grid_positions.legacy").unwrap().count, 1);
        assert_eq!((r.keys_scanned, r.unknown.count), (2, 1));
    }

    #[test]
    fn vanished_keys_are_not_counted() {
        let r = run(&[(b"okx:positions:1", "none")]);
        assert_eq!(r.pattern("grid_positions.legacy").unwrap().count, 0);
        assert_eq!(r.vanished, 1);
        assert!(r.passed);
    }

    #[test]
    fn non_utf8_keys_are_unknown() {
        let r = run(&[(b"okx:positions:\xff", "string")]);
        assert_eq!(r.unknown.count, 1);
        // Shown with its bytes escaped, so it can be found exactly.
        assert_eq!(r.unknown.samples, [r"okx:positions:\xff"]);
        assert!(r.passed);
    }

    #[test]
    fn report_is_bounded_whatever_the_keyspace_size() {
        let schema = Schema::builtin();
        let mut t = Tally::new(&schema, 5);
        for i in 0..200_000u32 {
            let key = format!("session:{i}");
            assert_eq!(t.key(key.as_bytes()), None);
            let key = format!("positions:index:{i}:okx");
            let p = t.key(key.as_bytes()).unwrap();
            t.typed(p, key.as_bytes(), "set");
        }
        let r = t.finish(0);
        assert_eq!(r.unknown.count, 200_000);
        assert_eq!(r.unknown.samples.len(), 5);
        assert_eq!(r.pattern("grid_positions.index").unwrap().count, 200_000);
        assert!(serde_json::to_string(&r).unwrap().len() < 10_000);
    }
}
