//! Direct per-primary access for harness code (seeding, digests, checks):
//! one plain connection per primary and the slot each key hashes to, so the
//! harness reads and writes a cluster without going through the engine's
//! client, and a standalone server is the one-primary case.
//!
//! Commands sent through [`Primaries`] are single-key or grouped by owning
//! primary; nothing crosses slots in one command, so no CROSSSLOT. The slot
//! map is read once at connect: after a test moves slots
//! (`cluster_reshard`), connect again.

use std::fmt;
use std::time::Duration;

use keyshift_engine::connection::RedisConn;
use redis::aio::{ConnectionLike, MultiplexedConnection};

use super::cluster::{parse_cluster_slots, SLOTS};
use super::{connect, BackendError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster
/// hashes keys with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The part of a key that is hashed: the text inside the first `{...}` when
/// it is non-empty, else the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The hash slot of `key` (0..16384), as CLUSTER KEYSLOT computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hashed_part(key)) % SLOTS
}

/// True for `redis+cluster://` and `rediss+cluster://` URLs.
pub fn is_cluster_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("redis+cluster://") || lower.starts_with("rediss+cluster://")
}

/// `url` with the cluster marker dropped from its scheme and its host:port
/// replaced (user, password, path and query kept).
fn node_url(url: &str, host: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let scheme = scheme
        .strip_suffix("+cluster")
        .or_else(|| scheme.strip_suffix("+CLUSTER"))
        .unwrap_or(scheme);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("{scheme}://{userinfo}{host}:{port}{tail}")
}

/// The seed addresses of a cluster URL (`host:port[,host:port...]`),
/// each as a plain node URL.
fn seed_urls(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hosts
        .split(',')
        .filter_map(|hp| {
            let (host, port) = hp.trim().rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(node_url(url, host, port.parse().ok()?))
        })
        .collect()
}

/// One primary: the slots it serves and a connection to it.
#[derive(Clone)]
pub struct Primary {
    url: String,
    first: u16,
    last: u16,
    con: MultiplexedConnection,
}

impl Primary {
    /// `redis://host:port` of this primary (credentials as given).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// First and last slot served (0 and 16383 for a standalone server).
    pub fn slots(&self) -> (u16, u16) {
        (self.first, self.last)
    }

    /// A handle on this primary's multiplexed connection.
    pub fn connection(&self) -> MultiplexedConnection {
        self.con.clone()
    }
}

/// Every primary of a deployment with a connection to each: one for a
/// standalone server, all of them for a cluster.
#[derive(Clone)]
pub struct Primaries {
    cluster: bool,
    /// Distinct primaries, in the order of their first slot range.
    nodes: Vec<Primary>,
    /// (first, last, index into `nodes`), sorted by first slot.
    ranges: Vec<(u16, u16, usize)>,
}

impl fmt::Debug for Primaries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|p| keyshift_engine::redact_url(&p.url))
            .collect();
        f.debug_struct("Primaries")
            .field("cluster", &self.cluster)
            .field("nodes", &urls)
            .finish()
    }
}

impl Primaries {
    /// A standalone server (`redis://`, `rediss://`) or every primary of the
    /// cluster behind a `redis+cluster://` URL (read from CLUSTER SLOTS of
    /// the first seed address that answers).
    pub async fn connect(url: &str) -> Result<Primaries, BackendError> {
        if !is_cluster_url(url) {
            let con = connect(url, Some(CONNECT_TIMEOUT)).await?;
            return Ok(Self::standalone(url, con));
        }
        let seeds = seed_urls(url);
        let mut last_error = format!("no host:port in {}", keyshift_engine::redact_url(url));
        for seed in &seeds {
            match Self::from_seed(url, seed).await {
                Ok(primaries) => return Ok(primaries),
                Err(e) => last_error = e,
            }
        }
        Err(BackendError::ClusterForm {
            reason: format!("reading the slot map: {last_error}"),
        })
    }

