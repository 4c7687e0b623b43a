//! The oracle's answer: each DESIGN §4 invariant with how many items it
//! checked, how many failed, what it found that should not exist, and a
//! few samples. An invariant that examined nothing is `not run`, with the
//! reason, never a pass.

use serde::Serialize;

/// How many samples an invariant keeps.
pub const MAX_SAMPLES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    NotRun,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::NotRun => "not run",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub id: &'static str,
    pub description: &'static str,
    pub checked: u64,
    pub failed: u64,
    /// Found and should not exist (an orphan, an unexpected key).
    pub extra: u64,
    /// Expected keys whose TTL had run out by the time they were read:
    /// expired as the legacy key would have, not lost.
    pub expired: u64,
    pub samples: Vec<String>,
    /// Why nothing was examined, when nothing was.
    pub not_run_reason: Option<String>,
    pub status: Status,
}

impl Judgement {
    pub fn new(id: &'static str, description: &'static str) -> Self {
        Self {
            id,
            description,
            checked: 0,
            failed: 0,
            extra: 0,
            expired: 0,
            samples: Vec::new(),
            not_run_reason: None,
            status: Status::NotRun,
        }
    }

    pub fn pass(&mut self) {
        self.checked += 1;
    }

    pub fn fail(&mut self, sample: impl FnOnce() -> String) {
        self.checked += 1;
        self.failed += 1;
        self.sample(sample);
    }

    pub fn extra(&mut self, sample: impl FnOnce() -> String) {
        self.extra += 1;
        self.sample(sample);
    }

    pub fn expired(&mut self) {
        self.checked += 1;
        self.expired += 1;
    }

    /// `Err(sample)` fails, `Ok` passes.
    pub fn check(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.pass(),
            Err(s) => self.fail(|| s),
        }
    }

    fn sample(&mut self, sample: impl FnOnce() -> String) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(sample());
        }
    }

    /// Adds another judgement of the same invariant (one chunk of users
    /// judged at a time); settle with [`Judgement::finish`] after.
    pub fn absorb(&mut self, other: &Judgement) {
        self.checked += other.checked;
        self.failed += other.failed;
        self.extra += other.extra;
        self.expired += other.expired;
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        self.samples
            .extend(other.samples.iter().take(room).cloned());
    }

    /// Settles the status; `if_empty` is the reason when nothing was
    /// examined.
    pub fn finish(mut self, if_empty: &str) -> Self {
        self.status = if self.failed > 0 || self.extra > 0 {
            Status::Fail
        } else if self.checked == 0 {
            self.not_run_reason = Some(if_empty.to_owned());
            Status::NotRun
        } else {
            Status::Pass
        };
        self
    }

    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "{} {:<10} checked {} failed {} extra {}",
            self.status.as_str().to_uppercase(),
            self.id,
            self.checked,
            self.failed,
            self.extra
        );
        if self.expired > 0 {
            line.push_str(&format!(" expired {}", self.expired));
        }
        if let Some(why) = &self.not_run_reason {
            line.push_str(&format!(" ({why})"));
        }
        line
    }
}

/// What was found per legacy key, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub legacy_keys: u64,
    pub positions_found: u64,
    pub migrated_keys: u64,
    pub positions_migrated: u64,
    pub skipped_closed: u64,
    pub quarantined_keys: u64,
    /// Values DESIGN does not decide on, left untouched or migrated.
    pub ambiguous_keys: u64,
    /// Legacy keys whose TTL ran out before they could be migrated.
    pub expired_keys: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub migration: &'static str,
    pub invariants: Vec<Judgement>,
    pub tally: Tally,
    /// A few ambiguous inputs, with why DESIGN does not decide them.
    pub ambiguous: Vec<String>,
}

impl Tally {
    pub fn absorb(&mut self, o: &Tally) {
        self.legacy_keys += o.legacy_keys;
        self.positions_found += o.positions_found;
        self.migrated_keys += o.migrated_keys;
        self.positions_migrated += o.positions_migrated;
        self.skipped_closed += o.skipped_closed;
        self.quarantined_keys += o.quarantined_keys;
        self.ambiguous_keys += o.ambiguous_keys;
        self.expired_keys += o.expired_keys;
    }
}

impl Verdict {
    /// Adds the verdict on another chunk of the same keyspace: each
    /// invariant's counts and samples, re-settled.
    pub fn absorb(&mut self, other: &Verdict) {
        for j in &other.invariants {
            match self.invariants.iter_mut().find(|m| m.id == j.id) {
                Some(mine) => {
                    mine.absorb(j);
                    let why = mine.not_run_reason.take().or(j.not_run_reason.clone());
                    *mine = mine.clone().finish(why.as_deref().unwrap_or(""));
                }
                None => self.invariants.push(j.clone()),
            }
        }
        self.tally.absorb(&other.tally);
        let room = MAX_SAMPLES.saturating_sub(self.ambiguous.len());
        self.ambiguous
            .extend(other.ambiguous.iter().take(room).cloned());
    }

    /// Every invariant passed; one that did not run is not a pass.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|j| j.status == Status::Pass)
    }

    pub fn get(&self, id: &str) -> Option<&Judgement> {
        self.invariants.iter().find(|j| j.id == id)
    }

    /// Invariants that failed or did not run, by id.
    pub fn not_passed(&self) -> Vec<&'static str> {
        self.invariants
            .iter()
            .filter(|j| j.status != Status::Pass)
            .map(|j| j.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invariant_that_examined_nothing_is_not_run() {
        let j = Judgement::new("fields", "d").finish("no migrated user");
        assert_eq!(j.status, Status::NotRun);
        assert!(j.summary_line().contains("no migrated user"));
        let v = Verdict {
            migration: "grid-positions",
            invariants: vec![j],
            tally: Tally::default(),
            ambiguous: vec![],
        };
        assert!(!v.passed());
    }

    #[test]
    fn one_failure_fails_and_extras_fail() {
        let mut j = Judgement::new("index", "d");
        j.pass();
        j.extra(|| "orphan".into());
        assert_eq!(j.finish("").status, Status::Fail);
    }
}
