//! `keyshift validate`: counts per schema pattern on a live server
//! (read-only). Exit 0 when no legacy key remains, 1 when some do.

use std::fmt::Write as _;
use std::path::Path;

use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::keys::schema::Schema;
use keyshift_engine::validate::{key_count, validate, ValidateOptions, ValidateReport};

use super::{print_report, progress_bar};
use crate::error::HarnessError;
use crate::exit::Outcome;

/// The built-in schema, or the one in `--schema FILE` (a bad file is a
/// usage error: exit 2).
pub fn load_schema(path: Option<&Path>) -> Result<Schema, HarnessError> {
    match path {
        None => Ok(Schema::builtin()),
        Some(p) => Schema::load(p).map_err(|e| HarnessError::Usage(e.to_string())),
    }
}

pub async fn run(url: &str, json: bool, schema: Option<&Path>) -> anyhow::Result<Outcome> {
    let schema = load_schema(schema)?;
    let conn = connect(url).await?;
    let bar = progress_bar(key_count(&conn).await?, "validate");
    let report = validate(&conn, &schema, &ValidateOptions::default(), &|n| {
        bar.inc(n as u64)
    })
    .await?;
    bar.finish_and_clear();
    print_report(&report, json, render)?;
    Ok(Outcome::passed_if(report.passed))
}

/// The text table: one row per pattern, then samples; bounded by the
/// schema's size whatever the keyspace's.
pub fn render(r: &ValidateReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<8} {:>10} {:>10}  template",
        "pattern", "kind", "keys", "wrong type"
    );
    for p in &r.patterns {
        let _ = writeln!(
            out,
            "{:<28} {:<8} {:>10} {:>10}  {}",
            p.id, p.kind, p.count, p.type_mismatches, p.template
        );
    }
    let _ = writeln!(
        out,
        "{:<28} {:<8} {:>10} {:>10}",
        "unknown", "-", r.unknown.count, "-"
    );
    let rows = r
        .patterns
        .iter()
        .filter(|p| !p.samples.is_empty())
        .map(|p| (p.id.as_str(), &p.samples))
        .chain((!r.unknown.samples.is_empty()).then_some(("unknown", &r.unknown.samples)));
    let mut first = true;
    for (id, samples) in rows {
        if first {
            let _ = writeln!(out, "\nSample keys:");
            first = false;
        }
        let _ = writeln!(out, "  {id}:");
        for s in samples {
            let _ = writeln!(out, "    {s:?}");
        }
    }
    let mismatches: Vec<_> = r
        .patterns
        .iter()
        .flat_map(|p| p.mismatch_samples.iter().map(move |m| (p, m)))
        .collect();
    if !mismatches.is_empty() {
        let _ = writeln!(out, "\nWrong type (sampled):");
        for (p, m) in mismatches {
            let _ = writeln!(
                out,
                "  {:?} is a {}, {} expects {}",
                m.key, m.actual, p.id, p.expected_type
            );
        }
    }
    let _ = writeln!(
        out,
        "\nScanned: {} keys in {:.2} s; {} vanished during the scan",
        r.keys_scanned,
        r.elapsed_ms as f64 / 1000.0,
        r.vanished
    );
    if r.reappeared.count > 0 {
        let _ = writeln!(
            out,
            "\nReappeared after migration: {} legacy positions key(s) beside their user's index set (a writer still uses the old layout; readers of the new layout never see these writes):",
            r.reappeared.count
        );
        for s in &r.reappeared.samples {
            let _ = writeln!(out, "    {s:?}");
        }
    }
    if r.passed {
        let _ = writeln!(out, "No legacy keys remain.");
    } else {
        let _ = writeln!(out, "Legacy keys remain: {} (exit 1).", r.legacy_keys);
    }
    out
}
