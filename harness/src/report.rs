//! The gate's reports: report.json (versioned), report.md and junit.xml,
//! one JUnit testcase per invariant; and the optional kill matrix (mutant
//! engines x invariants, issue 5), merged into those three files.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use keyshift_engine::grid_positions::runner::MigrationReport;
use keyshift_engine::run::invariant::InvariantResult;
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde::{Deserialize, Serialize};

use crate::error::HarnessError;

mod kill_matrix;
pub use kill_matrix::{
    kill_matrix_markdown, kill_matrix_suite, write_kill_matrix, KillMatrix, KillRow,
};

/// Bump when a field of report.json changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// What the report says about the snapshot the gate ran on (`--rdb`).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub file: String,
    pub rdb_version: u32,
    pub bytes: u64,
    /// Keys the server held once it had loaded the file (journal aside).
    pub keys_loaded: usize,
    /// Of those, `{exchange}:positions:{uid}` keys, and their distinct users.
    pub legacy_position_keys: usize,
    pub legacy_users: usize,
    /// Keys the snapshot holds in databases other than 0, by database:
    /// loaded, but neither migrated nor checked (the gate runs on db 0).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub other_databases: std::collections::BTreeMap<u32, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Examined nothing (DESIGN §4: never a pass); the note says why.
    NotRun,
}

