//! `keyshift verify grid-positions`.

use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::grid_positions::verify::{verify_grid_positions, VerifyReport};

use super::{print_report, progress_bar, render};
use crate::exit::Outcome;

pub async fn run(url: &str, json: bool) -> anyhow::Result<Outcome> {
    let conn = connect(url).await?;
    let run = latest_run(&conn).await?;
    let bar = progress_bar(run_size(&run), "verify grid-positions");
    let report = verify_grid_positions(&conn, &run, &|n| bar.inc(n as u64)).await?;
    bar.finish_and_clear();
    print_report(&report, json, render)?;
    Ok(Outcome::passed_if(report.passed()))
}

fn run_size(run: &keyshift_engine::run::journal::RunRecord) -> u64 {
    run.counts
        .as_ref()
        .and_then(|c| c.get("keys_migrated"))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

pub fn render(r: &VerifyReport) -> String {
    let mut out = format!(
        "verify grid-positions — run {} (stamp {})\n",
        r.run_id, r.stamp
    );
    render::invariants(&mut out, r);
    out
}
