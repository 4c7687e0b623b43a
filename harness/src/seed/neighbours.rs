//! Keys beside the legacy positions: neighbours no migration may touch
//! (user hashes, pre-existing backups, unrelated keys) and the inputs of
//! Phases 1 and 1.5 (order-placed hashes, position-cache keys).

use fake::faker::internet::en::{FreeEmailProvider, UserAgent, Username};
use fake::faker::lorem::en::Sentence;
use fake::faker::name::en::Name;
use fake::Fake;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::{Gen, HOUR_MS};
use crate::seed::model::KeyValue;
use crate::seed::positions::{position_json, PosSpec, MARKETS};

/// Realistic values from `fake`, made once per run and drawn from per user:
/// `fake` costs microseconds a call, too slow for 100,000 users.
pub(super) struct Pools {
    names: Vec<String>,
    usernames: Vec<String>,
    domains: Vec<String>,
    agents: Vec<String>,
}

impl Pools {
    pub(super) fn new(rng: &mut ChaCha8Rng) -> Self {
        let mut pool = |n: usize, f: &mut dyn FnMut(&mut ChaCha8Rng) -> String| {
            (0..n).map(|_| f(rng)).collect()
        };
        Pools {
            names: pool(1024, &mut |r| Name().fake_with_rng(r)),
            usernames: pool(1024, &mut |r| Username().fake_with_rng(r)),
            domains: pool(32, &mut |r| FreeEmailProvider().fake_with_rng(r)),
            agents: pool(64, &mut |r| UserAgent().fake_with_rng(r)),
        }
    }
}

fn pick<'p>(rng: &mut ChaCha8Rng, pool: &'p [String]) -> &'p str {
    &pool[rng.random_range(0..pool.len())]
}

impl Gen<'_> {
    pub(super) fn user_neighbours(&mut self, uid: u64) {
        if self.chance(self.cfg.unrelated_rate) {
            let token: String = (0..32)
                .map(|_| char::from(b"0123456789abcdef"[self.rng.random_range(0..16)]))
                .collect();
            let ua = pick(&mut self.rng, &self.pools.agents);
            let v = format!(
                r#"{{"token":"{token}","ua":{}}}"#,
                serde_json::Value::from(ua)
            );
            self.push(
                format!("session:{uid}"),
                KeyValue::String(v.into_bytes()),
                Some(1_800_000),
            );
            let notes: Vec<String> = (0..self.rng.random_range(1..5))
                .map(|_| Sentence(3..8).fake_with_rng(&mut self.rng))
                .collect();
            self.push(format!("notifications:{uid}"), KeyValue::List(notes), None);
            self.t.neighbour_keys += 2;
        }
        if self.chance(self.cfg.position_cache_rate) {
            let market = self.rng.random_range(0..MARKETS.len());
            let short = self.rng.random_bool(0.5);
            let spec = PosSpec {
                market,
                net_mode: true,
                short,
                closed: false,
                drop_inst_id: false,
            };
            let body = position_json(&mut self.rng, spec).into_bytes();
            let (inst, side) = (
                MARKETS[market].inst_id,
                if short { "short" } else { "long" },
            );
            self.push(
                format!("position:{uid}:{inst}"),
                KeyValue::String(body.clone()),
                Some(300_000),
            );
            self.push(
                format!("user:{uid}:position:{inst}:{side}"),
                KeyValue::String(body),
                Some(300_000),
            );
            self.t.position_cache_keys += 2;
        }
    }

    pub(super) fn exchange_neighbours(&mut self, uid: u64, ex: &str) {
        if self.chance(self.cfg.user_hash_rate) {
            let name = pick(&mut self.rng, &self.pools.names).to_owned();
            let nick = pick(&mut self.rng, &self.pools.usernames).to_owned();
            let email = format!(
                "{nick}{}@{}",
                uid % 1000,
                pick(&mut self.rng, &self.pools.domains)
            );
            let lever = [3, 5, 10, 20][self.rng.random_range(0..4)];
            let fields = vec![
                ("name".into(), name),
                ("email".into(), email),
                ("nickname".into(), nick),
                (
                    "api_label".into(),
                    format!("{ex}-grid-{}", self.rng.random_range(1..10)),
                ),
                ("leverage".into(), lever.to_string()),
                (
                    "grid_enabled".into(),
                    if self.rng.random_bool(0.8) { "1" } else { "0" }.into(),
                ),
                (
                    "created_at".into(),
                    self.rng
                        .random_range(1_650_000_000..1_748_000_000u64)
                        .to_string(),
                ),
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
            self.push(
                format!("{ex}:positions:{uid}:backup:{stamp}"),
                KeyValue::String(body.into_bytes()),
                Some(ttl),
            );
            self.t.neighbour_keys += 1;
            self.t.preexisting_backups += 1;
        }
        if self.chance(self.cfg.order_placed_rate) {
            let first = self.rng.random_range(0..MARKETS.len());
            for k in 0..self.rng.random_range(1..4) {
                let sym = MARKETS[(first + k) % MARKETS.len()].inst_id;
                let levels: Vec<(String, String)> = (0..self.rng.random_range(1..21))
                    .map(|l| {
                        (
                            l.to_string(),
                            if self.rng.random_bool(0.5) { "1" } else { "0" }.to_string(),
                        )
                    })
                    .collect();
                let ttl = self
                    .rng
                    .random_bool(0.3)
                    .then(|| self.rng.random_range(HOUR_MS..48 * HOUR_MS));
                self.push(
                    format!("{ex}:user:{uid}:symbol:{sym}:order_placed"),
                    KeyValue::Hash(levels),
                    ttl,
                );
                self.t.order_placed_keys += 1;
            }
        }
    }

    pub(super) fn globals(&mut self, uids: &[u64]) {
        let board: Vec<(String, f64)> = uids
            .iter()
            .take(200)
            .map(|u| {
                (
                    u.to_string(),
                    (self.rng.random_range(-500_000..2_000_000) as f64) / 100.0,
                )
            })
            .collect();
        if !board.is_empty() {
            self.push("leaderboard:pnl:daily".into(), KeyValue::ZSet(board), None);
            self.t.neighbour_keys += 1;
        }
        let active: Vec<String> = uids
            .iter()
            .step_by(7)
            .take(500)
            .map(|u| u.to_string())
            .collect();
        if !active.is_empty() {
            self.push("grid:active_users".into(), KeyValue::Set(active), None);
            self.t.neighbour_keys += 1;
        }
        let ex: Vec<(String, String)> = self
            .cfg
            .exchanges
            .iter()
            .map(|e| (e.clone(), "enabled".into()))
            .collect();
        if !ex.is_empty() {
            self.push("config:exchanges".into(), KeyValue::Hash(ex), None);
            self.t.neighbour_keys += 1;
        }
    }
}
