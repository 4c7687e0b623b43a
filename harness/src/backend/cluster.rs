//! A disposable 3-primary Redis Cluster (no replicas) on either backend.
//!
//! - process: three `redis-server --cluster-enabled yes` children on
//!   loopback; each bus port is picked free and set with `--cluster-port`
//!   (the default port+10000 may be taken or past 65535).
//! - docker: three containers of the local image on a private network made
//!   for this cluster. The nodes gossip over that network by container IP;
//!   clients are told `127.0.0.1` and each node's published port, through
//!   `cluster-announce-hostname` with `cluster-preferred-endpoint-type
//!   hostname` and `cluster-announce-port`: the bus keeps the container
//!   addresses while CLUSTER SLOTS, MOVED and ASK name addresses the host
//!   can reach (also where container IPs are not routable, Docker Desktop).
//!
//! With [`ClusterTls`] (process backend) each node also listens on a TLS
//! port and the cluster bus speaks TLS (`tls-cluster yes`); a client that
//! connects over TLS is told the TLS ports in CLUSTER SLOTS, MOVED and ASK
//! (Redis 7), so a `rediss+cluster://` client never touches a plain port.
//! The plain loopback port stays for the harness's own administration
//! (forming the cluster, seeding, checks), which has no TLS client.
//!
//! The cluster is formed the way `redis-cli --cluster create` does it: each
//! node takes a third of the slots (ADDSLOTSRANGE) and a distinct config
//! epoch, the first MEETs the others, and the start returns once every node
//! says `cluster_state:ok` and serves the same slot map. Dropping the
//! [`RedisCluster`] removes the nodes, then the network.

use std::fmt;
use std::time::{Duration, Instant};

use super::cluster_tls::ClusterTls;
use super::docker_api::Network;
use super::{BackendError, BackendKind, Inner, RedisServer, ServerSetup};

/// Primaries in a harness cluster.
pub const PRIMARIES: usize = 3;
/// Hash slots in every Redis Cluster.
pub const SLOTS: u16 = 16384;
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// The data and bus ports inside a container.
const CONTAINER_PORT: u16 = 6379;
const CONTAINER_BUS_PORT: u16 = 16379;

/// The slot ranges (inclusive) of `n` primaries, as `redis-cli --cluster
/// create` splits them.
pub fn slot_ranges(n: usize) -> Vec<(u16, u16)> {
    let n = n.max(1) as u32;
    let per = f64::from(SLOTS) / f64::from(n);
    (0..n)
        .map(|i| {
            let first = (f64::from(i) * per).round() as u16;
            let last = if i + 1 == n {
                SLOTS - 1
            } else {
                (f64::from(i + 1) * per).round() as u16 - 1
            };
            (first, last)
        })
        .collect()
}

/// One `field:value` line of CLUSTER INFO.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .find(|(name, _)| *name == field)
        .map(|(_, value)| value)
}

/// The slot map of a CLUSTER SLOTS answer: (first, last, host, port) of each
/// range's primary, sorted by first slot.
pub fn parse_cluster_slots(value: &redis::Value) -> Result<Vec<(u16, u16, String, u16)>, String> {
    use redis::Value;
    let Value::Array(ranges) = value else {
        return Err(format!("CLUSTER SLOTS answered {value:?}"));
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).map_err(|_| format!("{i} is not a slot or port")),
        other => Err(format!("expected an integer, got {other:?}")),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {other:?}")),
    };
    let mut map = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err(format!("a CLUSTER SLOTS range is {range:?}"));
        };
        let [first, last, primary, ..] = parts.as_slice() else {
            return Err(format!("a CLUSTER SLOTS range has {} parts", parts.len()));
        };
        let Value::Array(endpoint) = primary else {
            return Err(format!("a CLUSTER SLOTS endpoint is {primary:?}"));
        };
        let [host, port, ..] = endpoint.as_slice() else {
            return Err("a CLUSTER SLOTS endpoint lacks host or port".into());
        };
        map.push((int(first)?, int(last)?, text(host)?, int(port)?));
    }
    map.sort();
    Ok(map)
}

