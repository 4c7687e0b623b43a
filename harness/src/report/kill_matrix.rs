//! The kill matrix section of the gate report (issue 5): each engine run
//! through the gate (the production control and every mutant), which
//! invariants it tripped, merged into report.json (`kill_matrix`),
//! report.md (a table) and junit.xml (one case per engine).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde::{Deserialize, Serialize};

use super::{GateReport, Status, SCHEMA_VERSION};

/// The kill matrix: the production engines (the control) and each mutant
/// engine run through the gate pipeline, and which invariants each tripped.
/// report.json carries it as `kill_matrix`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillMatrix {
    pub backend: String,
    pub seed: u64,
    pub users: usize,
    /// The columns: every invariant as `phase/invariant`, in gate order.
    pub invariants: Vec<String>,
    /// The production engines through the same pipeline: they must pass
    /// every invariant, or the matrix proves nothing.
    pub control: KillRow,
    pub mutants: Vec<KillRow>,
    pub elapsed_ms: u128,
}

/// One engine's run through the gate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillRow {
    pub name: String,
    /// The bug class, for people.
    pub bug: String,
    /// The invariants (`phase/invariant`) this engine must fail.
    pub expected: Vec<String>,
    /// Each invariant's status; one absent was not reached.
    pub results: BTreeMap<String, Status>,
    /// The first sample of each failed invariant: the evidence.
    pub evidence: BTreeMap<String, String>,
    /// The pipeline itself failed (e.g. an engine error), with why.
    pub error: Option<String>,
}

impl KillRow {
    /// The row of one gate run.
    pub fn from_report(name: &str, bug: &str, expected: &[&str], report: &GateReport) -> Self {
        let mut row = Self::failed(name, bug, expected, None);
        for phase in &report.phases {
            for i in &phase.invariants {
                let id = format!("{}/{}", phase.name, i.id);
                if i.status == Status::Fail {
                    let first = i.samples.first().cloned().unwrap_or_default();
                    row.evidence.insert(id.clone(), first);
                }
                row.results.insert(id, i.status);
            }
        }
        row
    }

    /// A row whose pipeline did not finish (`error`), or an empty one.
    pub fn failed(name: &str, bug: &str, expected: &[&str], error: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            bug: bug.to_owned(),
            expected: expected.iter().map(|s| (*s).to_owned()).collect(),
            results: BTreeMap::new(),
            evidence: BTreeMap::new(),
            error,
        }
    }

    pub fn failed_invariants(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|(_, s)| **s == Status::Fail)
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Killed: the pipeline finished and every expected invariant failed.
    pub fn killed(&self) -> bool {
        self.error.is_none()
            && !self.expected.is_empty()
            && self
                .expected
                .iter()
                .all(|id| self.results.get(id) == Some(&Status::Fail))
    }

    /// Why this mutant is not killed, or `None` when it is.
    pub fn survival(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(format!("{}: the gate pipeline failed: {e}", self.name));
        }
        let missed: Vec<&str> = self
            .expected
            .iter()
            .filter(|id| self.results.get(*id) != Some(&Status::Fail))
            .map(String::as_str)
            .collect();
        if self.failed_invariants().is_empty() {
            Some(format!("{}: SURVIVED, every invariant passed", self.name))
        } else if !missed.is_empty() {
            Some(format!(
                "{}: expected {} to fail, but {} did not (failed: {})",
                self.name,
                self.expected.join(", "),
                missed.join(", "),
                self.failed_invariants().join(", ")
            ))
        } else {
            None
        }
    }
}

impl KillMatrix {
    /// Every reason the matrix does not hold: a mutant not killed, or a
    /// control that fails an invariant (or did not finish).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.control.error {
            out.push(format!("control: the gate pipeline failed: {e}"));
        }
        for id in self.control.failed_invariants() {
            out.push(format!(
                "control: the production engines fail {id}: {}",
                self.control.evidence.get(id).map_or("", String::as_str)
            ));
        }
        out.extend(self.mutants.iter().filter_map(KillRow::survival));
        out
    }
}

