//! One scenario, end to end: a disposable Redis (with AOF when a fault
//! needs it), seed, digest, the real migrator run as a child process once
//! per `[[run]]` with its faults applied, then the checks, the expectation
//! verdict and the report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::run::journal::is_journal_key;

use super::checks;
use super::dataset;
use super::expect::evaluate;
use super::external::{self, ExternalEngine};
use super::invoke;
use super::model::{FaultName, MigrationName, Scenario};
use super::report::{ScenarioReport, Verdict, SCHEMA_VERSION};
use super::strike;
use crate::backend::{BackendKind, Deployment};
use crate::digest::{digest, Digest};
use crate::gate::checks::redis_version;
use crate::gate::external::shell_quote;
use crate::observe::read_all;
use crate::report::InvariantEntry;
use crate::seed;
use crate::writers;
use keyshift_engine::keys::DEFAULT_EXCHANGES;

/// Where and how scenarios run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub backend: BackendKind,
    pub report_dir: PathBuf,
    /// The scenarios directory (for the replay command).
    pub dir: PathBuf,
    /// The keyshift binary run as the migrator (and for rollback).
    pub exe: PathBuf,
    /// A team's command in keyshift's place (`--engine`).
    pub engine: Option<ExternalEngine>,
}

const AOF_ARGS: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "always"];

/// Runs one scenario; a harness failure (backend down, bad dataset) is a
/// failed run whose report says why, never a panic.
pub async fn run(s: &Scenario, opts: &RunOptions) -> ScenarioReport {
    let started = Instant::now();
    let mut report = ScenarioReport {
        schema_version: SCHEMA_VERSION,
        keyshift_version: env!("CARGO_PKG_VERSION"),
        name: s.name.clone(),
        replays: s.replays.clone(),
        file: s.file.display().to_string(),
        verdict: Verdict::Failed,
        note: None,
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        elapsed_ms: 0,
        backend: opts.backend.to_string(),
        cluster: s.server.cluster,
        redis_version: String::new(),
        seed: None,
        keys_seeded: 0,
        legacy_keys: 0,
        invocations: Vec::new(),
        invariants: Vec::new(),
        findings: Vec::new(),
        expectations: Vec::new(),
        rollback_commands: Vec::new(),
        replay: replay_command(s, opts, opts.backend),
    };
    if let Err(e) = run_into(s, opts, &mut report).await {
        report.verdict = Verdict::Failed;
        report.note = Some(format!(
            "the harness could not finish: {}",
            crate::exit::describe(&e)
        ));
    }
    report.elapsed_ms = started.elapsed().as_millis();
    report
}

fn replay_command(s: &Scenario, opts: &RunOptions, kind: BackendKind) -> String {
    let mut line = format!(
        "keyshift scenario run {} --backend {kind} --dir {} --report-dir {}",
        s.name,
        opts.dir.display(),
        opts.report_dir.display()
    );
    if let Some(e) = &opts.engine {
        line.push_str(&format!(" --engine {}", shell_quote(&e.migrate)));
        if let Some(r) = &e.rollback {
            line.push_str(&format!(" --rollback-engine {}", shell_quote(r)));
        }
        line.push_str(&format!(" --migration {}", e.migration.as_str()));
    }
    line
}

fn skip_reason(s: &Scenario, kind: BackendKind) -> Option<String> {
    let docker_only = s.docker_only_faults();
    (kind == BackendKind::Process && !docker_only.is_empty()).then(|| {
        format!(
            "skipped: docker-only fault ({}) (run with --backend docker)",
            docker_only.join(", ")
        )
    })
}

