//! A scenario run's report: report.json, report.md and junit.xml under
//! REPORT_DIR/scenarios/NAME/. A failing run's report carries the seed and
//! the exact command that replays it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;

use super::checks::{Found, PhaseInvariant};
use super::expect::ExpectCheck;
use super::invoke::InvocationRecord;

/// Bump when a field of a scenario's report.json changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub schema_version: u32,
    pub keyshift_version: &'static str,
    pub name: String,
    pub replays: String,
    pub file: String,
    pub verdict: Verdict,
    /// Why it was skipped, or why the harness could not finish it.
    pub note: Option<String>,
    pub started_at: String,
    pub elapsed_ms: u128,
    pub backend: String,
    /// A 3-primary Redis Cluster (`server.cluster`) rather than one server.
    pub cluster: bool,
    pub redis_version: String,
    /// The generator seed, when the dataset is generated.
    pub seed: Option<u64>,
    pub keys_seeded: usize,
    pub legacy_keys: usize,
    pub invocations: Vec<InvocationRecord>,
    pub invariants: Vec<PhaseInvariant>,
    pub findings: Vec<Found>,
    pub expectations: Vec<ExpectCheck>,
    pub rollback_commands: Vec<String>,
    /// The exact command that replays this run.
    pub replay: String,
}

impl ScenarioReport {
    pub fn dir(report_dir: &Path, name: &str) -> PathBuf {
        report_dir.join("scenarios").join(name)
    }

    /// One line for the terminal.
    pub fn summary_line(&self) -> String {
        let status = match self.verdict {
            Verdict::Passed => "PASS",
            Verdict::Failed => "FAIL",
            Verdict::Skipped => "SKIP",
        };
        let mut line = format!(
            "{status} {:<34} {:>6.1} s",
            self.name,
            self.elapsed_ms as f64 / 1000.0
        );
        if let Some(note) = &self.note {
            let _ = write!(line, "  {note}");
        }
        for e in self.expectations.iter().filter(|e| !e.met) {
            let _ = write!(line, "\n     unmet: {}: {}", e.what, e.detail);
        }
        if self.verdict == Verdict::Failed {
            let _ = write!(line, "\n     seed {:?}; replay: {}", self.seed, self.replay);
        }
        line
    }
}

pub fn write_all(r: &ScenarioReport, report_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = ScenarioReport::dir(report_dir, &r.name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    std::fs::write(dir.join("junit.xml"), junit(r))?;
    Ok(dir)
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'").replace('\n', " ")
}

pub fn markdown(r: &ScenarioReport) -> String {
    let mut out = String::new();
    let verdict = match r.verdict {
        Verdict::Passed => "PASS",
        Verdict::Failed => "FAIL",
        Verdict::Skipped => "SKIPPED",
    };
    let _ = writeln!(out, "# scenario {}: {verdict}\n", r.name);
    let _ = writeln!(out, "{}\n", r.replays);
    if let Some(note) = &r.note {
        let _ = writeln!(out, "**{}**\n", md(note));
    }
    let _ = writeln!(
        out,
        "Backend `{}`{} (Redis {}), seed {}, {} keys seeded ({} legacy), {:.1} s. File `{}`.\n",
        r.backend,
        if r.cluster { ", 3-primary cluster" } else { "" },
        r.redis_version,
        r.seed
            .map_or("none (fixed keys)".to_owned(), |s| s.to_string()),
        r.keys_seeded,
        r.legacy_keys,
        r.elapsed_ms as f64 / 1000.0,
        r.file
    );
    let _ = writeln!(out, "Replay: `{}`\n", r.replay);
    let _ = writeln!(
        out,
        "## Expectations\n\n| expectation | met | detail |\n|---|---|---|"
    );
    for e in &r.expectations {
        let met = if e.met { "yes" } else { "**NO**" };
        let _ = writeln!(out, "| {} | {met} | {} |", md(&e.what), md(&e.detail));
    }
    let _ = writeln!(out, "\n## Invocations\n");
    for i in &r.invocations {
        let exit = i.exit.map_or("killed".to_owned(), |c| c.to_string());
        let _ = writeln!(
            out,
            "{}. `{}`: exit {exit} (expected {}), {:.2} s{}",
            i.n,
            i.command,
            i.expected,
            i.elapsed_ms as f64 / 1000.0,
            if i.lock_waits > 0 {
                format!(", after {} attempt(s) turned away (exit 5) by the previous runner's unexpired lock", i.lock_waits)
            } else {
                String::new()
            }
        );
        for f in &i.faults {
            let _ = writeln!(
                out,
                "   - fault `{}` at {:?}: {} (journaled at fault: {})",
                f.kind,
                f.timing,
                f.note,
                f.journaled_at_fault
                    .map_or("-".to_owned(), |j| j.to_string())
            );
        }
        if let Some(last) = i.stderr.lines().rev().find(|l| !l.trim().is_empty()) {
            let _ = writeln!(out, "   - stderr: `{}`", md(last));
        }
    }
    let _ = writeln!(
        out,
        "\n## Invariants\n\n| phase | invariant | status | processed | mismatched | extra | note |\n|---|---|---|---:|---:|---:|---|"
    );
    for i in &r.invariants {
        let e = &i.entry;
        let _ = writeln!(
            out,
            "| {} | {} | {:?} | {} | {} | {} | {} |",
            i.phase,
            e.id,
            e.status,
            e.processed,
            e.mismatched,
            e.extra,
            md(e.note.as_deref().unwrap_or(""))
        );
    }
    for i in r.invariants.iter().filter(|i| !i.entry.samples.is_empty()) {
        let _ = writeln!(out, "\n`{}/{}` samples:\n", i.phase, i.entry.id);
        for s in &i.entry.samples {
            let _ = writeln!(out, "- `{}`", md(s));
        }
    }
    if !r.findings.is_empty() {
        let _ = writeln!(out, "\n## Findings ({})\n", r.findings.len());
        for f in r.findings.iter().take(50) {
            let _ = writeln!(out, "- {:?} `{}`: {}", f.kind, md(&f.key), md(&f.reason));
        }
        if r.findings.len() > 50 {
            let _ = writeln!(out, "- ... {} more in report.json", r.findings.len() - 50);
        }
    }
    out
}

pub fn junit(r: &ScenarioReport) -> String {
    let mut report = Report::new("keyshift scenarios");
    report.set_time(Duration::from_millis(r.elapsed_ms as u64));
    let mut suite = TestSuite::new(format!("scenario {}", r.name));
    let case = |name: String, status: TestCaseStatus| {
        let mut c = TestCase::new(name, status);
        c.set_classname(format!("keyshift.scenario.{}", r.name));
        c
    };
    match r.verdict {
        Verdict::Skipped => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(r.note.clone().unwrap_or_default());
            suite.add_test_case(case(r.name.clone(), s));
        }
        _ if r.expectations.is_empty() => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(
                r.note
                    .clone()
                    .unwrap_or_else(|| "no expectation was checked".into()),
            );
            s.set_description(format!("replay: {}", r.replay));
            suite.add_test_case(case(r.name.clone(), s));
        }
        _ => {
            for e in &r.expectations {
                let status = if e.met {
                    TestCaseStatus::success()
                } else {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(e.detail.clone());
                    s.set_description(format!("seed {:?}; replay: {}", r.seed, r.replay));
                    s
                };
                suite.add_test_case(case(e.what.clone(), status));
            }
        }
    }
    report.add_test_suite(suite);
    report.to_string().expect("junit serialises")
}
