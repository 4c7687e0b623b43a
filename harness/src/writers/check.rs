//! The `no-lost-writes` invariant: a model check of the writers' history.
//!
//! Every position of a hot pair is a register. Starting from the initial
//! state, each operation on it in history order narrows what the final
//! value may be: an acknowledged one makes its value the only one, an
//! indeterminate one adds its value as a second possibility (it may or may
//! not have applied, at its place in the order), a failed one changes
//! nothing. The final read must be one of the possibilities, per position,
//! through every store that answers for the pair. The check is
//! [`check_history`] (pure); [`no_lost_writes`] only reads the final state.

use std::collections::{BTreeMap, BTreeSet};

use keyshift_engine::api::{DualReadStore, HashStore, Position, PositionStore};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::keys::LegacyPositionsKey;
use keyshift_engine::run::invariant::InvariantResult;

use super::history::{show, Fields, History, HotPair, Initial, Op, OpResult, PairState, Slot};
use crate::report::InvariantEntry;

pub const ID: &str = "no-lost-writes";
pub const DESCRIPTION: &str =
    "with writers running through the migration, every acknowledged write is in the final state";

/// What one store answered for one pair at the end.
#[derive(Debug, Clone)]
pub struct Observed {
    pub pair: HotPair,
    /// `dual-read` or `hash`.
    pub store: &'static str,
    /// The positions read, or why they could not be.
    pub state: Result<PairState, String>,
}

/// The values a position may hold at the end, and the last acknowledged
/// operation that decided it (`None`: the initial state).
struct Register<'h> {
    possible: Vec<Option<Fields>>,
    decided_by: Option<&'h Op>,
}

fn model<'h>(
    history: &'h History,
    initial: &Initial,
) -> BTreeMap<HotPair, BTreeMap<Slot, Register<'h>>> {
    let mut pairs: BTreeMap<HotPair, BTreeMap<Slot, Register<'h>>> = BTreeMap::new();
    for (pair, state) in &initial.pairs {
        let slots = pairs.entry(pair.clone()).or_default();
        for (slot, fields) in state {
            let register = Register {
                possible: vec![Some(fields.clone())],
                decided_by: None,
            };
            slots.insert(slot.clone(), register);
        }
    }
    for op in &history.ops {
        let register = pairs
            .entry(op.pair.clone())
            .or_default()
            .entry(op.action.slot().clone())
            .or_insert_with(|| Register {
                possible: vec![None],
                decided_by: None,
            });
        let value = op.action.value().cloned();
        match op.result {
            OpResult::Acknowledged => {
                register.possible = vec![value];
                register.decided_by = Some(op);
            }
            OpResult::Indeterminate(_) => {
                if !register.possible.contains(&value) {
                    register.possible.push(value);
                }
            }
            OpResult::Failed(_) => {}
        }
    }
    pairs
}

/// Checks every observation against the model of `history` from `initial`.
pub fn check_history(
    history: &History,
    initial: &Initial,
    observed: &[Observed],
) -> InvariantResult {
    let mut result = InvariantResult::new(ID, DESCRIPTION);
    if history.acknowledged().next().is_none() {
        result.mismatch(|| "no write was acknowledged: the check would prove nothing".into());
    }
    let model = model(history, initial);
    let mut seen = BTreeSet::new();
    for o in observed {
        seen.insert(&o.pair);
        let state = match &o.state {
            Ok(s) => s,
            Err(e) => {
                result
                    .mismatch(|| format!("{} ({}): final state unreadable: {e}", o.pair, o.store));
                continue;
            }
        };
        let empty = BTreeMap::new();
        let registers = model.get(&o.pair).unwrap_or(&empty);
        let slots: BTreeSet<&Slot> = registers.keys().chain(state.keys()).collect();
        for slot in slots {
            let found = state.get(slot);
            let (possible, decided_by) = match registers.get(slot) {
                Some(r) => (r.possible.as_slice(), r.decided_by),
                None => (&[None][..], None),
            };
            if possible.iter().any(|p| p.as_ref() == found) {
                result.ok();
                continue;
            }
            result.mismatch(|| {
                let after = decided_by.map_or("no write (initial state)".to_owned(), |op| {
                    format!("acknowledged {}", op.describe())
                });
                let others = match possible.len() {
                    1 => String::new(),
                    n => format!(" (or one of {} indeterminate writes)", n - 1),
                };
                format!(
                    "{} position {}:{} ({}): after {after} expected {}{others}, found {}",
                    o.pair,
                    slot.0,
                    slot.1.as_str(),
                    o.store,
                    show(possible[0].as_ref()),
                    show(found)
                )
            });
        }
    }
    for pair in model.keys().filter(|p| !seen.contains(p)) {
        result.mismatch(|| format!("{pair}: final state not read"));
    }
    result
}

