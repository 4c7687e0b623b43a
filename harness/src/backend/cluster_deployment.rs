//! One disposable server or one disposable cluster, behind one type: what
//! the gate and the scenarios start when `--cluster` / `server.cluster`
//! asks for either.

use std::fmt;

use super::{BackendError, BackendKind, Primaries, RedisCluster, RedisServer};

/// A disposable standalone server or 3-primary cluster; dropping it
/// removes everything it started.
pub enum Deployment {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deployment::Server(s) => s.fmt(f),
            Deployment::Cluster(c) => c.fmt(f),
        }
    }
}

impl Deployment {
    /// A cluster when `cluster`, else one server; `extra_args` go to every
    /// redis-server.
    pub async fn start(
        kind: BackendKind,
        cluster: bool,
        extra_args: &[&str],
    ) -> Result<Deployment, BackendError> {
        Ok(if cluster {
            Deployment::Cluster(RedisCluster::start_with(kind, extra_args).await?)
        } else {
            Deployment::Server(RedisServer::start_with(kind, extra_args).await?)
        })
    }

    /// What `--redis` takes: `redis://127.0.0.1:PORT` or
    /// `redis+cluster://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match self {
            Deployment::Server(s) => s.url(),
            Deployment::Cluster(c) => c.url(),
        }
    }

    /// The resolved kind: `Docker` or `Process`.
    pub fn kind(&self) -> BackendKind {
        match self {
            Deployment::Server(s) => s.kind(),
            Deployment::Cluster(c) => c.kind(),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Deployment::Cluster(_))
    }

    /// The standalone server, for faults that strike one server.
    pub fn server(&self) -> Option<&RedisServer> {
        match self {
            Deployment::Server(s) => Some(s),
            Deployment::Cluster(_) => None,
        }
    }

    pub fn server_mut(&mut self) -> Option<&mut RedisServer> {
        match self {
            Deployment::Server(s) => Some(s),
            Deployment::Cluster(_) => None,
        }
    }

    /// Every redis-server of it (one, or each primary).
    pub fn nodes(&self) -> &[RedisServer] {
        match self {
            Deployment::Server(s) => std::slice::from_ref(s),
            Deployment::Cluster(c) => c.nodes(),
        }
    }

    /// A connection per primary with slot routing (see [`Primaries`]).
    pub async fn primaries(&self) -> Result<Primaries, BackendError> {
        Primaries::connect(&self.url()).await
    }

    /// `"process"`, `"docker cluster"`, ...: for reports and logs.
    pub fn describe(&self) -> String {
        match self {
            Deployment::Server(s) => s.kind().to_string(),
            Deployment::Cluster(c) => format!("{} cluster", c.kind()),
        }
    }
}
