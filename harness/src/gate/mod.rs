//! `keyshift gate`: backend up -> seed -> digest -> plan -> migrate ->
//! verify (engine invariants plus the gate's own: backups restored into a
//! second fresh Redis, untouched keys, api answers, seeded truth) ->
//! rollback -> migrate again with writers running (no-lost-writes) ->
//! reports -> exit code. With `--rdb` the server loads a snapshot instead
//! of being seeded, and the keyspace as loaded takes the truth's place
//! (`rdb`).

pub mod checks;
pub mod engines;
pub mod external;
mod phase1;
mod phase2;
pub mod rdb;
mod rollback;

use std::time::Instant;

use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::Planner;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::order_placed::plan::KeyPlanner;
use keyshift_engine::run::journal::is_journal_key;

use crate::backend::{BackendKind, Deployment, RedisServer};
use crate::cli::GateArgs;
use crate::commands::exchanges;
use crate::digest::{digest, Digest};
use crate::error::HarnessError;
use crate::exit::Outcome;
use crate::report::SnapshotReport;
use crate::report::{self, GateReport, PhaseReport};
use crate::seed::{self, generate, load_fixture_dir, GenConfig, Generated, Keyspace};

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
    report::prepare_dir(&args.report_dir)?;
    let report = match &args.engine {
        Some(engine) => external::evaluate(args, gen, engine).await?,
        None => evaluate(&Production, args, gen).await?,
    };
    report::write_all(&report, &args.report_dir)?;
    print!("{}", summary(&report, &args.report_dir));
    Ok(Outcome::passed_if(report.passed))
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

    /// The keys each phase expects: the model's, or the snapshot's as
    /// loaded.
    fn seeded_keys<'s>(&'s self, loaded: &'s Digest) -> Vec<&'s str> {
        match self {
            Source::Seeded { keyspace, .. } => {
                keyspace.entries.iter().map(|e| e.key.as_str()).collect()
            }
            Source::Snapshot(_) => loaded.keys.keys().map(String::as_str).collect(),
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
    let gate = Gate::start(engines, args, gen).await?;
    // The migration guide's order: Phase 1, Phase 1.5, then Phase 2, each
    // checked against the keyspace as the previous phase left it.
    let loaded_at = Instant::now();
    let loaded = digest(&gate.conn, not_journal).await?;
    let seeded = gate.source.seeded_keys(&loaded);
    let mut phases = vec![gate.order_placed(&seeded, &loaded, loaded_at).await?];
    phases.push(phase1::cleanup_legacy_cache(&gate.conn, &seeded).await?);
    let pre = gate.before_phase2().await?;
    let mut first = gate.phase2(&pre).await?;
    // Rollback, migrate again (verified like the first), then a run that
    // must write nothing.
    let again = gate.rollback_then_migrate_again(&pre).await?;
    again.merge_into(&mut first.invariants);
    phases.push(PhaseReport::grid_positions(
        &first.migration,
        first.invariants,
    ));
    if matches!(gate.source, Source::Seeded { .. }) {
        mark_required(&mut phases);
    }
    gate.report(seeded.len(), &loaded, phases).await
}

/// Phase 2's invariants that always have work on a seeded keyspace, and
/// those that do once a key migrated: one of them that did not run fails
/// the gate. (On a snapshot any may have nothing to examine.)
const REQUIRED_ALWAYS: [&str; 3] = ["dry_run", "counts", "untouched"];
const REQUIRED_ONCE_MIGRATED: [&str; 6] = ["index", "fields", "backup", "ttl", "api", "rollback"];

fn mark_required(phases: &mut [PhaseReport]) {
    for phase in phases.iter_mut().filter(|p| p.name == "grid-positions") {
        let migrated = phase.details["totals"]["keys_migrated"]
            .as_u64()
            .unwrap_or(0);
        for inv in &mut phase.invariants {
            let id = inv.id.as_str();
            inv.required |= REQUIRED_ALWAYS.contains(&id)
                || (migrated > 0 && REQUIRED_ONCE_MIGRATED.contains(&id));
        }
    }
}

fn not_journal(k: &str) -> bool {
    !is_journal_key(k)
}

/// One gate run: its inputs, the seeded server and the stores opened on
/// it. Each phase is a method (Phase 1 here, Phase 2 in `phase2`, the
/// rollback and second migration in `rollback`).
struct Gate<'a, E: Engines> {
    args: &'a GateArgs,
    gen: GenConfig,
    started: Instant,
    started_at: String,
    exchanges: Vec<String>,
    source: Source,
    server: Deployment,
    conn: RedisConn,
    redis_version: String,
    grid: E::Grid,
    order_placed: E::OrderPlaced,
    /// The planners the engines' runners plan with.
    grid_planner: Planner,
    order_placed_planner: KeyPlanner,
}

