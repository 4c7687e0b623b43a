//! Exit codes of DESIGN §6, decided in one place.

use std::process::ExitCode;

use keyshift_engine::EngineError;

use crate::backend::BackendError;
use crate::error::HarnessError;

/// How a command ended when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done, every invariant holds.
    Done,
    /// An invariant failed (or legacy keys remain, for validate).
    InvariantFailed,
    /// Done, but keys were quarantined or in conflict: see the report.
    NeedsReview,
}

pub const DONE: u8 = 0;
pub const INVARIANT_FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const NEEDS_REVIEW: u8 = 3;
pub const UNREACHABLE: u8 = 4;
pub const LOCKED: u8 = 5;

impl Outcome {
    /// A check's outcome: done when it passed, else an invariant failed.
    pub fn passed_if(passed: bool) -> Outcome {
        if passed {
            Outcome::Done
        } else {
            Outcome::InvariantFailed
        }
    }

    /// A run's outcome: done, or needs review when it left keys untouched
    /// (quarantined, in conflict, skipped) for someone to look at.
    pub fn review_if(needs_review: bool) -> Outcome {
        if needs_review {
            Outcome::NeedsReview
        } else {
            Outcome::Done
        }
    }

    pub fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Done => DONE,
            Outcome::InvariantFailed => INVARIANT_FAILED,
            Outcome::NeedsReview => NEEDS_REVIEW,
        })
    }
}

/// Maps an error to its exit code: usage and refusals 2, anything that
/// could not reach Redis or start a backend 4, a lock held by another run
/// 5, other failures 1.
pub fn error_code(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<HarnessError>() {
            return ExitCode::from(match e {
                HarnessError::Refused(_) | HarnessError::Usage(_) => USAGE,
            });
        }
        if let Some(e) = cause.downcast_ref::<EngineError>() {
            return ExitCode::from(match e {
                EngineError::Unreachable { .. }
                | EngineError::Redis { .. }
                | EngineError::Resharded { .. }
                | EngineError::OutOfMemory { .. } => UNREACHABLE,
                EngineError::BadUrl(_)
                | EngineError::Refused(_)
                | EngineError::Tls { .. }
                | EngineError::NoPermission { .. } => USAGE,
                EngineError::Locked { .. } | EngineError::LockLost => LOCKED,
                EngineError::NoRun | EngineError::BadJournal { .. } => INVARIANT_FAILED,
            });
        }
        if cause.downcast_ref::<BackendError>().is_some() {
            return ExitCode::from(UNREACHABLE);
        }
    }
    ExitCode::from(INVARIANT_FAILED)
}

/// The error and its causes on one line, `: `-separated, each cause once:
/// some errors (redis-rs's I/O errors among them) already print their
/// source in their own message, and a plain `{:#}` then said it twice
/// ("invalid peer certificate: UnknownIssuer: invalid peer certificate:
/// UnknownIssuer").
pub fn describe(err: &anyhow::Error) -> String {
    chain_once(err.chain().map(|c| c.to_string()))
}

fn chain_once(messages: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    for message in messages {
        if message.is_empty() || out.contains(&message) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&message);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(parts: &[&str]) -> String {
        chain_once(parts.iter().map(|p| p.to_string()))
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        assert_eq!(
            chain(&[
                "cannot reach Redis at rediss://h:1 (check the CA)",
                "invalid peer certificate: UnknownIssuer",
                "invalid peer certificate: UnknownIssuer",
            ]),
            "cannot reach Redis at rediss://h:1 (check the CA): invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(
            chain(&["reading x: io: refused", "io: refused"]),
            "reading x: io: refused"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        assert_eq!(
            chain(&["seeding failed", "fixture a.json", "line 3: expected value"]),
            "seeding failed: fixture a.json: line 3: expected value"
        );
    }
}