/// A docker node's address on its cluster's network.
async fn network_ip(node: &RedisServer) -> Result<String, BackendError> {
    match &node.inner {
        Inner::Docker(server) => server.network_ip().await,
        Inner::Process(_) => Ok("127.0.0.1".into()),
    }
}

/// Where one node is met by the others (cluster bus side).
struct BusAddress {
    ip: String,
    port: u16,
    bus_port: u16,
}

/// A disposable 3-primary Redis Cluster; dropping it removes every node
/// (and, on docker, its network).
pub struct RedisCluster {
    kind: BackendKind,
    // Declared before `network`: fields drop in order, and a network with
    // containers on it cannot be removed.
    nodes: Vec<RedisServer>,
    network: Option<Network>,
    /// Each node's TLS port (empty when the cluster has no TLS).
    tls_ports: Vec<u16>,
    /// Each node's data address as the other nodes reach it (MIGRATE's
    /// target when slots move): its TLS port on a TLS cluster, whose nodes
    /// talk to each other over TLS.
    peers: Vec<(String, u16)>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("kind", &self.kind)
            .field("nodes", &self.node_urls())
            .field("network", &self.network.as_ref().map(|n| &n.name))
            .finish()
    }
}

impl RedisCluster {
    /// Start three primaries of this kind and form a cluster of them.
    pub async fn start(kind: BackendKind) -> Result<RedisCluster, BackendError> {
        Self::start_with(kind, &[]).await
    }

    /// Same, with extra redis-server arguments on every node.
    pub async fn start_with(
        kind: BackendKind,
        extra_args: &[&str],
    ) -> Result<RedisCluster, BackendError> {
        let kind = super::resolve_kind(kind).await?;
        let mut cluster = match kind {
            BackendKind::Docker => Self::start_docker(extra_args).await?,
            _ => Self::start_process(extra_args, None).await?,
        };
        cluster.kind = kind;
        Ok(cluster)
    }

    /// A process cluster whose nodes also serve TLS and speak TLS on the
    /// bus (see the module doc); [`RedisCluster::tls_url`] is its
    /// `rediss+cluster://` URL. Docker is refused: its nodes would need
    /// the TLS ports published and announced (`cluster-announce-tls-port`)
    /// as well, which no test needs yet.
    pub async fn start_tls(
        kind: BackendKind,
        extra_args: &[&str],
        tls: &ClusterTls,
    ) -> Result<RedisCluster, BackendError> {
        match super::resolve_kind(kind).await? {
            BackendKind::Docker => Err(BackendError::ClusterForm {
                reason: "a TLS cluster is started on the process backend only".into(),
            }),
            _ => Self::start_process(extra_args, Some(tls)).await,
        }
    }

