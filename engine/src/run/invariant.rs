//! One invariant's result, VDiff-style: how many items were processed, how
//! many matched, how many did not, what was found that should not exist,
//! and a few samples of each violation.

use serde::Serialize;

/// How many violation samples a result keeps.
pub const MAX_SAMPLES: usize = 5;

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
    pub passed: bool,
}

impl InvariantResult {
    pub fn new(id: &str, description: &str) -> Self {
        Self {
            id: id.to_owned(),
            description: description.to_owned(),
            processed: 0,
            matching: 0,
            mismatched: 0,
            extra: 0,
            samples: Vec::new(),
            passed: true,
        }
    }

    pub fn ok(&mut self) {
        self.processed += 1;
        self.matching += 1;
    }

    pub fn mismatch(&mut self, sample: impl FnOnce() -> String) {
        self.processed += 1;
        self.mismatched += 1;
        self.passed = false;
        self.sample(sample);
    }

    /// Something exists that should not (an orphan, a stray key).
    pub fn extra(&mut self, sample: impl FnOnce() -> String) {
        self.extra += 1;
        self.passed = false;
        self.sample(sample);
    }

    /// Records one check; `Err(sample)` is a mismatch.
    pub fn check(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.ok(),
            Err(s) => self.mismatch(|| s),
        }
    }

    fn sample(&mut self, sample: impl FnOnce() -> String) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(sample());
        }
    }

    /// One line for a terminal: `PASS fields  processed 10 matching 10 ...`.
    pub fn summary_line(&self) -> String {
        format!(
            "{} {:<12} processed {} matching {} mismatched {} extra {}",
            if self.passed { "PASS" } else { "FAIL" },
            self.id,
            self.processed,
            self.matching,
            self.mismatched,
            self.extra
        )
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
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|i| i.passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
