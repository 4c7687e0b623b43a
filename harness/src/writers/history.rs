//! What the writers did, as data: every operation with its result, and the
//! state of each hot pair before the first one. Pure.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use keyshift_engine::grid_positions::plan::Side;

/// One (user, exchange) the writers keep updating; exactly one task owns
/// it, so its operations form one sequential history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HotPair {
    pub user_id: String,
    pub exchange: String,
}

impl fmt::Display for HotPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {} on {}", self.user_id, self.exchange)
    }
}

/// A position's place: (instId, side), what its hash key ends with.
pub type Slot = (String, Side);
/// A position's fields as every store reads them (metadata excluded).
pub type Fields = BTreeMap<String, String>;
/// Every position of one pair.
pub type PairState = BTreeMap<Slot, Fields>;

/// Each hot pair's positions before the writers started, read through the
/// legacy store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initial {
    pub pairs: BTreeMap<HotPair, PairState>,
}

/// Which write path an operation took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The old application: the legacy JSON, guarded so it writes only
    /// while the user is not migrated.
    Legacy,
    /// A broken old application: the legacy JSON, unguarded, even after
    /// the user's migration.
    RogueLegacy,
    /// The store deployed during the transition (index first, legacy fallback).
    DualRead,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Legacy => "legacy",
            Via::RogueLegacy => "rogue legacy",
            Via::DualRead => "dual-read",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the position at (instId, side) whole; `fields` is what a read
    /// returns once written, `wseq` among them.
    Upsert {
        slot: Slot,
        fields: Fields,
    },
    Remove {
        slot: Slot,
    },
}

impl Action {
    pub fn slot(&self) -> &Slot {
        match self {
            Action::Upsert { slot, .. } | Action::Remove { slot } => slot,
        }
    }

    /// The position after this action: `None` once removed.
    pub fn value(&self) -> Option<&Fields> {
        match self {
            Action::Upsert { fields, .. } => Some(fields),
            Action::Remove { .. } => None,
        }
    }
}

/// The result of one operation, as a Jepsen history records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// The store said it was written: it must be in the final state
    /// unless a later operation replaced it.
    Acknowledged,
    /// Definitely not applied (refused before any write), with why.
    Failed(String),
    /// May or may not have applied (an error or timeout mid-call), with why.
    Indeterminate(String),
}

/// One operation of one task.
#[derive(Debug, Clone)]
pub struct Op {
    /// Unique over the whole run, `w{task}.{n}`; an upsert writes it into
    /// the position's `wseq` field.
    pub id: String,
    pub pair: HotPair,
    pub via: Via,
    pub action: Action,
    pub result: OpResult,
    pub invoked: Instant,
    /// `None` while in flight (then the result is indeterminate).
    pub completed: Option<Instant>,
}

impl Op {
    /// `w3.17 upsert BTC-USDT-SWAP:long via legacy`.
    pub fn describe(&self) -> String {
        let (what, (inst_id, side)) = match &self.action {
            Action::Upsert { slot, .. } => ("upsert", slot),
            Action::Remove { slot } => ("remove", slot),
        };
        format!(
            "{} {what} {inst_id}:{} via {}",
            self.id,
            side.as_str(),
            self.via.as_str()
        )
    }
}

/// Every operation of a writers run, each task's in the order it ran
/// them, and the initial state they started from.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub initial: Initial,
}

/// How many operations ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub acknowledged: usize,
    pub failed: usize,
    pub indeterminate: usize,
}

impl History {
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for op in &self.ops {
            match op.result {
                OpResult::Acknowledged => t.acknowledged += 1,
                OpResult::Failed(_) => t.failed += 1,
                OpResult::Indeterminate(_) => t.indeterminate += 1,
            }
        }
        t
    }

    /// The acknowledged operations, in history order.
    pub fn acknowledged(&self) -> impl Iterator<Item = &Op> {
        self.ops
            .iter()
            .filter(|op| op.result == OpResult::Acknowledged)
    }
}

/// `pos=1.5 wseq=w0.3 (+4 fields)`, or `absent`: short enough for a sample.
pub fn show(value: Option<&Fields>) -> String {
    let Some(fields) = value else {
        return "absent".into();
    };
    let pick = |name: &str| fields.get(name).map(|v| format!("{name}={v}"));
    let shown: Vec<String> = [pick("pos"), pick("wseq")].into_iter().flatten().collect();
    let rest = fields.len() - shown.len();
    format!("{} (+{rest} fields)", shown.join(" "))
}
