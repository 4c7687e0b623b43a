//! `keyshift verify grid-positions`: the keyspace judged by the oracle
//! (keyshift-oracle), which shares no code with the engine that migrated
//! it. Reads only.
//!
//! The before-image is `--before FILE` (a `keyshift snapshot` taken before
//! the migration), or else the runs' backups: every run of the migration
//! that was not rolled back (or `--run ID`), each backup held to the
//! SHA-256 its run journaled when it read the legacy value, and to 7 days
//! from when it was written. Users are judged 64 at a time, reading just
//! the keys the oracle expects them to have, as the journals are walked
//! (`journal`); beside that, one SCAN over `positions:*` finds
//! migrated-looking hashes no run accounts for (`orphans`). Neither holds
//! more than a few batches: verify's memory does not grow with the
//! keyspace. On a plain TCP server the keys are read through sockets of
//! verify's own (`crate::wire`).

use std::path::Path;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::runner::MIGRATION;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::run::journal::{runs_of, Outcome, RunRecord, RunState};

pub mod journal;
mod orphans;
use keyshift_oracle::grid::add_legacy;
use keyshift_oracle::keys::{backup_key, classify, index_key, member_hash_key, GridKey};
use keyshift_oracle::{Before, Entry, GridOptions, Image, Judgement, Status, Value, Verdict};
use serde::Serialize;

use super::{print_report, progress_bar};
use crate::error::HarnessError;
use crate::exit::Outcome as Exit;
use crate::observe::{grid_patterns, read_families, read_keys};
use crate::snapshot;
use crate::wire::Reader;

/// Legacy keys judged per round of reads. Each chunk waits on the server
/// between its rounds (backups, then the keys they imply), so more, smaller
/// chunks in flight (`READS_AHEAD`) keep both cores busy: on one 100k-user
/// keyspace 64 x 4 took 8.6-9.3 s and peaked at 41-47 MB, 128 x 2 took
/// 10.1-10.3 s (35-45 MB), 128 x 3 9.3-9.5 s (48-62 MB), 48 x 6 no less
/// than 64 x 4. (Before chunks ran on threads of their own, 500 x 4 had
/// peaked at 146-153 MB.)
const CHUNK: usize = 64;

/// The invariants verify requires: each must pass (not run fails).
pub const REQUIRED: [&str; 5] = ["counts", "index", "fields", "backup", "ttl"];

#[derive(Debug, Clone, Serialize)]
pub struct RunLine {
    pub run_id: String,
    pub stamp: String,
    pub state: String,
    /// Judged, or why not.
    pub judged: bool,
    pub note: String,
}

/// One invariant in `--json`: the oracle's judgement, with the fields
/// scripts read from earlier versions (`passed`, `processed`, `matching`,
/// `mismatched`) kept.
#[derive(Debug, Clone, Serialize)]
pub struct InvariantLine {
    pub id: &'static str,
    pub description: &'static str,
    /// `pass`, `fail` or `not run`.
    pub status: &'static str,
    pub passed: bool,
    pub processed: u64,
    pub matching: u64,
    pub mismatched: u64,
    pub extra: u64,
    pub expired: u64,
    pub samples: Vec<String>,
    pub not_run_reason: Option<String>,
}

