//! What a scenario checks once its invocations are over: the engine's
//! verify for each migration it ran, the untouched digest, the findings
//! the journal records (quarantines, conflicts, reappeared and vanished
//! legacy keys), and optionally a rollback to the pre-migration keyspace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::grid_positions::verify::{verify_grid_positions_scoped, Scope};
use keyshift_engine::keys::{
    parse_index_key, BackupKey, LegacyPositionsKey, OrderPlacedKey, PositionHashKey,
    DEFAULT_EXCHANGES,
};
use keyshift_engine::order_placed::verify::verify_order_placed;
use keyshift_engine::run::invariant::InvariantResult;
use keyshift_engine::run::journal::{
    is_journal_key, runs_of, OrderPlacedOutcome, Outcome, RunRecord,
};
use serde::Serialize;

use super::model::{FindingKind, MigrationName};
use crate::backend::Deployment;
use crate::digest::{compare, digest, Digest};
use crate::gate::checks::{diff_invariant, read_outcomes};
use crate::report::InvariantEntry;

/// A finding the run reported (or the checks established).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Found {
    pub kind: FindingKind,
    pub key: String,
    /// Reason tag and detail, or the existing key of a conflict.
    pub reason: String,
}

/// An invariant result and the phase it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseInvariant {
    pub phase: String,
    #[serde(flatten)]
    pub entry: InvariantEntry,
}

#[derive(Debug, Default)]
pub struct Checked {
    pub invariants: Vec<PhaseInvariant>,
    pub findings: Vec<Found>,
    /// Backup stamps of the grid-positions runs (their backups are the migration's).
    owned_stamps: Vec<String>,
    /// Each migration's runs' stamps, newest first (rollback undoes them all).
    runs: Vec<(MigrationName, Vec<String>)>,
}

impl Checked {
    /// Adds an invariant result of `phase`.
    pub fn push(&mut self, phase: &str, entry: InvariantEntry) {
        self.invariants.push(PhaseInvariant {
            phase: phase.to_owned(),
            entry,
        });
    }
}

/// What the scenario's runs made their own: the keys they migrated (moved
/// or dropped, for Phase 1, with their targets), and the legacy keys among
/// them.
#[derive(Default)]
struct Owned {
    keys: BTreeSet<String>,
    migrated_legacy: BTreeSet<String>,
}

impl Owned {
    /// Whether `k` is the migration's or the writers': "untouched" leaves
    /// it aside. `stamps` are the grid-positions runs' backup stamps.
    fn owns(&self, k: &str, stamps: &[String], writer_users: &BTreeSet<(String, String)>) -> bool {
        // A position hash or index set is the migration's only when its
        // user's legacy key migrated: a pre-existing target of a user in
        // conflict must stay as it was.
        let user_migrated = |ex: &str, uid: &str| {
            self.migrated_legacy
                .contains(&LegacyPositionsKey::new(ex, uid).key())
        };
        let writers_own =
            |ex: &str, uid: &str| writer_users.contains(&(ex.to_owned(), uid.to_owned()));
        self.keys.contains(k)
            || LegacyPositionsKey::parse(k, &DEFAULT_EXCHANGES)
                .is_some_and(|l| writers_own(&l.exchange, &l.user_id))
            || PositionHashKey::parse(k, &DEFAULT_EXCHANGES)
                .is_some_and(|h| writers_own(&h.exchange, &h.user_id))
            || parse_index_key(k, &DEFAULT_EXCHANGES)
                .is_some_and(|(uid, ex)| writers_own(&ex, &uid))
            || BackupKey::parse(k, &DEFAULT_EXCHANGES).is_some_and(|b| stamps.contains(&b.stamp))
            || PositionHashKey::parse(k, &DEFAULT_EXCHANGES)
                .is_some_and(|h| user_migrated(&h.exchange, &h.user_id))
            || parse_index_key(k, &DEFAULT_EXCHANGES)
                .is_some_and(|(uid, ex)| user_migrated(&ex, &uid))
    }
}

/// Runs every check on the server after the scenario's invocations.
/// `expired` are keys a fault set to expire; `pre` was taken at `pre_at`.
/// `writer_users` are the (exchange, user id) pairs live writers wrote:
/// verify leaves their per-user comparisons to no-lost-writes, and
/// "untouched" leaves their keys aside.
pub async fn check(
    server: &Deployment,
    migrations: &BTreeSet<MigrationName>,
    pre: &Digest,
    pre_at: Instant,
    expired: &[String],
    writer_users: &BTreeSet<(String, String)>,
) -> anyhow::Result<Checked> {
    let scope = Scope {
        left_out: writer_users
            .iter()
            .map(|(ex, uid)| LegacyPositionsKey::new(ex, uid).key())
            .collect(),
    };
    let conn = connect(&server.url()).await?;
    let mut out = Checked::default();
    let mut owned = Owned::default();
    for &m in migrations {
        check_migration(&conn, m, &scope, &mut out, &mut owned).await?;
    }
    let post = digest(&conn, |k| !is_journal_key(k)).await?;
    let untouched = untouched(&mut out, pre, &post, pre_at, expired, writer_users, &owned);
    out.push("scenario", untouched);
    Ok(out)
}

