//! `keyshift snapshot MIGRATION --redis URL --out FILE`: a bytes-exact
//! before-image of the migration's key families, for `verify --before`.
//! Reads only (SCAN with glob-escaped patterns, never KEYS).

use std::path::Path;

use keyshift_engine::grid_positions::store::standalone::connect;

use super::exchanges;
use crate::cli::Migration;
use crate::exit::Outcome;
use crate::gate::external::migration_name;
use crate::observe::{grid_patterns, order_placed_patterns};

pub async fn run(
    url: &str,
    migration: Migration,
    exchange: Option<&str>,
    out: &Path,
) -> anyhow::Result<Outcome> {
    let conn = connect(url).await?;
    let exchanges = exchanges(exchange);
    let patterns = match migration {
        Migration::GridPositions => grid_patterns(&exchanges),
        Migration::OrderPlaced => order_placed_patterns(&exchanges),
    };
    let name = migration_name(migration);
    let keys = crate::snapshot::write(&conn, name, &exchanges, &patterns, out).await?;
    eprintln!("snapshot {name}: {keys} keys written to {}", out.display());
    Ok(Outcome::Done)
}
