//! `keyshift gate --engine CMD`: any team's migration command under the
//! gate. The gate seeds a disposable server as usual, reads the whole
//! keyspace (the before-image), runs CMD through `sh -c` with REDIS_URL,
//! KEYSHIFT_MIGRATION and KEYSHIFT_EXCHANGES set, reads the keyspace again
//! and lets the oracle judge it against the before-image. CMD runs a
//! second time (idempotent: it must write nothing), and `--rollback-engine`
//! is judged by the rollback invariant. No code of keyshift's own engine
//! takes part in the judging.

use std::process::Stdio;
use std::time::Instant;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::run::journal::JOURNAL_PREFIX;
use keyshift_oracle::compare::unchanged;
use keyshift_oracle::grid::DEFAULT_TTL_TOLERANCE_MS as TTL_TOLERANCE_MS;
use keyshift_oracle::keys::{classify, GridKey};
use keyshift_oracle::{Before, GridOptions, Image, Judgement, Status as Verdict, Value};
use tokio::io::AsyncReadExt;

use super::{replay_command, Source};
use crate::cli::{GateArgs, Migration};
use crate::commands::exchanges;
use crate::observe::read_all;
use crate::report::{self, GateReport, InvariantEntry, PhaseReport, Status};
use crate::seed::GenConfig;

/// How many lines of the command's output the report keeps.
const TAIL_LINES: usize = 20;

/// What one run of the command did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommandRun {
    pub command: String,
    /// The exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    pub elapsed_ms: u128,
    /// The last lines of stdout and stderr.
    pub stdout_tail: Vec<String>,
    pub stderr_tail: Vec<String>,
}

impl CommandRun {
    /// 0 (done) and 3 (done, keys left for review) are DESIGN §6's
    /// "done"; anything else means the command did not finish.
    pub fn finished(&self) -> bool {
        matches!(self.exit_code, Some(0 | 3))
    }
}

pub fn migration_name(m: Migration) -> &'static str {
    match m {
        Migration::GridPositions => "grid-positions",
        Migration::OrderPlaced => "order-placed",
    }
}

/// `sh -c command` with the contract's environment (docs/engines.md):
/// REDIS_URL, KEYSHIFT_MIGRATION and KEYSHIFT_EXCHANGES.
pub fn engine_command(
    command: &str,
    url: &str,
    migration: &str,
    exchanges: &[String],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("REDIS_URL", url)
        .env("KEYSHIFT_MIGRATION", migration)
        .env("KEYSHIFT_EXCHANGES", exchanges.join(" "));
    cmd
}

/// Runs `command` through `sh -c` against `url`, output captured.
pub async fn run_command(
    command: &str,
    url: &str,
    migration: &str,
    exchanges: &[String],
) -> anyhow::Result<CommandRun> {
    let started = Instant::now();
    let mut child = engine_command(command, url, migration, exchanges)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start `sh -c {command}`: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let (status, _, _) = tokio::join!(
        child.wait(),
        out.read_to_end(&mut o),
        err.read_to_end(&mut e)
    );
    Ok(CommandRun {
        command: command.to_owned(),
        exit_code: status?.code(),
        elapsed_ms: started.elapsed().as_millis(),
        stdout_tail: tail(&o),
        stderr_tail: tail(&e),
    })
}

fn tail(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].iter().map(|l| (*l).to_owned()).collect()
}

pub fn judgement_entry(j: Judgement) -> InvariantEntry {
    let mut note = j.not_run_reason.clone();
    if j.expired > 0 {
        note = Some(format!(
            "{} expected keys had expired by the read, as the legacy key would have",
            j.expired
        ));
    }
    InvariantEntry {
        id: j.id.to_owned(),
        status: match j.status {
            Verdict::Pass => Status::Pass,
            Verdict::Fail => Status::Fail,
            Verdict::NotRun => Status::NotRun,
        },
        description: j.description.to_owned(),
        note,
        processed: j.checked,
        matching: j.checked - j.failed,
        mismatched: j.failed,
        extra: j.extra,
        samples: j.samples,
        // Every invariant of an external engine's gate is required.
        required: true,
    }
}

