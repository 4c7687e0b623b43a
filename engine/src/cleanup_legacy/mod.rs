//! Phase 1.5, `keyshift cleanup-legacy`: delete the legacy position-cache
//! keys (a cache: the application refills it), and nothing else.
//!
//! A key is deleted only if the schema classifies it under a pattern marked
//! `cleanup` (legacy kind only; see `schema/builtin.toml`), by its exact
//! name, never by a glob. Each deletion is one small script that checks
//! the key's type and unlinks it in one atomic step, so a key holding
//! another type than its pattern's is reported and left in place. Keys are
//! found by SCAN (never KEYS) and deleted in pipelined batches.

use std::time::Instant;

use crate::connection::RedisConn;
use redis::Value;
use serde::Serialize;

use crate::error::{EngineError, Result as EngineResult};
use crate::keys::schema::{RedisType, Schema};
use crate::validate::{scan_step, shown, types_of, SeenKeys, TypeMismatch};

/// KEYS[1] a key a cleanup pattern classified, ARGV[1] its pattern's type
/// (`any`: every type). Returns 1 when unlinked, 0 when the key is gone,
/// else the type that kept it.
const CHECK_AND_UNLINK: &str = include_str!("lua/check_and_unlink.lua");

#[derive(Debug, Clone)]
pub struct CleanupOptions {
    /// Read and count, delete nothing.
    pub dry_run: bool,
    /// SCAN COUNT per step.
    pub scan_count: usize,
    /// Deleted (or, dry-run, deletable) keys the report lists.
    pub samples: usize,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            scan_count: 1000,
            samples: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupPattern {
    pub id: String,
    pub template: String,
    #[serde(rename = "type")]
    pub expected_type: &'static str,
    /// Deleted, or in a dry run, would be.
    pub deleted: u64,
    pub wrong_type: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    pub dry_run: bool,
    /// Keys SCAN returned (a key SCAN returns twice counts twice here).
    pub keys_scanned: u64,
    /// Cleanup keys found = deleted + wrong_type + vanished.
    pub processed: u64,
    /// Deleted, or in a dry run, would be.
    pub deleted: u64,
    /// Left in place: their type is not their pattern's. Review them.
    pub wrong_type: u64,
    /// Gone (expired, deleted by someone else) before their turn.
    pub vanished: u64,
    pub patterns: Vec<CleanupPattern>,
    /// The first deleted (or deletable) keys.
    pub samples: Vec<String>,
    pub wrong_type_samples: Vec<TypeMismatch>,
    pub elapsed_ms: u64,
}

impl CleanupReport {
    /// Keys were left for review (wrong type): exit 3.
    pub fn needs_review(&self) -> bool {
        self.wrong_type > 0
    }
}

/// A key to delete and the pattern that made it one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub pattern: usize,
    pub key: Vec<u8>,
}

/// What happened to one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Deleted, or in a dry run, would be.
    Deleted,
    Vanished,
    WrongType(String),
}

/// A schema that marks no pattern `cleanup`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the schema marks no pattern `cleanup = true`, so cleanup-legacy may delete nothing; mark the legacy cache patterns in the schema file")]
pub struct NothingToClean;

/// The pure part of a cleanup: which keys to delete, and the count.
#[derive(Debug)]
pub struct Cleanup<'s> {
    schema: &'s Schema,
    opts: CleanupOptions,
    seen: SeenKeys,
    report: CleanupReport,
}

impl<'s> Cleanup<'s> {
    pub fn new(schema: &'s Schema, opts: &CleanupOptions) -> Result<Self, NothingToClean> {
        let patterns: Vec<CleanupPattern> = schema
            .patterns()
            .iter()
            .map(|p| CleanupPattern {
                id: p.id.clone(),
                template: p.template.clone(),
                expected_type: p.redis_type.as_str(),
                deleted: 0,
                wrong_type: 0,
            })
            .collect();
        if !schema.patterns().iter().any(|p| p.cleanup) {
            return Err(NothingToClean);
        }
        Ok(Cleanup {
            schema,
            opts: opts.clone(),
            seen: SeenKeys::default(),
            report: CleanupReport {
                dry_run: opts.dry_run,
                keys_scanned: 0,
                processed: 0,
                deleted: 0,
                wrong_type: 0,
                vanished: 0,
                patterns,
                samples: Vec::new(),
                wrong_type_samples: Vec::new(),
                elapsed_ms: 0,
            },
        })
    }

