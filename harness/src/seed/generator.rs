//! The seeded generator: users, legacy grid positions and their
//! neighbours, replayable byte for byte from `GenConfig::seed`.
//!
//! [`Truth`] is what the generator meant to write, counted as it writes,
//! never by parsing its own output or by any migration code.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{KeyEntry, KeyValue, Keyspace};
use super::positions::{position_json, positions_json, PosSpec, MARKETS};
pub use super::truth::{ExchangeTruth, Truth};

#[path = "neighbours.rs"]
mod neighbours;
use neighbours::Pools;

/// What to generate. Every `*_rate` is a probability in [0, 1] (values
/// outside are clamped).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenConfig {
    pub users: usize,
    pub seed: u64,
    pub exchanges: Vec<String>,
    /// A user trades on a second exchange.
    pub second_exchange_rate: f64,
    /// Positions per well-formed legacy array: 1..=max_positions.
    pub max_positions: usize,
    /// An account in long/short mode (else net mode).
    pub long_short_rate: f64,
    /// A long/short account holds a hedged symbol (long and short of one instId).
    pub hedged_rate: f64,
    /// A position is closed (`pos` "0").
    pub closed_rate: f64,
    /// A legacy value is an object keyed by instId instead of an array.
    pub object_shaped_rate: f64,
    /// A legacy value is an empty array.
    pub empty_array_rate: f64,
    /// A legacy key has a TTL (1 to 48 hours).
    pub legacy_ttl_rate: f64,
    /// A legacy key is malformed and must be quarantined.
    pub malformed_rate: f64,
    /// A user has an `{exchange}:user:{uid}` hash (per exchange).
    pub user_hash_rate: f64,
    /// A pre-existing `{exchange}:positions:{uid}:backup:{stamp}` key.
    pub backup_rate: f64,
    /// Unrelated per-user keys (`session:{uid}`, `notifications:{uid}`).
    pub unrelated_rate: f64,
    /// Order-placed hashes for a user and exchange.
    pub order_placed_rate: f64,
    /// Legacy position-cache keys for a user.
    pub position_cache_rate: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            users: 1000,
            seed: 0,
            exchanges: ["okx", "binance", "bitget", "upbit", "bybit"]
                .map(String::from)
                .to_vec(),
            second_exchange_rate: 0.3,
            max_positions: 8,
            long_short_rate: 0.5,
            hedged_rate: 0.3,
            closed_rate: 0.08,
            object_shaped_rate: 0.05,
            empty_array_rate: 0.01,
            legacy_ttl_rate: 0.10,
            malformed_rate: 0.005,
            user_hash_rate: 0.6,
            backup_rate: 0.02,
            unrelated_rate: 0.05,
            order_placed_rate: 0.03,
            position_cache_rate: 0.03,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub keyspace: Keyspace,
    pub truth: Truth,
}

const MALFORMED: [&str; 5] = [
    "not_json",
    "not_array_or_object",
    "missing_inst_id",
    "collision",
    "not_a_string",
];
const HOUR_MS: u64 = 3_600_000;

struct Gen<'a> {
    cfg: &'a GenConfig,
    rng: ChaCha8Rng,
    ks: Keyspace,
    t: Truth,
    pools: &'a Pools,
}

/// Users per chunk. Each chunk draws from its own ChaCha stream of the
/// seed, so the output depends on the seed alone, never on how many threads
/// generated it.
const CHUNK_USERS: usize = 4096;

/// Generates a keyspace; the same config gives byte-identical output.
pub fn generate(cfg: &GenConfig) -> Generated {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    generate_on(cfg, cores)
}