    async fn start_process(
        extra_args: &[&str],
        tls: Option<&ClusterTls>,
    ) -> Result<RedisCluster, BackendError> {
        let mut cluster = RedisCluster {
            kind: BackendKind::Process,
            nodes: Vec::with_capacity(PRIMARIES),
            network: None,
            tls_ports: Vec::new(),
            peers: Vec::new(),
        };
        let mut bus = Vec::with_capacity(PRIMARIES);
        for _ in 0..PRIMARIES {
            let bus_port = super::process::free_port()?;
            let bus_port_text = bus_port.to_string();
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus_port_text,
            ]
            .map(str::to_owned)
            .to_vec();
            let mut setup = ServerSetup::new();
            let tls_port = match tls {
                Some(tls) => {
                    let port = super::process::free_port()?;
                    args.extend(tls.args(port));
                    setup = tls.setup(setup);
                    Some(port)
                }
                None => None,
            };
            args.extend(extra_args.iter().map(|a| (*a).to_owned()));
            let node = RedisServer::start_setup(BackendKind::Process, &setup.args(&args)).await?;
            bus.push(BusAddress {
                ip: "127.0.0.1".into(),
                port: node.port(),
                bus_port,
            });
            cluster
                .peers
                .push(("127.0.0.1".into(), tls_port.unwrap_or(node.port())));
            cluster.tls_ports.extend(tls_port);
            cluster.nodes.push(node);
        }
        cluster.form(&bus).await?;
        Ok(cluster)
    }

    async fn start_docker(extra_args: &[&str]) -> Result<RedisCluster, BackendError> {
        let network = Network::create().await?;
        let net = network.name.clone();
        // Owned by the cluster from here, so a failure below drops the
        // containers, then the network.
        let mut cluster = RedisCluster {
            kind: BackendKind::Docker,
            nodes: Vec::with_capacity(PRIMARIES),
            network: Some(network),
            tls_ports: Vec::new(),
            peers: Vec::new(),
        };
        for i in 0..PRIMARIES {
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-announce-hostname",
                "127.0.0.1",
                "--cluster-preferred-endpoint-type",
                "hostname",
            ];
            args.extend_from_slice(extra_args);
            let mut setup = ServerSetup::new().args(&args);
            setup.docker_network = Some(net.clone());
            setup.container_name = Some(format!("{net}-{i}"));
            cluster
                .nodes
                .push(RedisServer::start_setup(BackendKind::Docker, &setup).await?);
        }
        let mut bus = Vec::with_capacity(PRIMARIES);
        for node in &cluster.nodes {
            // Clients reach the node at its published port on the host.
            let mut con = node.connection().await?;
            config_set(&mut con, node, "cluster-announce-port", node.port()).await?;
            bus.push(BusAddress {
                ip: network_ip(node).await?,
                port: CONTAINER_PORT,
                bus_port: CONTAINER_BUS_PORT,
            });
        }
        cluster.peers = bus.iter().map(|b| (b.ip.clone(), b.port)).collect();
        cluster.form(&bus).await?;
        Ok(cluster)
    }

    /// Slots, epochs, MEET, then wait until every node agrees.
    async fn form(&self, bus: &[BusAddress]) -> Result<(), BackendError> {
        let ranges = slot_ranges(self.nodes.len());
        for (i, (node, (first, last))) in self.nodes.iter().zip(&ranges).enumerate() {
            let mut con = node.connection().await?;
            cluster_cmd(
                &mut con,
                node,
                &["ADDSLOTSRANGE", &first.to_string(), &last.to_string()],
            )
            .await?;
            // Distinct epochs up front: no collision to resolve before
            // the slot map settles.
            cluster_cmd(&mut con, node, &["SET-CONFIG-EPOCH", &(i + 1).to_string()]).await?;
        }
        let mut first = self.nodes[0].connection().await?;
        for peer in &bus[1..] {
            cluster_cmd(
                &mut first,
                &self.nodes[0],
                &[
                    "MEET",
                    &peer.ip,
                    &peer.port.to_string(),
                    &peer.bus_port.to_string(),
                ],
            )
            .await?;
        }
        self.wait_formed(&ranges).await
    }

    /// Every node: `cluster_state:ok`, all nodes known, and CLUSTER SLOTS
    /// naming each range's node at its host-reachable address.
    async fn wait_formed(&self, ranges: &[(u16, u16)]) -> Result<(), BackendError> {
        let expected: Vec<(u16, u16, String, u16)> = ranges
            .iter()
            .zip(&self.nodes)
            .map(|(&(first, last), node)| (first, last, "127.0.0.1".to_string(), node.port()))
            .collect();
        let start = Instant::now();
        loop {
            let last_seen = match self.check_formed(&expected).await {
                Ok(()) => return Ok(()),
                Err(seen) => seen,
            };
            if start.elapsed() >= FORM_TIMEOUT {
                return Err(BackendError::ClusterForm {
                    reason: format!(
                        "not formed within {FORM_TIMEOUT:?}: {last_seen} (expected slot map {expected:?})"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check_formed(&self, expected: &[(u16, u16, String, u16)]) -> Result<(), String> {
        for node in &self.nodes {
            let url = node.url();
            let mut con = node.connection().await.map_err(|e| e.to_string())?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut con)
                .await
                .map_err(|e| format!("{url}: CLUSTER INFO: {e}"))?;
            let state = info_field(&info, "cluster_state").unwrap_or("?");
            let known = info_field(&info, "cluster_known_nodes").unwrap_or("?");
            if state != "ok" || known != self.nodes.len().to_string() {
                return Err(format!(
                    "{url} says cluster_state:{state}, cluster_known_nodes:{known}"
                ));
            }
            let slots: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut con)
                .await
                .map_err(|e| format!("{url}: CLUSTER SLOTS: {e}"))?;
            let map = parse_cluster_slots(&slots).map_err(|e| format!("{url}: {e}"))?;
            if map != expected {
                return Err(format!("{url} serves the slot map {map:?}"));
            }
        }
        Ok(())
    }

    /// `redis+cluster://127.0.0.1:PORT` of the first node: what `--redis`
    /// takes; the client discovers the others from it.
    pub fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.nodes[0].port())
    }

    /// `rediss+cluster://127.0.0.1:TLS_PORT` of the first node of a cluster
    /// started with [`RedisCluster::start_tls`]; `None` without TLS.
    pub fn tls_url(&self) -> Option<String> {
        let port = self.tls_ports.first()?;
        Some(format!("rediss+cluster://127.0.0.1:{port}"))
    }

    /// Node `i`'s data address as the other nodes reach it.
    pub(super) fn peer(&self, i: usize) -> &(String, u16) {
        &self.peers[i]
    }

    /// `redis://127.0.0.1:PORT` of each primary, in slot order.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The primaries, in slot order (node i serves `slot_ranges(3)[i]`
    /// until a test moves slots).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The resolved kind: `Docker` or `Process`, never `Auto`.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The private docker network of a docker cluster.
    pub fn network_name(&self) -> Option<&str> {
        self.network.as_ref().map(|n| n.name.as_str())
    }

    /// Every primary with its slots, connected (see [`super::Primaries`]).
    pub async fn primaries(&self) -> Result<super::Primaries, BackendError> {
        super::Primaries::connect(&self.url()).await
    }

    /// One plain connection per primary, in slot order: for reading or
    /// writing a node directly (SCAN, checks), never across slots.
    pub async fn node_connections(
        &self,
    ) -> Result<Vec<redis::aio::MultiplexedConnection>, BackendError> {
        let mut cons = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            cons.push(node.connection().await?);
        }
        Ok(cons)
    }
}

