//! keyshift's harness and binary: everything that proves a migration on
//! disposable Redis servers, plus the command line. Nothing here runs
//! against production except through `keyshift_engine`.
//!
//! - `cli`: the command line of DESIGN §6 (clap); `commands`: one module per subcommand.
//! - `exit`: exit codes, mapped in one place.
//! - `gate`: the end-to-end gate; `report`: its report.json, report.md and junit.xml.
//! - `scenario`: `keyshift scenario`: failure cases (scenarios/*.toml) replayed with faults against the real migrator.
//! - `backend`: disposable Redis servers (docker, process, auto) and 3-primary
//!   clusters of either kind, files placed before start (`ServerSetup`), faults;
//!   all cleaned up on drop.
//! - `seed`: the keyspace model, JSON fixtures, the seeded generator, and loading into Redis.
//! - `bench`: `keyshift bench`: data-API latency (HDR) and Phase 2 throughput against its floor.
//! - `floor`: the end state of Phase 2 as raw RESP: the write floor a migration is
//!   measured against, and the reads of it, the floor `verify` is measured against.
//! - `observe`: reads before- and after-images of a keyspace for the oracle
//!   (keyshift-oracle), which judges them.
//! - `wire`: how observe and verify read in bulk: the client's connection, or
//!   on a plain TCP server sockets of their own, decoded in place.
//! - `snapshot`: `keyshift snapshot`'s file, a bytes-exact before-image.
//! - `digest`: a type-aware digest of a keyspace, for "untouched" and "rollback".
//! - `writers`: writer tasks during a migration, their history, and the `no-lost-writes` check.
pub mod backend;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod digest;
pub mod error;
pub mod exit;
pub mod floor;
pub mod gate;
pub mod observe;
pub mod report;
pub mod scenario;
pub mod seed;
pub mod snapshot;
pub mod wire;
pub mod writers;

pub use error::HarnessError;

use cli::{Cli, Command, Migration};
use commands::migrate::MigrateArgs;

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<exit::Outcome> {
    match cli.command {
        Command::Migrate {
            migration,
            redis,
            exchange,
            dry_run,
            force,
            skip_closed,
            max_positions_per_user,
            json,
        } => {
            let args = MigrateArgs {
                url: &redis.url,
                exchange: exchange.as_deref(),
                dry_run,
                force,
                skip_closed,
                max_positions_per_user,
                json,
            };
            match migration {
                Migration::GridPositions => commands::migrate::run(args).await,
                Migration::OrderPlaced => commands::order_placed::migrate(args).await,
            }
        }
        Command::Verify {
            migration,
            redis,
            before,
            run,
            json,
        } => match migration {
            Migration::GridPositions => {
                commands::verify::run(commands::verify::VerifyArgs {
                    url: &redis.url,
                    before: before.as_deref(),
                    run: run.as_deref(),
                    json,
                })
                .await
            }
            Migration::OrderPlaced if before.is_some() || run.is_some() => Err(HarnessError::Usage(
                "verify order-placed takes neither --before nor --run yet: it judges the newest run"
                    .into(),
            )
            .into()),
            Migration::OrderPlaced => commands::order_placed::verify(&redis.url, json).await,
        },
        Command::Snapshot {
            migration,
            redis,
            out,
            exchange,
        } => commands::snapshot::run(&redis.url, migration, exchange.as_deref(), &out).await,
        Command::Rollback {
            migration,
            redis,
            backup_stamp,
            dry_run,
            force,
        } => {
            let stamp = backup_stamp.as_deref();
            commands::rollback::run(migration, &redis.url, stamp, dry_run, force).await
        }
        Command::CleanupMigration {
            migration: Migration::GridPositions,
            redis,
            dry_run,
            force,
        } => commands::cleanup_migration::run(&redis.url, dry_run, force).await,
        Command::CleanupMigration {
            migration: Migration::OrderPlaced,
            ..
        } => {
            // Each key moves in one atomic step: an interrupted run leaves
            // nothing half-done; `migrate order-placed` resumes it.
            println!(
                "cleanup-migration order-placed: nothing to clean (each key moves atomically)"
            );
            Ok(exit::Outcome::Done)
        }
        Command::Validate {
            redis,
            json,
            schema,
        } => commands::validate::run(&redis.url, json, schema.as_deref()).await,
        Command::CleanupLegacy {
            redis,
            dry_run,
            force,
            schema,
        } => commands::cleanup_legacy::run(&redis.url, dry_run, force, schema.as_deref()).await,
        Command::Status { redis, json } => commands::status::run(&redis.url, json).await,
        Command::Gate(args) => gate::run(&args).await,
        Command::Bench(args) => bench::run(&args).await,
        Command::Scenario(args) => scenario::command(&args).await,
    }
}