impl Status {
    /// An engine result's status: `not run` when it examined nothing and
    /// was not declared fine without ([`InvariantResult::not_run`]).
    pub fn of(r: &InvariantResult) -> Self {
        if r.is_not_run() {
            Status::NotRun
        } else if r.passed {
            Status::Pass
        } else {
            Status::Fail
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InvariantEntry {
    pub id: String,
    pub status: Status,
    pub description: String,
    /// Why an invariant was not run, or what it was checked against.
    pub note: Option<String>,
    /// Not running fails the gate (and its junit testcase); otherwise a
    /// `not_run` invariant is skipped.
    pub required: bool,
    pub processed: u64,
    pub matching: u64,
    pub mismatched: u64,
    pub extra: u64,
    pub samples: Vec<String>,
}

impl InvariantEntry {
    /// The entry of an engine result, with its status (pass, fail or not
    /// run) and, as the note, why it did not run or why examining nothing
    /// was fine. Not required: see [`Self::required`].
    pub fn from_result(r: InvariantResult) -> Self {
        Self {
            status: Status::of(&r),
            note: r.not_run.or(r.nothing_to_check),
            required: false,
            id: r.id,
            description: r.description,
            processed: r.processed,
            matching: r.matching,
            mismatched: r.mismatched,
            extra: r.extra,
            samples: r.samples,
        }
    }

    /// Marks the invariant required: a gate whose required invariant did
    /// not run fails (DESIGN §4).
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Adds a second check of the same invariant (e.g. after re-migrating):
    /// a failure of either fails it; else one that ran and passed passes
    /// it; it stays `not run` only if neither ran.
    pub fn absorb(&mut self, r: InvariantResult) {
        self.processed += r.processed;
        self.matching += r.matching;
        self.mismatched += r.mismatched;
        self.extra += r.extra;
        let room = keyshift_engine::run::invariant::MAX_SAMPLES.saturating_sub(self.samples.len());
        let other = Status::of(&r);
        let status = match (self.status, other) {
            (Status::Fail, _) | (_, Status::Fail) => Status::Fail,
            (Status::Pass, _) | (_, Status::Pass) => Status::Pass,
            (Status::NotRun, Status::NotRun) => Status::NotRun,
        };
        if self.status == Status::NotRun && status != Status::NotRun {
            // The note said why it did not run; now it did.
            self.note = r.nothing_to_check;
        }
        self.status = status;
        self.samples.extend(r.samples.into_iter().take(room));
    }

    /// Fails the gate: failed, or required and not run.
    pub fn fails_gate(&self) -> bool {
        match self.status {
            Status::Pass => false,
            Status::Fail => true,
            Status::NotRun => self.required,
        }
    }

    pub fn not_run(id: &str, description: &str, why: &str) -> Self {
        Self {
            id: id.to_owned(),
            status: Status::NotRun,
            description: description.to_owned(),
            note: Some(why.to_owned()),
            required: false,
            processed: 0,
            matching: 0,
            mismatched: 0,
            extra: 0,
            samples: Vec::new(),
        }
    }
}

/// One phase of the gate (order-placed, cleanup-legacy, grid-positions).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// One line for people: what the phase did.
    pub summary: String,
    /// Keys left for review (quarantined, in conflict, wrong type), with why.
    pub for_review: Vec<(String, String)>,
    /// The phase's own report (counts per exchange, samples, ...).
    pub details: serde_json::Value,
    pub invariants: Vec<InvariantEntry>,
}

impl PhaseReport {
    /// The Phase 2 report of a migration run.
    pub fn grid_positions(m: &MigrationReport, invariants: Vec<InvariantEntry>) -> Self {
        let t = &m.totals;
        Self {
            name: "grid-positions".into(),
            summary: format!(
                "Legacy keys {} (migrated {}, quarantined {}, conflicts {}); positions {} (migrated {}, skipped closed {}, quarantined {}); {:.2} s.",
                t.legacy_keys_found,
                t.keys_migrated,
                t.keys_quarantined,
                t.keys_conflicting,
                t.positions_found,
                t.positions_migrated,
                t.positions_skipped_closed,
                t.positions_quarantined,
                m.elapsed_ms as f64 / 1000.0
            ),
            for_review: m
                .quarantined
                .iter()
                .chain(&m.conflicts)
                .map(|f| (f.key.clone(), f.detail.clone()))
                .collect(),
            details: serde_json::to_value(m).expect("report serialises"),
            invariants,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    pub schema_version: u32,
    pub keyshift_version: &'static str,
    pub started_at: String,
    pub elapsed_ms: u128,
    pub backend: String,
    pub redis_version: String,
    pub seed: u64,
    pub users: usize,
    pub fixtures: Option<String>,
    pub keys_seeded: usize,
    /// What the generator says it made, independent of the engine (null
    /// on a snapshot: there the keyspace as loaded is the reference).
    pub truth: serde_json::Value,
    /// The RDB snapshot the gate ran on (`--rdb`), instead of generated users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotReport>,
    pub phases: Vec<PhaseReport>,
    pub passed: bool,
    /// The exact command that replays this run.
    pub replay: String,
}

impl GateReport {
    /// Passed when no invariant failed and every required one ran.
    pub fn compute_passed(&mut self) {
        self.passed = !self
            .phases
            .iter()
            .flat_map(|p| &p.invariants)
            .any(InvariantEntry::fails_gate);
    }
}

/// Makes sure the report can be written to `dir` before anything runs: a
/// path that is a file, or a folder that cannot be created or written,
/// is a usage error found in a moment, not after the whole gate.
pub fn prepare_dir(dir: &Path) -> Result<(), HarnessError> {
    let usage = |why: String| HarnessError::Usage(format!("--report-dir {}: {why}", dir.display()));
    if dir.exists() && !dir.is_dir() {
        return Err(usage("is a file, not a directory: name a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| usage(format!("cannot create it ({e})")))?;
    let probe = dir.join(".keyshift-write-probe");
    std::fs::write(&probe, b"").map_err(|e| usage(format!("cannot write in it ({e})")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

pub fn write_all(report: &GateReport, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    std::fs::write(dir.join("junit.xml"), junit(report))?;
    Ok(())
}

pub fn markdown(r: &GateReport) -> String {
    let mut out = String::new();
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    let _ = writeln!(out, "# keyshift gate: {verdict}\n");
    if let Some(s) = &r.snapshot {
        let _ = writeln!(
            out,
            "Backend `{}` (Redis {}), on the RDB snapshot `{}` (format version {}, {} bytes): {} keys loaded, {} legacy positions keys of {} users; {:.1} s.\n",
            r.backend,
            r.redis_version,
            s.file,
            s.rdb_version,
            s.bytes,
            s.keys_loaded,
            s.legacy_position_keys,
            s.legacy_users,
            r.elapsed_ms as f64 / 1000.0
        );
        if !s.other_databases.is_empty() {
            let dbs: Vec<String> = s
                .other_databases
                .iter()
                .map(|(db, keys)| format!("db {db}: {keys} keys"))
                .collect();
            let _ = writeln!(
                out,
                "Not checked: the snapshot's other databases ({}); the gate ran on database 0.\n",
                dbs.join(", ")
            );
        }
    } else {
        let _ = writeln!(
            out,
            "Backend `{}` (Redis {}), seed {}, {} generated users, fixtures from `{}`, {} keys seeded, {:.1} s.\n",
            r.backend,
            r.redis_version,
            r.seed,
            r.users,
            r.fixtures.as_deref().unwrap_or("none"),
            r.keys_seeded,
            r.elapsed_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(out, "Replay: `{}`\n", r.replay);
    for phase in &r.phases {
        let _ = writeln!(out, "## {}\n", phase.name);
        let _ = writeln!(out, "{}\n", phase.summary);
        let _ = writeln!(
            out,
            "| invariant | status | processed | matching | mismatched | extra | note |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---|");
        for i in &phase.invariants {
            let status = match i.status {
                Status::Pass => "pass",
                Status::Fail => "**FAIL**",
                Status::NotRun if i.required => "**NOT RUN** (required)",
                Status::NotRun => "not run",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                i.id,
                status,
                i.processed,
                i.matching,
                i.mismatched,
                i.extra,
                i.note.as_deref().unwrap_or("").replace('|', "\\|")
            );
        }
        for i in phase.invariants.iter().filter(|i| !i.samples.is_empty()) {
            let _ = writeln!(out, "\n`{}` samples:\n", i.id);
            for s in &i.samples {
                let _ = writeln!(out, "- `{}`", s.replace('`', "'"));
            }
        }
        if !phase.for_review.is_empty() {
            let n = phase.for_review.len();
            let _ = writeln!(out, "\nLeft untouched for review: {n}\n");
            for (key, why) in phase.for_review.iter().take(20) {
                let _ = writeln!(out, "- `{}`: {}", key, why.replace('`', "'"));
            }
            if n > 20 {
                let _ = writeln!(out, "- ... {} more in report.json", n - 20);
            }
        }
        out.push('\n');
    }
    out
}

pub fn junit(r: &GateReport) -> String {
    let mut report = Report::new("keyshift gate");
    report.set_time(Duration::from_millis(r.elapsed_ms as u64));
    for phase in &r.phases {
        let mut suite = TestSuite::new(phase.name.as_str());
        for i in &phase.invariants {
            let status = match i.status {
                Status::Pass => TestCaseStatus::success(),
                Status::NotRun if i.required => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(format!(
                        "required, not run: {}",
                        i.note.as_deref().unwrap_or("examined nothing")
                    ));
                    s
                }
                Status::NotRun => {
                    let mut s = TestCaseStatus::skipped();
                    if let Some(note) = &i.note {
                        s.set_message(note.as_str());
                    }
                    s
                }
                Status::Fail => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(format!(
                        "{} mismatched, {} extra of {} processed",
                        i.mismatched, i.extra, i.processed
                    ));
                    s.set_description(i.samples.join("\n"));
                    s
                }
            };
            let mut case = TestCase::new(i.id.as_str(), status);
            case.set_classname(format!("keyshift.{}", phase.name));
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report.to_string().expect("junit serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(invariants: Vec<InvariantEntry>) -> PhaseReport {
        PhaseReport {
            name: "grid-positions".into(),
            summary: String::new(),
            for_review: Vec::new(),
            details: serde_json::Value::Null,
            invariants,
        }
    }

    fn gate(invariants: Vec<InvariantEntry>) -> GateReport {
        let mut r = GateReport {
            schema_version: SCHEMA_VERSION,
            keyshift_version: "test",
            started_at: String::new(),
            elapsed_ms: 0,
            backend: "process".into(),
            redis_version: String::new(),
            seed: 0,
            users: 0,
            fixtures: None,
            keys_seeded: 0,
            truth: serde_json::Value::Null,
            snapshot: None,
            phases: vec![phase(invariants)],
            passed: false,
            replay: String::new(),
        };
        r.compute_passed();
        r
    }

    fn not_run(id: &str) -> InvariantResult {
        let mut r = InvariantResult::new(id, "d");
        r.not_run("run r1 migrated no legacy key");
        r
    }

    #[test]
    fn a_result_that_examined_nothing_is_reported_not_run_with_why() {
        let e = InvariantEntry::from_result(not_run("fields"));
        assert_eq!(e.status, Status::NotRun);
        assert_eq!(e.note.as_deref(), Some("run r1 migrated no legacy key"));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["status"], "not_run");
        let report = gate(vec![e]);
        assert!(report.passed, "not required: skipped");
        assert!(markdown(&report).contains("| fields | not run |"));
        assert!(junit(&report).contains("skipped"));
    }

    #[test]
    fn a_required_invariant_that_did_not_run_fails_the_gate_and_its_testcase() {
        let e = InvariantEntry::from_result(not_run("fields")).required();
        let report = gate(vec![e]);
        assert!(!report.passed);
        assert!(markdown(&report).contains("**NOT RUN** (required)"));
        let xml = junit(&report);
        assert!(xml.contains("<failure"), "{xml}");
        assert!(
            xml.contains("required, not run: run r1 migrated no legacy key"),
            "{xml}"
        );
    }

    #[test]
    fn absorbing_a_run_that_examined_nothing_keeps_the_verdict_of_one_that_did() {
        let mut ran = InvariantResult::new("fields", "d");
        ran.ok();
        let mut e = InvariantEntry::from_result(not_run("fields"));
        e.absorb(ran.clone());
        assert_eq!((e.status, e.note.as_deref()), (Status::Pass, None));
        e.absorb(not_run("fields"));
        assert_eq!(e.status, Status::Pass);
        let mut failed = InvariantResult::new("fields", "d");
        failed.mismatch(|| "x".into());
        e.absorb(failed);
        assert_eq!(e.status, Status::Fail);
        let mut both = InvariantEntry::from_result(not_run("ttl"));
        both.absorb(not_run("ttl"));
        assert_eq!(both.status, Status::NotRun);
    }
}