async fn cluster_cmd(
    con: &mut redis::aio::MultiplexedConnection,
    node: &RedisServer,
    args: &[&str],
) -> Result<(), BackendError> {
    let () = redis::cmd("CLUSTER")
        .arg(args)
        .query_async(con)
        .await
        .map_err(|e| BackendError::ClusterForm {
            reason: format!("{}: CLUSTER {}: {e}", node.url(), args.join(" ")),
        })?;
    Ok(())
}

async fn config_set(
    con: &mut redis::aio::MultiplexedConnection,
    node: &RedisServer,
    name: &str,
    value: u16,
) -> Result<(), BackendError> {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(con)
        .await
        .map_err(|e| BackendError::ClusterForm {
            reason: format!("{}: CONFIG SET {name} {value}: {e}", node.url()),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn slots_split_like_redis_cli() {
        assert_eq!(
            slot_ranges(3),
            vec![(0, 5460), (5461, 10922), (10923, 16383)]
        );
        assert_eq!(slot_ranges(1), vec![(0, 16383)]);
        let two = slot_ranges(2);
        assert_eq!(two, vec![(0, 8191), (8192, 16383)]);
    }

    #[test]
    fn reads_cluster_info_fields() {
        let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:3\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_known_nodes"), Some("3"));
        assert_eq!(info_field(info, "cluster_size"), None);
    }

    #[test]
    fn parses_and_sorts_a_slot_map() {
        let range = |first: i64, last: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(first),
                Value::Int(last),
                Value::Array(vec![
                    Value::BulkString(host.as_bytes().to_vec()),
                    Value::Int(port),
                    Value::BulkString(b"abc".to_vec()),
                    Value::Array(vec![]),
                ]),
            ])
        };
        let answer = Value::Array(vec![
            range(5461, 10922, "127.0.0.1", 7001),
            range(0, 5460, "127.0.0.1", 7000),
        ]);
        assert_eq!(
            parse_cluster_slots(&answer).unwrap(),
            vec![
                (0, 5460, "127.0.0.1".to_string(), 7000),
                (5461, 10922, "127.0.0.1".to_string(), 7001)
            ]
        );
        assert!(parse_cluster_slots(&Value::Okay).is_err());
        assert!(parse_cluster_slots(&Value::Array(vec![Value::Int(1)])).is_err());
    }
}
