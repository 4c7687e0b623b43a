//! `keyshift gate`: backend up -> seed -> digest -> plan -> migrate ->
//! verify (engine invariants plus the gate's own: backups restored into a
//! second fresh Redis, untouched keys, api answers, seeded truth) ->
//! rollback -> migrate again with writers running (no-lost-writes) ->
//! reports -> exit code. With `--rdb` the server loads a snapshot instead
//! of being seeded, and the keyspace as loaded takes the truth's place
//! (`rdb`).

pub mod checks;
pub mod engines;
mod phase1;
pub mod rdb;
mod rollback;

use std::time::Instant;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::grid_positions::runner::{migrate_grid_positions, MigrateOptions};
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::grid_positions::store::GridPositionsStore;
use keyshift_engine::grid_positions::verify::verify_grid_positions;
use keyshift_engine::keys::DEFAULT_EXCHANGES;
use keyshift_engine::run::journal::is_journal_key;

use crate::backend::{BackendKind, Deployment, RedisServer};
use crate::cli::GateArgs;
use crate::commands::{locked, progress_bar};
use crate::digest::{compare, digest};
use crate::exit::Outcome;
use crate::report::{self, GateReport, InvariantEntry, PhaseReport};
use crate::seed::{self, generate, load_fixture_dir, GenConfig, Generated, Keyspace};
use crate::writers::{self, WritersConfig};
use crate::HarnessError;

/// Users the writers keep writing through the gate's second migration.
const HOT_USERS: usize = 30;

pub use engines::{Engines, Production};

pub async fn run(args: &GateArgs) -> anyhow::Result<Outcome> {
    run_with(
        args,
        GenConfig {
            users: args.users,
            seed: args.seed,
            ..GenConfig::default()
        },
    )
    .await
}

/// The gate with a generator configuration of its own (e.g. other rates):
/// `gen.users` and `gen.seed` take the place of `args.users` and
/// `args.seed`, which are ignored. Only the default rates replay from the
/// command line, so the report's replay command is exact only for those.
pub async fn run_with(args: &GateArgs, gen: GenConfig) -> anyhow::Result<Outcome> {
    let report = evaluate(&Production, args, gen).await?;
    report::write_all(&report, &args.report_dir)?;
    print!("{}", summary(&report, &args.report_dir));
    Ok(if report.passed {
        Outcome::Done
    } else {
        Outcome::InvariantFailed
    })
}

/// Where the gate's keyspace comes from, and what it is judged against.
enum Source {
    /// Generated users and fixtures, seeded by the gate: judged against
    /// the generator's truth and the model.
    Seeded {
        generated: Box<Generated>,
        keyspace: Keyspace,
        fixtures: Option<Keyspace>,
    },
    /// An RDB snapshot the server loads: judged against the keyspace as
    /// loaded (digests and the legacy values read back).
    Snapshot(rdb::Snapshot),
}

impl Source {
    fn from_args(args: &GateArgs, gen: &GenConfig) -> anyhow::Result<Source> {
        if let Some(file) = &args.rdb {
            return Ok(Source::Snapshot(rdb::open(file)?));
        }
        let generated = generate(gen);
        let mut keyspace = generated.keyspace.clone();
        let fixtures = load_fixtures(args)?;
        if let Some(f) = &fixtures {
            keyspace.extend(f.clone());
        }
        Ok(Source::Seeded {
            generated: Box::new(generated),
            keyspace,
            fixtures,
        })
    }

    /// A disposable server holding the keyspace: seeded, or loaded from
    /// the snapshot on start (a file it cannot load is explained).
    ///
    /// With `cluster`, a 3-primary cluster, seeded primary by primary over
    /// the harness's own per-node connections (not the engine's client).
    async fn server(&self, kind: BackendKind, cluster: bool) -> anyhow::Result<Deployment> {
        match self {
            Source::Seeded { keyspace, .. } => {
                let server = Deployment::start(kind, cluster, &[]).await?;
                seed::load(&server.primaries().await?, keyspace).await?;
                Ok(server)
            }
            Source::Snapshot(snap) => {
                eprintln!(
                    "gate: loading {} (RDB format version {}, {} bytes)",
                    snap.file.display(),
                    snap.rdb_version,
                    snap.bytes
                );
                match RedisServer::start_setup(kind, &rdb::setup(snap)).await {
                    Ok(server) => Ok(Deployment::Server(server)),
                    Err(e) => {
                        let version = crate::backend::process_redis_version().await;
                        Err(rdb::explain(e, snap, kind, version.as_deref()).into())
                    }
                }
            }
        }
    }
}

