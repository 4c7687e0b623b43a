//! `keyshift bench`: the data structures' latency and the migration's
//! throughput, measured on a disposable Redis this command starts.
//!
//! - `data`: the benchmark dataset (both layouts) and one timed call per
//!   operation; the criterion suite in `benches/` uses it too.
//! - `latency`: HDR histograms per operation x store x positions x concurrency.
//! - `migration`: Phase 2 and verify as child processes against the floor.
//! - `pipe`: raw-RESP bulk loads (seeding, the floor).
//! - `cpu`: the server's and this process's CPU time.
//! - `report`: bench.json and bench.md; `charts`: the SVG charts.

pub mod charts;
pub mod cpu;
pub mod data;
pub mod latency;
pub mod migration;
pub mod pipe;
pub mod report;

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::RedisServer;
use crate::cli::BenchArgs;
use crate::exit::Outcome;
use data::{Dataset, Op, StoreKind};
use latency::LatencyRow;
use report::{BenchReport, LatencySection, MigrationSection, Setting};

pub async fn run(args: &BenchArgs) -> anyhow::Result<Outcome> {
    let server = RedisServer::start(args.backend).await?;
    let conn = keyshift_engine::connection::RedisConn::from(server.connection().await?);
    let setting = Setting {
        measured_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        backend: server.kind().to_string(),
        redis_version: redis_version(&conn).await?,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut report = BenchReport::load(&args.report_dir);
    let mut outcome = Outcome::Done;
    if args.migration {
        let section = run_migration(&server, args, setting).await?;
        if section.rows.iter().any(|r| r.verify_exit != 0) {
            outcome = Outcome::InvariantFailed;
        }
        report.migration = Some(section);
    } else {
        report.latency = Some(run_latency(&server, args, setting).await?);
    }
    drop(server);
    write(&args.report_dir, &report)?;
    print!("{}", summary(&report, args.migration));
    println!(
        "Reports: {}/bench.json, bench.md",
        args.report_dir.display()
    );
    Ok(outcome)
}

fn bar(total: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template =
        format!("{{msg:32}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}}, eta {{eta}})");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

async fn run_latency(
    server: &RedisServer,
    args: &BenchArgs,
    setting: Setting,
) -> anyhow::Result<LatencySection> {
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1).max(1);
    let mut conns = Vec::with_capacity(max_c);
    for _ in 0..max_c {
        conns.push(
            keyshift_engine::grid_positions::store::standalone::connect(&server.url()).await?,
        );
    }
    let cells =
        args.positions.len() * Op::ALL.len() * StoreKind::ALL.len() * args.concurrency.len();
    let progress = bar(cells as u64, "cells");
    let cell = Duration::from_millis(args.cell_ms.max(1));
    let mut rows = Vec::with_capacity(cells);
    for &positions in &args.positions {
        let data = Dataset::new(args.users, positions);
        progress.set_message(format!("seeding {positions} positions/user"));
        data.seed(&conns[0])
            .await
            .context("seeding the benchmark data")?;
        for op in Op::ALL {
            for &c in &args.concurrency {
                let c = c.max(1);
                progress.set_message(format!("{} p{positions} c{c}", op.name()));
                let measured =
                    latency::run_interleaved(&conns[..c], &StoreKind::ALL, op, &data, cell).await?;
                for (store, m) in StoreKind::ALL.into_iter().zip(&measured) {
                    rows.push(LatencyRow::new(op, store, positions, c, m));
                    progress.inc(1);
                }
            }
        }
    }
    // The order bench.json always had: positions, operation, store, concurrency.
    rows.sort_by_key(|r| (r.positions, r.op, r.store, r.concurrency));
    progress.finish_and_clear();
    Ok(LatencySection {
        setting,
        users: args.users,
        cell_ms: args.cell_ms,
        rows,
    })
}

async fn run_migration(
    server: &RedisServer,
    args: &BenchArgs,
    setting: Setting,
) -> anyhow::Result<MigrationSection> {
    let progress = bar(args.sizes.len() as u64, "sizes");
    let mut rows = Vec::with_capacity(args.sizes.len());
    for &users in &args.sizes {
        progress.set_message(format!("{users} users: seed, floor, migrate, verify"));
        let row = migration::measure(server, users, args.seed).await?;
        // A 1M-user size takes many minutes: each figure shows as it lands.
        progress.suspend(|| print!("{}", migration_line(&row)));
        rows.push(row);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(MigrationSection {
        setting,
        seed: args.seed,
        rows,
    })
}

async fn redis_version(conn: &keyshift_engine::connection::RedisConn) -> anyhow::Result<String> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn.clone())
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned())
}

fn write(dir: &Path, report: &BenchReport) -> anyhow::Result<()> {
    report
        .write(dir)
        .with_context(|| format!("writing reports to {}", dir.display()))?;
    let chart_err = |e: Box<dyn std::error::Error>| anyhow::anyhow!("drawing a chart: {e}");
    if let Some(l) = &report.latency {
        charts::latency(dir, l).map_err(chart_err)?;
    }
    if let Some(m) = &report.migration {
        charts::migration(dir, m).map_err(chart_err)?;
    }
    Ok(())
}

fn migration_line(r: &migration::MigrationRow) -> String {
    format!(
        "{:>8} users: migrate {:.2} s ({} positions/s), floor {:.2} s, ratio {:.2}; \
         peak RSS migrate {:.1} MB, verify {:.1} MB ({:.2} s, exit {})\n",
        r.users,
        r.migrate_s,
        r.migrate_positions_per_s,
        r.floor_s,
        r.ratio,
        r.migrate_peak_rss_mb,
        r.verify_peak_rss_mb,
        r.verify_s,
        r.verify_exit
    )
}

/// What the terminal shows at the end: the figures this run measured.
fn summary(report: &BenchReport, migration: bool) -> String {
    let mut out = String::new();
    match (migration, &report.migration, &report.latency) {
        (true, Some(m), _) => {
            out.push_str(&format!("{} sizes measured.\n", m.rows.len()));
        }
        (false, _, Some(l)) => {
            out.push_str(&format!("{} latency cells measured.\n", l.rows.len()));
            out.push_str(&report::read_verdict(l));
            out.push('\n');
        }
        _ => {}
    }
    out
}
