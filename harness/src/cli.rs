//! The command line of DESIGN §6. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::BackendKind;

#[derive(Debug, Parser)]
#[command(
    name = "keyshift",
    version,
    about = "Migrate a Redis keyspace to a new key schema, and prove on disposable Redis that nothing is lost."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Migration {
    /// Phase 2: `{exchange}:positions:{uid}` JSON -> a hash per position + index set.
    GridPositions,
    /// Phase 1: `{exchange}:user:{uid}:symbol:{symbol}:order_placed` hash -> `orders:...`.
    OrderPlaced,
}

#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Redis URL (redis://[user:password@]host:port[/db]).
    #[arg(long = "redis", env = "REDIS_URL", hide_env_values = true)]
    pub url: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a migration on a live server.
    Migrate {
        migration: Migration,
        #[command(flatten)]
        redis: RedisArgs,
        /// Migrate only this exchange's keys.
        #[arg(long)]
        exchange: Option<String>,
        /// Read and plan, write nothing; print what would happen.
        #[arg(long)]
        dry_run: bool,
        /// Write without asking (required when not on a terminal).
        #[arg(long)]
        force: bool,
        /// Do not migrate closed positions (pos 0); each is counted in the report.
        #[arg(long)]
        skip_closed: bool,
        /// grid-positions: quarantine (leave untouched, report) a user holding
        /// more positions than this [default: 5000]. A user is one atomic
        /// step, and a larger step would block Redis for more than tens of
        /// milliseconds; raise it only in a quiet window.
        #[arg(long, value_name = "N")]
        max_positions_per_user: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Undo a run: restore legacy keys from its backups, delete exactly the keys it created.
    Rollback {
        migration: Migration,
        #[command(flatten)]
        redis: RedisArgs,
        /// Roll back only the run whose backups carry this stamp (YYYYMMDD_HHMMSS); default: every run not rolled back that migrated something, newest first.
        #[arg(long)]
        backup_stamp: Option<String>,
        /// List what would be restored and deleted, and any data changed since; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write without asking, and roll back even over data changed since the migration.
        #[arg(long)]
        force: bool,
    },
    /// Classify every key against the schema (SCAN, read-only): counts per pattern with samples.
    /// Exit 0 when no legacy key remains, 1 when some do.
    Validate {
        #[command(flatten)]
        redis: RedisArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// A keyspace schema (TOML) instead of the built-in one of DESIGN §1.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
    },
    /// Phase 1.5: delete the legacy position-cache keys (by exact name; nothing else).
    CleanupLegacy {
        #[command(flatten)]
        redis: RedisArgs,
        /// List (sampled) and count what would be deleted; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write without asking (required when not on a terminal).
        #[arg(long)]
        force: bool,
        /// A keyspace schema (TOML) instead of the built-in one; its patterns
        /// marked `cleanup = true` are the ones deleted.
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
    },
    /// Remove the debris of an interrupted run (keys it created for users it did not finish).
    CleanupMigration {
        migration: Migration,
        #[command(flatten)]
        redis: RedisArgs,
        /// List what would be deleted; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write without asking (required when not on a terminal).
        #[arg(long)]
        force: bool,
    },
    /// Show the recorded runs, their state and progress, and who holds the lock (read-only).
    Status {
        #[command(flatten)]
        redis: RedisArgs,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a migration's invariants on a live server (read-only), judged
    /// by the oracle: against every run not rolled back (their backups and
    /// journaled digests), or against a snapshot taken before.
    Verify {
        migration: Migration,
        #[command(flatten)]
        redis: RedisArgs,
        /// A `keyshift snapshot` of the keyspace taken before the
        /// migration: judge against it, with no journal needed
        /// (grid-positions).
        #[arg(long, value_name = "FILE")]
        before: Option<PathBuf>,
        /// Judge only this run (an id `keyshift status` lists).
        #[arg(long, value_name = "ID", conflicts_with = "before")]
        run: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a bytes-exact before-image of a migration's key families (SCAN,
    /// streaming) for `verify --before FILE`.
    Snapshot {
        migration: Migration,
        #[command(flatten)]
        redis: RedisArgs,
        /// The file to write (JSON lines).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Only this exchange's keys (default: all five).
        #[arg(long)]
        exchange: Option<String>,
    },
    /// Seed a disposable Redis, migrate, check every invariant, write reports.
    Gate(GateArgs),
    /// Replay failure cases (scenarios/*.toml): faults, bad input, expected outcomes.
    Scenario(ScenarioArgs),
    /// Measure the data API's latency per store (HDR histograms), or with
    /// --migration Phase 2's throughput against its write floor; writes
    /// bench.json, bench.md and SVG charts.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct GateArgs {
    /// Which disposable Redis to start.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Generated users.
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Generator seed; the same seed replays the same keyspace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory of JSON keyspace fixtures seeded beside the generated users.
    #[arg(long, default_value = "fixtures")]
    pub fixtures: PathBuf,
    /// Run the gate on an RDB snapshot (a copy of production's dump.rdb)
    /// instead of generated users and fixtures: the disposable Redis loads
    /// it on start, and every invariant is judged against the keyspace as
    /// loaded. Not with --users or --fixtures; --seed still picks the users
    /// the writers write to. The Redis must be at least as new as the one
    /// that wrote the file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["users", "fixtures"])]
    pub rdb: Option<PathBuf>,
    /// Run on a disposable 3-primary Redis Cluster (no replicas) instead of
    /// one server: the migrator and checks get its `redis+cluster://` URL,
    /// seeding and digests go to every primary.
    #[arg(long, conflicts_with = "rdb")]
    pub cluster: bool,
    /// Where report.json, report.md and junit.xml go.
    #[arg(long, default_value = "reports")]
    pub report_dir: PathBuf,
    /// Judge any migration command instead of keyshift's engine: CMD runs
    /// through `sh -c` with REDIS_URL, KEYSHIFT_MIGRATION and
    /// KEYSHIFT_EXCHANGES set to the disposable server; the oracle judges
    /// the keyspace it leaves against the keyspace as seeded (docs/engines.md).
    #[arg(long, value_name = "CMD", conflicts_with = "cluster")]
    pub engine: Option<String>,
    /// With --engine: the command that rolls CMD's migration back; judged
    /// by the rollback invariant.
    #[arg(long, value_name = "CMD", requires = "engine")]
    pub rollback_engine: Option<String>,
    /// With --engine: which migration CMD performs.
    #[arg(long, value_enum, default_value_t = Migration::GridPositions, requires = "engine")]
    pub migration: Migration,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which disposable Redis to start. Default process: docker's port
    /// forwarding adds a hop to every round trip measured.
    #[arg(long, value_enum, default_value_t = BackendKind::Process)]
    pub backend: BackendKind,
    /// Users per positions-per-user dataset (latency).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Where bench.json, bench.md and the charts go.
    #[arg(long, default_value = "reports")]
    pub report_dir: PathBuf,
    /// Measure Phase 2 migrate and verify against the write floor instead of latency.
    #[arg(long)]
    pub migration: bool,
    /// Users per migration measurement (with --migration).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    pub sizes: Vec<usize>,
    /// Generator seed of the migration keyspaces.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Positions per user of the latency datasets.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20,100")]
    pub positions: Vec<usize>,
    /// Concurrent callers per latency cell.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub concurrency: Vec<usize>,
    /// Milliseconds per latency cell (operation x store x positions x concurrency).
    #[arg(long, default_value_t = 300)]
    pub cell_ms: u64,
}

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// The directory of scenario files (*.toml).
    #[arg(long, global = true, default_value = "scenarios")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub action: ScenarioAction,
}

#[derive(Debug, Subcommand)]
pub enum ScenarioAction {
    /// Each scenario's name and what it replays.
    List,
    /// Run one scenario by name, or all of them; exit 0 when every one met
    /// its expectation, 1 when one did not.
    Run(ScenarioRunArgs),
}

#[derive(Debug, Args)]
pub struct ScenarioRunArgs {
    /// The scenario to run (see `keyshift scenario list`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub name: Option<String>,
    /// Run every scenario of the directory.
    #[arg(long)]
    pub all: bool,
    /// Which disposable Redis to start; docker-only faults are skipped (and
    /// say so) on process.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Reports go to REPORT_DIR/scenarios/NAME/ (with --repeat, each run's
    /// to REPORT_DIR/run-K/scenarios/NAME/).
    #[arg(long, default_value = "reports")]
    pub report_dir: PathBuf,
    /// Run each scenario N times, one after another, and say how many runs
    /// passed: a scenario that passes only sometimes is flaky, and fails.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Strike a team's own migration command instead of keyshift's: CMD
    /// runs through `sh -c` with REDIS_URL, KEYSHIFT_MIGRATION and
    /// KEYSHIFT_EXCHANGES set, once per `[[run]]`, under the scenario's
    /// faults (a SIGKILL kills its whole process group); the oracle judges
    /// the keyspace after the last run against the keyspace as seeded
    /// (docs/engines.md). Cluster scenarios are skipped.
    #[arg(long, value_name = "CMD")]
    pub engine: Option<String>,
    /// With --engine: the command that rolls CMD's migration back, run
    /// where a scenario expects a rollback.
    #[arg(long, value_name = "CMD", requires = "engine")]
    pub rollback_engine: Option<String>,
    /// With --engine: which migration CMD performs; scenarios of the other
    /// are skipped.
    #[arg(long, value_enum, default_value_t = Migration::GridPositions, requires = "engine")]
    pub migration: Migration,
}