fn generate_on(cfg: &GenConfig, threads: usize) -> Generated {
    // Stream 0: the fake pools, then the global keys; stream c+1: chunk c.
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let pools = Pools::new(&mut rng);
    let chunks = cfg.users.div_ceil(CHUNK_USERS);
    let threads = threads.clamp(1, chunks.max(1));
    let mut parts: Vec<Option<(Keyspace, Truth, Vec<u64>)>> = (0..chunks).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let pools = &pools;
                s.spawn(move || {
                    (t..chunks)
                        .step_by(threads)
                        .map(|c| (c, chunk(cfg, pools, c)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (c, part) in h.join().expect("generator thread panicked") {
                parts[c] = Some(part);
            }
        }
    });
    let total: usize = parts.iter().flatten().map(|p| p.0.len()).sum();
    let mut g = Gen::new(cfg, rng, &pools, total + 16);
    let mut uids = Vec::with_capacity(cfg.users);
    for (ks, t, u) in parts.into_iter().flatten() {
        g.ks.extend(ks);
        g.t.absorb(t);
        uids.extend(u);
    }
    g.globals(&uids);
    g.t.users = cfg.users;
    g.t.total_keys = g.ks.len();
    Generated {
        keyspace: g.ks,
        truth: g.t,
    }
}

fn chunk(cfg: &GenConfig, pools: &Pools, c: usize) -> (Keyspace, Truth, Vec<u64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(c as u64 + 1);
    let users = c * CHUNK_USERS..cfg.users.min((c + 1) * CHUNK_USERS);
    let mut g = Gen::new(cfg, rng, pools, users.len() * 3);
    let mut uids = Vec::with_capacity(users.len());
    for i in users {
        // Unique and increasing: one slot of 100 per user.
        let uid = 100_000_000 + i as u64 * 100 + g.rng.random_range(0..100u64);
        uids.push(uid);
        g.user(uid);
    }
    (g.ks, g.t, uids)
}

impl<'a> Gen<'a> {
    fn new(cfg: &'a GenConfig, rng: ChaCha8Rng, pools: &'a Pools, capacity: usize) -> Self {
        let per_exchange = cfg
            .exchanges
            .iter()
            .map(|e| (e.clone(), ExchangeTruth::default()))
            .collect();
        Gen {
            cfg,
            rng,
            pools,
            ks: Keyspace {
                entries: Vec::with_capacity(capacity),
            },
            t: Truth {
                per_exchange,
                ..Truth::default()
            },
        }
    }
}

impl Gen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn push(&mut self, key: String, value: KeyValue, ttl_ms: Option<u64>) {
        self.ks.push(KeyEntry { key, value, ttl_ms });
    }

    fn user(&mut self, uid: u64) {
        let n = self.cfg.exchanges.len();
        if n > 0 {
            let first = self.rng.random_range(0..n);
            self.exchange(uid, first);
            if n > 1 && self.chance(self.cfg.second_exchange_rate) {
                let second = (first + self.rng.random_range(1..n)) % n;
                self.exchange(uid, second);
            }
        }
        self.user_neighbours(uid);
    }

    fn exchange(&mut self, uid: u64, ex_idx: usize) {
        let ex = self.cfg.exchanges[ex_idx].clone();
        self.legacy(uid, &ex);
        self.exchange_neighbours(uid, &ex);
    }

    /// A JSON array of 1..=max positions on distinct instId:side.
    fn array(&mut self, max: usize, net_mode: bool) -> String {
        let specs = self.specs(max, net_mode, false);
        positions_json(&mut self.rng, &specs, false)
    }

    /// Distinct (instId, side) positions; hedged pairs only in long/short
    /// mode and never when `one_per_inst` (object-shaped values).
    fn specs(&mut self, max: usize, net_mode: bool, one_per_inst: bool) -> Vec<PosSpec> {
        let n = self.rng.random_range(1..=max.clamp(1, MARKETS.len()));
        let start = self.rng.random_range(0..MARKETS.len());
        let step = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12][self.rng.random_range(0..12)];
        let hedge = !net_mode && !one_per_inst && self.chance(self.cfg.hedged_rate);
        let mut specs = Vec::with_capacity(n + 1);
        for k in 0..n {
            // MARKETS has a prime length, so any step visits distinct markets.
            let market = (start + k * step) % MARKETS.len();
            let short = self.rng.random_bool(0.45);
            let closed = self.chance(self.cfg.closed_rate);
            specs.push(PosSpec {
                market,
                net_mode,
                short,
                closed,
                drop_inst_id: false,
            });
            if hedge && k == 0 {
                let closed = self.chance(self.cfg.closed_rate);
                specs.push(PosSpec {
                    market,
                    net_mode,
                    short: !short,
                    closed,
                    drop_inst_id: false,
                });
            }
        }
        specs
    }

    fn legacy(&mut self, uid: u64, ex: &str) {
        let key = format!("{ex}:positions:{uid}");
        let net_mode = !self.chance(self.cfg.long_short_rate);
        let ttl = self
            .chance(self.cfg.legacy_ttl_rate)
            .then(|| self.rng.random_range(HOUR_MS..=48 * HOUR_MS));
        let c = self.cfg;
        let roll: f64 = self.rng.random_range(0.0..1.0);
        let (mal, empty, obj) = (c.malformed_rate, c.empty_array_rate, c.object_shaped_rate);
        let et = self.t.per_exchange.entry(ex.to_owned()).or_default();
        et.legacy_keys += 1;
        self.t.legacy_keys += 1;
        self.t.legacy_with_ttl += ttl.is_some() as usize;
        if roll < mal {
            let reason = MALFORMED[self.rng.random_range(0..MALFORMED.len())];
            let value = self.malformed(reason, net_mode);
            if let Some(e) = self.t.per_exchange.get_mut(ex) {
                e.quarantined += 1;
            }
            self.t.quarantined.insert(key.clone(), reason);
            return self.push(key, value, ttl);
        }
        let (text, specs) = if roll < mal + empty {
            self.t.empty_arrays += 1;
            ("[]".to_owned(), vec![])
        } else if roll < mal + empty + obj {
            self.t.object_shaped += 1;
            let specs = self.specs(self.cfg.max_positions, net_mode, true);
            (positions_json(&mut self.rng, &specs, true), specs)
        } else {
            let specs = self.specs(self.cfg.max_positions, net_mode, false);
            (positions_json(&mut self.rng, &specs, false), specs)
        };
        let closed = specs.iter().filter(|s| s.closed).count();
        let short = specs.iter().filter(|s| is_short(s)).count();
        // Markets are distinct except a hedged pair, which sits side by side.
        self.t.hedged_pairs += specs
            .windows(2)
            .filter(|w| w[0].market == w[1].market)
            .count();
        self.t.well_formed_legacy_keys += 1;
        self.t.positions += specs.len();
        self.t.closed_positions += closed;
        self.t.short_positions += short;
        self.t.long_positions += specs.len() - short;
        if let Some(e) = self.t.per_exchange.get_mut(ex) {
            e.well_formed_legacy_keys += 1;
            e.positions += specs.len();
            e.closed_positions += closed;
        }
        self.push(key, KeyValue::String(text.into_bytes()), ttl);
    }

    fn malformed(&mut self, reason: &str, net_mode: bool) -> KeyValue {
        let one = |g: &mut Self, s: PosSpec| position_json(&mut g.rng, s);
        let base = PosSpec {
            market: self.rng.random_range(0..MARKETS.len()),
            net_mode,
            short: false,
            closed: false,
            drop_inst_id: false,
        };
        let text = match reason {
            "not_json" => match self.rng.random_range(0..3) {
                0 => {
                    let t = format!("[{}]", one(self, base));
                    t[..t.len() / 2].to_owned()
                }
                1 => format!(
                    "[{{'instId': '{}', 'pos': '1', 'posSide': None}}]",
                    MARKETS[base.market].inst_id
                ),
                _ => return KeyValue::String(vec![0x80, 0xff, b'[', 0xfe, b']']),
            },
            "not_array_or_object" => {
                ["42", "-1.5", "null", "true", r#""[]""#][self.rng.random_range(0..5)].to_owned()
            }
            "missing_inst_id" => {
                let arr = self.array(3, net_mode);
                let bad = one(
                    self,
                    PosSpec {
                        drop_inst_id: true,
                        ..base
                    },
                );
                let inner = &arr[1..arr.len() - 1];
                format!("[{inner},{bad}]")
            }
            "collision" => {
                // Two positions resolving to one instId:side: two net longs,
                // a net long beside an explicit long, or two shorts.
                let (a, b) = match self.rng.random_range(0..3) {
                    0 => (
                        PosSpec {
                            net_mode: true,
                            ..base
                        },
                        PosSpec {
                            net_mode: true,
                            ..base
                        },
                    ),
                    1 => (
                        PosSpec {
                            net_mode: true,
                            ..base
                        },
                        PosSpec {
                            net_mode: false,
                            ..base
                        },
                    ),
                    _ => (
                        PosSpec {
                            short: true,
                            ..base
                        },
                        PosSpec {
                            short: true,
                            ..base
                        },
                    ),
                };
                format!("[{},{}]", one(self, a), one(self, b))
            }
            _ => {
                let items: Vec<String> = (0..2).map(|_| one(self, base)).collect();
                return if self.rng.random_bool(0.5) {
                    KeyValue::List(items)
                } else {
                    let inst = MARKETS[base.market].inst_id.to_owned();
                    KeyValue::Hash(vec![(inst, items[0].clone())])
                };
            }
        };
        KeyValue::String(text.into_bytes())
    }
}

/// Short by the design's side rule: a closed net position (`pos` "0") is long.
fn is_short(s: &PosSpec) -> bool {
    if s.net_mode {
        s.short && !s.closed
    } else {
        s.short
    }
}

#[cfg(test)]
#[path = "generator_tests.rs"]
mod tests;
