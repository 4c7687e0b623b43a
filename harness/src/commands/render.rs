//! Pieces the commands' human summaries share.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use keyshift_engine::grid_positions::verify::VerifyReport;

/// Findings shown in full before the rest are only counted.
const FINDINGS_SHOWN: usize = 20;

/// Each exchange's counts, then the totals: a run's table rows.
pub fn rows_with_total<'a, C>(
    per_exchange: &'a BTreeMap<String, C>,
    totals: &'a C,
) -> impl Iterator<Item = (&'a str, &'a C)> {
    per_exchange
        .iter()
        .map(|(e, c)| (e.as_str(), c))
        .chain([("total", totals)])
}

/// A titled list of findings, one `line` each, the first 20 of them; the
/// JSON report holds them all.
pub fn findings<T>(out: &mut String, title: &str, list: &[T], line: impl Fn(&T) -> String) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{title}: {}", list.len());
    for f in list.iter().take(FINDINGS_SHOWN) {
        let _ = writeln!(out, "  {}", line(f));
    }
    if list.len() > FINDINGS_SHOWN {
        let _ = writeln!(
            out,
            "  ... {} more (use --json for all)",
            list.len() - FINDINGS_SHOWN
        );
    }
}

/// How long a run took, and a word when it left keys for review.
pub fn footer(out: &mut String, elapsed_ms: u128, needs_review: bool) {
    let _ = writeln!(out, "\nElapsed: {:.2} s", elapsed_ms as f64 / 1000.0);
    if needs_review {
        let _ = writeln!(
            out,
            "Some keys need review: they were not changed (see the lists above)."
        );
    }
}

/// A verify report's invariants, each with its samples, then the verdict.
pub fn invariants(out: &mut String, r: &VerifyReport) {
    for inv in &r.invariants {
        out.push_str(&inv.summary_line());
        out.push('\n');
        for s in &inv.samples {
            let _ = writeln!(out, "    {s}");
        }
    }
    out.push_str(if r.passed() {
        "All invariants hold.\n"
    } else {
        "Invariants FAILED (exit 1).\n"
    });
}
