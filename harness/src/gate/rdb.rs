//! `keyshift gate --rdb FILE`: a production snapshot as the gate's keyspace.
//!
//! The file becomes the disposable server's `dump.rdb`, placed in its
//! working dir before it starts, so Redis itself loads it (any type, any
//! encoding it knows). The file is checked first (exists, readable, RDB
//! magic): a wrong argument is a usage error (exit 2) and starts nothing.
//! A server that then refuses the file (a newer RDB format, a bad
//! checksum, a truncated file) is a backend that cannot serve it (exit 4),
//! explained from the server's own log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::runner::MigrationReport;
use keyshift_engine::keys::LegacyPositionsKey;
use keyshift_engine::run::invariant::InvariantResult;
use keyshift_engine::run::journal::Outcome;
use serde::Serialize;

use crate::backend::{BackendError, BackendKind, ServerSetup};
use crate::digest::Digest;
use crate::error::HarnessError;
use crate::report::SnapshotReport;
use crate::seed::{KeyEntry, KeyValue, Keyspace};

/// "REDIS" and four ASCII digits: the RDB format version.
const MAGIC: &[u8] = b"REDIS";
const HEADER_LEN: usize = 9;

/// A snapshot file that passed the header check.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub file: PathBuf,
    pub rdb_version: u32,
    pub bytes: u64,
}

/// The RDB format version in a file's first bytes.
pub fn parse_header(head: &[u8]) -> Result<u32, String> {
    if head.len() < HEADER_LEN || !head.starts_with(MAGIC) {
        let shown = String::from_utf8_lossy(&head[..head.len().min(HEADER_LEN)]).into_owned();
        return Err(format!(
            "not an RDB file: it starts with {shown:?}, an RDB snapshot starts with \"REDIS\" and a 4-digit format version (e.g. \"REDIS0010\")"
        ));
    }
    let digits = &head[MAGIC.len()..HEADER_LEN];
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an RDB file: \"REDIS\" is followed by {:?}, not a 4-digit format version",
                String::from_utf8_lossy(digits)
            )
        })
}

/// Checks `--rdb FILE` before any server starts: it exists, is a readable
/// regular file and starts as an RDB does. Each failure is a usage error.
pub fn open(file: &Path) -> Result<Snapshot, HarnessError> {
    let usage = |why: String| HarnessError::Usage(format!("--rdb {}: {why}", file.display()));
    let meta = std::fs::metadata(file).map_err(|e| {
        usage(format!(
            "cannot read it ({e}); give the path of an RDB snapshot (dump.rdb)"
        ))
    })?;
    if !meta.is_file() {
        return Err(usage(
            "not a regular file; give the path of an RDB snapshot (dump.rdb)".into(),
        ));
    }
    let mut head = Vec::with_capacity(HEADER_LEN);
    std::fs::File::open(file)
        .and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut head))
        .map_err(|e| usage(format!("cannot read it ({e})")))?;
    let rdb_version = parse_header(&head).map_err(usage)?;
    Ok(Snapshot {
        file: file.to_path_buf(),
        rdb_version,
        bytes: meta.len(),
    })
}

/// The server setup that loads `snap` on start; a large file may take a
/// while to load (allowing 10 MB/s, well under what Redis reads).
pub fn setup(snap: &Snapshot) -> ServerSetup {
    let loading = Duration::from_secs(snap.bytes / 10_000_000);
    ServerSetup::new()
        .file(&snap.file, "dump.rdb")
        .ready_timeout(Duration::from_secs(30) + loading)
}

/// Why a server refused the file, read from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadFailure {
    /// "Can't handle RDB format version N".
    Version(u32),
    /// "Wrong signature trying to load DB from file".
    Signature,
    /// "Wrong RDB checksum".
    Checksum,
    /// "Short read or OOM loading DB": truncated, or too big for memory.
    ShortRead,
    /// Any other "Fatal error loading the DB" line.
    Other(String),
}

/// The load failure a redis-server log reports, if any.
pub fn diagnose(log: &str) -> Option<LoadFailure> {
    if let Some(rest) = log
        .lines()
        .find_map(|l| l.split("Can't handle RDB format version").nth(1))
    {
        let digits: String = rest
            .trim()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(v) = digits.parse() {
            return Some(LoadFailure::Version(v));
        }
    }
    if log.contains("Wrong signature trying to load DB") {
        return Some(LoadFailure::Signature);
    }
    if log.contains("Wrong RDB checksum") {
        return Some(LoadFailure::Checksum);
    }
    if log.contains("Short read or OOM loading DB") {
        return Some(LoadFailure::ShortRead);
    }
    log.lines()
        .find(|l| l.contains("Fatal error loading the DB"))
        .map(|l| LoadFailure::Other(l.trim().to_owned()))
}

