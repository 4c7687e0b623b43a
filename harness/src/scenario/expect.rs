//! Whether a scenario met its expectation: a pure function of what its
//! invocations did, the invariants checked and the findings, giving one
//! line per expectation (the report's verdict table).

use serde::Serialize;

use super::checks::{Found, PhaseInvariant};
use super::invoke::InvocationRecord;
use super::model::{FindingSpec, MessageSpec, Scenario, Timing};
use crate::report::Status;

/// One expectation and whether it was met.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExpectCheck {
    pub what: String,
    pub met: bool,
    pub detail: String,
}

fn line(what: String, met: bool, detail: String) -> ExpectCheck {
    ExpectCheck { what, met, detail }
}

pub fn evaluate(
    s: &Scenario,
    runs: &[InvocationRecord],
    invariants: &[PhaseInvariant],
    findings: &[Found],
) -> Vec<ExpectCheck> {
    let mut out = runs_as_expected(s, runs);
    for id in &held_ids(s, invariants) {
        out.push(holds(id, invariants));
    }
    for id in &s.expect.fail {
        out.push(fails(id, invariants));
    }
    for spec in &s.expect.findings {
        out.push(found(spec, findings));
    }
    for m in &s.expect.messages {
        out.push(said(m, runs));
    }
    out
}

/// Each run's exit, and whether each of its faults struck; then whether
/// every run took place.
fn runs_as_expected(s: &Scenario, runs: &[InvocationRecord]) -> Vec<ExpectCheck> {
    let mut out = Vec::new();
    for (spec, r) in s.runs.iter().zip(runs) {
        let what = format!("run {} exits {}", r.n, spec.exit.describe());
        let met = !r.hung && spec.exit.accepts(r.exit);
        let detail = if r.hung {
            "hung: killed after 120 s".to_owned()
        } else {
            match r.exit {
                Some(c) => format!("exit {c}"),
                None => "killed by the scenario (no exit code)".to_owned(),
            }
        };
        out.push(line(what, met, detail));
        for f in &r.faults {
            let struck = f.journaled_at_fault.is_some() && !f.note.starts_with("landed after");
            out.push(line(
                match f.timing {
                    Timing::AtExit => format!("fault {} strikes after run {}", f.kind, r.n),
                    _ => format!("fault {} strikes run {} mid-run", f.kind, r.n),
                },
                struck,
                f.note.clone(),
            ));
        }
    }
    if runs.len() < s.runs.len() {
        out.push(line(
            "every run took place".into(),
            false,
            format!("{} of {} ran", runs.len(), s.runs.len()),
        ));
    }
    out
}

/// The invariants that must hold: those the scenario names, or else every
/// one checked that it does not expect to fail.
fn held_ids(s: &Scenario, invariants: &[PhaseInvariant]) -> Vec<String> {
    if let Some(h) = &s.expect.hold {
        return h.clone();
    }
    let fail = &s.expect.fail;
    let mut ids: Vec<String> = invariants
        .iter()
        .filter(|i| i.entry.status != Status::NotRun && !fail.contains(&i.entry.id))
        .map(|i| i.entry.id.clone())
        .collect();
    ids.dedup();
    ids.sort();
    ids.dedup();
    ids
}

/// Invariant `id` was checked, and passed in every phase.
fn holds(id: &str, invariants: &[PhaseInvariant]) -> ExpectCheck {
    let of_id: Vec<&PhaseInvariant> = invariants.iter().filter(|i| i.entry.id == id).collect();
    let failing: Vec<String> = of_id
        .iter()
        .filter(|i| i.entry.status != Status::Pass)
        .map(|i| describe(i))
        .collect();
    let met = !of_id.is_empty() && failing.is_empty();
    let detail = if of_id.is_empty() {
        "not checked".to_owned()
    } else if failing.is_empty() {
        "holds".to_owned()
    } else {
        failing.join("; ")
    };
    line(format!("invariant {id} holds"), met, detail)
}

/// Invariant `id` failed in some phase.
fn fails(id: &str, invariants: &[PhaseInvariant]) -> ExpectCheck {
    let failed = invariants
        .iter()
        .find(|i| i.entry.id == id && i.entry.status == Status::Fail);
    line(
        format!("invariant {id} fails"),
        failed.is_some(),
        failed.map_or("it did not fail".to_owned(), describe),
    )
}