    /// The keys of one SCAN step that are to be deleted: those a cleanup
    /// pattern classifies, each once. Unknown and non-UTF-8 keys never are.
    pub fn select(&mut self, scanned: Vec<Vec<u8>>) -> Vec<Candidate> {
        self.report.keys_scanned += scanned.len() as u64;
        let mut out = Vec::new();
        for key in scanned {
            let pattern = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| self.schema.classify(k))
                .map(|m| m.index)
                .filter(|&i| self.schema.patterns()[i].cleanup);
            if let Some(pattern) = pattern {
                if self.seen.first_time(&key) {
                    out.push(Candidate { pattern, key });
                }
            }
        }
        out
    }

    pub fn expected_type(&self, c: &Candidate) -> RedisType {
        self.schema.patterns()[c.pattern].redis_type
    }

    /// A dry run's outcome from a TYPE reply: what the script would do.
    pub fn outcome_of_type(&self, c: &Candidate, actual: &str) -> KeyOutcome {
        match actual {
            "none" => KeyOutcome::Vanished,
            t if self.expected_type(c).admits(t) => KeyOutcome::Deleted,
            t => KeyOutcome::WrongType(t.to_owned()),
        }
    }

    pub fn record(&mut self, c: &Candidate, outcome: KeyOutcome) {
        let r = &mut self.report;
        r.processed += 1;
        let p = &mut r.patterns[c.pattern];
        match outcome {
            KeyOutcome::Deleted => {
                r.deleted += 1;
                p.deleted += 1;
                if r.samples.len() < self.opts.samples {
                    r.samples.push(shown(&c.key));
                }
            }
            KeyOutcome::Vanished => r.vanished += 1,
            KeyOutcome::WrongType(actual) => {
                r.wrong_type += 1;
                p.wrong_type += 1;
                if r.wrong_type_samples.len() < self.opts.samples {
                    r.wrong_type_samples.push(TypeMismatch {
                        key: shown(&c.key),
                        actual,
                    });
                }
            }
        }
    }

    /// The report, listing only the patterns cleanup may delete from.
    pub fn finish(mut self, elapsed_ms: u64) -> CleanupReport {
        let cleanup: Vec<bool> = self.schema.patterns().iter().map(|p| p.cleanup).collect();
        let mut i = 0;
        self.report.patterns.retain(|_| {
            i += 1;
            cleanup[i - 1]
        });
        self.report.elapsed_ms = elapsed_ms;
        self.report
    }
}

