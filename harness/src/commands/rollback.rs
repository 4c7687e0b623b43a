//! `keyshift rollback grid-positions|order-placed`.

use std::fmt::Write as _;

use keyshift_engine::grid_positions::rollback::{
    find_runs, rollback_grid_positions_runs, RollbackOptions, RollbackReport,
};
use keyshift_engine::grid_positions::store::cluster::GridStore;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::order_placed::{self, AnyOrderPlaced};
use keyshift_engine::redact_url;
use keyshift_engine::run::journal::RunRecord;

use super::{confirm_write, locked_unless_dry_run};
use crate::cli::Migration;
use crate::exit::Outcome;

/// Rolls back every run of the migration not rolled back that wrote
/// something, newest first (or only the run `backup_stamp` names).
pub async fn run(
    migration: Migration,
    url: &str,
    backup_stamp: Option<&str>,
    dry_run: bool,
    force: bool,
) -> anyhow::Result<Outcome> {
    let conn = connect(url).await?;
    let opts = RollbackOptions {
        backup_stamp: backup_stamp.map(str::to_owned),
        dry_run,
        force,
    };
    let reports = match migration {
        Migration::GridPositions => {
            let store = GridStore::open(url, conn.clone()).await?;
            let runs = find_runs(&conn, backup_stamp).await?;
            let work = rollback_grid_positions_runs(&store, &conn, &runs, &opts);
            confirmed(&conn, url, &runs, &opts, "rollback grid-positions", work).await?
        }
        Migration::OrderPlaced => {
            let store = AnyOrderPlaced::open(conn.clone()).await?;
            let runs = order_placed::rollback::find_runs(&conn, backup_stamp).await?;
            let work =
                order_placed::rollback::rollback_order_placed_runs(&store, &conn, &runs, &opts);
            confirmed(&conn, url, &runs, &opts, "rollback order-placed", work).await?
        }
    };
    if reports.len() > 1 {
        let ids: Vec<&str> = reports.iter().map(|r| r.run_id.as_str()).collect();
        let verb = if dry_run {
            "would roll back"
        } else {
            "rolled back"
        };
        println!(
            "{verb} {} runs, newest first: {}",
            ids.len(),
            ids.join(", ")
        );
    }
    for report in &reports {
        print!("{}", render(report));
    }
    Ok(Outcome::review_if(
        reports.iter().any(|r| !r.skipped.is_empty()),
    ))
}

/// A dry run just runs; a real one asks (or takes --force) and holds the lock.
async fn confirmed(
    conn: &keyshift_engine::connection::RedisConn,
    url: &str,
    runs: &[RunRecord],
    opts: &RollbackOptions,
    command: &str,
    work: impl std::future::Future<Output = keyshift_engine::Result<Vec<RollbackReport>>>,
) -> anyhow::Result<Vec<RollbackReport>> {
    if !opts.dry_run {
        let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
        let what = match ids.as_slice() {
            [one] => format!("run {one}"),
            many => format!("{} runs ({})", many.len(), many.join(", ")),
        };
        confirm_write(
            opts.force,
            &format!("roll back {what} on {}", redact_url(url)),
        )?;
    }
    Ok(locked_unless_dry_run(conn, opts.dry_run, command, work).await?)
}

pub fn render(r: &RollbackReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run {
        "would restore"
    } else {
        "restored"
    };
    let _ = writeln!(
        out,
        "rollback {} — run {} (stamp {}){}",
        r.migration,
        r.run_id,
        r.stamp,
        if r.dry_run {
            " [dry run: nothing written]"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "users {}: {verb} {}, expired meanwhile {}, already rolled back {}, new keys deleted {}",
        r.users, r.restored, r.expired, r.already_done, r.keys_deleted
    );
    for (title, list) in [
        ("Changed since the migration", &r.changed),
        ("Left as they are", &r.skipped),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}: {}", list.len());
        for f in list.iter().take(20) {
            let _ = writeln!(out, "  {}: {} — {}", f.key, f.reason, f.detail);
        }
        if list.len() > 20 {
            let _ = writeln!(out, "  ... {} more", list.len() - 20);
        }
    }
    if !r.changed.is_empty() && r.forced && !r.dry_run {
        let _ = writeln!(out, "Rolled back over these changes (--force).");
    }
    out
}
