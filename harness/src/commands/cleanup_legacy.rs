//! `keyshift cleanup-legacy` (Phase 1.5): delete the legacy position-cache
//! keys the schema marks `cleanup`, nothing else.

use std::fmt::Write as _;
use std::path::Path;

use keyshift_engine::cleanup_legacy::{cleanup_legacy, Cleanup, CleanupOptions, CleanupReport};
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::redact_url;
use keyshift_engine::validate::key_count;

use super::validate::load_schema;
use super::{confirm_write, locked_unless_dry_run, progress_bar};
use crate::error::HarnessError;
use crate::exit::Outcome;

pub async fn run(
    url: &str,
    dry_run: bool,
    force: bool,
    schema: Option<&Path>,
) -> anyhow::Result<Outcome> {
    let schema = load_schema(schema)?;
    let opts = CleanupOptions {
        dry_run,
        ..CleanupOptions::default()
    };
    let cleanup = Cleanup::new(&schema, &opts).map_err(|e| HarnessError::Usage(e.to_string()))?;
    let conn = connect(url).await?;
    if !dry_run {
        confirm_write(
            force,
            &format!(
                "cleanup-legacy on {}: delete every legacy position-cache key",
                redact_url(url)
            ),
        )?;
    }
    let bar = progress_bar(key_count(&conn).await?, "cleanup-legacy");
    let tick = |n: usize| bar.inc(n as u64);
    let work = cleanup_legacy(&conn, cleanup, &tick);
    // Deleting is writing: it takes the runner lock like every writing run.
    let report = locked_unless_dry_run(&conn, dry_run, "cleanup-legacy", work).await?;
    bar.finish_and_clear();
    print!("{}", render(&report));
    Ok(Outcome::review_if(report.needs_review()))
}

pub fn render(r: &CleanupReport) -> String {
    let mut out = String::new();
    let (heading, verb) = if r.dry_run {
        ("Dry run: nothing was deleted", "Would delete")
    } else {
        ("deleted by exact key name", "Deleted")
    };
    let _ = writeln!(out, "cleanup-legacy — {heading}");
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>10}  template",
        "pattern",
        verb.to_lowercase(),
        "wrong type"
    );
    for p in &r.patterns {
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>10}  {}",
            p.id, p.deleted, p.wrong_type, p.template
        );
    }
    if !r.samples.is_empty() {
        let heading = format!("{verb} (first {} of {}):", r.samples.len(), r.deleted);
        sampled(&mut out, &heading, &r.samples, |k| format!("{k:?}"));
    }
    if r.wrong_type > 0 {
        let heading = format!(
            "Left in place, not of their pattern's type (first {} of {}); review them:",
            r.wrong_type_samples.len(),
            r.wrong_type
        );
        sampled(&mut out, &heading, &r.wrong_type_samples, |m| {
            format!("{:?} is a {}", m.key, m.actual)
        });
    }
    let _ = writeln!(
        out,
        "\nScanned: {} keys in {:.2} s; {} vanished before their turn",
        r.keys_scanned,
        r.elapsed_ms as f64 / 1000.0,
        r.vanished
    );
    let _ = writeln!(out, "{verb}: {} keys", r.deleted);
    let _ = writeln!(out, "Processed: {} keys", r.processed);
    out
}

/// A heading after a blank line, then one indented line per sample.
fn sampled<T>(out: &mut String, heading: &str, samples: &[T], line: impl Fn(&T) -> String) {
    let _ = writeln!(out, "\n{heading}");
    for s in samples {
        let _ = writeln!(out, "  {}", line(s));
    }
}