/// The whole gate pipeline on the stores `engines` opens: seed a fresh
/// server (or load `--rdb`), run Phase 1, 1.5 and 2, check every
/// invariant, and return the report without writing it (`args.report_dir`
/// only appears in the replay command). [`run_with`] is this with the
/// production engines.
pub async fn evaluate<E: Engines>(
    engines: &E,
    args: &GateArgs,
    gen: GenConfig,
) -> anyhow::Result<GateReport> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let exchanges: Vec<String> = DEFAULT_EXCHANGES.iter().map(|s| (*s).to_owned()).collect();

    let source = Source::from_args(args, &gen)?;
    let server = source.server(args.backend, args.cluster).await?;
    eprintln!("gate: {} backend at {}", server.describe(), server.url());
    let conn = connect(&server.url()).await?;
    // INFO through a cluster client goes to every primary: ask one node.
    let redis_version =
        checks::redis_version(&RedisConn::from(server.nodes()[0].connection().await?)).await;
    let store = engines.grid(&server.url(), &conn).await?;
    let order_placed = engines.order_placed(&server.url(), &conn).await?;

    let not_journal = |k: &str| !is_journal_key(k);
    // TTLs tick down between two digests: the tolerance of each comparison
    // is the time since the first of the two began, plus a second.
    let slack_since = |t: Instant| t.elapsed().as_millis() as i64 + 1_000;

    // The migration guide's order: Phase 1, Phase 1.5, then Phase 2, each
    // checked against the keyspace as the previous phase left it.
    let mut phases = Vec::new();
    let phase_at = Instant::now();
    let loaded = digest(&conn, not_journal).await?;
    // The keys each phase expects: the model's, or the snapshot's as loaded.
    let seeded: Vec<&str> = match &source {
        Source::Seeded { keyspace, .. } => {
            keyspace.entries.iter().map(|e| e.key.as_str()).collect()
        }
        Source::Snapshot(_) => loaded.keys.keys().map(String::as_str).collect(),
    };
    phases.push(
        phase1::order_placed(&order_placed, &conn, &seeded, &exchanges, &loaded, phase_at).await?,
    );
    let phase_at = Instant::now();
    let before_phase = digest(&conn, not_journal).await?;
    phases.push(phase1::cleanup_legacy_cache(&conn, &seeded, &before_phase, phase_at).await?);

    let pre_at = Instant::now();
    let pre = digest(&conn, not_journal).await?;
    let pre_took = pre_at.elapsed();
    // On a snapshot, its legacy values: what counts and the writers use.
    let snapshot_legacy = match &source {
        Source::Snapshot(_) => rdb::read_legacy(&conn, &pre, &exchanges).await?,
        Source::Seeded { .. } => Keyspace::new(),
    };
    let mut invariants = Vec::new();

    // The plan must write nothing at all.
    let mut opts = MigrateOptions::new(exchanges.clone());
    opts.dry_run = true;
    let plan_at = Instant::now();
    let before_plan = digest(&conn, |_| true).await?;
    let plan = migrate_grid_positions(&store, &opts, &|_| {}).await?;
    let after_plan = digest(&conn, |_| true).await?;
    invariants.push(checks::diff_invariant(
        "dry_run",
        "a dry run writes nothing (journal included)",
        &compare(&before_plan, &after_plan, slack_since(plan_at)),
    ));

    opts.dry_run = false;
    let bar = progress_bar(store.key_count().await?, "gate: migrate grid-positions");
    let tick = |n: usize| bar.inc(n as u64);
    let migration = locked(
        &conn,
        "gate: migrate grid-positions",
        migrate_grid_positions(&store, &opts, &tick),
    )
    .await?;
    bar.finish_and_clear();
    let run = latest_run(&conn).await?;
    let verified = verify_grid_positions(&conn, &run, &|_| {}).await?;
    let post = digest(&conn, not_journal).await?;
    let outcomes = checks::read_outcomes(&conn, &run.run_id).await?;

    // Backups restored into a second fresh server (a fresh cluster for a
    // cluster) give back the legacy keys.
    let restore_server = Deployment::start(server.kind(), server.is_cluster(), &[]).await?;
    let restore_conn = connect(&restore_server.url()).await?;
    let restored = checks::restore_backups(&conn, &restore_conn, &run, &outcomes).await?;
    let restored_digest = digest(&restore_conn, |_| true).await?;
    let slack = slack_since(pre_at);
    let restore_diff = compare(
        &pre.filtered(|k| restored.contains(k)),
        &restored_digest,
        slack,
    );

    let mut engine_invariants = verified.invariants;
    for inv in &mut engine_invariants {
        match inv.id.as_str() {
            "backup" => checks::fold_diff(inv, &restore_diff, "restored from backups"),
            "counts" => match &source {
                Source::Seeded { generated, .. } => {
                    checks::check_truth(inv, generated, &plan, &migration, &outcomes)
                }
                Source::Snapshot(_) => rdb::check_counts(
                    inv,
                    &pre,
                    &snapshot_legacy,
                    &exchanges,
                    &plan,
                    &migration,
                    &outcomes,
                ),
            },
            _ => {}
        }
    }
    invariants.extend(
        engine_invariants
            .into_iter()
            .map(InvariantEntry::from_result),
    );
    invariants.push(checks::untouched(
        &pre, &post, &run, &exchanges, &outcomes, slack,
    ));
    invariants.push(checks::api(&restore_conn, &conn, &outcomes, &exchanges).await?);

    // Rollback, migrate again (verified like the first), then a run that
    // must write nothing.
    let before = rollback::Before {
        digest: &pre,
        taken: pre_at,
        took: pre_took,
    };
    let writers = rollback::GateWriters {
        url: server.url(),
        pairs: writers::hot_pairs(
            match &source {
                Source::Seeded { generated, .. } => &generated.keyspace,
                Source::Snapshot(_) => &snapshot_legacy,
            },
            &exchanges,
            HOT_USERS,
            gen.seed,
        ),
        cfg: WritersConfig {
            seed: gen.seed,
            ..WritersConfig::default()
        },
        writes: HOT_USERS * 2,
    };
    let again =
        rollback::rollback_then_migrate_again(&store, &conn, before, &opts, &writers).await?;
    for verified in again.verified {
        if let Some(entry) = invariants.iter_mut().find(|e| e.id == verified.id) {
            entry.absorb(verified);
        }
    }
    for (id, note) in again.notes {
        if let Some(entry) = invariants.iter_mut().find(|e| e.id == id) {
            entry.note = Some(format!("second run: {note}"));
        }
    }
    invariants.push(again.rollback);
    invariants.push(again.idempotent);
    invariants.push(again.no_lost_writes);

    let snapshot = match &source {
        Source::Snapshot(snap) => {
            let others = rdb::other_databases_of(&conn).await?;
            if !others.is_empty() {
                eprintln!(
                    "gate: the snapshot also holds keys in other databases ({others:?}: database -> keys); the gate, like the migrations, ran on database 0 only"
                );
            }
            Some(rdb::report(snap, &loaded, &exchanges, others))
        }
        Source::Seeded { .. } => None,
    };
    let mut report = GateReport {
        schema_version: report::SCHEMA_VERSION,
        keyshift_version: env!("CARGO_PKG_VERSION"),
        started_at,
        elapsed_ms: started.elapsed().as_millis(),
        backend: server.describe(),
        redis_version,
        seed: gen.seed,
        users: match &snapshot {
            Some(s) => s.legacy_users,
            None => gen.users,
        },
        fixtures: match &source {
            Source::Seeded { fixtures, .. } => fixtures
                .as_ref()
                .map(|_| args.fixtures.display().to_string()),
            Source::Snapshot(_) => None,
        },
        keys_seeded: seeded.len(),
        truth: match &source {
            Source::Seeded { generated, .. } => serde_json::to_value(&generated.truth)?,
            Source::Snapshot(_) => serde_json::Value::Null,
        },
        snapshot,
        phases: {
            phases.push(PhaseReport::grid_positions(&migration, invariants));
            phases
        },
        passed: false,
        replay: replay_command(args, &gen, server.kind()),
    };
    report.compute_passed();
    Ok(report)
}