fn to_state(positions: Vec<Position>) -> PairState {
    positions
        .into_iter()
        .map(|p| ((p.inst_id, p.side), p.fields))
        .collect()
}

/// Reads each pair's final state through the dual-read store, and through
/// the hash store too where the user has an index set (migrated).
pub async fn observe(conn: &RedisConn, pairs: &[HotPair]) -> Vec<Observed> {
    let dual = DualReadStore::new(conn.clone());
    let hash = HashStore::new(conn.clone());
    let mut out = Vec::new();
    for pair in pairs {
        let (user, exchange) = (pair.user_id.as_str(), pair.exchange.as_str());
        let state = dual.all_positions(user, exchange).await.map(to_state);
        out.push(Observed {
            pair: pair.clone(),
            store: "dual-read",
            state: state.map_err(|e| e.to_string()),
        });
        let index = LegacyPositionsKey::new(exchange, user).index_key();
        let mut c = conn.clone();
        let migrated: Result<bool, String> = redis::cmd("EXISTS")
            .arg(&index)
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string());
        let state = match migrated {
            Ok(false) => continue,
            Ok(true) => hash
                .all_positions(user, exchange)
                .await
                .map(to_state)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        out.push(Observed {
            pair: pair.clone(),
            store: "hash",
            state,
        });
    }
    out
}