/// A finding of the expected kind on the key, its reason containing the
/// expected text; otherwise what was reported on that key, if anything.
fn found(spec: &FindingSpec, findings: &[Found]) -> ExpectCheck {
    let hit = findings.iter().find(|f| {
        f.kind == spec.kind
            && f.key == spec.key
            && spec.reason.as_deref().is_none_or(|r| f.reason.contains(r))
    });
    let what = format!(
        "finding {:?} {}{}",
        spec.kind,
        spec.key,
        spec.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    let detail = match hit {
        Some(f) => f.reason.clone(),
        None => {
            let same_key: Vec<String> = findings
                .iter()
                .filter(|f| f.key == spec.key)
                .map(|f| format!("{:?}: {}", f.kind, f.reason))
                .collect();
            if same_key.is_empty() {
                "not reported".to_owned()
            } else {
                format!("reported otherwise: {}", same_key.join("; "))
            }
        }
    };
    line(what, hit.is_some(), detail)
}

/// The named run printed the text, on stdout or stderr.
fn said(m: &MessageSpec, runs: &[InvocationRecord]) -> ExpectCheck {
    let said = runs
        .iter()
        .find(|r| r.n == m.invocation)
        .is_some_and(|r| r.stdout.contains(&m.contains) || r.stderr.contains(&m.contains));
    line(
        format!("run {} says {:?}", m.invocation, m.contains),
        said,
        if said {
            "said".into()
        } else {
            "not in its output".into()
        },
    )
}

fn describe(i: &PhaseInvariant) -> String {
    let e = &i.entry;
    let mut d = format!(
        "{}/{}: {:?}, {} mismatched, {} extra",
        i.phase, e.id, e.status, e.mismatched, e.extra
    );
    if let Some(s) = e.samples.first() {
        d.push_str(&format!(" (e.g. {s})"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::InvariantEntry;
    use crate::scenario::model::FindingKind;
    use keyshift_engine::run::invariant::InvariantResult;
    use std::path::Path;

    fn scenario(expect: &str) -> Scenario {
        let text = format!(
            "name = \"t\"\nreplays = \"r\"\n[dataset]\nbulk = [{{ key = \"okx:positions:w\", positions = 1 }}]\n[[run]]\nexit = [4, 5]\n[[run]]\nexit = 3\n{expect}"
        );
        Scenario::parse(Path::new("t.toml"), &text).unwrap()
    }

    fn ran(n: usize, exit: Option<i32>) -> InvocationRecord {
        InvocationRecord {
            n,
            command: "keyshift migrate".into(),
            exit,
            expected: String::new(),
            lock_waits: 0,
            elapsed_ms: 1,
            faults: vec![],
            hung: false,
            stdout: String::new(),
            stderr: "error: OOM command not allowed".into(),
        }
    }

    fn inv(id: &str, pass: bool) -> PhaseInvariant {
        let mut r = InvariantResult::new(id, "d");
        if pass {
            r.ok();
        } else {
            r.mismatch(|| "k: wrong".into());
        }
        PhaseInvariant {
            phase: "grid-positions".into(),
            entry: InvariantEntry::from_result(r),
        }
    }

    #[test]
    fn exits_are_checked_per_run() {
        let s = scenario("");
        let v = evaluate(&s, &[ran(1, Some(5)), ran(2, Some(3))], &[], &[]);
        assert!(v.iter().all(|c| c.met), "{v:?}");
        let v = evaluate(&s, &[ran(1, Some(0)), ran(2, Some(3))], &[], &[]);
        assert!(!v[0].met && v[0].detail == "exit 0", "{v:?}");
        let v = evaluate(&s, &[ran(1, Some(4))], &[], &[]);
        assert!(v.iter().any(|c| !c.met && c.what == "every run took place"));
    }

    #[test]
    fn by_default_every_checked_invariant_must_hold() {
        let s = scenario("");
        let runs = [ran(1, Some(4)), ran(2, Some(3))];
        let v = evaluate(&s, &runs, &[inv("counts", true), inv("index", false)], &[]);
        let index = v
            .iter()
            .find(|c| c.what == "invariant index holds")
            .unwrap();
        assert!(!index.met && index.detail.contains("k: wrong"), "{index:?}");
        assert!(
            v.iter()
                .find(|c| c.what == "invariant counts holds")
                .unwrap()
                .met
        );
    }

    #[test]
    fn an_invariant_expected_to_fail_must_fail() {
        let s = scenario("[expect]\nfail = [\"counts\"]\n");
        let runs = [ran(1, Some(4)), ran(2, Some(3))];
        let v = evaluate(&s, &runs, &[inv("counts", false), inv("index", true)], &[]);
        assert!(v.iter().all(|c| c.met), "{v:?}");
        let v = evaluate(&s, &runs, &[inv("counts", true)], &[]);
        assert!(v
            .iter()
            .any(|c| c.what == "invariant counts fails" && !c.met));
    }

    #[test]
    fn findings_match_kind_key_and_reason() {
        let s = scenario(
            "[[expect.finding]]\nkind = \"quarantined\"\nkey = \"okx:positions:b\"\nreason = \"not_json\"\n[[expect.message]]\ninvocation = 1\ncontains = \"OOM\"\n",
        );
        let runs = [ran(1, Some(4)), ran(2, Some(3))];
        let found = |reason: &str| Found {
            kind: FindingKind::Quarantined,
            key: "okx:positions:b".into(),
            reason: reason.into(),
        };
        let v = evaluate(&s, &runs, &[], &[found("not_json: line 1")]);
        assert!(v.iter().all(|c| c.met), "{v:?}");
        let v = evaluate(&s, &runs, &[], &[found("collision: x")]);
        let f = v.iter().find(|c| c.what.starts_with("finding")).unwrap();
        assert!(!f.met && f.detail.contains("reported otherwise"), "{f:?}");
        let v = evaluate(&s, &runs, &[], &[]);
        assert!(v
            .iter()
            .any(|c| c.what.starts_with("finding") && c.detail == "not reported"));
    }

    #[test]
    fn a_fault_that_never_struck_is_a_failed_expectation() {
        let s = scenario("");
        let mut first = ran(1, Some(0));
        first.faults.push(crate::scenario::invoke::FaultRecord {
            kind: "sigkill",
            timing: Timing::Progress(0.5),
            journaled_at_fault: None,
            note: "never struck: the invocation ended first".into(),
        });
        let v = evaluate(&s, &[first, ran(2, Some(3))], &[], &[]);
        assert!(v
            .iter()
            .any(|c| c.what.starts_with("fault sigkill") && !c.met));
    }
}
