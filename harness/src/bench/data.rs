//! The data the latency benchmarks run on, and one timed call of each
//! data-API operation. Shared by `keyshift bench` and the criterion suite
//! (`benches/`), so both measure the same calls on the same data.
//!
//! A dataset is `users` users on `okx`, each with the same `positions`
//! OKX-shaped position objects, written in both layouts at once: the
//! legacy JSON array at `okx:positions:{uid}` and the hashes plus index set
//! a migration would have written. The legacy store reads the first, the
//! hash and dual-read stores the second (dual-read: a migrated user, the
//! state after Phase 2), so the three stores answer the same questions.

use std::time::{Duration, Instant};

use keyshift_engine::api::{
    ApiError, ApiResult, DualReadStore, HashStore, LegacyStore, PositionObject, PositionStore,
};
use keyshift_engine::connection::RedisConn;
use keyshift_engine::grid_positions::plan::Side;
use keyshift_engine::keys::{LegacyPositionsKey, META_MIGRATED_AT, META_MIGRATED_FROM};
use serde::{Deserialize, Serialize};

/// The exchange every benchmark user trades on.
pub const EXCHANGE: &str = "okx";
/// Commands per seeding pipeline.
const SEED_BATCH: usize = 2000;

/// A data-API operation of DESIGN §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// One position by (instId, side).
    GetPosition,
    /// Signed net size of one symbol.
    PositionSize,
    /// Every position of the user.
    AllPositions,
    /// Replace one position.
    Upsert,
    /// Remove one position (timed), then put it back (untimed).
    Remove,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::GetPosition,
        Op::PositionSize,
        Op::AllPositions,
        Op::Upsert,
        Op::Remove,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::GetPosition => "get_position",
            Op::PositionSize => "position_size",
            Op::AllPositions => "all_positions",
            Op::Upsert => "upsert",
            Op::Remove => "remove",
        }
    }
}

/// Which store answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    Legacy,
    Hash,
    DualRead,
}

impl StoreKind {
    pub const ALL: [StoreKind; 3] = [StoreKind::Legacy, StoreKind::Hash, StoreKind::DualRead];

    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Legacy => "legacy",
            StoreKind::Hash => "hash",
            StoreKind::DualRead => "dual-read",
        }
    }
}

/// One of the three stores over one connection.
pub struct AnyStore {
    kind: StoreKind,
    legacy: LegacyStore<RedisConn>,
    hash: HashStore<RedisConn>,
    dual_read: DualReadStore<RedisConn>,
}

impl AnyStore {
    pub fn new(kind: StoreKind, conn: RedisConn) -> Self {
        AnyStore {
            kind,
            legacy: LegacyStore::new(conn.clone()),
            hash: HashStore::new(conn.clone()),
            dual_read: DualReadStore::new(conn),
        }
    }

    /// Runs `op` once on user `user` and position slot `slot`; returns the
    /// time of the measured call only (a removed position is put back
    /// after it). `flip` alternates an upsert between
    /// two versions of the position, so every upsert really changes it.
    pub async fn timed(
        &self,
        data: &Dataset,
        op: Op,
        user: usize,
        slot: usize,
        flip: bool,
    ) -> ApiResult<Duration> {
        let call = Call {
            data,
            op,
            user,
            slot,
            flip,
        };
        let took = match self.kind {
            StoreKind::Legacy => call.timed_on(&self.legacy).await?,
            StoreKind::Hash => call.timed_on(&self.hash).await?,
            StoreKind::DualRead => call.timed_on(&self.dual_read).await?,
        };
        if op == Op::Remove {
            // Put the position back in the layout it came from. Through the
            // dual-read store, removing a user's last position drops the
            // index, and its upsert would then go to the legacy key.
            let (uid, object) = (data.user_id(user), &data.objects[slot]);
            match self.kind {
                StoreKind::Legacy => self.legacy.upsert(&uid, EXCHANGE, object).await?,
                _ => self.hash.upsert(&uid, EXCHANGE, object).await?,
            }
        }
        Ok(took)
    }
}

/// One call of [`AnyStore::timed`], whichever store answers it.
struct Call<'a> {
    data: &'a Dataset,
    op: Op,
    user: usize,
    slot: usize,
    flip: bool,
}

impl Call<'_> {
    /// The call on `store`, timed. Each answer is checked against the
    /// seeded data, so a store that silently read nothing would fail the
    /// run instead of looking fast.
    async fn timed_on<S: PositionStore>(&self, store: &S) -> ApiResult<Duration> {
        let Call {
            data,
            op,
            user,
            slot,
            flip,
        } = *self;
        let uid = data.user_id(user);
        let object = &data.objects[slot];
        let (inst_id, side) = (object.inst_id(), object.side());
        let started = Instant::now();
        let ok = match op {
            Op::GetPosition => store
                .get_position(&uid, EXCHANGE, inst_id, side)
                .await?
                .is_some(),
            Op::PositionSize => {
                let size = store.position_size(&uid, EXCHANGE, inst_id).await?;
                size != 0.0
            }
            Op::AllPositions => store.all_positions(&uid, EXCHANGE).await?.len() == data.positions,
            Op::Upsert => {
                let written = if flip { &data.variants[slot] } else { object };
                store.upsert(&uid, EXCHANGE, written).await?;
                true
            }
            Op::Remove => store.remove(&uid, EXCHANGE, inst_id, side).await?,
        };
        let elapsed = started.elapsed();
        if !ok {
            return Err(ApiError::InvalidPosition {
                reason: format!(
                    "benchmark data missing: {} of user {uid} slot {slot} found nothing",
                    op.name()
                ),
            });
        }
        Ok(elapsed)
    }
}

