//! The Phase 1 store for a connection: [`StandaloneOrderPlaced`] on one
//! server, [`ClusterOrderPlaced`] on a Redis Cluster, chosen once here so
//! every command and the gate get the right one from the same call.

use crate::connection::RedisConn;
use crate::error::Result;

use super::cluster::ClusterOrderPlaced;
use super::standalone::StandaloneOrderPlaced;
use super::{KeyRollback, KeyWrite, OrderPlacedStore, WriteOutcome};
use crate::order_placed::plan::KeyRead;

#[derive(Clone)]
pub enum AnyOrderPlaced {
    Standalone(StandaloneOrderPlaced),
    Cluster(ClusterOrderPlaced),
}

impl AnyOrderPlaced {
    /// The store `conn` needs (by [`RedisConn::is_cluster`]).
    pub async fn open(conn: RedisConn) -> Result<Self> {
        Ok(if conn.is_cluster() {
            AnyOrderPlaced::Cluster(ClusterOrderPlaced::new(conn))
        } else {
            AnyOrderPlaced::Standalone(StandaloneOrderPlaced::open(conn).await?)
        })
    }

    pub fn connection(&self) -> RedisConn {
        match self {
            AnyOrderPlaced::Standalone(s) => s.connection(),
            AnyOrderPlaced::Cluster(s) => s.connection(),
        }
    }
}

/// Forwards one trait method to whichever store this is.
macro_rules! either {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyOrderPlaced::Standalone($s) => $call.await,
            AnyOrderPlaced::Cluster($s) => $call.await,
        }
    };
}

impl OrderPlacedStore for AnyOrderPlaced {
    fn journal_conn(&self) -> &RedisConn {
        match self {
            AnyOrderPlaced::Standalone(s) => s.journal_conn(),
            AnyOrderPlaced::Cluster(s) => s.journal_conn(),
        }
    }

    async fn rollback_keys(&self, journal_key: &str, keys: &[KeyRollback]) -> Result<Vec<String>> {
        either!(self, s => s.rollback_keys(journal_key, keys))
    }

    async fn scan(&self, cursor: u64, pattern: &str, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        either!(self, s => s.scan(cursor, pattern, count))
    }

    async fn read_keys(&self, keys: &[String]) -> Result<Vec<KeyRead>> {
        either!(self, s => s.read_keys(keys))
    }

    async fn apply(&self, outcomes_key: &str, writes: &[KeyWrite]) -> Result<Vec<WriteOutcome>> {
        either!(self, s => s.apply(outcomes_key, writes))
    }
}
