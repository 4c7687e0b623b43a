//! The one connection type the code base talks through: one server, or a
//! Redis Cluster reached through any of its nodes.
//!
//! `redis+cluster://host:port` (`rediss+cluster://` with TLS; several seeds
//! as `host:port,host:port`) asks for cluster mode. A plain `redis://` URL
//! that names a node of a cluster (`INFO cluster` says `cluster_enabled:1`)
//! is switched to cluster mode too, with a log line: a standalone client on
//! a cluster node would only collect MOVED errors.
//!
//! On a cluster two things a single server does for free are done here, so
//! callers stay the same:
//! - SCAN walks one primary at a time, in a stable order (by the first slot
//!   each owns). The resumable cursor carries the primary's index in its top
//!   byte and that node's own cursor in the other 56 bits (`encode_cursor`).
//!   A `SCAN` sent through [`RedisConn`] as a plain command is served this
//!   way, so every SCAN loop in the code base covers every primary. The
//!   cursor also carries a fingerprint of the slot map: a SCAN during which
//!   slots moved fails (`EngineError::Resharded`, see
//!   [`RedisConn::scan_raw`]) instead of ending with keys unseen.
//! - A non-transactional pipeline is split by hash slot and its replies put
//!   back in order: a cluster node refuses a pipeline whose keys live on
//!   other nodes, and redis-rs sends a whole pipeline to one node. A slot's
//!   part of several commands that writes goes as MULTI/EXEC, and one
//!   command at a time when the node refuses it because the slot is moving
//!   (see `pipeline.rs`): redis-rs follows ASK for a whole pipeline with
//!   one ASKING, which covers only its first command.
//!
//! Commands redis-rs routes to every primary (DBSIZE summed, SCRIPT LOAD,
//! FLUSHALL, multi-key DEL split per slot) need nothing from us; MOVED and
//! ASK are followed by the cluster client.

use std::time::Duration;

use futures_util::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, RedisFuture, Value};

use crate::error::{EngineError, Result, RESHARDED_CODE};

/// Large pipelines legitimately take seconds; redis-rs's default (500 ms)
/// would abort a healthy run.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Overrides [`RESPONSE_TIMEOUT`] (ms): how long a frozen server (paused,
/// partitioned) may leave a command unanswered before the run stops with
/// exit 4 and its journal intact. Fault scenarios set it low.
pub const RESPONSE_TIMEOUT_ENV: &str = "KEYSHIFT_RESPONSE_TIMEOUT_MS";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection set-up waits on the server too (TCP may be accepted by a
/// proxy or the kernel while the server itself is frozen, and the
/// handshake's replies never come): it gives up within the response
/// timeout when that is the shorter, so no wait outlasts the timeout an
/// operator or a fault scenario set.
fn connect_timeout() -> Duration {
    CONNECT_TIMEOUT.min(response_timeout())
}

/// How long a command may go unanswered ([`RESPONSE_TIMEOUT_ENV`]): for
/// sockets opened beside the client's too.
pub fn response_timeout() -> Duration {
    std::env::var(RESPONSE_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms >= 100)
        .map(Duration::from_millis)
        .unwrap_or(RESPONSE_TIMEOUT)
}

/// A connection to one server or to a whole cluster. Cheap to clone: both
/// kinds multiplex one set of sockets.
#[derive(Clone)]
pub enum RedisConn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl From<MultiplexedConnection> for RedisConn {
    fn from(conn: MultiplexedConnection) -> Self {
        RedisConn::Standalone(conn)
    }
}

/// What a URL asks for, before any connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlMode {
    /// A `redis://` / `rediss://` URL (it may still name a cluster node).
    Single(String),
    /// `redis+cluster://`: the seed nodes, each as a plain node URL.
    Cluster(Vec<String>),
}

/// Reads the scheme: `redis+cluster://[user:pass@]h:p[,h:p...][/db]` gives
/// one `redis://[user:pass@]h:p[/db]` per seed (`rediss+` likewise).
pub fn url_mode(url: &str) -> Result<UrlMode> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(UrlMode::Single(url.to_owned()));
    };
    let node_scheme = match scheme.to_ascii_lowercase().as_str() {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return Ok(UrlMode::Single(url.to_owned())),
    };
    let (userinfo, hosts_and_path) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let split_at = hosts_and_path
        .find(['/', '?', '#'])
        .unwrap_or(hosts_and_path.len());
    let (hosts, tail) = hosts_and_path.split_at(split_at);
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| match userinfo {
            Some(u) => format!("{node_scheme}://{u}@{host}{tail}"),
            None => format!("{node_scheme}://{host}{tail}"),
        })
        .collect();
    if seeds.is_empty() {
        return Err(EngineError::BadUrl(format!(
            "{} names no node: write {scheme}://HOST:PORT (any node of the cluster)",
            crate::redact_url(url)
        )));
    }
    Ok(UrlMode::Cluster(seeds))
}