/// Users with `positions` positions each, seeded in both layouts.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub positions: usize,
    pub users: usize,
    first_uid: u64,
    /// The position in each slot, the same for every user.
    objects: Vec<PositionObject>,
    /// The same positions with another size, for upserts that change data.
    variants: Vec<PositionObject>,
}

impl Dataset {
    /// The dataset for `positions` per user; user ids are disjoint across
    /// position counts so several datasets share one server.
    pub fn new(users: usize, positions: usize) -> Self {
        let positions = positions.max(1);
        Dataset {
            positions,
            users: users.max(1),
            first_uid: 900_000_000 + positions as u64 * 1_000_000,
            objects: (0..positions).map(|k| position(k, 1)).collect(),
            variants: (0..positions).map(|k| position(k, 2)).collect(),
        }
    }

    pub fn user_id(&self, user: usize) -> String {
        (self.first_uid + user as u64).to_string()
    }

    /// The legacy value every user holds: the objects as one JSON array.
    pub fn legacy_value(&self) -> String {
        let parts: Vec<&str> = self.objects.iter().map(|o| o.json()).collect();
        format!("[{}]", parts.join(","))
    }

    /// Writes every user in both layouts, pipelined.
    pub async fn seed(&self, conn: &RedisConn) -> redis::RedisResult<()> {
        let legacy_value = self.legacy_value();
        let mut pipe = redis::pipe();
        let mut queued = 0;
        for user in 0..self.users {
            let keys = LegacyPositionsKey::new(EXCHANGE, &self.user_id(user));
            let legacy_key = keys.key();
            pipe.set(&legacy_key, &legacy_value).ignore();
            let index = pipe.cmd("SADD").arg(keys.index_key());
            for o in &self.objects {
                index.arg(o.position().index_member());
            }
            pipe.ignore();
            for o in &self.objects {
                let hset = pipe
                    .cmd("HSET")
                    .arg(keys.position_key(&o.position().index_member()));
                for (f, v) in o.hash_fields() {
                    hset.arg(f).arg(v);
                }
                hset.arg(META_MIGRATED_AT)
                    .arg("2026-01-01T00:00:00Z")
                    .arg(META_MIGRATED_FROM)
                    .arg(&legacy_key)
                    .ignore();
            }
            queued += 2 + self.positions;
            if queued >= SEED_BATCH {
                pipe.query_async::<()>(&mut conn.clone()).await?;
                pipe = redis::pipe();
                queued = 0;
            }
        }
        if queued > 0 {
            pipe.query_async::<()>(&mut conn.clone()).await?;
        }
        Ok(())
    }
}

/// Slot `k`'s position, OKX-shaped (about 330 bytes of JSON); `version`
/// changes its size and times only. Distinct symbols, sides alternating.
fn position(k: usize, version: u32) -> PositionObject {
    let side = if k.is_multiple_of(2) {
        Side::Long
    } else {
        Side::Short
    };
    let pos = 10 * version as usize + k;
    let json = format!(
        concat!(
            r#"{{"instId":"S{k:03}-USDT-SWAP","instType":"SWAP","mgnMode":"cross","posSide":"{side}","#,
            r#""pos":"{pos}","availPos":"{pos}","avgPx":"{px}.5","markPx":"{px}.7","upl":"0.{k}","#,
            r#""uplRatio":"0.0012","lever":"10","liqPx":"{liq}.1","margin":"{margin}.25","#,
            r#""notionalUsd":"{notional}.5","ccy":"USDT","posId":"6{k:017}","#,
            r#""cTime":"1700000000000","uTime":"17000000{version:05}"}}"#
        ),
        k = k,
        side = side.as_str(),
        pos = pos,
        px = 100 + k,
        liq = 50 + k,
        margin = 10 + k,
        notional = 1000 + k,
        version = version,
    );
    PositionObject::parse(&json).expect("benchmark positions are valid objects")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_distinct_positions_on_alternating_sides() {
        let d = Dataset::new(3, 4);
        let members: Vec<String> = d
            .objects
            .iter()
            .map(|o| o.position().index_member())
            .collect();
        assert_eq!(
            members,
            [
                "S000-USDT-SWAP:long",
                "S001-USDT-SWAP:short",
                "S002-USDT-SWAP:long",
                "S003-USDT-SWAP:short"
            ]
        );
        // A variant is the same position with other values: an upsert of
        // it replaces, never adds.
        for (o, v) in d.objects.iter().zip(&d.variants) {
            assert_eq!(o.position().index_member(), v.position().index_member());
            assert_ne!(o.json(), v.json());
        }
    }

    #[test]
    fn datasets_of_different_sizes_never_share_a_user() {
        let small = Dataset::new(1_000_000, 1);
        let big = Dataset::new(10, 5);
        assert!(small.user_id(small.users - 1) < big.user_id(0));
        assert_eq!(
            Dataset::new(2, 3).legacy_value().matches("instId").count(),
            3
        );
    }
}
