//! One writer task: picks an operation on one of its pairs, records it as
//! invoked, runs it, records how it ended, pauses, until told to stop.
//! What to write is pure ([`next_action`]); the rest is the call and its
//! classification.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyshift_engine::api::{
    ApiError, DualReadStore, LegacyStore, LegacyWrite, PositionObject, PositionStore,
};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::Side;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::history::{Action, Fields, HotPair, Op, OpResult, PairState, Via};

/// A pair as its task sees it: what it believes the pair holds (every
/// acknowledged or indeterminate write applied) and which path it writes by.
pub(super) struct Owned {
    pub pair: HotPair,
    pub state: PairState,
    /// The path for this pair: `Legacy` switches to `DualRead` once a
    /// guarded write is refused because the user has migrated.
    pub via: Via,
}

pub(super) struct Task {
    pub id: usize,
    pub pairs: Vec<Owned>,
    pub conn: RedisConn,
    pub rng: ChaCha8Rng,
    pub pause: Duration,
    pub op_timeout: Duration,
    pub log: Arc<Mutex<Vec<Op>>>,
    pub acknowledged: Arc<AtomicUsize>,
}

impl Task {
    pub fn new(id: usize, seed: u64, conn: RedisConn, pairs: Vec<Owned>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(id as u64 + 1);
        Task {
            id,
            pairs,
            conn,
            rng,
            pause: Duration::from_millis(2),
            op_timeout: Duration::from_secs(5),
            log: Arc::default(),
            acknowledged: Arc::default(),
        }
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut n = 0u64;
        // A dropped sender (the Writers value dropped without stop) stops too.
        while !*stop.borrow() && stop.has_changed().is_ok() && !self.pairs.is_empty() {
            let which = self.rng.random_range(0..self.pairs.len());
            n += 1;
            let id = format!("w{}.{n}", self.id);
            let Some(action) = next_action(&mut self.rng, &self.pairs[which].state, &id) else {
                continue;
            };
            let via = self.pairs[which].via;
            let moved = self.apply(which, &id, via, &action).await;
            if via == Via::Legacy && moved {
                // The user moved: from now on this pair is written as the
                // deployed application writes it, starting with this action.
                self.pairs[which].via = Via::DualRead;
                n += 1;
                let id = format!("w{}.{n}", self.id);
                let action = restamp(action, &id);
                self.apply(which, &id, Via::DualRead, &action).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Runs one operation, recorded as invoked before the call and
    /// completed after it; `true` when a guarded legacy write was refused
    /// because the user has migrated.
    async fn apply(&mut self, which: usize, id: &str, via: Via, action: &Action) -> bool {
        let owned = &self.pairs[which];
        let at = {
            let mut log = self.log.lock().expect("writer log");
            log.push(Op {
                id: id.to_owned(),
                pair: owned.pair.clone(),
                via,
                action: action.clone(),
                result: OpResult::Indeterminate("still in flight when the writers stopped".into()),
                invoked: Instant::now(),
                completed: None,
            });
            log.len() - 1
        };
        let call = write(&self.conn, &owned.pair, via, action);
        let (result, moved) = match tokio::time::timeout(self.op_timeout, call).await {
            Ok(r) => r,
            Err(_) => {
                let ms = self.op_timeout.as_millis();
                (
                    OpResult::Indeterminate(format!("no answer within {ms} ms")),
                    false,
                )
            }
        };
        if !matches!(result, OpResult::Failed(_)) {
            // Believed applied, so later upserts build on it.
            let state = &mut self.pairs[which].state;
            match action.value() {
                Some(fields) => state.insert(action.slot().clone(), fields.clone()),
                None => state.remove(action.slot()),
            };
        }
        if result == OpResult::Acknowledged {
            self.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        let mut log = self.log.lock().expect("writer log");
        log[at].result = result.clone();
        log[at].completed = Some(Instant::now());
        moved
    }
}

/// One call through `via`, classified: refused before writing is failed;
/// a Redis error may have come after the write, so it is indeterminate.
/// The bool: refused because the user has migrated.
async fn write(conn: &RedisConn, pair: &HotPair, via: Via, action: &Action) -> (OpResult, bool) {
    let (user, exchange) = (pair.user_id.as_str(), pair.exchange.as_str());
    let (inst_id, side) = action.slot();
    let object = match action {
        Action::Upsert { fields, .. } => match PositionObject::parse(&to_json(fields)) {
            Ok(o) => Some(o),
            Err(e) => return (OpResult::Failed(e.to_string()), false),
        },
        Action::Remove { .. } => None,
    };
    let outcome: Result<Option<LegacyWrite>, ApiError> = match (via, &object) {
        (Via::Legacy, Some(o)) => LegacyStore::new(conn.clone())
            .upsert_unmigrated(user, exchange, o)
            .await
            .map(Some),
        (Via::Legacy, None) => LegacyStore::new(conn.clone())
            .remove_unmigrated(user, exchange, inst_id, *side)
            .await
            .map(Some),
        (Via::RogueLegacy, Some(o)) => LegacyStore::new(conn.clone())
            .upsert(user, exchange, o)
            .await
            .map(|()| None),
        (Via::RogueLegacy, None) => LegacyStore::new(conn.clone())
            .remove(user, exchange, inst_id, *side)
            .await
            .map(|_| None),
        (Via::DualRead, Some(o)) => DualReadStore::new(conn.clone())
            .upsert(user, exchange, o)
            .await
            .map(|()| None),
        (Via::DualRead, None) => DualReadStore::new(conn.clone())
            .remove(user, exchange, inst_id, *side)
            .await
            .map(|_| None),
    };
    match outcome {
        Ok(None | Some(LegacyWrite::Done(_))) => (OpResult::Acknowledged, false),
        Ok(Some(LegacyWrite::Moved)) => {
            let why = "refused: the user has an index set (migrated)";
            (OpResult::Failed(why.into()), true)
        }
        Ok(Some(LegacyWrite::Absent)) => {
            let why = "refused: the legacy key is gone (migrated)";
            (OpResult::Failed(why.into()), true)
        }
        Err(e @ ApiError::Engine(_)) => (OpResult::Indeterminate(e.to_string()), false),
        // Every other error is decided before anything is written.
        Err(e) => (OpResult::Failed(e.to_string()), false),
    }
}

/// The next operation on a pair believed to hold `state`: mostly updates
/// of an existing position (a new `pos` and this op's `wseq`), some new
/// positions, some removes. `None` only when nothing fits (never in
/// practice: a new position always does).
pub(super) fn next_action(rng: &mut ChaCha8Rng, state: &PairState, id: &str) -> Option<Action> {
    let roll: f64 = rng.random_range(0.0..1.0);
    let size = format!(
        "{}.{}",
        rng.random_range(1..500u32),
        rng.random_range(0..100u32)
    );
    if state.is_empty() || roll < 0.2 {
        let (pos_side, side) = match rng.random_range(0..3) {
            0 => ("long", Side::Long),
            1 => ("short", Side::Short),
            _ if rng.random_bool(0.5) => ("net", Side::Long),
            _ => ("net", Side::Short),
        };
        let inst_id = format!("W{}-USDT-SWAP", id.replace('.', "X").to_uppercase());
        let mut fields = Fields::new();
        fields.insert("instId".into(), inst_id.clone());
        fields.insert("posSide".into(), pos_side.into());
        fields.insert(
            "avgPx".into(),
            format!("{}", rng.random_range(1..90_000u32)),
        );
        fields.insert("pos".into(), signed(&size, pos_side, side));
        fields.insert("wseq".into(), id.to_owned());
        return Some(Action::Upsert {
            slot: (inst_id, side),
            fields,
        });
    }
    let (slot, current) = state.iter().nth(rng.random_range(0..state.len()))?;
    if roll < 0.35 {
        return Some(Action::Remove { slot: slot.clone() });
    }
    let mut fields = current.clone();
    let pos_side = fields.get("posSide").cloned().unwrap_or_default();
    fields.insert("pos".into(), signed(&size, &pos_side, slot.1));
    fields.insert("wseq".into(), id.to_owned());
    Some(Action::Upsert {
        slot: slot.clone(),
        fields,
    })
}

/// A `pos` that keeps the position on `side`: positive in long/short mode,
/// signed by the side otherwise (the planner reads the sign then).
fn signed(size: &str, pos_side: &str, side: Side) -> String {
    let hedged = pos_side.eq_ignore_ascii_case("long") || pos_side.eq_ignore_ascii_case("short");
    if !hedged && side == Side::Short {
        format!("-{size}")
    } else {
        size.to_owned()
    }
}

/// The same action under a new op id (its `wseq` follows).
fn restamp(action: Action, id: &str) -> Action {
    match action {
        Action::Upsert { slot, mut fields } => {
            fields.insert("wseq".into(), id.to_owned());
            Action::Upsert { slot, fields }
        }
        remove => remove,
    }
}

/// A position object whose every field is a JSON string: a store reads a
/// string back verbatim, so the fields read are exactly `fields`.
pub(super) fn to_json(fields: &Fields) -> String {
    let object: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_reads_back_as_planned() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut state = PairState::new();
        let mut seen = (0, 0, 0); // new, update, remove
        for n in 0..400 {
            let id = format!("w0.{n}");
            let was = state.len();
            let action = next_action(&mut rng, &state, &id).expect("an action");
            match &action {
                Action::Upsert { slot, fields } => {
                    // What the stores file and read back is what the model holds.
                    let object = PositionObject::parse(&to_json(fields)).unwrap();
                    assert_eq!((object.inst_id(), object.side()), (slot.0.as_str(), slot.1));
                    assert_eq!(&object.position().fields, fields);
                    assert_eq!(fields["wseq"], id);
                    if state.contains_key(slot) {
                        seen.1 += 1;
                    } else {
                        seen.0 += 1;
                    }
                    state.insert(slot.clone(), fields.clone());
                }
                Action::Remove { slot } => {
                    assert!(state.remove(slot).is_some());
                    seen.2 += 1;
                }
            }
            assert!(state.len().abs_diff(was) <= 1);
        }
        assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "{seen:?}");
    }

    #[test]
    fn pos_keeps_the_side() {
        assert_eq!(signed("2.5", "net", Side::Short), "-2.5");
        assert_eq!(signed("2.5", "", Side::Long), "2.5");
        assert_eq!(signed("2.5", "SHORT", Side::Short), "2.5");
    }
}
