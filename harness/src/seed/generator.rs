//! The seeded generator: users, legacy grid positions and their
//! neighbours, replayable byte for byte from `GenConfig::seed`.
//!
//! [`Truth`] is what the generator meant to write, counted as it writes,
//! never by parsing its own output or by any migration code.

use std::collections::BTreeMap;

use fake::faker::internet::en::{SafeEmail, UserAgent, Username};
use fake::faker::lorem::en::Sentence;
use fake::faker::name::en::Name;
use fake::Fake;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{KeyEntry, KeyValue, Keyspace};
use super::positions::{position_json, PosSpec, MARKETS};

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

/// Counts for one exchange's legacy keys.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ExchangeTruth {
    pub legacy_keys: usize,
    pub well_formed_legacy_keys: usize,
    pub positions: usize,
    pub closed_positions: usize,
    pub quarantined: usize,
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Truth {
    pub users: usize,
    /// Every `{exchange}:positions:{uid}` key = well-formed + quarantined.
    pub legacy_keys: usize,
    /// Arrays (empty included) and objects of position objects.
    pub well_formed_legacy_keys: usize,
    pub object_shaped: usize,
    pub empty_arrays: usize,
    /// Legacy keys (well-formed or not) with a TTL.
    pub legacy_with_ttl: usize,
    /// Positions in well-formed legacy keys = long + short.
    pub positions: usize,
    /// Of those, `pos` "0" (they migrate unless `--skip-closed`).
    pub closed_positions: usize,
    /// By the design's side rule (`posSide` long/short in any case; else
    /// the sign of `pos`, 0 counting as long).
    pub long_positions: usize,
    pub short_positions: usize,
    /// instIds held both long and short in one legacy key.
    pub hedged_pairs: usize,
    /// Legacy key -> reason tag: `not_json`, `not_array_or_object`,
    /// `missing_inst_id`, `collision`, `wrong_type`.
    pub quarantined: BTreeMap<String, &'static str>,
    pub per_exchange: BTreeMap<String, ExchangeTruth>,
    /// Keys no migration may touch: user hashes, pre-existing backups,
    /// unrelated keys.
    pub neighbour_keys: usize,
    pub preexisting_backups: usize,
    /// Phase 1 input: `{exchange}:user:{uid}:symbol:{symbol}:order_placed`.
    pub order_placed_keys: usize,
    /// Phase 1.5 input: `position:{uid}:{symbol}`, `user:{uid}:position:{symbol}:{side}`.
    pub position_cache_keys: usize,
    /// Every key in the keyspace.
    pub total_keys: usize,
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
    "wrong_type",
];
const HOUR_MS: u64 = 3_600_000;

struct Gen<'a> {
    cfg: &'a GenConfig,
    rng: ChaCha8Rng,
    ks: Keyspace,
    t: Truth,
}