async fn run_into(
    s: &Scenario,
    opts: &RunOptions,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    let adapted;
    let (s, left_out) = match &opts.engine {
        Some(_) => {
            let (a, note) = external::adapt(s);
            adapted = a;
            (&adapted, note)
        }
        None => (s, None),
    };
    let engine_skip = || {
        opts.engine
            .as_ref()
            .and_then(|e| external::skip_reason(s, e))
    };
    if skipped(report, skip_reason(s, opts.backend).or_else(engine_skip)) {
        return Ok(());
    }
    let data = dataset::build(s)?;
    report.seed = data.seed;
    report.keys_seeded = data.keyspace.len();
    let mut server = start_server(s, opts.backend).await?;
    report.backend = server.kind().to_string();
    report.replay = replay_command(s, opts, server.kind());
    if skipped(report, skip_reason(s, server.kind())) {
        return Ok(());
    }
    let (pre, pre_at) = seed_and_digest(&server, &data, report).await?;
    // An external engine is judged against the keyspace as seeded.
    let team_engine = match &opts.engine {
        Some(engine) => Some((engine, read_all(&connect(&server.url()).await?).await?)),
        None => None,
    };
    let writers = match s.writers.any() {
        true => Some(start_writers(s, &data, &server).await?),
        false => None,
    };
    let ran = invoke_all(s, opts, &mut server, &data, report).await?;
    let (history, writer_users) = stop_writers(s, writers).await;
    let aside = external::Aside {
        writer_users: &writer_users,
        expired: &ran.expired,
    };
    let conn = connect(&server.url()).await?;
    let mut checked = match &team_engine {
        Some((engine, seeded)) => external::check(&conn, engine, seeded, &aside).await?,
        None => {
            let used: BTreeSet<MigrationName> = ran.migrations.iter().copied().collect();
            checks::check(&server, &used, &pre, pre_at, &ran.expired, &writer_users).await?
        }
    };
    checked.push("scenario", no_lost_writes(&server, history.as_ref()).await?);
    if s.expect.rollback {
        let (entry, commands) = match &team_engine {
            Some((engine, seeded)) => {
                external::rollback(&conn, &server.url(), engine, seeded, &aside).await?
            }
            None => {
                checks::rollback(&opts.exe, &server, &ran.migrations, &pre, pre_at, &checked)
                    .await?
            }
        };
        checked.push("scenario", entry);
        report.rollback_commands = commands;
    }
    conclude(s, report, checked);
    report.note = report.note.take().or(left_out);
    Ok(())
}

/// Marks the report skipped when there is a reason to; says whether it did.
fn skipped(report: &mut ScenarioReport, why: Option<String>) -> bool {
    let Some(why) = why else {
        return false;
    };
    report.verdict = Verdict::Skipped;
    report.note = Some(why);
    true
}

/// A fresh server (or cluster), with AOF when the scenario or a crash
/// restart needs it.
async fn start_server(s: &Scenario, backend: BackendKind) -> anyhow::Result<Deployment> {
    let needs_aof = s.server.aof || s.faults.iter().any(|f| f.kind == FaultName::CrashRestart);
    let args: &[&str] = if needs_aof { &AOF_ARGS } else { &[] };
    Ok(Deployment::start(backend, s.server.cluster, args).await?)
}

/// Seeds the dataset and digests it (returning when the digest began),
/// over the harness's own per-primary connections (one for a single
/// server); INFO asked of one node.
async fn seed_and_digest(
    server: &Deployment,
    data: &dataset::Dataset,
    report: &mut ScenarioReport,
) -> anyhow::Result<(Digest, Instant)> {
    let primaries = server.primaries().await?;
    let node = RedisConn::from(server.nodes()[0].connection().await?);
    report.redis_version = redis_version(&node).await;
    seed::load(&primaries, &data.keyspace).await?;
    let pre_at = Instant::now();
    let pre = digest(&primaries, |k| !is_journal_key(k)).await?;
    Ok((pre, pre_at))
}

/// What the invocations did that the checks need to know.
struct Ran {
    /// Each migration run, in the order first run.
    migrations: Vec<MigrationName>,
    /// Keys an expire-keys fault set to expire.
    expired: Vec<String>,
}

/// Runs every `[[run]]` in turn with its faults.
async fn invoke_all(
    s: &Scenario,
    opts: &RunOptions,
    server: &mut Deployment,
    data: &dataset::Dataset,
    report: &mut ScenarioReport,
) -> anyhow::Result<Ran> {
    let mut ran = Ran {
        migrations: Vec::new(),
        expired: Vec::new(),
    };
    let mut memory_capped = false;
    for (i, inv) in s.runs.iter().enumerate() {
        let n = i + 1;
        if memory_capped {
            // The operator's fix before the rerun: raise the limit.
            strike::lift_maxmemory(server).await?;
        }
        if !ran.migrations.contains(&inv.migration) {
            ran.migrations.push(inv.migration);
        }
        let faults: Vec<_> = s.faults_of(n).collect();
        memory_capped = faults.iter().any(|f| f.kind == FaultName::Maxmemory);
        ran.expired.extend(
            faults
                .iter()
                .filter(|f| f.kind == FaultName::ExpireKeys)
                .flat_map(|f| f.keys.iter().cloned()),
        );
        let legacy = data.legacy_key_names(inv.migration);
        report.legacy_keys = report.legacy_keys.max(legacy.len());
        let job = invoke::Job {
            engine: match &opts.engine {
                Some(e) => invoke::Engine::External(&e.migrate),
                None => invoke::Engine::Keyshift(&opts.exe),
            },
            n,
            inv,
            faults: &faults,
            legacy_total: legacy.len(),
            legacy_keys: &legacy,
        };
        report.invocations.push(invoke::run(&job, server).await?);
    }
    if memory_capped {
        strike::lift_maxmemory(server).await?;
    }
    Ok(ran)
}