fn load_fixtures(args: &GateArgs) -> anyhow::Result<Option<Keyspace>> {
    if args.fixtures.is_dir() {
        return Ok(Some(load_fixture_dir(&args.fixtures)?));
    }
    if args.fixtures.as_os_str() == "fixtures" {
        // The default directory is optional outside a checkout.
        return Ok(None);
    }
    Err(HarnessError::Usage(format!(
        "--fixtures {}: no such directory",
        args.fixtures.display()
    ))
    .into())
}

fn replay_command(args: &GateArgs, gen: &GenConfig, kind: BackendKind) -> String {
    if let Some(file) = &args.rdb {
        return format!(
            "keyshift gate --backend {kind} --rdb {} --seed {} --report-dir {}",
            file.display(),
            gen.seed,
            args.report_dir.display()
        );
    }
    format!(
        "keyshift gate --backend {kind}{} --users {} --seed {} --fixtures {} --report-dir {}",
        if args.cluster { " --cluster" } else { "" },
        gen.users,
        gen.seed,
        args.fixtures.display(),
        args.report_dir.display()
    )
}

fn summary(r: &GateReport, dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Some(s) = &r.snapshot {
        out.push_str(&format!(
            "== snapshot {} (RDB format version {}): {} keys loaded, {} legacy positions keys of {} users\n",
            s.file, s.rdb_version, s.keys_loaded, s.legacy_position_keys, s.legacy_users
        ));
    }
    for phase in &r.phases {
        out.push_str(&format!("== {}: {}\n", phase.name, phase.summary));
        for i in &phase.invariants {
            let status = match i.status {
                report::Status::Pass => "PASS",
                report::Status::Fail => "FAIL",
                report::Status::NotRun => "----",
            };
            out.push_str(&format!(
                "{status} {:<15} processed {} matching {} mismatched {} extra {}{}\n",
                i.id,
                i.processed,
                i.matching,
                i.mismatched,
                i.extra,
                i.note
                    .as_ref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            ));
            for s in &i.samples {
                out.push_str(&format!("    {s}\n"));
            }
        }
    }
    out.push_str(&format!(
        "gate {} in {:.1} s; reports in {}\n",
        if r.passed { "PASSED" } else { "FAILED" },
        r.elapsed_ms as f64 / 1000.0,
        dir.display()
    ));
    out
}