/// What `url` names (address, credentials, database), parsed only: no
/// connection, no TLS files read.
pub fn connection_info(url: &str) -> Result<ConnectionInfo> {
    use redis::IntoConnectionInfo;
    Ok(url
        .into_connection_info()
        .map_err(|e| bad_url(url, e))?
        // Without TCP_NODELAY a transaction's small round trips wait on
        // delayed ACKs.
        .set_tcp_settings(nodelay()))
}

/// Why `url` did not parse, without echoing it. A user name or password
/// holding `/`, `?`, `#` or `@` unescaped ends the URL's authority early,
/// which redis-rs reports as something unrelated ("Invalid database
/// number"), so that case gets its own advice.
fn bad_url(url: &str, error: redis::RedisError) -> EngineError {
    match unescaped_in_userinfo(url) {
        Some(c) => EngineError::BadUrl(format!(
            "its user name or password holds {c:?} unescaped: percent-encode such characters \
             in REDIS_URL / --redis (`/` as %2F, `?` as %3F, `#` as %23, `@` as %40, `:` in a \
             user name as %3A), e.g. redis://user:p%40ss@host:6379"
        )),
        None => EngineError::BadUrl(error.to_string()),
    }
}

/// The first URL delimiter inside the userinfo (everything up to the last
/// `@`), where it must have been percent-encoded.
fn unescaped_in_userinfo(url: &str) -> Option<char> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (userinfo, _) = rest.rsplit_once('@')?;
    userinfo
        .chars()
        .find(|c| matches!(c, '/' | '?' | '#' | '@'))
}

fn nodelay() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// The `redis::Client` for one server: every single-node connection is
/// built here (TLS settings come from `crate::connection::tls`).
pub fn client_for(url: &str) -> Result<redis::Client> {
    crate::connection::tls::client(connection_info(url)?)
}

/// The cluster client for `seeds` (plain node URLs), with keyshift's
/// timeouts and, for `rediss://` seeds, the TLS files of `crate::connection::tls`.
pub fn cluster_client_for(seeds: &[String]) -> Result<redis::cluster::ClusterClient> {
    let infos = seeds
        .iter()
        .map(|s| connection_info(s))
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = infos.first() else {
        return Err(EngineError::BadUrl(
            "a cluster URL names no node: write redis+cluster://HOST:PORT".into(),
        ));
    };
    let tls = matches!(first.addr(), ConnectionAddr::TcpTls { .. });
    if infos
        .iter()
        .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { insecure: true, .. }))
    {
        return Err(crate::connection::tls::insecure_refused());
    }
    let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
        .connection_timeout(connect_timeout())
        .response_timeout(response_timeout())
        .tcp_settings(nodelay());
    if tls {
        if let Some(certs) = crate::connection::tls::TlsFiles::from_env().load()? {
            builder = builder.certs(certs);
        }
    }
    builder
        .build()
        .map_err(|e| EngineError::BadUrl(e.to_string()))
}

/// One multiplexed connection to the server `url` names, with keyshift's
/// timeouts; never cluster mode. For connections that must stay on one
/// node (WATCH/MULTI pools, per-node tools).
pub async fn connect_node(url: &str) -> Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(response_timeout()))
        .set_connection_timeout(Some(connect_timeout()));
    client_for(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|source| EngineError::Unreachable {
            url: crate::redact_url(url),
            source,
        })
}

/// Connects to what `url` names: a cluster for `redis+cluster://` or when
/// the node says it is cluster-enabled, one server otherwise.
pub async fn connect(url: &str) -> Result<RedisConn> {
    match url_mode(url)? {
        UrlMode::Cluster(seeds) => connect_cluster(url, &seeds).await,
        UrlMode::Single(node_url) => {
            let mut node = connect_node(&node_url).await?;
            if cluster_enabled(&mut node).await {
                tracing::info!(
                    url = %crate::redact_url(url),
                    "the server is a Redis Cluster node (cluster_enabled:1): using cluster mode with it as the seed"
                );
                return connect_cluster(url, &[node_url]).await;
            }
            Ok(RedisConn::Standalone(node))
        }
    }
}

async fn connect_cluster(url: &str, seeds: &[String]) -> Result<RedisConn> {
    let conn = cluster_client_for(seeds)?
        .get_async_connection()
        .await
        .map_err(|source| EngineError::Unreachable {
            url: crate::redact_url(url),
            source,
        })?;
    Ok(RedisConn::Cluster(conn))
}

/// `INFO cluster` says `cluster_enabled:1`. A server that refuses INFO (an
/// ACL without it) is taken as standalone: on a cluster node its keys then
/// answer MOVED, which names the cause.
async fn cluster_enabled(node: &mut MultiplexedConnection) -> bool {
    match redis::cmd("INFO")
        .arg("cluster")
        .query_async::<String>(node)
        .await
    {
        Ok(info) => info_says_cluster(&info),
        Err(e) => {
            tracing::debug!(error = %e, "INFO cluster refused; assuming a standalone server");
            false
        }
    }
}