const KILL_MATRIX_HEADING: &str = "## Kill matrix";
const KILL_MATRIX_SUITE: &str = "kill-matrix";

/// The kill matrix as a report.md section.
pub fn kill_matrix_markdown(m: &KillMatrix) -> String {
    let mut out = String::new();
    let killed = m.mutants.iter().filter(|r| r.killed()).count();
    let _ = writeln!(out, "{KILL_MATRIX_HEADING} (mutant x invariant)\n");
    let _ = writeln!(
        out,
        "{killed} of {} mutant engines killed; backend `{}`, seed {}, {} generated users, {:.1} s. \
         **X** = failed as expected, x = failed too, MISSED = expected to fail but passed, \
         . = passed, - = not run.\n",
        m.mutants.len(),
        m.backend,
        m.seed,
        m.users,
        m.elapsed_ms as f64 / 1000.0
    );
    let _ = write!(out, "| engine | verdict |");
    for id in &m.invariants {
        let _ = write!(out, " {id} |");
    }
    let _ = write!(out, "\n|---|---|");
    for _ in &m.invariants {
        out.push_str(":---:|");
    }
    out.push('\n');
    for row in std::iter::once(&m.control).chain(&m.mutants) {
        let is_control = std::ptr::eq(row, &m.control);
        let verdict = match (is_control, row.error.is_some()) {
            (_, true) => "**ERROR**",
            (true, _) if row.failed_invariants().is_empty() => "control: passes",
            (true, _) => "**control FAILS**",
            (false, _) if row.killed() => "killed",
            (false, _) => "**SURVIVED**",
        };
        let _ = write!(out, "| `{}` | {verdict} |", row.name);
        for id in &m.invariants {
            let expected = row.expected.contains(id);
            let cell = match (row.results.get(id), expected) {
                (Some(Status::Fail), true) => "**X**",
                (Some(Status::Fail), false) => "x",
                (Some(Status::Pass), true) => "MISSED",
                (Some(Status::Pass), false) => ".",
                (Some(Status::NotRun) | None, true) => "MISSED",
                (Some(Status::NotRun) | None, false) => "-",
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out.push('\n');
    for row in &m.mutants {
        let _ = writeln!(
            out,
            "- `{}`: {} Expected: {}.{}",
            row.name,
            row.bug,
            row.expected.join(", "),
            row.expected
                .iter()
                .find_map(|id| row.evidence.get(id))
                .map(|e| format!(" Evidence: `{}`", e.replace('`', "'")))
                .unwrap_or_default()
        );
    }
    out
}

/// The kill matrix as a JUnit suite: one case per engine, failed when a
/// mutant is not killed or the control fails.
pub fn kill_matrix_suite(m: &KillMatrix) -> TestSuite {
    let mut suite = TestSuite::new(KILL_MATRIX_SUITE);
    let control_problems: Vec<String> = m
        .problems()
        .into_iter()
        .filter(|p| p.starts_with("control:"))
        .collect();
    let mut rows: Vec<(&KillRow, Option<String>)> = vec![(
        &m.control,
        (!control_problems.is_empty()).then(|| control_problems.join("\n")),
    )];
    rows.extend(m.mutants.iter().map(|r| (r, r.survival())));
    for (row, problem) in rows {
        let status = match problem {
            None => TestCaseStatus::success(),
            Some(p) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(p);
                s
            }
        };
        let mut case = TestCase::new(row.name.as_str(), status);
        case.set_classname("keyshift.kill-matrix");
        suite.add_test_case(case);
    }
    suite
}

/// Writes the kill matrix into `dir`: into the gate's report.json,
/// report.md and junit.xml when a gate wrote them there (a matrix written
/// before is replaced), else into files of its own under those names.
pub fn write_kill_matrix(m: &KillMatrix, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json_path = dir.join("report.json");
    let mut json = match std::fs::read_to_string(&json_path) {
        Ok(text) => serde_json::from_str(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            serde_json::json!({ "schema_version": SCHEMA_VERSION })
        }
        Err(e) => return Err(e),
    };
    let serde_json::Value::Object(fields) = &mut json else {
        return Err(std::io::Error::other("report.json is not a JSON object"));
    };
    fields.insert("kill_matrix".into(), serde_json::to_value(m)?);
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)? + "\n")?;

    let md_path = dir.join("report.md");
    let mut md = match std::fs::read_to_string(&md_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# keyshift kill matrix\n\n".into(),
        Err(e) => return Err(e),
    };
    if let Some(at) = md.find(KILL_MATRIX_HEADING) {
        md.truncate(at);
    }
    md.push_str(&kill_matrix_markdown(m));
    std::fs::write(&md_path, md)?;

    let junit_path = dir.join("junit.xml");
    let mut junit = match std::fs::read_to_string(&junit_path) {
        Ok(text) => Report::deserialize_from_str(&text).map_err(std::io::Error::other)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Report::new("keyshift gate"),
        Err(e) => return Err(e),
    };
    junit
        .test_suites
        .retain(|s| s.name.as_str() != KILL_MATRIX_SUITE);
    junit.add_test_suite(kill_matrix_suite(m));
    std::fs::write(
        &junit_path,
        junit.to_string().map_err(std::io::Error::other)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(expected: &[&str], results: &[(&str, Status)]) -> KillRow {
        let mut r = KillRow::failed("m", "a bug", expected, None);
        for (id, s) in results {
            r.results.insert((*id).to_owned(), *s);
        }
        r
    }

    #[test]
    fn a_mutant_passing_every_invariant_survives() {
        let r = row(
            &["p/fields"],
            &[("p/fields", Status::Pass), ("p/index", Status::Pass)],
        );
        assert!(!r.killed());
        assert!(r.survival().unwrap().contains("SURVIVED"));
    }

    #[test]
    fn a_mutant_caught_only_by_other_invariants_is_not_killed() {
        let r = row(
            &["p/fields"],
            &[("p/fields", Status::Pass), ("p/index", Status::Fail)],
        );
        assert!(!r.killed());
        assert!(r.survival().unwrap().contains("p/fields"));
        let not_run = row(
            &["p/nlw"],
            &[("p/nlw", Status::NotRun), ("p/index", Status::Fail)],
        );
        assert!(!not_run.killed());
    }

    #[test]
    fn a_mutant_failing_its_expected_invariant_is_killed_unless_the_run_errored() {
        let r = row(&["p/fields"], &[("p/fields", Status::Fail)]);
        assert!(r.killed());
        assert_eq!(r.survival(), None);
        let mut errored = r.clone();
        errored.error = Some("boom".into());
        assert!(!errored.killed());
    }

    #[test]
    fn the_kill_matrix_merges_into_an_existing_gate_report_and_replaces_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.json"), r#"{"passed": true}"#).unwrap();
        std::fs::write(dir.path().join("report.md"), "# keyshift gate: PASS\n\n").unwrap();
        let m = KillMatrix {
            backend: "process".into(),
            seed: 1,
            users: 2,
            invariants: vec!["p/fields".into()],
            control: row(&[], &[("p/fields", Status::Pass)]),
            mutants: vec![row(&["p/fields"], &[("p/fields", Status::Fail)])],
            elapsed_ms: 1,
        };
        write_kill_matrix(&m, dir.path()).unwrap();
        write_kill_matrix(&m, dir.path()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["passed"], true);
        assert_eq!(json["kill_matrix"]["mutants"][0]["name"], "m");
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(md.starts_with("# keyshift gate: PASS"));
        assert_eq!(md.matches(KILL_MATRIX_HEADING).count(), 1);
        assert!(md.contains("| `m` | killed | **X** |"), "{md}");
        let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
        assert_eq!(junit.matches("<testsuite ").count(), 1, "{junit}");
    }
}
