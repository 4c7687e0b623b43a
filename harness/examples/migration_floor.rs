//! Writes the inputs of the Phase 2 floor measurement (scripts/floor.sh):
//! `seed.resp`, the generated legacy keyspace, and `end_state.resp`, the
//! commands that turn it into the migrated end state.
//!
//! With a fourth argument, the stamp of a run that migrated that keyspace,
//! it also writes `end_state_reads.resp`: verify's read floor.
//!
//! cargo run --release -p keyshift-harness --example migration_floor -- USERS SEED OUT_DIR [STAMP]

use std::io::BufWriter;

use keyshift_engine::keys::DEFAULT_EXCHANGES;
use keyshift_harness::floor::{write_end_state, write_end_state_reads};
use keyshift_harness::seed::{generate, write_resp, GenConfig};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let users: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let seed: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let dir = std::path::PathBuf::from(args.get(2).map(String::as_str).unwrap_or("."));
    let generated = generate(&GenConfig {
        users,
        seed,
        ..GenConfig::default()
    });
    let mut seed_out = BufWriter::new(std::fs::File::create(dir.join("seed.resp"))?);
    write_resp(&generated.keyspace, &mut seed_out)?;
    let exchanges: Vec<String> = DEFAULT_EXCHANGES.iter().map(|s| (*s).to_owned()).collect();
    let now = chrono::Utc::now();
    let mut end = BufWriter::new(std::fs::File::create(dir.join("end_state.resp"))?);
    let n = write_end_state(
        &generated.keyspace,
        &exchanges,
        &now.format("%Y%m%d_%H%M%S").to_string(),
        &now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        &mut end,
    )?;
    eprintln!(
        "{} keys seeded ({} legacy keys, {} positions); end state covers {n} legacy keys",
        generated.keyspace.entries.len(),
        generated.truth.legacy_keys,
        generated.truth.positions
    );
    if let Some(stamp) = args.get(3) {
        let mut reads = BufWriter::new(std::fs::File::create(dir.join("end_state_reads.resp"))?);
        write_end_state_reads(&generated.keyspace, &exchanges, stamp, &mut reads)?;
    }
    Ok(())
}