/// Generates a keyspace; the same config gives byte-identical output.
pub fn generate(cfg: &GenConfig) -> Generated {
    let mut g = Gen {
        cfg,
        rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        ks: Keyspace {
            entries: Vec::with_capacity(cfg.users * 3 + 16),
        },
        t: Truth {
            users: cfg.users,
            ..Truth::default()
        },
    };
    for ex in &cfg.exchanges {
        g.t.per_exchange.insert(ex.clone(), ExchangeTruth::default());
    }
    let mut uids = Vec::with_capacity(cfg.users);
    for i in 0..cfg.users as u64 {
        // Unique and increasing: one slot of 100 per user.
        let uid = 100_000_000 + i * 100 + g.rng.random_range(0..100u64);
        uids.push(uid);
        g.user(uid);
    }
    g.globals(&uids);
    g.t.total_keys = g.ks.len();
    Generated {
        keyspace: g.ks,
        truth: g.t,
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
        if self.chance(self.cfg.unrelated_rate) {
            let token: String = (0..32)
                .map(|_| char::from(b"0123456789abcdef"[self.rng.random_range(0..16)]))
                .collect();
            let ua: String = UserAgent().fake_with_rng(&mut self.rng);
            let v = format!(r#"{{"token":"{token}","ua":{}}}"#, serde_json::Value::from(ua));
            self.push(format!("session:{uid}"), KeyValue::String(v.into_bytes()), Some(1_800_000));
            let notes: Vec<String> = (0..self.rng.random_range(1..5))
                .map(|_| Sentence(3..8).fake_with_rng(&mut self.rng))
                .collect();
            self.push(format!("notifications:{uid}"), KeyValue::List(notes), None);
            self.t.neighbour_keys += 2;
        }
        if self.chance(self.cfg.position_cache_rate) {
            let market = self.rng.random_range(0..MARKETS.len());
            let short = self.rng.random_bool(0.5);
            let spec = PosSpec { market, net_mode: true, short, closed: false, drop_inst_id: false };
            let body = position_json(&mut self.rng, spec).into_bytes();
            let (inst, side) = (MARKETS[market].inst_id, if short { "short" } else { "long" });
            self.push(format!("position:{uid}:{inst}"), KeyValue::String(body.clone()), Some(300_000));
            self.push(format!("user:{uid}:position:{inst}:{side}"), KeyValue::String(body), Some(300_000));
            self.t.position_cache_keys += 2;
        }
    }

    fn exchange(&mut self, uid: u64, ex_idx: usize) {
        let ex = self.cfg.exchanges[ex_idx].clone();
        self.legacy(uid, &ex);
        if self.chance(self.cfg.user_hash_rate) {
            let name: String = Name().fake_with_rng(&mut self.rng);
            let email: String = SafeEmail().fake_with_rng(&mut self.rng);
            let nick: String = Username().fake_with_rng(&mut self.rng);
            let lever = [3, 5, 10, 20][self.rng.random_range(0..4)];
            let fields = vec![
                ("name".into(), name),
                ("email".into(), email),
                ("nickname".into(), nick),
                ("api_label".into(), format!("{ex}-grid-{}", self.rng.random_range(1..10))),
                ("leverage".into(), lever.to_string()),
                ("grid_enabled".into(), if self.rng.random_bool(0.8) { "1" } else { "0" }.into()),
                ("created_at".into(), self.rng.random_range(1_650_000_000..1_748_000_000u64).to_string()),
            ];
            self.push(format!("{ex}:user:{uid}"), KeyValue::Hash(fields), None);
            self.t.neighbour_keys += 1;
        }
        if self.chance(self.cfg.backup_rate) {
            let stamp = format!(
                "2025{:02}{:02}_{:02}{:02}{:02}",
                self.rng.random_range(1..13),
                self.rng.random_range(1..29),
                self.rng.random_range(0..24),
                self.rng.random_range(0..60),
                self.rng.random_range(0..60)
            );
            let net_mode = self.rng.random_bool(0.5);
            let body = self.array(2, net_mode);
            let ttl = self.rng.random_range(HOUR_MS..7 * 24 * HOUR_MS);
            self.push(format!("{ex}:positions:{uid}:backup:{stamp}"), KeyValue::String(body.into_bytes()), Some(ttl));
            self.t.neighbour_keys += 1;
            self.t.preexisting_backups += 1;
        }
        if self.chance(self.cfg.order_placed_rate) {
            let first = self.rng.random_range(0..MARKETS.len());
            for k in 0..self.rng.random_range(1..4) {
                let sym = MARKETS[(first + k) % MARKETS.len()].inst_id;
                let levels: Vec<(String, String)> = (0..self.rng.random_range(1..21))
                    .map(|l| (l.to_string(), if self.rng.random_bool(0.5) { "1" } else { "0" }.to_string()))
                    .collect();
                let ttl = self.rng.random_bool(0.3).then(|| self.rng.random_range(HOUR_MS..48 * HOUR_MS));
                self.push(format!("{ex}:user:{uid}:symbol:{sym}:order_placed"), KeyValue::Hash(levels), ttl);
                self.t.order_placed_keys += 1;
            }
        }
    }

    /// A JSON array of 1..=max positions on distinct instId:side.
    fn array(&mut self, max: usize, net_mode: bool) -> String {
        let specs = self.specs(max, net_mode, false);
        let objs: Vec<String> = specs.iter().map(|s| position_json(&mut self.rng, *s)).collect();
        format!("[{}]", objs.join(","))
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
            specs.push(PosSpec { market, net_mode, short, closed, drop_inst_id: false });
            if hedge && k == 0 {
                let closed = self.chance(self.cfg.closed_rate);
                specs.push(PosSpec { market, net_mode, short: !short, closed, drop_inst_id: false });
            }
        }
        specs
    }

    fn legacy(&mut self, uid: u64, ex: &str) {
        let key = format!("{ex}:positions:{uid}");
        let net_mode = !self.chance(self.cfg.long_short_rate);
        let ttl = self.chance(self.cfg.legacy_ttl_rate).then(|| self.rng.random_range(HOUR_MS..=48 * HOUR_MS));
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
            let body: Vec<String> = specs
                .iter()
                .map(|s| format!("\"{}\":{}", MARKETS[s.market].inst_id, position_json(&mut self.rng, *s)))
                .collect();
            (format!("{{{}}}", body.join(",")), specs)
        } else {
            let specs = self.specs(self.cfg.max_positions, net_mode, false);
            let objs: Vec<String> = specs.iter().map(|s| position_json(&mut self.rng, *s)).collect();
            (format!("[{}]", objs.join(",")), specs)
        };
        let closed = specs.iter().filter(|s| s.closed).count();
        let short = specs.iter().filter(|s| is_short(s)).count();
        // Markets are distinct except a hedged pair, which sits side by side.
        self.t.hedged_pairs += specs.windows(2).filter(|w| w[0].market == w[1].market).count();
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
        let base = PosSpec { market: self.rng.random_range(0..MARKETS.len()), net_mode, short: false, closed: false, drop_inst_id: false };
        let text = match reason {
            "not_json" => match self.rng.random_range(0..3) {
                0 => {
                    let t = format!("[{}]", one(self, base));
                    t[..t.len() / 2].to_owned()
                }
                1 => format!("[{{'instId': '{}', 'pos': '1', 'posSide': None}}]", MARKETS[base.market].inst_id),
                _ => return KeyValue::String(vec![0x80, 0xff, b'[', 0xfe, b']']),
            },
            "not_array_or_object" => ["42", "-1.5", "null", "true", r#""[]""#][self.rng.random_range(0..5)].to_owned(),
            "missing_inst_id" => {
                let arr = self.array(3, net_mode);
                let bad = one(self, PosSpec { drop_inst_id: true, ..base });
                let inner = &arr[1..arr.len() - 1];
                format!("[{inner},{bad}]")
            }
            "collision" => {
                // Two positions resolving to one instId:side: two net longs,
                // a net long beside an explicit long, or two shorts.
                let (a, b) = match self.rng.random_range(0..3) {
                    0 => (PosSpec { net_mode: true, ..base }, PosSpec { net_mode: true, ..base }),
                    1 => (PosSpec { net_mode: true, ..base }, PosSpec { net_mode: false, ..base }),
                    _ => (PosSpec { short: true, ..base }, PosSpec { short: true, ..base }),
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

    fn globals(&mut self, uids: &[u64]) {
        let board: Vec<(String, f64)> = uids
            .iter()
            .take(200)
            .map(|u| (u.to_string(), (self.rng.random_range(-500_000..2_000_000) as f64) / 100.0))
            .collect();
        if !board.is_empty() {
            self.push("leaderboard:pnl:daily".into(), KeyValue::ZSet(board), None);
            self.t.neighbour_keys += 1;
        }
        let active: Vec<String> = uids.iter().step_by(7).take(500).map(|u| u.to_string()).collect();
        if !active.is_empty() {
            self.push("grid:active_users".into(), KeyValue::Set(active), None);
            self.t.neighbour_keys += 1;
        }
        let ex: Vec<(String, String)> = self.cfg.exchanges.iter().map(|e| (e.clone(), "enabled".into())).collect();
        if !ex.is_empty() {
            self.push("config:exchanges".into(), KeyValue::Hash(ex), None);
            self.t.neighbour_keys += 1;
        }
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