/// Verifies every run of migration `m` (oldest first: a scenario may leave
/// several, e.g. a run recorded done just before its fault, then a rerun
/// that found nothing left), one entry per invariant, and notes what the
/// runs' journals record.
async fn check_migration(
    conn: &RedisConn,
    m: MigrationName,
    scope: &Scope,
    out: &mut Checked,
    owned: &mut Owned,
) -> anyhow::Result<()> {
    let phase = m.as_str();
    let runs = runs_of(conn, phase).await?;
    if runs.is_empty() {
        out.push(phase, missing_run(phase));
    }
    let first = out.invariants.len();
    let mut scoped_notes: BTreeMap<String, String> = BTreeMap::new();
    for run in &runs {
        for inv in verify_run(conn, m, run, scope, &mut scoped_notes).await? {
            if m == MigrationName::GridPositions {
                reappeared(&inv, &mut out.findings);
            }
            match out.invariants[first..]
                .iter_mut()
                .find(|e| e.entry.id == inv.id)
            {
                Some(e) => e.entry.absorb(inv),
                None => out.push(phase, InvariantEntry::from_result(inv)),
            }
        }
        note_outcomes(conn, m, run, out, owned).await?;
    }
    for e in &mut out.invariants[first..] {
        if let Some(n) = scoped_notes.remove(&e.entry.id) {
            e.entry.note = Some(n);
        }
    }
    let mut stamps: Vec<String> = runs.iter().map(|r| r.stamp.clone()).collect();
    stamps.reverse();
    out.runs.push((m, stamps));
    Ok(())
}

/// The engine's verify of one run; grid-positions is scoped (the writers'
/// users left out), and its notes on what it left out go to `notes`.
async fn verify_run(
    conn: &RedisConn,
    m: MigrationName,
    run: &RunRecord,
    scope: &Scope,
    notes: &mut BTreeMap<String, String>,
) -> anyhow::Result<Vec<InvariantResult>> {
    Ok(match m {
        MigrationName::OrderPlaced => verify_order_placed(conn, run, &|_| {}).await?.invariants,
        MigrationName::GridPositions => {
            let scoped = verify_grid_positions_scoped(conn, run, scope, &|_| {}).await?;
            for inv in &scoped.report.invariants {
                if let Some(n) = scoped.note(&inv.id) {
                    notes.insert(inv.id.clone(), n);
                }
            }
            scoped.report.invariants
        }
    })
}

/// The run's journaled outcomes: findings, and what the run made its own.
async fn note_outcomes(
    conn: &RedisConn,
    m: MigrationName,
    run: &RunRecord,
    out: &mut Checked,
    owned: &mut Owned,
) -> anyhow::Result<()> {
    match m {
        MigrationName::OrderPlaced => {
            let outcomes: BTreeMap<String, OrderPlacedOutcome> =
                read_outcomes(conn, &run.run_id).await?;
            for (key, o) in outcomes {
                order_placed_outcome(key, o, &mut out.findings, owned);
            }
        }
        MigrationName::GridPositions => {
            let outcomes: BTreeMap<String, Outcome> = read_outcomes(conn, &run.run_id).await?;
            for (key, o) in outcomes {
                grid_outcome(key, o, &mut out.findings, owned);
            }
            out.owned_stamps.push(run.stamp.clone());
        }
    }
    Ok(())
}

/// Every key outside what the runs (and writers) own is unchanged, keys
/// that expired before their migration aside: those are noted as
/// findings, not losses.
fn untouched(
    out: &mut Checked,
    pre: &Digest,
    post: &Digest,
    pre_at: Instant,
    expired: &[String],
    writer_users: &BTreeSet<(String, String)>,
    owned: &Owned,
) -> InvariantEntry {
    let elapsed = pre_at.elapsed().as_millis() as i64;
    // Keys that expired on schedule, or that a fault expired before their
    // migration: gone, never migrated.
    let gone_on_schedule = |k: &str| {
        !post.keys.contains_key(k)
            && !owned.migrated_legacy.contains(k)
            && (expired.iter().any(|e| e == k) || pre.keys[k].ttl_ms.is_some_and(|t| t <= elapsed))
    };
    let vanished: Vec<String> = pre
        .keys
        .keys()
        .filter(|k| gone_on_schedule(k))
        .cloned()
        .collect();
    for key in &vanished {
        out.findings.push(Found {
            kind: FindingKind::Vanished,
            key: key.clone(),
            reason: "expired before it was migrated".into(),
        });
    }
    let stamps = &out.owned_stamps;
    let keep = |k: &str| !owned.owns(k, stamps, writer_users) && !vanished.iter().any(|v| v == k);
    let diff = compare(&pre.filtered(keep), &post.filtered(keep), elapsed + 1_000);
    let mut untouched = diff_invariant(
        "untouched",
        "every key outside the migration's patterns is unchanged (type-aware digest)",
        &diff,
    );
    if !vanished.is_empty() {
        untouched.note = Some(format!(
            "{} key(s) expired before migration, left aside",
            vanished.len()
        ));
    }
    untouched
}