/// Stops the writers, if any, once the scenario's `after_run_ms` is up;
/// returns their history and the (exchange, user id) pairs they own.
async fn stop_writers(
    s: &Scenario,
    writers: Option<(writers::Writers, BTreeSet<(String, String)>)>,
) -> (Option<writers::History>, BTreeSet<(String, String)>) {
    match writers {
        Some((w, users)) => {
            tokio::time::sleep(std::time::Duration::from_millis(s.writers.after_run_ms)).await;
            (Some(w.stop().await), users)
        }
        None => (None, BTreeSet::new()),
    }
}

async fn no_lost_writes(
    server: &Deployment,
    history: Option<&writers::History>,
) -> anyhow::Result<InvariantEntry> {
    Ok(match history {
        Some(h) => {
            let conn = connect(&server.url()).await?;
            writers::no_lost_writes(&conn, h).await
        }
        None => InvariantEntry::not_run(
            writers::ID,
            writers::DESCRIPTION,
            "no writers in this scenario",
        ),
    })
}

/// The expectations judged against what the checks found: the verdict.
fn conclude(s: &Scenario, report: &mut ScenarioReport, checked: checks::Checked) {
    report.expectations = evaluate(
        s,
        &report.invocations,
        &checked.invariants,
        &checked.findings,
    );
    report.invariants = checked.invariants;
    report.findings = checked.findings;
    report.verdict = if report.expectations.iter().all(|e| e.met) {
        Verdict::Passed
    } else {
        Verdict::Failed
    };
}

/// Starts the scenario's writers on hot users of its dataset; returns them
/// and the (exchange, user id) pairs they own.
async fn start_writers(
    s: &Scenario,
    data: &dataset::Dataset,
    server: &Deployment,
) -> anyhow::Result<(writers::Writers, BTreeSet<(String, String)>)> {
    let seed = data.seed.unwrap_or(0);
    let defaults = writers::WritersConfig::default();
    let cfg = writers::WritersConfig {
        hot_users: s.writers.hot_users.max(1),
        tasks: s.writers.count.max(1),
        seed,
        rogue: s.writers.rogue_legacy,
        pause: s
            .writers
            .pause_ms
            .map_or(defaults.pause, std::time::Duration::from_millis),
        ..defaults
    };
    let pairs = writers::hot_pairs(&data.keyspace, &DEFAULT_EXCHANGES, cfg.hot_users, seed);
    anyhow::ensure!(
        !pairs.is_empty(),
        "no legacy key of the dataset can carry writers"
    );
    let users = pairs
        .iter()
        .map(|p| (p.exchange.clone(), p.user_id.clone()))
        .collect();
    let w = writers::Writers::start(&server.url(), pairs, &cfg).await?;
    Ok((w, users))
}

/// The keyshift binary: this process when it is keyshift (the CLI), else
/// `KEYSHIFT_BIN`.
pub fn migrator_exe() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("KEYSHIFT_BIN") {
        return Ok(PathBuf::from(bin));
    }
    Ok(std::env::current_exe()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn scenario(fault: &str) -> Scenario {
        let text = format!(
            "name = \"t\"\nreplays = \"r\"\n[dataset]\nbulk = [{{ key = \"okx:positions:w\", positions = 1 }}]\n[[fault]]\nkind = \"{fault}\"\nafter_ms = 1\nduration_ms = 10\n[[run]]\nexit = 0\n"
        );
        Scenario::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn docker_only_faults_are_skipped_on_process_and_say_how_to_run_them() {
        let s = scenario("network-cut");
        let why = skip_reason(&s, BackendKind::Process).unwrap();
        assert!(why.starts_with("skipped: docker-only fault"), "{why}");
        assert!(why.contains("--backend docker"), "{why}");
        assert!(skip_reason(&s, BackendKind::Docker).is_none());
        assert!(skip_reason(&scenario("pause"), BackendKind::Process).is_none());
    }

    #[test]
    fn the_replay_command_names_backend_dir_and_report_dir() {
        let opts = RunOptions {
            backend: BackendKind::Auto,
            report_dir: "out".into(),
            dir: "scenarios".into(),
            exe: "keyshift".into(),
            engine: None,
        };
        assert_eq!(
            replay_command(&scenario("pause"), &opts, BackendKind::Docker),
            "keyshift scenario run t --backend docker --dir scenarios --report-dir out"
        );
    }
}
