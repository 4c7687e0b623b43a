//! One invariant's result, VDiff-style: how many items were processed, how
//! many matched, how many did not, what was found that should not exist,
//! and a few samples of each violation.
//!
//! Not run is not pass (DESIGN §4): a result that examined nothing (no
//! item processed, nothing extra found) is `not run`, with the reason,
//! and does not pass. Its caller either examines something, or says why
//! it did not ([`InvariantResult::not_run`]), or, where finding nothing to
//! examine is itself the check (a sweep that found no orphan), says so
//! with [`InvariantResult::nothing_to_check`], which passes.

use serde::Serialize;

/// How many violation samples a result keeps.
pub const MAX_SAMPLES: usize = 5;

/// The reason of a result nothing was examined for, until its caller gives one.
pub const EXAMINED_NOTHING: &str = "examined nothing";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvariantResult {
    /// The DESIGN §4 id: counts, index, fields, backup, ttl, ...
    pub id: String,
    pub description: String,
    pub processed: u64,
    pub matching: u64,
    pub mismatched: u64,
    pub extra: u64,
    pub samples: Vec<String>,
    /// Something was examined and nothing failed, or the caller said that
    /// nothing needed examining ([`Self::nothing_to_check`]). False while
    /// not run.
    pub passed: bool,
    /// Why nothing was examined, while nothing was: the result is `not
    /// run`. `None` once something was examined, or when examining nothing
    /// was declared fine.
    pub not_run: Option<String>,
    /// Why examining nothing is fine here, when the caller said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nothing_to_check: Option<String>,
}

impl InvariantResult {
    /// A result that has examined nothing yet: `not run`
    /// ([`EXAMINED_NOTHING`]) until it examines something.
    pub fn new(id: &str, description: &str) -> Self {
        Self {
            id: id.to_owned(),
            description: description.to_owned(),
            processed: 0,
            matching: 0,
            mismatched: 0,
            extra: 0,
            samples: Vec::new(),
            passed: false,
            not_run: Some(EXAMINED_NOTHING.to_owned()),
            nothing_to_check: None,
        }
    }

    pub fn ok(&mut self) {
        self.processed += 1;
        self.matching += 1;
        self.settle();
    }

    pub fn mismatch(&mut self, sample: impl FnOnce() -> String) {
        self.processed += 1;
        self.mismatched += 1;
        self.sample(sample);
        self.settle();
    }

    /// Something exists that should not (an orphan, a stray key).
    pub fn extra(&mut self, sample: impl FnOnce() -> String) {
        self.extra += 1;
        self.sample(sample);
        self.settle();
    }

    /// Records one check; `Err(sample)` is a mismatch.
    pub fn check(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.ok(),
            Err(s) => self.mismatch(|| s),
        }
    }

    /// Says why this invariant examined nothing: it reports `not run
    /// (reason)` and does not pass. Ignored once something was examined
    /// (the invariant ran).
    pub fn not_run(&mut self, reason: impl Into<String>) {
        if !self.examined() {
            self.not_run = Some(reason.into());
            self.nothing_to_check = None;
            self.settle();
        }
    }

    /// Says that examining nothing is this invariant's answer, and why:
    /// it passes, with the reason kept. Only for a check whose finding
    /// nothing is the check itself (an orphan sweep that found no key to
    /// judge), never for one that simply had no input. Ignored once
    /// something was examined.
    pub fn nothing_to_check(&mut self, reason: impl Into<String>) {
        if !self.examined() {
            self.nothing_to_check = Some(reason.into());
            self.not_run = None;
            self.settle();
        }
    }

    /// Whether any item was processed or anything extra found.
    pub fn examined(&self) -> bool {
        self.processed > 0 || self.extra > 0
    }

    /// Whether this invariant examined nothing and was not declared
    /// fine without: `not run`.
    pub fn is_not_run(&self) -> bool {
        self.not_run.is_some()
    }

    /// Keeps `passed` and `not_run` true to the counts.
    fn settle(&mut self) {
        if self.examined() {
            self.not_run = None;
            self.nothing_to_check = None;
            self.passed = self.mismatched == 0 && self.extra == 0;
        } else {
            self.passed = self.nothing_to_check.is_some();
            if self.passed {
                self.not_run = None;
            }
        }
    }

    fn sample(&mut self, sample: impl FnOnce() -> String) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(sample());
        }
    }

    /// One line for a terminal: `PASS fields  processed 10 matching 10 ...`,
    /// or `NOT RUN fields (why)`.
    pub fn summary_line(&self) -> String {
        if let Some(why) = &self.not_run {
            return format!("NOT RUN {} ({why})", self.id);
        }
        let mut line = format!(
            "{} {:<12} processed {} matching {} mismatched {} extra {}",
            if self.passed { "PASS" } else { "FAIL" },
            self.id,
            self.processed,
            self.matching,
            self.mismatched,
            self.extra
        );
        if let Some(why) = &self.nothing_to_check {
            line.push_str(&format!(" ({why})"));
        }
        line
    }
}

/// How far a carried-over TTL may drift from the legacy TTL (ms), beyond
/// the time elapsed since the write.
pub const TTL_TOLERANCE_MS: i64 = 2_000;

/// A verify's verdict: every invariant of one run, each with its counts.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub migration: &'static str,
    pub run_id: String,
    pub stamp: String,
    pub invariants: Vec<InvariantResult>,
}

impl VerifyReport {
    /// Every invariant holds; one that did not run does not.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|i| i.passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invariant_that_examined_nothing_is_not_run() {
        let r = InvariantResult::new("fields", "x");
        assert!(!r.passed);
        assert_eq!(r.not_run.as_deref(), Some(EXAMINED_NOTHING));
        assert_eq!(r.summary_line(), "NOT RUN fields (examined nothing)");

        let mut r = InvariantResult::new("backup", "x");
        r.not_run("run r1 migrated no legacy key");
        assert!(!r.passed && r.is_not_run());
        assert_eq!(
            r.summary_line(),
            "NOT RUN backup (run r1 migrated no legacy key)"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["not_run"], "run r1 migrated no legacy key");
        assert_eq!(json["passed"], false);

        // Examining something makes it run, whatever was said before.
        r.ok();
        assert!(r.passed && !r.is_not_run());
        r.not_run("ignored: it ran");
        assert!(r.passed && !r.is_not_run());
        assert!(r.summary_line().starts_with("PASS backup"));
    }

    #[test]
    fn nothing_to_check_passes_only_while_nothing_was_examined() {
        let mut r = InvariantResult::new("index", "x");
        r.nothing_to_check("the orphan sweep found no position key");
        assert!(r.passed && !r.is_not_run());
        assert!(r
            .summary_line()
            .ends_with("(the orphan sweep found no position key)"));
        assert_eq!(
            serde_json::to_value(&r).unwrap()["not_run"],
            serde_json::Value::Null
        );
        r.extra(|| "orphan".into());
        assert!(!r.passed && !r.is_not_run());
        assert_eq!(r.nothing_to_check, None);
        r.nothing_to_check("ignored");
        assert!(!r.passed);
    }

    #[test]
    fn a_mismatch_or_extra_fails_and_samples_are_capped() {
        let mut r = InvariantResult::new("fields", "x");
        r.ok();
        assert!(r.passed);
        for i in 0..10 {
            r.mismatch(|| format!("m{i}"));
        }
        r.extra(|| "orphan".into());
        assert!(!r.passed);
        assert_eq!(
            (r.processed, r.matching, r.mismatched, r.extra),
            (11, 1, 10, 1)
        );
        assert_eq!(r.samples.len(), MAX_SAMPLES);
    }
}
