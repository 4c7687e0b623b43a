//! `keyshift rollback grid-positions|order-placed`.

use std::fmt::Write as _;

use keyshift_engine::grid_positions::rollback::{
    find_run, rollback_grid_positions, RollbackOptions, RollbackReport,
};
use keyshift_engine::grid_positions::store::cluster::GridStore;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::order_placed::{self, AnyOrderPlaced};
use keyshift_engine::redact_url;

use super::{confirm_write, locked_unless_dry_run};
use crate::cli::Migration;
use crate::exit::Outcome;

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
    let report = match migration {
        Migration::GridPositions => {
            let store = GridStore::open(url, conn.clone(), 1).await?;
            let run = find_run(&conn, backup_stamp).await?;
            let work = rollback_grid_positions(&store, &conn, &run, &opts);
            confirmed(
                &conn,
                url,
                &run.run_id,
                &opts,
                "rollback grid-positions",
                work,
            )
            .await?
        }
        Migration::OrderPlaced => {
            let store = AnyOrderPlaced::open(conn.clone()).await?;
            let run = order_placed::rollback::find_run(&conn, backup_stamp).await?;
            let work = order_placed::rollback::rollback_order_placed(&store, &conn, &run, &opts);
            confirmed(
                &conn,
                url,
                &run.run_id,
                &opts,
                "rollback order-placed",
                work,
            )
            .await?
        }
    };
    print!("{}", render(&report));
    Ok(Outcome::review_if(!report.skipped.is_empty()))
}

/// A dry run just runs; a real one asks (or takes --force) and holds the lock.
async fn confirmed(
    conn: &keyshift_engine::connection::RedisConn,
    url: &str,
    run_id: &str,
    opts: &RollbackOptions,
    command: &str,
    work: impl std::future::Future<Output = keyshift_engine::Result<RollbackReport>>,
) -> anyhow::Result<RollbackReport> {
    if !opts.dry_run {
        confirm_write(
            opts.force,
            &format!("roll back run {run_id} on {}", redact_url(url)),
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