impl<'a, E: Engines> Gate<'a, E> {
    /// Seeds (or loads) the server and opens the stores on it.
    async fn start(engines: &E, args: &'a GateArgs, gen: GenConfig) -> anyhow::Result<Self> {
        let started = Instant::now();
        let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let exchanges = exchanges(None);
        let source = Source::from_args(args, &gen)?;
        let server = source.server(args.backend, args.cluster).await?;
        eprintln!("gate: {} backend at {}", server.describe(), server.url());
        let conn = connect(&server.url()).await?;
        // INFO through a cluster client goes to every primary: ask one node.
        let redis_version =
            checks::redis_version(&RedisConn::from(server.nodes()[0].connection().await?)).await;
        let grid = engines.grid(&server.url(), &conn).await?;
        let order_placed = engines.order_placed(&server.url(), &conn).await?;
        Ok(Gate {
            args,
            gen,
            started,
            started_at,
            exchanges,
            source,
            server,
            conn,
            redis_version,
            grid,
            order_placed,
            grid_planner: engines.grid_planner(),
            order_placed_planner: engines.order_placed_planner(),
        })
    }

    /// Phase 1, checked against the keyspace as loaded (`loaded`, digested
    /// at `loaded_at`).
    async fn order_placed(
        &self,
        seeded: &[&str],
        loaded: &Digest,
        loaded_at: Instant,
    ) -> anyhow::Result<PhaseReport> {
        phase1::order_placed(
            &self.order_placed,
            &self.conn,
            seeded,
            &self.exchanges,
            self.order_placed_planner,
            loaded,
            loaded_at,
        )
        .await
    }

    /// The report of every phase, with what the gate ran on.
    async fn report(
        &self,
        keys_seeded: usize,
        loaded: &Digest,
        phases: Vec<PhaseReport>,
    ) -> anyhow::Result<GateReport> {
        let snapshot = self.snapshot_report(loaded).await?;
        let mut report = GateReport {
            schema_version: report::SCHEMA_VERSION,
            keyshift_version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at.clone(),
            elapsed_ms: self.started.elapsed().as_millis(),
            backend: self.server.describe(),
            redis_version: self.redis_version.clone(),
            seed: self.gen.seed,
            users: match &snapshot {
                Some(s) => s.legacy_users,
                None => self.gen.users,
            },
            fixtures: match &self.source {
                Source::Seeded { fixtures, .. } => fixtures
                    .as_ref()
                    .map(|_| self.args.fixtures.display().to_string()),
                Source::Snapshot(_) => None,
            },
            keys_seeded,
            truth: match &self.source {
                Source::Seeded { generated, .. } => serde_json::to_value(&generated.truth)?,
                Source::Snapshot(_) => serde_json::Value::Null,
            },
            snapshot,
            phases,
            passed: false,
            replay: replay_command(self.args, &self.gen, self.server.kind()),
        };
        report.compute_passed();
        Ok(report)
    }

    /// On a snapshot, what it held as loaded (and a word on databases the
    /// gate left alone).
    async fn snapshot_report(&self, loaded: &Digest) -> anyhow::Result<Option<SnapshotReport>> {
        let Source::Snapshot(snap) = &self.source else {
            return Ok(None);
        };
        let others = rdb::other_databases_of(&self.conn).await?;
        if !others.is_empty() {
            eprintln!(
                "gate: the snapshot also holds keys in other databases ({others:?}: database -> keys); the gate, like the migrations, ran on database 0 only"
            );
        }
        Ok(Some(rdb::report(snap, loaded, &self.exchanges, others)))
    }
}

fn load_fixtures(args: &GateArgs) -> anyhow::Result<Option<Keyspace>> {
    if args.fixtures.is_dir() {
        // A fixture the gate cannot read is the caller's to fix: usage,
        // named by file and entry, before any server starts.
        let fixtures = load_fixture_dir(&args.fixtures)
            .map_err(|e| HarnessError::Usage(format!("--fixtures: {e}")))?;
        return Ok(Some(fixtures));
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