/// Adds the oracle's judgement of an invariant to the gate's entry for
/// it: its counts, its samples (marked as the oracle's), and its failure.
pub fn fold_judgement(entry: &mut InvariantEntry, j: &Judgement) {
    entry.processed += j.checked;
    entry.matching += j.checked - j.failed;
    entry.mismatched += j.failed;
    entry.extra += j.extra;
    let room = keyshift_oracle::verdict::MAX_SAMPLES.saturating_sub(entry.samples.len());
    entry
        .samples
        .extend(j.samples.iter().take(room).map(|s| format!("oracle: {s}")));
    match j.status {
        Verdict::Fail => entry.status = Status::Fail,
        Verdict::Pass if entry.status == Status::NotRun => entry.status = Status::Pass,
        _ => {}
    }
    if j.expired > 0 {
        entry.note = Some(format!(
            "{} expected keys had expired by the read, as the legacy key would have",
            j.expired
        ));
    }
}

/// The command's own invariant: it ran to an end DESIGN §6 calls done.
fn exit_invariant(id: &str, run: &CommandRun) -> InvariantEntry {
    let mut e = InvariantEntry::not_run(id, "the command exits 0 or 3 (DESIGN §6: done)", "");
    e.note = None;
    e.required = true;
    e.processed = 1;
    if run.finished() {
        e.status = Status::Pass;
        e.matching = 1;
    } else {
        e.status = Status::Fail;
        e.mismatched = 1;
        e.samples.push(format!(
            "`{}` exited {} after {} ms; last stderr: {}",
            run.command,
            run.exit_code
                .map_or_else(|| "by a signal".to_owned(), |c| c.to_string()),
            run.elapsed_ms,
            run.stderr_tail.last().cloned().unwrap_or_default()
        ));
    }
    e
}

fn bookkeeping(key: &[u8]) -> bool {
    key.starts_with(JOURNAL_PREFIX.as_bytes())
}

/// A key a rollback may leave behind: backups are kept (DESIGN §4
/// "rollback": backups and journal aside).
fn is_backup(exchanges: &[String]) -> impl Fn(&[u8]) -> bool + '_ {
    move |key| matches!(classify(key, exchanges), GridKey::Backup { .. })
}

