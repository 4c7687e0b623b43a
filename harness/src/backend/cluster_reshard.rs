//! Moving hash slots between the primaries of a running [`RedisCluster`],
//! the way `redis-cli --cluster reshard` does it, so tests can reshard
//! under a running command:
//! 1. `CLUSTER SETSLOT s IMPORTING <source>` on the target, then
//!    `MIGRATING <target>` on the source. From here the source answers ASK
//!    for the slot's keys it no longer (or never) holds.
//! 2. `MIGRATE` the slot's keys from the source to the target, in batches.
//! 3. `CLUSTER SETSLOT s NODE <target>` on the target, the source, then the
//!    third node: from here everyone answers MOVED to the target.
//!
//! A test can stop between the steps ([`RedisCluster::begin_slot_move`],
//! [`RedisCluster::move_keys`], [`RedisCluster::finish_slot_move`]) to meet
//! ASK deterministically, or move many slots at once
//! ([`RedisCluster::move_slots`]).

use redis::aio::MultiplexedConnection;

use super::cluster::parse_cluster_slots;
use super::{BackendError, RedisCluster};

/// How long MIGRATE may take per batch (ms).
const MIGRATE_TIMEOUT_MS: u32 = 5000;
/// Keys moved per MIGRATE.
const MIGRATE_BATCH: usize = 100;

/// A slot between steps 1 and 3 of the module doc.
#[derive(Debug, Clone)]
pub struct SlotMove {
    pub slot: u16,
    /// Indexes into [`RedisCluster::nodes`].
    pub from: usize,
    pub to: usize,
    from_id: String,
    to_id: String,
}

fn reshard_error(what: String, e: impl std::fmt::Display) -> BackendError {
    BackendError::ClusterForm {
        reason: format!("resharding: {what}: {e}"),
    }
}

impl RedisCluster {
    async fn admin(&self, i: usize) -> Result<MultiplexedConnection, BackendError> {
        self.nodes()[i].connection().await
    }

    /// Node `i`'s cluster node id (CLUSTER MYID).
    pub async fn node_id(&self, i: usize) -> Result<String, BackendError> {
        let mut con = self.admin(i).await?;
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut con)
            .await
            .map_err(|e| reshard_error(format!("CLUSTER MYID on node {i}"), e))
    }

    /// The slots node `i` serves, as node 0 sees the slot map.
    pub async fn slots_of(&self, i: usize) -> Result<Vec<u16>, BackendError> {
        let mut con = self.admin(0).await?;
        let reply: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut con)
            .await
            .map_err(|e| reshard_error("CLUSTER SLOTS".into(), e))?;
        let map =
            parse_cluster_slots(&reply).map_err(|e| reshard_error("CLUSTER SLOTS".into(), e))?;
        let port = self.nodes()[i].port();
        Ok(map
            .into_iter()
            .filter(|r| r.3 == port)
            .flat_map(|(first, last, _, _)| first..=last)
            .collect())
    }

    async fn setslot(&self, node: usize, args: &[&str]) -> Result<(), BackendError> {
        let mut con = self.admin(node).await?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(args)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| {
                reshard_error(
                    format!("CLUSTER SETSLOT {} on node {node}", args.join(" ")),
                    e,
                )
            })
    }

    /// Step 1: `slot` (served by node `from`) opens for moving to node `to`.
    pub async fn begin_slot_move(
        &self,
        slot: u16,
        from: usize,
        to: usize,
    ) -> Result<SlotMove, BackendError> {
        let mv = SlotMove {
            slot,
            from,
            to,
            from_id: self.node_id(from).await?,
            to_id: self.node_id(to).await?,
        };
        let s = slot.to_string();
        // Target first: a client sent there by ASK must find it importing.
        self.setslot(to, &[&s, "IMPORTING", &mv.from_id]).await?;
        self.setslot(from, &[&s, "MIGRATING", &mv.to_id]).await?;
        Ok(mv)
    }

    /// Step 2, partly: moves at most `at_most` of the slot's keys still on
    /// the source; returns how many moved.
    pub async fn move_keys(&self, mv: &SlotMove, at_most: usize) -> Result<usize, BackendError> {
        let mut source = self.admin(mv.from).await?;
        let mut moved = 0;
        while moved < at_most {
            let batch = MIGRATE_BATCH.min(at_most - moved);
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(mv.slot)
                .arg(batch)
                .query_async(&mut source)
                .await
                .map_err(|e| reshard_error(format!("CLUSTER GETKEYSINSLOT {}", mv.slot), e))?;
            if keys.is_empty() {
                break;
            }
            self.migrate_keys(mv, &keys).await?;
            moved += keys.len();
        }
        Ok(moved)
    }

    /// Step 2 for exactly these keys of the slot (each must be on the source).
    pub async fn migrate_keys<K: redis::ToRedisArgs>(
        &self,
        mv: &SlotMove,
        keys: &[K],
    ) -> Result<(), BackendError> {
        let mut source = self.admin(mv.from).await?;
        let (host, port) = self.peer(mv.to).clone();
        redis::cmd("MIGRATE")
            .arg(&host)
            .arg(port)
            .arg("")
            .arg(0)
            .arg(MIGRATE_TIMEOUT_MS)
            .arg("KEYS")
            .arg(keys)
            .query_async::<()>(&mut source)
            .await
            .map_err(|e| reshard_error(format!("MIGRATE of slot {}", mv.slot), e))
    }

    /// Steps 2 and 3: the slot's remaining keys move, then every node is
    /// told the target serves it.
    pub async fn finish_slot_move(&self, mv: &SlotMove) -> Result<(), BackendError> {
        self.move_keys(mv, usize::MAX).await?;
        let s = mv.slot.to_string();
        let others = (0..self.nodes().len()).filter(|&i| i != mv.from && i != mv.to);
        for node in [mv.to, mv.from].into_iter().chain(others) {
            self.setslot(node, &[&s, "NODE", &mv.to_id]).await?;
        }
        Ok(())
    }

    /// Moves the last `n` slots node `from` serves to node `to`, one after
    /// the other (each fully: importing, keys, handed over); returns them.
    pub async fn move_slots(
        &self,
        from: usize,
        to: usize,
        n: usize,
    ) -> Result<Vec<u16>, BackendError> {
        let slots = self.slots_of(from).await?;
        let moving = slots[slots.len().saturating_sub(n)..].to_vec();
        for &slot in &moving {
            let mv = self.begin_slot_move(slot, from, to).await?;
            self.finish_slot_move(&mv).await?;
        }
        Ok(moving)
    }
}