impl From<&Judgement> for InvariantLine {
    fn from(j: &Judgement) -> Self {
        Self {
            id: j.id,
            description: j.description,
            status: j.status.as_str(),
            passed: j.status == Status::Pass,
            processed: j.checked,
            matching: j.checked - j.failed,
            mismatched: j.failed,
            extra: j.extra,
            expired: j.expired,
            samples: j.samples.clone(),
            not_run_reason: j.not_run_reason.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub migration: &'static str,
    /// What the keyspace was judged against.
    pub before: String,
    /// The newest run judged, and its backup stamp.
    pub run_id: Option<String>,
    pub stamp: Option<String>,
    pub runs: Vec<RunLine>,
    /// The required invariants (and any other that ran).
    pub invariants: Vec<InvariantLine>,
    pub tally: keyshift_oracle::Tally,
    /// A few inputs DESIGN does not decide, and what became of them.
    pub ambiguous: Vec<String>,
    pub passed: bool,
    #[serde(skip)]
    pub verdict: Verdict,
}

pub struct VerifyArgs<'a> {
    pub url: &'a str,
    pub before: Option<&'a Path>,
    pub run: Option<&'a str>,
    pub json: bool,
}

pub async fn run(args: VerifyArgs<'_>) -> anyhow::Result<Exit> {
    let conn = connect(args.url).await?;
    let reader = Reader::open(args.url, &conn)?;
    let report = match args.before {
        Some(file) => against_snapshot(&reader, file).await?,
        None => against_runs(&conn, &reader, args.run).await?,
    };
    print_report(&report, args.json, render)?;
    Ok(Exit::passed_if(report.passed))
}

fn report(before: String, runs: Vec<RunLine>, verdict: Verdict) -> VerifyReport {
    let newest = runs.iter().rev().find(|l| l.judged);
    settle(VerifyReport {
        migration: MIGRATION,
        before,
        run_id: newest.map(|l| l.run_id.clone()),
        stamp: newest.map(|l| l.stamp.clone()),
        invariants: verdict
            .invariants
            .iter()
            .filter(|j| REQUIRED.contains(&j.id) || j.status != Status::NotRun)
            .map(InvariantLine::from)
            .collect(),
        tally: verdict.tally.clone(),
        ambiguous: verdict.ambiguous.clone(),
        runs,
        verdict,
        passed: false,
    })
}

fn settle(mut report: VerifyReport) -> VerifyReport {
    report.passed = REQUIRED.iter().all(|id| {
        report
            .verdict
            .get(id)
            .is_some_and(|j| j.status == Status::Pass)
    });
    report
}

/// `--before FILE`: the snapshot against the families as they are now.
pub async fn against_snapshot(reader: &Reader, file: &Path) -> anyhow::Result<VerifyReport> {
    let (header, image) = snapshot::read(file)?;
    if header.migration != MIGRATION {
        return Err(HarnessError::Usage(format!(
            "--before {}: a snapshot of {}, not {MIGRATION}",
            file.display(),
            header.migration
        ))
        .into());
    }
    let after = read_families(reader, &grid_patterns(&header.exchanges)).await?;
    let before = Before {
        image,
        complete: false,
        ..Before::default()
    };
    let verdict =
        keyshift_oracle::judge_grid_positions(&before, &after, &options(&header.exchanges, false));
    Ok(report(
        format!("snapshot {}", file.display()),
        Vec::new(),
        verdict,
    ))
}

fn options(exchanges: &[String], skip_closed: bool) -> GridOptions {
    let mut opts = GridOptions::new(exchanges.to_vec());
    opts.skip_closed = skip_closed;
    opts.max_positions_per_user = Some(
        keyshift_engine::grid_positions::runner::MigrateOptions::DEFAULT_MAX_POSITIONS_PER_USER,
    );
    opts
}

/// Which runs verify judges: `--run ID`, or every run not rolled back.
fn pick_runs(runs: &[RunRecord], only: Option<&str>) -> anyhow::Result<Vec<RunLine>> {
    if let Some(id) = only {
        if !runs.iter().any(|r| r.run_id == id) {
            return Err(HarnessError::Usage(format!(
                "--run {id}: no {MIGRATION} run with that id (`keyshift status` lists them)"
            ))
            .into());
        }
    }
    Ok(runs
        .iter()
        .map(|r| {
            let rolled_back = r.state == RunState::RolledBack;
            let picked = only.is_none_or(|id| id == r.run_id);
            let (judged, note) = match (picked, rolled_back) {
                (false, _) => (false, "left out by --run".to_owned()),
                (true, true) => (
                    false,
                    "rolled back: its users are back in the legacy layout".to_owned(),
                ),
                (true, false) => (true, String::new()),
            };
            RunLine {
                run_id: r.run_id.clone(),
                stamp: r.stamp.clone(),
                state: serde_json::to_value(r.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                judged,
                note,
            }
        })
        .collect())
}

/// Without `--before`: the runs' backups as the before-image. The
/// journals are read through `conn`, the keys judged through `reader`.
pub async fn against_runs(
    conn: &RedisConn,
    reader: &Reader,
    only: Option<&str>,
) -> anyhow::Result<VerifyReport> {
    let runs = runs_of(conn, MIGRATION).await?;
    if runs.is_empty() {
        return Err(keyshift_engine::EngineError::NoRun.into());
    }
    let lines = pick_runs(&runs, only)?;
    // Newest first: the order the journals are walked in.
    let judged: Vec<&RunRecord> = runs
        .iter()
        .zip(&lines)
        .filter(|(_, line)| line.judged)
        .map(|(run, _)| run)
        .rev()
        .collect();
    let exchanges: Vec<String> = {
        let mut all: Vec<String> = runs.iter().flat_map(|r| r.exchanges.clone()).collect();
        all.sort();
        all.dedup();
        all
    };
    let skip_closed = runs.iter().any(|r| r.skip_closed);
    let opts = options(&exchanges, skip_closed);
    let bar = progress_bar(
        journal::journaled(conn, &judged).await?,
        "verify grid-positions",
    );
    // The users, chunk by chunk, and the orphan sweep are independent
    // reads: run side by side, each fills the other's waits on the server.
    let (mut verdict, orphans) = tokio::try_join!(
        judge_users(conn, reader, &judged, &opts, &bar),
        orphans::sweep(conn, reader, &judged, &opts),
    )?;
    bar.finish_and_clear();
    orphans::absorb(&mut verdict, &orphans);
    let judged = lines.iter().filter(|l| l.judged).count();
    Ok(report(
        format!("the backups of {judged} run(s), each held to the digest its run journaled"),
        lines,
        verdict,
    ))
}

/// Judges every user the journals of `judged` (newest first) name, by
/// their latest outcome, a chunk at a time.
async fn judge_users(
    conn: &RedisConn,
    reader: &Reader,
    judged: &[&RunRecord],
    opts: &GridOptions,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Verdict> {
    let mut latest = journal::LatestOutcomes::new(conn.clone(), judged.to_vec());
    let mut verdict: Option<Verdict> = None;
    // Each chunk is read and judged on a blocking thread of its own, which
    // drives its reads (the client thread's runtime does the I/O): its
    // replies are decoded, its users planned and judged, and its memory
    // freed on one thread, where handing images from the client thread to
    // a judging thread spent a tenth of verify's CPU on cross-thread frees.
    let mut in_flight = std::collections::VecDeque::new();
    loop {
        while in_flight.len() < READS_AHEAD {
            let Some(chunk) = latest.next_chunk(CHUNK).await? else {
                break;
            };
            let (reader, opts) = (reader.clone(), opts.clone());
            in_flight.push_back(tokio::task::spawn_blocking(move || {
                let n = chunk.len();
                let (before, after) = tokio::runtime::Handle::current()
                    .block_on(chunk_images(&reader, chunk, &opts))?;
                let v = keyshift_oracle::judge_grid_positions(&before, &after, &opts);
                anyhow::Ok((v, n))
            }));
        }
        let Some(next) = in_flight.pop_front() else {
            break;
        };
        let (v, n) = next.await??;
        match &mut verdict {
            Some(all) => all.absorb(&v),
            None => verdict = Some(v),
        }
        bar.inc(n as u64);
    }
    Ok(verdict.unwrap_or_else(|| {
        keyshift_oracle::judge_grid_positions(&Before::default(), &Image::default(), opts)
    }))
}

/// A legacy key, the backup stamp of the run that last met it, and the
/// outcome that run journaled.
type Owned = journal::Latest;

/// Chunks read and judged at once (see `CHUNK`).
const READS_AHEAD: usize = 4;

/// One chunk's before-image (from backups and the journal) and the keys
/// of those users as they are now.
async fn chunk_images(
    reader: &Reader,
    chunk: Vec<Owned>,
    opts: &GridOptions,
) -> anyhow::Result<(Before, Image)> {
    let backup_keys: Vec<Vec<u8>> = chunk
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Migrated { .. }))
        .map(|(key, stamp, _)| backup_key(key, stamp).into_bytes())
        .collect();
    let backups = read_keys(reader, &backup_keys).await?;
    let (mut before, wanted) = plan_reads(&chunk, &backups, opts);
    let mut after = read_keys(reader, &wanted).await?;
    after.keys.extend(backups.keys);
    after.read_until_ms = after.read_until_ms.max(backups.read_until_ms);
    // The index's members name hashes too (maybe ones not expected).
    let members: Vec<Vec<u8>> = after
        .keys
        .iter()
        .filter_map(|(k, e)| match (classify(k, &opts.exchanges), &e.value) {
            (GridKey::Index { user, exchange }, Value::Set(ms)) => Some(
                ms.iter()
                    .map(|m| member_hash_key(user, exchange, m))
                    .filter(|k| !after.keys.contains_key(k))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    let more = read_keys(reader, &members).await?;
    after.keys.extend(more.keys);
    after.read_until_ms = after.read_until_ms.max(more.read_until_ms);
    // A quarantined key still there keeps the TTL it has now.
    for (key, entry) in before.image.keys.iter_mut() {
        if matches!(entry.value, Value::StringDigest(_)) && !before.stamps.contains_key(key) {
            if let Some(now) = after.keys.get(key) {
                entry.pttl_ms = now.pttl_ms;
                entry.read_at_ms = now.read_at_ms;
            }
        }
    }
    Ok((before, after))
}

/// A chunk's before-image, from its backups (`backups`, read already) and
/// what the journal recorded, and the keys to read now: each legacy key
/// and the keys the oracle expects of it.
fn plan_reads(chunk: &[Owned], backups: &Image, opts: &GridOptions) -> (Before, Vec<Vec<u8>>) {
    let mut before = Before::default();
    let mut wanted: Vec<Vec<u8>> = Vec::new();
    for (key, stamp, outcome) in chunk {
        let legacy = key.as_bytes().to_vec();
        wanted.push(legacy.clone());
        match outcome {
            Outcome::Migrated {
                pttl, at, digest, ..
            } => {
                // Already read above: merged into the after-image below.
                let value = match backups.get(&backup_key(key, stamp)).map(|e| &e.value) {
                    Some(Value::String(bytes)) => Value::String(bytes.clone()),
                    // Missing or not a string: the oracle finds it lost.
                    _ => Value::StringDigest(digest.clone()),
                };
                before.stamps.insert(legacy.clone(), stamp.clone());
                if !digest.is_empty() {
                    before.recorded_digests.insert(legacy, digest.clone());
                }
                let entry = Entry {
                    value,
                    pttl_ms: *pttl,
                    read_at_ms: *at,
                };
                let expected = add_legacy(&mut before, key, entry, opts);
                if expected.is_empty() {
                    // No backup to say what was migrated: the index still
                    // names the user's hashes (orphans::sweep takes them
                    // as read with the user).
                    if let GridKey::Legacy { exchange, user } =
                        classify(key.as_bytes(), &opts.exchanges)
                    {
                        wanted.push(index_key(user, exchange).into_bytes());
                    }
                }
                wanted.extend(expected.into_iter().map(String::into_bytes));
            }
            Outcome::Quarantined {
                digest: Some(d), ..
            } => {
                // What it held is known by its digest; its TTL is not
                // journaled, so it is taken as it is now (or none).
                before.image.insert(
                    legacy,
                    Entry {
                        value: Value::StringDigest(d.clone()),
                        pttl_ms: -1,
                        read_at_ms: 0,
                    },
                );
            }
            _ => {}
        }
    }
    (before, wanted)
}

pub fn render(r: &VerifyReport) -> String {
    let mut out = format!("verify {} — against {}\n", r.migration, r.before);
    for run in &r.runs {
        out.push_str(&format!(
            "run {} (stamp {}, {}){}\n",
            run.run_id,
            run.stamp,
            run.state,
            if run.judged {
                String::new()
            } else {
                format!(": not judged, {}", run.note)
            }
        ));
    }
    let t = &r.verdict.tally;
    out.push_str(&format!(
        "legacy keys {}: migrated {}, quarantined {}, ambiguous {}, expired {}; positions {} (skipped closed {})\n",
        t.legacy_keys, t.migrated_keys, t.quarantined_keys, t.ambiguous_keys, t.expired_keys,
        t.positions_found, t.skipped_closed
    ));
    for j in &r.verdict.invariants {
        out.push_str(&j.summary_line());
        out.push('\n');
        for s in &j.samples {
            out.push_str(&format!("    {s}\n"));
        }
    }
    for a in &r.verdict.ambiguous {
        out.push_str(&format!("  ambiguous input: {a}\n"));
    }
    if r.runs.iter().all(|l| !l.judged) && !r.runs.is_empty() {
        out.push_str("Nothing to verify: no run of this migration stands (each was rolled back or left out).\n");
    }
    out.push_str(if r.passed {
        "All invariants hold.\n"
    } else {
        "Not every required invariant holds (one failed or did not run): see above.\n"
    });
    out
}
