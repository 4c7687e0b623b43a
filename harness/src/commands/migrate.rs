//! `keyshift migrate grid-positions`.

use std::fmt::Write as _;

use keyshift_engine::grid_positions::runner::{
    migrate_grid_positions, MigrateOptions, MigrationReport,
};
use keyshift_engine::grid_positions::store::cluster::GridStore;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::grid_positions::store::GridPositionsStore;
use keyshift_engine::redact_url;

use super::{confirm_write, exchanges, locked_unless_dry_run, print_report, progress_bar, render};
use crate::exit::Outcome;

pub struct MigrateArgs<'a> {
    pub url: &'a str,
    pub exchange: Option<&'a str>,
    pub dry_run: bool,
    pub force: bool,
    pub skip_closed: bool,
    pub max_positions_per_user: Option<usize>,
    pub json: bool,
}

pub async fn run(args: MigrateArgs<'_>) -> anyhow::Result<Outcome> {
    let conn = connect(args.url).await?;
    let store = GridStore::open(args.url, conn.clone()).await?;
    if !args.dry_run {
        confirm_write(
            args.force,
            &format!("migrate grid-positions on {}", redact_url(args.url)),
        )?;
    }
    let mut opts = MigrateOptions::new(exchanges(args.exchange));
    opts.dry_run = args.dry_run;
    opts.skip_closed = args.skip_closed;
    if let Some(max) = args.max_positions_per_user {
        opts.max_positions_per_user = max;
    }
    let bar = progress_bar(store.key_count().await?, "migrate grid-positions");
    let tick = |n: usize| bar.inc(n as u64);
    let migrate = migrate_grid_positions(&store, &opts, &tick);
    let report =
        locked_unless_dry_run(&conn, args.dry_run, "migrate grid-positions", migrate).await?;
    bar.finish_and_clear();
    print_report(&report, args.json, render)?;
    Ok(Outcome::review_if(report.needs_review()))
}

/// The human summary of a run or a dry-run plan.
pub fn render(r: &MigrationReport) -> String {
    let mut out = String::new();
    let heading = if r.dry_run {
        "Plan (dry run: nothing was written)".to_owned()
    } else {
        format!(
            "Run {} (backups stamped {})",
            r.run_id.as_deref().unwrap_or("-"),
            r.stamp
        )
    };
    let _ = writeln!(out, "grid-positions — {heading}");
    let _ = writeln!(
        out,
        "{:<10} {:>11} {:>9} {:>11} {:>9} {:>10} {:>9} {:>8} {:>11}",
        "exchange",
        "legacy keys",
        "migrated",
        "quarantined",
        "conflicts",
        "positions",
        "migrated",
        "skipped",
        "quarantined"
    );
    for (name, c) in render::rows_with_total(&r.per_exchange, &r.totals) {
        let _ = writeln!(
            out,
            "{:<10} {:>11} {:>9} {:>11} {:>9} {:>10} {:>9} {:>8} {:>11}",
            name,
            c.legacy_keys_found,
            c.keys_migrated,
            c.keys_quarantined,
            c.keys_conflicting,
            c.positions_found,
            c.positions_migrated,
            c.positions_skipped_closed,
            c.positions_quarantined
        );
    }
    if !r.samples.is_empty() {
        let _ = writeln!(out, "\nSample keys (old -> new):");
        for s in &r.samples {
            let _ = writeln!(
                out,
                "  {} -> {} hash(es), index {}, backup {}",
                s.legacy,
                s.hashes.len(),
                s.index,
                s.backup
            );
            for h in s.hashes.iter().take(3) {
                let _ = writeln!(out, "      {h}");
            }
        }
    }
    for (title, list) in [
        ("Quarantined (left untouched)", &r.quarantined),
        ("Conflicts (nothing written)", &r.conflicts),
    ] {
        render::findings(&mut out, title, list, |f| {
            format!("{}: {} — {}", f.key, f.reason, f.detail)
        });
    }
    let skipped = format!(
        "Skipped, not legacy keys (left untouched; {} in all, the report lists {})",
        r.skipped_keys,
        r.skipped.len()
    );
    render::findings(&mut out, &skipped, &r.skipped, |f| {
        format!("{}: {}", f.key, f.detail)
    });
    render::footer(&mut out, r.elapsed_ms, r.needs_review());
    out
}
