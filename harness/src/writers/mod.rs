//! Writers during a migration (DESIGN §4 `no-lost-writes`): tasks that keep
//! updating the positions of a few "hot" (user, exchange) pairs while
//! Phase 2 runs, a Jepsen-style history of every operation, and the model
//! check that every acknowledged write is in the final state.
//!
//! Use, in this order:
//! 1. [`hot_pairs`]`(&keyspace, &exchanges, n, seed)`: `n` pairs from a
//!    seeded keyspace whose legacy value the planner would migrate.
//! 2. [`Writers::start`]`(url, pairs, &cfg)`: reads each pair's initial
//!    positions through the legacy store, then spawns `cfg.tasks` tasks;
//!    each pair belongs to one task, so its history is sequential. A
//!    `cfg.legacy_share` of the pairs is written as the old application
//!    does (the legacy JSON, only while the user is not migrated: a write
//!    refused because the user moved is recorded failed, and the pair is
//!    written through the dual-read store from then on); the others through
//!    the dual-read store. `cfg.rogue`: the legacy pairs are written
//!    through the unguarded legacy store throughout, as a broken old
//!    application would, which validate and verify must report as
//!    reappeared legacy keys.
//! 3. Run the migration; [`Writers::acknowledged`] and
//!    [`Writers::wait_acknowledged`] tell how many writes were acknowledged.
//! 4. [`Writers::stop`]: signal and join; an operation in flight completes
//!    or stays recorded indeterminate. Gives the [`History`].
//! 5. [`no_lost_writes`]`(conn, &history, &history.initial)`: the
//!    `no-lost-writes` report entry.
//!
//! [`around`] does 2 to 4 around one migration future, as the gate does;
//! [`legacy_keys`] gives the scope that verify leaves to this check.
//!
//! Operations: upserts of an existing position (a new `pos` and a `wseq`
//! field holding the op's unique id), new positions, removes. Each is
//! recorded acknowledged, failed (definitely not applied) or indeterminate
//! (a Redis error or timeout: it may or may not have applied).
//!
//! - `history`: the history as data; `task`: one writer task;
//!   `check`: the model check.

mod check;
mod history;
mod task;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyshift_engine::api::{ApiResult, LegacyStore, PositionStore};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::{plan_value, PlanOptions, UserPlan};
use keyshift_engine::grid_positions::store::standalone::connect;
use keyshift_engine::keys::LegacyPositionsKey;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use check::{check_history, no_lost_writes, observe, Observed, DESCRIPTION, ID};
pub use history::{
    show, Action, Fields, History, HotPair, Initial, Op, OpResult, PairState, Slot, Tally, Via,
};

use crate::seed::{KeyValue, Keyspace};
use task::{Owned, Task};

#[derive(Debug, Clone)]
pub struct WritersConfig {
    /// How many hot pairs [`hot_pairs`] picks (callers pass it on).
    pub hot_users: usize,
    /// Writer tasks; pairs are dealt to them in turn.
    pub tasks: usize,
    pub seed: u64,
    /// Share of the pairs written through the legacy store (0.0 ..= 1.0).
    pub legacy_share: f64,
    /// Write legacy pairs unguarded, even after their user's migration.
    pub rogue: bool,
    /// Pause of a task between two operations.
    pub pause: Duration,
    /// An operation with no answer by then is recorded indeterminate.
    pub op_timeout: Duration,
}

impl Default for WritersConfig {
    fn default() -> Self {
        WritersConfig {
            hot_users: 30,
            tasks: 4,
            seed: 0,
            legacy_share: 0.5,
            rogue: false,
            pause: Duration::from_millis(2),
            op_timeout: Duration::from_secs(5),
        }
    }
}

/// Up to `n` pairs of `keyspace` (chosen by `seed`) whose legacy value is a
/// string the planner would migrate, not quarantine: those a migration moves
/// while the writers write.
pub fn hot_pairs<S: AsRef<str>>(
    keyspace: &Keyspace,
    exchanges: &[S],
    n: usize,
    seed: u64,
) -> Vec<HotPair> {
    let mut candidates: Vec<HotPair> = keyspace
        .entries
        .iter()
        .filter_map(|e| {
            let legacy = LegacyPositionsKey::parse(&e.key, exchanges)?;
            let KeyValue::String(value) = &e.value else {
                return None;
            };
            matches!(
                plan_value(value, PlanOptions::default()),
                UserPlan::Migrate(_)
            )
            .then_some(HotPair {
                user_id: legacy.user_id,
                exchange: legacy.exchange,
            })
        })
        .collect();
    candidates.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = n.min(candidates.len());
    // A partial Fisher-Yates: the first n are a seeded sample.
    for i in 0..n {
        let j = rng.random_range(i..candidates.len());
        candidates.swap(i, j);
    }
    candidates.truncate(n);
    candidates.sort();
    candidates
}

/// Each pair's positions now, read through the legacy store.
pub async fn read_initial(conn: &RedisConn, pairs: &[HotPair]) -> ApiResult<Initial> {
    let legacy = LegacyStore::new(conn.clone());
    let mut initial = Initial::default();
    for pair in pairs {
        let positions = legacy.all_positions(&pair.user_id, &pair.exchange).await?;
        let state = positions
            .into_iter()
            .map(|p| ((p.inst_id, p.side), p.fields))
            .collect();
        initial.pairs.insert(pair.clone(), state);
    }
    Ok(initial)
}