/// Runs Phase 1.5 (or its dry run, per the options `cleanup` was made
/// with) over the whole keyspace. `progress` is called with the number of
/// keys each SCAN step returned.
pub async fn cleanup_legacy(
    conn: &RedisConn,
    mut cleanup: Cleanup<'_>,
    progress: &dyn Fn(usize),
) -> EngineResult<CleanupReport> {
    let started = Instant::now();
    let mut cursor = 0u64;
    loop {
        let (next, keys) = scan_step(conn, cursor, cleanup.opts.scan_count).await?;
        progress(keys.len());
        let candidates = cleanup.select(keys);
        let outcomes = if cleanup.opts.dry_run {
            let keys: Vec<&[u8]> = candidates.iter().map(|c| c.key.as_slice()).collect();
            types_of(conn, &keys)
                .await?
                .iter()
                .zip(&candidates)
                .map(|(t, c)| cleanup.outcome_of_type(c, t))
                .collect()
        } else {
            unlink(conn, &cleanup, &candidates).await?
        };
        for (c, o) in candidates.iter().zip(outcomes) {
            cleanup.record(c, o);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(cleanup.finish(started.elapsed().as_millis() as u64))
}

/// One pipeline of check-and-unlink scripts, one key each (so it works
/// where a batch's keys span cluster slots too).
async fn unlink(
    conn: &RedisConn,
    cleanup: &Cleanup<'_>,
    candidates: &[Candidate],
) -> EngineResult<Vec<KeyOutcome>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for c in candidates {
        pipe.cmd("EVAL")
            .arg(CHECK_AND_UNLINK)
            .arg(1)
            .arg(&c.key)
            .arg(cleanup.expected_type(c).as_str());
    }
    let mut conn = conn.clone();
    let replies: Vec<Value> = pipe
        .query_async(&mut conn)
        .await
        .map_err(EngineError::redis("deleting legacy cache keys"))?;
    Ok(replies.into_iter().map(parse_reply).collect())
}

fn parse_reply(v: Value) -> KeyOutcome {
    match v {
        Value::Int(1) => KeyOutcome::Deleted,
        Value::Int(_) | Value::Nil => KeyOutcome::Vanished,
        Value::BulkString(t) => KeyOutcome::WrongType(shown(&t)),
        Value::SimpleString(t) => KeyOutcome::WrongType(t),
        other => KeyOutcome::WrongType(format!("unexpected reply {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<Vec<u8>> {
        k.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn selected(keys_in: &[&str]) -> Vec<String> {
        let schema = Schema::builtin();
        let mut c = Cleanup::new(&schema, &CleanupOptions::default()).unwrap();
        c.select(keys(keys_in))
            .into_iter()
            .map(|c| shown(&c.key))
            .collect()
    }

    #[test]
    fn selects_legacy_cache_keys_only() {
        let picked = selected(&[
            "position:1:BTC-USDT-SWAP",
            "user:1:position:BTC-USDT-SWAP:long",
            "position:1:okx:BTC-USDT-SWAP:long",
            "okx:positions:1",
            "okx:user:1:symbol:BTC:order_placed",
            "okx:positions:1:backup:20250101_000000",
            "position:1:BTC:extra:x:y",
            "user:1:position:BTC:net",
            "position:*:*",
            "session:1",
        ]);
        assert_eq!(
            picked,
            [
                "position:1:BTC-USDT-SWAP",
                "user:1:position:BTC-USDT-SWAP:long",
                "position:*:*"
            ]
        );
    }

    #[test]
    fn a_key_is_a_candidate_once() {
        let picked = selected(&["position:1:X", "position:1:X"]);
        assert_eq!(picked, ["position:1:X"]);
    }

    #[test]
    fn wrong_type_is_reported_not_deleted() {
        let schema = Schema::builtin();
        let mut c = Cleanup::new(&schema, &CleanupOptions::default()).unwrap();
        let cands = c.select(keys(&["position:1:X", "position:2:X", "position:3:X"]));
        let outcomes: Vec<KeyOutcome> = ["string", "hash", "none"]
            .iter()
            .zip(&cands)
            .map(|(t, cand)| c.outcome_of_type(cand, t))
            .collect();
        assert_eq!(
            outcomes,
            [
                KeyOutcome::Deleted,
                KeyOutcome::WrongType("hash".into()),
                KeyOutcome::Vanished
            ]
        );
        for (cand, o) in cands.iter().zip(outcomes) {
            c.record(cand, o);
        }
        let r = c.finish(0);
        assert_eq!(
            (r.processed, r.deleted, r.wrong_type, r.vanished),
            (3, 1, 1, 1)
        );
        assert_eq!(r.samples, ["position:1:X"]);
        assert!(r.needs_review());
        let ids: Vec<&str> = r.patterns.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["position_cache.legacy", "position_cache.legacy_user"]);
    }

    #[test]
    fn a_schema_without_cleanup_patterns_deletes_nothing() {
        let src = "exchanges = [\"okx\"]\n[[pattern]]\nid = \"a\"\nfamily = \"f\"\nkind = \"legacy\"\ntemplate = \"a\"\ntype = \"any\"\n";
        let schema = Schema::from_toml(src).unwrap();
        assert!(Cleanup::new(&schema, &CleanupOptions::default()).is_err());
    }

    #[test]
    fn script_replies_map_to_outcomes() {
        assert_eq!(parse_reply(Value::Int(1)), KeyOutcome::Deleted);
        assert_eq!(parse_reply(Value::Int(0)), KeyOutcome::Vanished);
        assert_eq!(
            parse_reply(Value::BulkString(b"hash".to_vec())),
            KeyOutcome::WrongType("hash".into())
        );
    }
}