fn note(findings: &mut Vec<Found>, f: Found) {
    if !findings.contains(&f) {
        findings.push(f);
    }
}

/// verify's "reappeared" samples, as findings.
fn reappeared(inv: &InvariantResult, findings: &mut Vec<Found>) {
    for s in inv.samples.iter().filter(|s| s.contains("reappeared")) {
        if let Some((key, _)) = s.split_once(": legacy key reappeared") {
            note(
                findings,
                Found {
                    kind: FindingKind::Reappeared,
                    key: key.to_owned(),
                    reason: s.clone(),
                },
            );
        }
    }
}

fn grid_outcome(key: String, o: Outcome, findings: &mut Vec<Found>, owned: &mut Owned) {
    let (kind, reason) = match o {
        Outcome::Migrated { .. } => {
            owned.migrated_legacy.insert(key.clone());
            owned.keys.insert(key);
            return;
        }
        Outcome::Quarantined { reason, detail, .. } => {
            (FindingKind::Quarantined, format!("{reason}: {detail}"))
        }
        Outcome::Conflict { key: existing } => {
            (FindingKind::Conflict, format!("{existing} already exists"))
        }
    };
    note(findings, Found { kind, key, reason });
}

fn order_placed_outcome(
    key: String,
    o: OrderPlacedOutcome,
    findings: &mut Vec<Found>,
    owned: &mut Owned,
) {
    let (kind, reason) = match o {
        OrderPlacedOutcome::Moved { .. } | OrderPlacedOutcome::DroppedEqual { .. } => {
            if let Some(k) = OrderPlacedKey::parse(&key, &DEFAULT_EXCHANGES) {
                owned.keys.insert(k.target_key());
            }
            owned.migrated_legacy.insert(key.clone());
            owned.keys.insert(key);
            return;
        }
        OrderPlacedOutcome::Conflict {
            target,
            reason,
            detail,
        } => (
            FindingKind::Conflict,
            format!("{reason}: {target}: {detail}"),
        ),
        OrderPlacedOutcome::Quarantined { reason, detail } => {
            (FindingKind::Quarantined, format!("{reason}: {detail}"))
        }
    };
    note(findings, Found { kind, key, reason });
}

fn missing_run(phase: &str) -> InvariantEntry {
    let mut r = InvariantResult::new("counts", "the migration recorded a run in the journal");
    r.mismatch(|| format!("no {phase} run is recorded on the server"));
    InvariantEntry::from_result(r)
}

/// Rolls back every run of every migration the scenario ran (the last
/// migration first, each newest run first) through the binary, then compares the keyspace with the pre-migration digest,
/// the journal and this run's backups aside. Returns the invariant and the
/// rollback commands.
pub async fn rollback(
    exe: &Path,
    server: &Deployment,
    migrations: &[MigrationName],
    pre: &Digest,
    pre_at: Instant,
    checked: &Checked,
) -> anyhow::Result<(InvariantEntry, Vec<String>)> {
    let url = server.url();
    let mut commands = Vec::new();
    let mut failures = Vec::new();
    let mut runs: Vec<(MigrationName, &String)> = Vec::new();
    for m in migrations.iter().rev() {
        for (_, stamps) in checked.runs.iter().filter(|(r, _)| r == m) {
            runs.extend(stamps.iter().map(|s| (*m, s)));
        }
    }
    for (m, stamp) in runs {
        let args = [
            "rollback",
            m.as_str(),
            "--backup-stamp",
            stamp.as_str(),
            "--force",
            "--redis",
            url.as_str(),
        ];
        commands.push(format!("keyshift {}", args.join(" ")));
        let out = tokio::process::Command::new(exe)
            .args(args)
            .env_remove("REDIS_URL")
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            failures.push(format!(
                "`keyshift rollback {} --backup-stamp {stamp}` exited {:?}: {}",
                m.as_str(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let conn = connect(&url).await?;
    let stamps = &checked.owned_stamps;
    let vanished: BTreeSet<&str> = checked
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::Vanished)
        .map(|f| f.key.as_str())
        .collect();
    let ours = |k: &str| {
        is_journal_key(k)
            || BackupKey::parse(k, &DEFAULT_EXCHANGES).is_some_and(|b| stamps.contains(&b.stamp))
            || vanished.contains(k)
    };
    let after = digest(&conn, |k| !ours(k)).await?;
    let diff = compare(
        &pre.filtered(|k| !ours(k)),
        &after,
        pre_at.elapsed().as_millis() as i64 + 1_000,
    );
    let mut entry = diff_invariant(
        "rollback",
        "migrate then rollback gives the pre-migration keyspace, backups and journal aside",
        &diff,
    );
    if !failures.is_empty() {
        entry.status = crate::report::Status::Fail;
        entry.samples.extend(failures);
    }
    Ok((entry, commands))
}