fn info_says_cluster(info: &str) -> bool {
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// The cluster's primaries by first slot; empty on a single server.
    pub async fn primaries(&self) -> Result<Vec<Primary>> {
        match self {
            RedisConn::Standalone(_) => Ok(Vec::new()),
            RedisConn::Cluster(c) => Ok(Self::slot_map(c)
                .await
                .map_err(EngineError::redis("reading the cluster topology"))?
                .primaries),
        }
    }

    async fn slot_map(c: &ClusterConnection) -> redis::RedisResult<SlotMap> {
        let mut c = c.clone();
        let reply = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        slot_map_from_slots(reply).map_err(|e| client_error(e.to_string()))
    }

    /// One SCAN step: on a cluster, on the primary the cursor names.
    /// `args` follow the cursor (`MATCH p COUNT n TYPE t`).
    ///
    /// A cluster SCAN is complete only if no key changed primary while it
    /// ran: a key moved from a primary not yet scanned to one already
    /// scanned is seen by neither. So every step checks, and fails with
    /// [`RESHARDED_CODE`] (an [`EngineError::Resharded`] for callers)
    /// rather than let a caller finish with keys unseen, when:
    /// - the slot map (CLUSTER SLOTS, its fingerprint kept in the cursor)
    ///   differs from the one the SCAN began under;
    /// - after the step, the scanned node's own CLUSTER NODES shows a slot
    ///   it is migrating or importing (keys move one by one before the
    ///   slot map changes), or a slot map other than the cursor's.
    ///
    /// Every move passes through one of those: one that began after a
    /// primary was scanned and ended before the next step changed the map;
    /// one still open is shown by its source or target when scanned.
    pub async fn scan_raw(&self, cursor: u64, args: &[Vec<u8>]) -> redis::RedisResult<Value> {
        let mut cmd = redis::cmd("SCAN");
        match self {
            RedisConn::Standalone(c) => {
                cmd.arg(cursor).arg(args);
                let mut c = c.clone();
                c.req_packed_command(&cmd).await
            }
            RedisConn::Cluster(c) => {
                let map = Self::slot_map(c).await?;
                let mut at = decode_cursor(cursor);
                if cursor == 0 {
                    at.slot_map = map.fingerprint;
                } else if at.slot_map != map.fingerprint {
                    return Err(resharded(
                        "the slot map changed since the SCAN began".into(),
                    ));
                }
                let Some(primary) = map.primaries.get(at.primary) else {
                    return Err(resharded(format!(
                        "the SCAN cursor names primary {}, but the cluster has {} primaries now",
                        at.primary,
                        map.primaries.len()
                    )));
                };
                let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: primary.host.clone(),
                    port: primary.port,
                });
                cmd.arg(at.node_cursor).arg(args);
                let mut c = c.clone();
                let reply = c.route_command(cmd, node.clone()).await?;
                let nodes: String = redis::from_redis_value(
                    c.route_command(redis::cmd("CLUSTER").arg("NODES").clone(), node)
                        .await?,
                )?;
                let view = node_view(&nodes).map_err(|e| client_error(e.to_string()))?;
                let at_node = format!("{}:{}", primary.host, primary.port);
                if let Some(first) = view.moving.first() {
                    return Err(resharded(format!(
                        "{at_node} has {first}{}",
                        match view.moving.len() {
                            1 => String::new(),
                            n => format!(" (and {} more slot moves)", n - 1),
                        }
                    )));
                }
                if view.fingerprint != at.slot_map {
                    return Err(resharded(format!(
                        "{at_node} serves another slot map than the one the SCAN began under"
                    )));
                }
                let (node_next, keys): (u64, Value) = redis::from_redis_value(reply)?;
                let next = next_cursor(at, node_next, map.primaries.len())
                    .map_err(|e| client_error(e.to_string()))?;
                Ok(Value::Array(vec![
                    Value::BulkString(next.to_string().into_bytes()),
                    keys,
                ]))
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => match is_scan(cmd) {
                Some((cursor, args)) => {
                    let this = RedisConn::Cluster(c.clone());
                    async move { this.scan_raw(cursor, &args).await }.boxed()
                }
                None => c.req_packed_command(cmd),
            },
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => {
                // A transaction must stay whole: its keys share one slot or
                // the server refuses it (CROSSSLOT), as it should.
                if cmd.is_transaction() {
                    return c.req_packed_commands(cmd, offset, count);
                }
                let c = c.clone();
                async move { pipeline::cluster_pipeline(&c, cmd, offset, count).await }.boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

mod cluster;
mod pipeline;
pub mod scan;
pub mod tls;

pub use cluster::{
    decode_cursor, encode_cursor, next_cursor, ClusterCursor, Primary, MAX_PRIMARIES,
};
use cluster::{is_scan, node_view, slot_map_from_slots, SlotMap};

fn resharded(detail: String) -> redis::RedisError {
    redis::make_extension_error(RESHARDED_CODE.into(), Some(detail))
}

fn client_error(detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "cluster SCAN", detail))
}

#[cfg(test)]
mod tests;