    async fn from_seed(url: &str, seed: &str) -> Result<Primaries, String> {
        let redacted = keyshift_engine::redact_url(seed);
        let mut con = connect(seed, Some(CONNECT_TIMEOUT))
            .await
            .map_err(|e| keyshift_engine::redact_url(&e.to_string()))?;
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut con)
            .await
            .map_err(|e| format!("{redacted}: CLUSTER SLOTS: {e}"))?;
        let map = parse_cluster_slots(&slots).map_err(|e| format!("{redacted}: {e}"))?;
        let covered: u32 = map
            .iter()
            .map(|r| u32::from(r.1) - u32::from(r.0) + 1)
            .sum();
        if covered != u32::from(SLOTS) {
            return Err(format!(
                "{redacted}: CLUSTER SLOTS covers {covered} of {SLOTS} slots"
            ));
        }
        let mut nodes: Vec<Primary> = Vec::new();
        let mut ranges = Vec::with_capacity(map.len());
        for (first, last, host, port) in map {
            let node = node_url(url, &host, port);
            // A primary serving several ranges keeps one connection.
            let index = match nodes.iter().position(|p| p.url == node) {
                Some(i) => i,
                None => {
                    let con = connect(&node, Some(CONNECT_TIMEOUT))
                        .await
                        .map_err(|e| keyshift_engine::redact_url(&e.to_string()))?;
                    nodes.push(Primary {
                        url: node,
                        first,
                        last,
                        con,
                    });
                    nodes.len() - 1
                }
            };
            ranges.push((first, last, index));
        }
        Ok(Primaries {
            cluster: true,
            nodes,
            ranges,
        })
    }

    /// A standalone server already connected.
    pub fn standalone(url: &str, con: MultiplexedConnection) -> Primaries {
        Primaries {
            cluster: false,
            nodes: vec![Primary {
                url: url.to_string(),
                first: 0,
                last: SLOTS - 1,
                con,
            }],
            ranges: vec![(0, SLOTS - 1, 0)],
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The distinct primaries.
    pub fn primaries(&self) -> &[Primary] {
        &self.nodes
    }

    /// The index (into [`Primaries::primaries`]) of the primary owning `key`.
    pub fn index_for_key(&self, key: &[u8]) -> usize {
        if self.nodes.len() == 1 {
            return 0;
        }
        owner(&self.ranges, key_slot(key))
    }

    /// The connection to the primary owning `key`.
    pub fn for_key(&self, key: &[u8]) -> MultiplexedConnection {
        self.nodes[self.index_for_key(key)].connection()
    }

    /// Keys on every primary together (DBSIZE summed).
    pub async fn dbsize(&self) -> redis::RedisResult<i64> {
        let mut total = 0;
        for mut con in Nodes::connections(self) {
            let n: i64 = redis::cmd("DBSIZE").query_async(&mut con).await?;
            total += n;
        }
        Ok(total)
    }
}

/// The node index of the range holding `slot` (ranges sorted by first slot).
fn owner(ranges: &[(u16, u16, usize)], slot: u16) -> usize {
    let at = ranges.partition_point(|r| r.0 <= slot);
    at.checked_sub(1).map_or(0, |i| ranges[i].2)
}

/// What harness code reads and writes directly: one connection per
/// primary, and which of them owns a key. A standalone server's connection
/// is its one primary; so is the engine's [`RedisConn`], which serves SCAN
/// from every primary and splits pipelines by slot itself.
pub trait Nodes {
    type Conn: ConnectionLike + Clone + Send + Sync + 'static;

    fn connections(&self) -> Vec<Self::Conn>;

    /// The index into [`Nodes::connections`] of the primary owning `key`.
    fn index_for_key(&self, _key: &[u8]) -> usize {
        0
    }
}

impl Nodes for Primaries {
    type Conn = MultiplexedConnection;

    fn connections(&self) -> Vec<MultiplexedConnection> {
        self.nodes.iter().map(Primary::connection).collect()
    }

    fn index_for_key(&self, key: &[u8]) -> usize {
        Primaries::index_for_key(self, key)
    }
}

impl Nodes for MultiplexedConnection {
    type Conn = MultiplexedConnection;

    fn connections(&self) -> Vec<MultiplexedConnection> {
        vec![self.clone()]
    }
}

impl Nodes for RedisConn {
    type Conn = RedisConn;

    fn connections(&self) -> Vec<RedisConn> {
        vec![self.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Check values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(hashed_part(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hashed_part(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hashed_part(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hashed_part(b"{"), b"{");
    }

    #[test]
    fn keys_route_by_slot_range() {
        let ranges = [(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 2)];
        let owners: Vec<usize> = [0, 5460, 5461, 10922, 10923, 16383]
            .iter()
            .map(|&slot| owner(&ranges, slot))
            .collect();
        assert_eq!(owners, [0, 0, 1, 1, 2, 2]);
        // A primary with two ranges.
        assert_eq!(owner(&[(0, 99, 1), (100, 16383, 0)], 50), 1);
    }

    #[test]
    fn cluster_urls_are_recognised() {
        assert!(is_cluster_url("redis+cluster://127.0.0.1:7000"));
        assert!(is_cluster_url("rediss+cluster://u:p@h:1"));
        assert!(!is_cluster_url("redis://127.0.0.1:7000"));
    }

    #[test]
    fn node_urls_keep_credentials_and_path() {
        assert_eq!(
            node_url("redis+cluster://127.0.0.1:7000", "127.0.0.1", 7001),
            "redis://127.0.0.1:7001"
        );
        assert_eq!(
            node_url("rediss+cluster://user:pw@seed:7000/0?x=1", "10.0.0.2", 7002),
            "rediss://user:pw@10.0.0.2:7002/0?x=1"
        );
        assert_eq!(
            seed_urls("redis+cluster://u:p@a:1,b:2"),
            vec!["redis://u:p@a:1".to_string(), "redis://u:p@b:2".to_string()]
        );
    }
}
