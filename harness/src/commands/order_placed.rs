//! `keyshift migrate order-placed` and `keyshift verify order-placed`
//! (Phase 1).

use std::fmt::Write as _;

use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::grid_positions::verify::VerifyReport;
use keyshift_engine::order_placed::runner::Finding;
use keyshift_engine::order_placed::store::OrderPlacedStore;
use keyshift_engine::order_placed::verify::latest_run;
use keyshift_engine::order_placed::{
    migrate_order_placed, verify_order_placed, AnyOrderPlaced, OrderPlacedOptions,
    OrderPlacedReport, MIGRATION,
};
use keyshift_engine::redact_url;

use super::migrate::MigrateArgs;
use super::{confirm_write, exchanges, locked_unless_dry_run, print_report, progress_bar, render};
use crate::error::HarnessError;
use crate::exit::Outcome;

pub async fn migrate(args: MigrateArgs<'_>) -> anyhow::Result<Outcome> {
    if args.skip_closed {
        return Err(HarnessError::Usage(
            "--skip-closed applies to grid-positions only; order-placed moves every hash".into(),
        )
        .into());
    }
    if args.max_positions_per_user.is_some() {
        return Err(HarnessError::Usage(
            "--max-positions-per-user applies to grid-positions only".into(),
        )
        .into());
    }
    let conn = connect(args.url).await?;
    let store = AnyOrderPlaced::open(conn.clone()).await?;
    let what = format!("migrate {MIGRATION} on {}", redact_url(args.url));
    if !args.dry_run {
        confirm_write(args.force, &what)?;
    }
    let mut opts = OrderPlacedOptions::new(exchanges(args.exchange));
    opts.dry_run = args.dry_run;
    let bar = progress_bar(store.key_count().await?, &format!("migrate {MIGRATION}"));
    let tick = |n: usize| bar.inc(n as u64);
    let migrate = migrate_order_placed(&store, &opts, &tick);
    let command = format!("migrate {MIGRATION}");
    let report = locked_unless_dry_run(&conn, args.dry_run, &command, migrate).await?;
    bar.finish_and_clear();
    print_report(&report, args.json, render)?;
    Ok(Outcome::review_if(report.needs_review()))
}

pub async fn verify(url: &str, json: bool) -> anyhow::Result<Outcome> {
    let conn = connect(url).await?;
    let Some(run) = latest_run(&conn).await? else {
        // Exit 1, as for a failed invariant: nothing can be shown to hold.
        anyhow::bail!(
            "no {MIGRATION} run is recorded in the journal on this server: run `keyshift migrate {MIGRATION}` first"
        );
    };
    let size = run
        .counts
        .as_ref()
        .and_then(|c| c.get("legacy_keys_found"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let bar = progress_bar(size, &format!("verify {MIGRATION}"));
    let report = verify_order_placed(&conn, &run, &|n| bar.inc(n as u64)).await?;
    bar.finish_and_clear();
    print_report(&report, json, render_verify)?;
    Ok(Outcome::passed_if(report.passed()))
}

/// The human summary of a run or a dry-run plan.
pub fn render(r: &OrderPlacedReport) -> String {
    let mut out = String::new();
    let heading = if r.dry_run {
        "Plan (dry run: nothing was written)".to_owned()
    } else {
        let resumed = if r.resumed { ", resumed" } else { "" };
        format!("Run {}{resumed}", r.run_id.as_deref().unwrap_or("-"))
    };
    let _ = writeln!(out, "{MIGRATION} — {heading}");
    let _ = writeln!(
        out,
        "{:<10} {:>11} {:>7} {:>13} {:>9} {:>11} {:>8}",
        "exchange", "legacy keys", "moved", "dropped equal", "conflicts", "quarantined", "vanished"
    );
    for (name, c) in render::rows_with_total(&r.per_exchange, &r.totals) {
        let _ = writeln!(
            out,
            "{:<10} {:>11} {:>7} {:>13} {:>9} {:>11} {:>8}",
            name,
            c.legacy_keys_found,
            c.keys_moved,
            c.keys_dropped_equal,
            c.keys_conflicting,
            c.keys_quarantined,
            c.keys_vanished
        );
    }
    if !r.samples.is_empty() {
        let _ = writeln!(out, "\nSample keys (old -> new):");
        for s in &r.samples {
            let _ = writeln!(out, "  {} -> {} ({})", s.legacy, s.target, s.action);
        }
    }
    for (title, list) in [
        ("Conflicts (neither key touched)", &r.conflicts),
        ("Quarantined (left untouched)", &r.quarantined),
    ] {
        render::findings(&mut out, title, list, |f: &Finding| {
            format!("{} -> {}: {} — {}", f.key, f.target, f.reason, f.detail)
        });
    }
    render::footer(&mut out, r.elapsed_ms, r.needs_review());
    out
}

pub fn render_verify(r: &VerifyReport) -> String {
    let mut out = format!("verify {} — run {}\n", r.migration, r.run_id);
    render::invariants(&mut out, r);
    out
}