/// "7.0.15" from the "Redis version=7.0.15, bits=64, ..." startup line.
pub fn server_version(log: &str) -> Option<&str> {
    log.lines().find_map(|l| {
        let rest = l.split("Redis version=").nth(1)?;
        rest.split([',', ' ']).next().filter(|v| !v.is_empty())
    })
}

/// The oldest Redis that writes (and so reads) RDB format `version`.
fn oldest_redis_for(version: u32) -> Option<&'static str> {
    Some(match version {
        9 => "5.0",
        10 => "7.0",
        11 => "7.2",
        12 => "7.4",
        _ => return None,
    })
}

/// Turns a failed start on `snap` into what the operator needs: the file,
/// its RDB version, the server's version (from its log, else
/// `process_version`: the log's tail may have lost its first lines) and
/// what to do. Other failures pass through unchanged.
pub fn explain(
    err: BackendError,
    snap: &Snapshot,
    kind: BackendKind,
    process_version: Option<&str>,
) -> BackendError {
    // `auto` may have picked either; a container's failure says which.
    let kind = match err {
        BackendError::ContainerNotReady { .. } => BackendKind::Docker,
        _ => kind,
    };
    let Some(log) = err.server_log() else {
        return err;
    };
    let Some(failure) = diagnose(log) else {
        return err;
    };
    let version = server_version(log).or(match kind {
        BackendKind::Docker => None,
        _ => process_version,
    });
    let server = version.map_or_else(|| "this Redis".to_owned(), |v| format!("Redis {v}"));
    let file = snap.file.display().to_string();
    let use_newer = match kind {
        BackendKind::Docker => "set KEYSHIFT_REDIS_IMAGE to an image of that Redis (or build keyshift/redis:local from a newer host redis-server)",
        _ => "put that redis-server first on PATH (or use --backend docker with KEYSHIFT_REDIS_IMAGE set to an image of it)",
    };
    let reason = match failure {
        LoadFailure::Version(v) => format!(
            "it is RDB format version {v}{}, which {server} cannot read (its log: \"Can't handle RDB format version {v}\"). Run the gate with a Redis at least as new as the one that wrote the snapshot: {use_newer}",
            oldest_redis_for(v).map(|r| format!(" (written by Redis {r} or newer)")).unwrap_or_default()
        ),
        LoadFailure::Signature => format!(
            "{server} found no RDB signature in it (RDB version {} in its header); is it a complete RDB file?",
            snap.rdb_version
        ),
        LoadFailure::Checksum => format!(
            "{server} found a wrong checksum: the file (RDB version {}) is damaged or incomplete; copy it again",
            snap.rdb_version
        ),
        LoadFailure::ShortRead => format!(
            "{server} hit its end early or ran out of memory loading it (RDB version {}): copy it again, or give the machine more memory",
            snap.rdb_version
        ),
        LoadFailure::Other(line) => format!(
            "{server} could not load it (RDB version {}): {line}",
            snap.rdb_version
        ),
    };
    BackendError::RdbNotLoaded { file, reason }
}

/// Reads every legacy positions key the loaded snapshot holds as a string
/// (the ones `pre` names): the model the writers pick their users from and
/// the counts are judged against.
pub async fn read_legacy(
    conn: &RedisConn,
    pre: &Digest,
    exchanges: &[String],
) -> anyhow::Result<Keyspace> {
    let names: Vec<&String> = pre
        .keys
        .iter()
        .filter(|(k, d)| d.kind == "string" && LegacyPositionsKey::parse(k, exchanges).is_some())
        .map(|(k, _)| k)
        .collect();
    let mut keyspace = Keyspace::new();
    for chunk in names.chunks(500) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.get(k.as_str());
        }
        let mut c = conn.clone();
        let values: Vec<Option<Vec<u8>>> = pipe.query_async(&mut c).await?;
        for (k, v) in chunk.iter().zip(values) {
            if let Some(v) = v {
                keyspace.push(KeyEntry::new(k.as_str(), KeyValue::String(v)));
            }
        }
    }
    Ok(keyspace)
}