/// The `no-lost-writes` entry: `history` checked against the final state,
/// from the state the writers read before they started (`history.initial`).
pub async fn no_lost_writes(conn: &RedisConn, history: &History) -> InvariantEntry {
    let initial = &history.initial;
    let pairs: BTreeSet<&HotPair> = initial
        .pairs
        .keys()
        .chain(history.ops.iter().map(|op| &op.pair))
        .collect();
    let pairs: Vec<HotPair> = pairs.into_iter().cloned().collect();
    let observed = observe(conn, &pairs).await;
    let migrated = observed.iter().filter(|o| o.store == "hash").count();
    let t = history.tally();
    let mut entry = InvariantEntry::from_result(check_history(history, initial, &observed));
    entry.note = Some(format!(
        "{} ops on {} pairs: {} acknowledged, {} failed, {} indeterminate; final state read through dual-read, and the hash store for {migrated} migrated pairs",
        history.ops.len(),
        pairs.len(),
        t.acknowledged,
        t.failed,
        t.indeterminate
    ));
    entry
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use keyshift_engine::grid_positions::plan::Side;

    use super::super::history::{Action, Via};
    use super::*;

    fn pair() -> HotPair {
        HotPair {
            user_id: "u1".into(),
            exchange: "okx".into(),
        }
    }

    fn fields(pos: &str, wseq: &str) -> Fields {
        [("instId", "A"), ("pos", pos), ("wseq", wseq)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn slot() -> Slot {
        ("A".into(), Side::Long)
    }

    fn op(id: &str, action: Action, result: OpResult) -> Op {
        Op {
            id: id.into(),
            pair: pair(),
            via: Via::DualRead,
            action,
            result,
            invoked: Instant::now(),
            completed: Some(Instant::now()),
        }
    }

    fn upsert(id: &str, pos: &str, result: OpResult) -> Op {
        let action = Action::Upsert {
            slot: slot(),
            fields: fields(pos, id),
        };
        op(id, action, result)
    }

    fn remove(id: &str, result: OpResult) -> Op {
        op(id, Action::Remove { slot: slot() }, result)
    }

    fn initial() -> Initial {
        let state = [(slot(), fields("1", "seed"))].into_iter().collect();
        Initial {
            pairs: [(pair(), state)].into_iter().collect(),
        }
    }

    fn final_with(value: Option<Fields>) -> Vec<Observed> {
        let state = value.into_iter().map(|f| (slot(), f)).collect();
        vec![Observed {
            pair: pair(),
            store: "dual-read",
            state: Ok(state),
        }]
    }

    fn run(ops: Vec<Op>, value: Option<Fields>) -> InvariantResult {
        let history = History {
            ops,
            initial: initial(),
        };
        check_history(&history, &history.initial, &final_with(value))
    }

    #[test]
    fn last_acknowledged_write_must_be_there() {
        let ops = || {
            vec![
                upsert("w0.1", "2", OpResult::Acknowledged),
                upsert("w0.2", "3", OpResult::Acknowledged),
            ]
        };
        assert!(run(ops(), Some(fields("3", "w0.2"))).passed);
        let lost = run(ops(), Some(fields("2", "w0.1")));
        assert!(!lost.passed);
        assert_eq!(lost.mismatched, 1);
        assert!(
            lost.samples[0].contains("acknowledged w0.2 upsert A:long via dual-read")
                && lost.samples[0].contains("expected pos=3 wseq=w0.2")
                && lost.samples[0].contains("found pos=2 wseq=w0.1"),
            "{:?}",
            lost.samples
        );
        assert!(!run(ops(), None).passed);
    }

    #[test]
    fn indeterminate_write_may_or_may_not_apply_but_only_at_its_place() {
        let ops = || {
            vec![
                upsert("w0.1", "2", OpResult::Acknowledged),
                upsert("w0.2", "3", OpResult::Indeterminate("timeout".into())),
            ]
        };
        assert!(run(ops(), Some(fields("2", "w0.1"))).passed);
        assert!(run(ops(), Some(fields("3", "w0.2"))).passed);
        assert!(!run(ops(), Some(fields("1", "seed"))).passed);
        // An indeterminate write before an acknowledged one cannot be the end.
        let before = vec![
            upsert("w0.1", "2", OpResult::Indeterminate("error".into())),
            upsert("w0.2", "3", OpResult::Acknowledged),
        ];
        assert!(!run(before, Some(fields("2", "w0.1"))).passed);
    }

    #[test]
    fn failed_write_must_not_appear_and_removes_count() {
        let failed = || {
            vec![
                upsert("w0.1", "2", OpResult::Acknowledged),
                upsert("w0.2", "3", OpResult::Failed("moved".into())),
            ]
        };
        assert!(run(failed(), Some(fields("2", "w0.1"))).passed);
        assert!(!run(failed(), Some(fields("3", "w0.2"))).passed);
        let removed = || vec![remove("w0.1", OpResult::Acknowledged)];
        assert!(run(removed(), None).passed);
        let back = run(removed(), Some(fields("1", "seed")));
        assert!(!back.passed);
        assert!(
            back.samples[0].contains("expected absent"),
            "{:?}",
            back.samples
        );
    }

    #[test]
    fn untouched_positions_keep_their_initial_value_and_strays_fail() {
        assert!(
            run(
                vec![upsert("w0.1", "2", OpResult::Acknowledged)],
                Some(fields("2", "w0.1"))
            )
            .passed
        );
        let mut observed = final_with(Some(fields("1", "seed")));
        if let Ok(state) = &mut observed[0].state {
            state.insert(("B".into(), Side::Short), fields("9", "nobody"));
        }
        let history = History {
            ops: vec![
                remove("w0.9", OpResult::Failed("x".into())),
                upsert("w0.2", "1", OpResult::Indeterminate("x".into())),
            ],
            initial: initial(),
        };
        // No acknowledged write at all, and a position nobody wrote.
        let r = check_history(&history, &history.initial, &observed);
        assert_eq!((r.mismatched, r.matching), (2, 1));
        assert!(r
            .samples
            .iter()
            .any(|s| s.contains("B:short") && s.contains("no write")));
    }

    #[test]
    fn unreadable_or_unread_final_state_fails() {
        let history = History {
            ops: vec![upsert("w0.1", "2", OpResult::Acknowledged)],
            initial: initial(),
        };
        let unreadable = vec![Observed {
            pair: pair(),
            store: "hash",
            state: Err("connection refused".into()),
        }];
        assert!(!check_history(&history, &history.initial, &unreadable).passed);
        let r = check_history(&history, &history.initial, &[]);
        assert!(!r.passed);
        assert!(r.samples[0].contains("not read"));
    }
}
