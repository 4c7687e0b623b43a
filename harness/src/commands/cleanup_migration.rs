//! `keyshift cleanup-migration grid-positions`.

use keyshift_engine::grid_positions::debris::{find_debris, remove_debris, Debris};
use keyshift_engine::grid_positions::latest_run;
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::redact_url;

use super::{confirm_write, locked};
use crate::exit::Outcome;

pub async fn run(url: &str, dry_run: bool, force: bool) -> anyhow::Result<Outcome> {
    let conn = connect(url).await?;
    let run = latest_run(&conn).await?;
    let debris = find_debris(&conn, &run).await?;
    println!(
        "cleanup-migration grid-positions — run {} ({:?}): {} debris key(s)",
        run.run_id,
        run.state,
        debris.key_count()
    );
    print_sample(&debris);
    if debris.is_empty() || dry_run {
        return Ok(Outcome::Done);
    }
    confirm_write(
        force,
        &format!(
            "delete {} debris key(s) on {}",
            debris.key_count(),
            redact_url(url)
        ),
    )?;
    let removed = locked(&conn, "cleanup-migration grid-positions", async {
        // Found again under the lock: a run may have finished meanwhile.
        let debris = find_debris(
            &conn,
            &keyshift_engine::run::journal::read_run(&conn, &run.run_id).await?,
        )
        .await?;
        remove_debris(&conn, &debris).await
    })
    .await?;
    println!("Removed {removed} key(s) or index member(s).");
    Ok(Outcome::Done)
}

fn print_sample(d: &Debris) {
    for k in d.hashes.iter().chain(&d.backups).take(20) {
        println!("  {k}");
    }
    for (index, members) in d.index_members.iter().take(5) {
        println!("  {index}: members {members:?}");
    }
}