/// The gate with `engine` in place of keyshift's engine; the report is
/// returned, not written.
pub async fn evaluate(args: &GateArgs, gen: GenConfig, engine: &str) -> anyhow::Result<GateReport> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let exchanges = exchanges(None);
    let migration = migration_name(args.migration);
    let source = Source::from_args(args, &gen)?;
    let server = source.server(args.backend, false).await?;
    let url = server.url();
    eprintln!(
        "gate: {} backend at {url}; engine: {engine}",
        server.describe()
    );
    let conn: RedisConn = connect(&url).await?;
    let redis_version = super::checks::redis_version(&conn).await;
    let before = Before {
        image: read_all(&conn).await?,
        complete: true,
        ..Before::default()
    };
    let keys_seeded = before.image.keys.len();

    let first = run_command(engine, &url, migration, &exchanges).await?;
    eprintln!(
        "gate: `{engine}` exited {:?} in {} ms",
        first.exit_code, first.elapsed_ms
    );
    let after = read_all(&conn).await?;
    let verdict = match args.migration {
        Migration::GridPositions => {
            let mut opts = GridOptions::new(exchanges.clone());
            opts.ignore_prefixes = vec![JOURNAL_PREFIX.as_bytes().to_vec()];
            keyshift_oracle::judge_grid_positions(&before, &after, &opts)
        }
        Migration::OrderPlaced => {
            keyshift_oracle::order_placed::judge(&before, &after, &exchanges, TTL_TOLERANCE_MS)
        }
    };
    let mut invariants = vec![exit_invariant("engine", &first)];
    invariants.extend(verdict.invariants.iter().cloned().map(judgement_entry));

    let second = run_command(engine, &url, migration, &exchanges).await?;
    let again = read_all(&conn).await?;
    let nothing = |_: &[u8]| false;
    invariants.push(judgement_entry(unchanged(
        "idempotent",
        "a second run writes nothing",
        &after,
        &again,
        TTL_TOLERANCE_MS,
        &bookkeeping,
        &nothing,
    )));
    let mut runs = vec![first, second];
    if let Some(rollback) = &args.rollback_engine {
        let run = run_command(rollback, &url, migration, &exchanges).await?;
        invariants.push(exit_invariant("rollback-engine", &run));
        let restored = read_all(&conn).await?;
        invariants.push(judgement_entry(rollback_judgement(
            &before.image,
            &restored,
            &exchanges,
        )));
        runs.push(run);
    }
    let phase = PhaseReport {
        name: format!("{migration} (engine: {engine})"),
        summary: format!(
            "Legacy keys {} (migrated {}, quarantined {}, ambiguous {}, expired {}); positions {} (skipped closed {}); the command ran {} times.",
            verdict.tally.legacy_keys,
            verdict.tally.migrated_keys,
            verdict.tally.quarantined_keys,
            verdict.tally.ambiguous_keys,
            verdict.tally.expired_keys,
            verdict.tally.positions_found,
            verdict.tally.skipped_closed,
            runs.len()
        ),
        for_review: verdict
            .ambiguous
            .iter()
            .map(|s| (s.split(": ").next().unwrap_or("").to_owned(), s.clone()))
            .collect(),
        details: serde_json::json!({ "tally": verdict.tally, "commands": runs }),
        invariants,
    };
    let mut report = GateReport {
        schema_version: report::SCHEMA_VERSION,
        keyshift_version: env!("CARGO_PKG_VERSION"),
        started_at,
        elapsed_ms: started.elapsed().as_millis(),
        backend: server.describe(),
        redis_version,
        seed: gen.seed,
        users: gen.users,
        fixtures: None,
        keys_seeded,
        truth: match &source {
            Source::Seeded { generated, .. } => serde_json::to_value(&generated.truth)?,
            Source::Snapshot(_) => serde_json::Value::Null,
        },
        snapshot: None,
        phases: vec![phase],
        passed: false,
        replay: format!(
            "{} --engine {}{} --migration {migration}",
            replay_command(args, &gen, server.kind()),
            shell_quote(engine),
            args.rollback_engine
                .as_ref()
                .map(|r| format!(" --rollback-engine {}", shell_quote(r)))
                .unwrap_or_default()
        ),
    };
    // Every invariant is required here: one that did not run fails.
    report.passed = report
        .phases
        .iter()
        .flat_map(|p| &p.invariants)
        .all(|i| i.status == Status::Pass);
    Ok(report)
}

/// Migrate then rollback gives the keyspace as seeded, backups and the
/// runner's bookkeeping aside. A legacy value with no positions had no
/// new key to carry its TTL (DESIGN §2), so a rollback that restores it
/// without one cannot be faulted for that alone.
pub fn rollback_judgement(seeded: &Image, restored: &Image, exchanges: &[String]) -> Judgement {
    let mut seeded = seeded.clone();
    for (key, entry) in seeded.keys.iter_mut() {
        let empty = matches!(&entry.value, Value::String(v) if is_empty_container(v));
        let legacy = matches!(classify(key, exchanges), GridKey::Legacy { .. });
        if legacy && empty && entry.pttl_ms >= 0 {
            if let Some(now) = restored.keys.get(key) {
                if now.pttl_ms < 0 && now.value == entry.value {
                    entry.pttl_ms = -1;
                }
            }
        }
    }
    unchanged(
        "rollback",
        "migrate then rollback gives the keyspace as seeded, backups aside",
        &seeded,
        restored,
        TTL_TOLERANCE_MS,
        &bookkeeping,
        &is_backup(exchanges),
    )
}

fn is_empty_container(v: &[u8]) -> bool {
    let t: Vec<u8> = v
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    t == b"[]" || t == b"{}"
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