/// Top-level entries of a legacy value (array items or object fields),
/// counted here from the JSON, apart from the engine's planner.
fn entries(value: &[u8]) -> Option<usize> {
    match serde_json::from_slice::<serde_json::Value>(value).ok()? {
        serde_json::Value::Array(a) => Some(a.len()),
        serde_json::Value::Object(o) => Some(o.len()),
        _ => None,
    }
}

/// The snapshot's `counts`, without a generator's truth: every legacy
/// positions key the loaded snapshot holds has exactly one outcome and no
/// other key has one; each migrated key carried as many positions as its
/// legacy JSON has entries; the run found every legacy key; and the plan
/// (dry run) foresaw what the run did.
pub fn check_counts(
    r: &mut InvariantResult,
    pre: &Digest,
    legacy: &Keyspace,
    exchanges: &[String],
    plan: &MigrationReport,
    run: &MigrationReport,
    outcomes: &BTreeMap<String, Outcome>,
) {
    let in_snapshot: BTreeSet<&str> = pre
        .keys
        .keys()
        .filter(|k| LegacyPositionsKey::parse(k, exchanges).is_some())
        .map(String::as_str)
        .collect();
    let values: BTreeMap<&str, &[u8]> = legacy
        .entries
        .iter()
        .filter_map(|e| match &e.value {
            KeyValue::String(v) => Some((e.key.as_str(), v.as_slice())),
            _ => None,
        })
        .collect();
    for key in &in_snapshot {
        match outcomes.get(*key) {
            None => r.mismatch(|| format!("{key}: in the snapshot, but the run left no outcome")),
            Some(Outcome::Migrated {
                positions, skipped, ..
            }) => {
                let found = values.get(key).and_then(|v| entries(v));
                r.check(match found {
                    Some(n) if n == positions + skipped => Ok(()),
                    Some(n) => Err(format!(
                        "{key}: the snapshot's value has {n} entries, the run migrated {positions} and skipped {skipped}"
                    )),
                    None => Err(format!(
                        "{key}: migrated, but the snapshot's value is not a JSON array or object"
                    )),
                });
                r.check(if *skipped == 0 || run.skip_closed {
                    Ok(())
                } else {
                    Err(format!(
                        "{key}: {skipped} position(s) skipped without --skip-closed"
                    ))
                });
            }
            Some(_) => r.ok(),
        }
    }
    for key in outcomes
        .keys()
        .filter(|k| !in_snapshot.contains(k.as_str()))
    {
        r.extra(|| format!("{key}: an outcome for a key the snapshot does not hold"));
    }
    r.check(if run.totals.legacy_keys_found == in_snapshot.len() {
        Ok(())
    } else {
        Err(format!(
            "the snapshot holds {} legacy positions keys, the run found {}",
            in_snapshot.len(),
            run.totals.legacy_keys_found
        ))
    });
    super::checks::plan_foresaw_run(r, plan, run);
}

/// Keys per database other than 0 in an `INFO keyspace` answer
/// (`db3:keys=5,expires=0,avg_ttl=0`).
pub fn other_databases(info: &str) -> BTreeMap<u32, u64> {
    info.lines()
        .filter_map(|l| {
            let (db, stats) = l.trim().strip_prefix("db")?.split_once(':')?;
            let keys = stats.split(',').find_map(|kv| kv.strip_prefix("keys="))?;
            Some((db.parse().ok()?, keys.parse().ok()?))
        })
        .filter(|(db, _)| *db != 0)
        .collect()
}

/// [`other_databases`] of the server behind `conn`.
pub async fn other_databases_of(conn: &RedisConn) -> anyhow::Result<BTreeMap<u32, u64>> {
    let mut c = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut c)
        .await?;
    Ok(other_databases(&info))
}

/// The report's account of the snapshot, as the server loaded it.
pub fn report(
    snap: &Snapshot,
    loaded: &Digest,
    exchanges: &[String],
    other_databases: BTreeMap<u32, u64>,
) -> SnapshotReport {
    let legacy: Vec<LegacyPositionsKey> = loaded
        .keys
        .keys()
        .filter_map(|k| LegacyPositionsKey::parse(k, exchanges))
        .collect();
    let users: BTreeSet<&str> = legacy.iter().map(|k| k.user_id.as_str()).collect();
    SnapshotReport {
        file: snap.file.display().to_string(),
        rdb_version: snap.rdb_version,
        bytes: snap.bytes,
        keys_loaded: loaded.keys.len(),
        legacy_position_keys: legacy.len(),
        legacy_users: users.len(),
        other_databases,
    }
}

#[cfg(test)]
#[path = "rdb_tests.rs"]
mod tests;