/// One task's operations, shared so a stopped task's log is read after it.
type TaskLog = Arc<Mutex<Vec<Op>>>;

/// Running writer tasks; [`Writers::stop`] ends them (dropping the value
/// stops them too, without a history).
pub struct Writers {
    stop: watch::Sender<bool>,
    tasks: Vec<(JoinHandle<()>, TaskLog)>,
    acknowledged: Arc<AtomicUsize>,
    initial: Initial,
}

impl Writers {
    /// Reads the initial state of `pairs`, then starts the tasks (one
    /// connection each). Must run inside a Tokio runtime.
    pub async fn start(url: &str, pairs: Vec<HotPair>, cfg: &WritersConfig) -> ApiResult<Writers> {
        let conn = connect(url).await?;
        let initial = read_initial(&conn, &pairs).await?;
        let tasks = cfg.tasks.max(1);
        let mut share = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut dealt: Vec<Vec<Owned>> = (0..tasks).map(|_| Vec::new()).collect();
        for (i, pair) in pairs.into_iter().enumerate() {
            let legacy = share.random_bool(cfg.legacy_share.clamp(0.0, 1.0));
            let via = match (legacy, cfg.rogue) {
                (false, _) => Via::DualRead,
                (true, false) => Via::Legacy,
                (true, true) => Via::RogueLegacy,
            };
            let state = initial.pairs.get(&pair).cloned().unwrap_or_default();
            dealt[i % tasks].push(Owned { pair, state, via });
        }
        let (stop, stop_rx) = watch::channel(false);
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for (id, pairs) in dealt.into_iter().enumerate() {
            let mut task = Task::new(id, cfg.seed, connect(url).await?, pairs);
            task.pause = cfg.pause;
            task.op_timeout = cfg.op_timeout;
            task.acknowledged = acknowledged.clone();
            let log = task.log.clone();
            handles.push((tokio::spawn(task.run(stop_rx.clone())), log));
        }
        Ok(Writers {
            stop,
            tasks: handles,
            acknowledged,
            initial,
        })
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` writes were acknowledged in all, or
    /// `within` passed; `true` when they were.
    pub async fn wait_acknowledged(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.acknowledged() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Signals every task to stop after its current operation, joins them,
    /// and returns the history. A task that panicked leaves its last
    /// operation recorded as indeterminate.
    pub async fn stop(self) -> History {
        let _ = self.stop.send(true);
        let mut ops = Vec::new();
        for (handle, log) in self.tasks {
            if let Err(e) = handle.await {
                tracing::warn!("a writer task ended abnormally: {e}");
            }
            let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
            ops.extend(log);
        }
        History {
            ops,
            initial: self.initial,
        }
    }
}

/// How long [`around`] waits for writes before and after the migration.
const AROUND_WAIT: Duration = Duration::from_secs(10);

/// Writers through one migration, as the gate runs them: start them, wait
/// for `writes` acknowledged writes (in the legacy layout), run
/// `migration`, wait for `writes` more (in the new one), stop. A wait that
/// runs out goes on regardless: too few writes show in the history, and
/// none at all fails `no-lost-writes`.
pub async fn around<T>(
    url: &str,
    pairs: Vec<HotPair>,
    cfg: &WritersConfig,
    writes: usize,
    migration: impl std::future::Future<Output = T>,
) -> ApiResult<(T, History)> {
    let writers = Writers::start(url, pairs, cfg).await?;
    writers.wait_acknowledged(writes, AROUND_WAIT).await;
    let out = migration.await;
    let after = writers.acknowledged() + writes;
    writers.wait_acknowledged(after, AROUND_WAIT).await;
    Ok((out, writers.stop().await))
}

/// Legacy keys of `pairs`: what a scoped verify leaves out.
pub fn legacy_keys(pairs: &[HotPair]) -> std::collections::BTreeSet<String> {
    pairs
        .iter()
        .map(|p| LegacyPositionsKey::new(&p.exchange, &p.user_id).key())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{generate, GenConfig};

    #[test]
    fn hot_pairs_are_seeded_migratable_and_distinct() {
        let generated = generate(&GenConfig {
            users: 300,
            seed: 3,
            malformed_rate: 0.2,
            ..GenConfig::default()
        });
        let exchanges = GenConfig::default().exchanges;
        let a = hot_pairs(&generated.keyspace, &exchanges, 40, 9);
        assert_eq!(a.len(), 40);
        assert_eq!(a, hot_pairs(&generated.keyspace, &exchanges, 40, 9));
        assert_ne!(a, hot_pairs(&generated.keyspace, &exchanges, 40, 10));
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 40);
        for p in &a {
            let key = LegacyPositionsKey::new(&p.exchange, &p.user_id).key();
            assert!(
                !generated.truth.quarantined.contains_key(&key),
                "{key} is quarantined"
            );
            let Some(KeyValue::String(v)) = generated.keyspace.get(&key).map(|e| &e.value) else {
                panic!("{key} is not a seeded string");
            };
            assert!(matches!(
                plan_value(v, PlanOptions::default()),
                UserPlan::Migrate(_)
            ));
        }
    }
}
