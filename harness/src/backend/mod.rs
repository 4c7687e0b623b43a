//! Disposable Redis servers for the harness (DESIGN §5).
//!
//! - `process`: a `redis-server` child on a free loopback port in a temp dir.
//! - `docker`: a container of a local image (`keyshift/redis:local`), built
//!   from the host's `redis-server` when missing (see `image`).
//! - `auto`: docker when an engine answers, else process. With
//!   `KEYSHIFT_REQUIRE_DOCKER=1` (CI) there is no fallback.
//!
//! Every server stops and is removed when its [`RedisServer`] is dropped;
//! after Ctrl-C or SIGTERM, [`until_interrupted`] lets those drops run and
//! then sweeps whatever container of this process is left.
//! `faults` pauses, crashes, restarts and cuts off a running server.
//!
//! The docker backend goes through testcontainers (containers, the image
//! build) and its bollard client (kill, wait, networks); it starts no
//! `docker` process.
//! It works with engines older than the API version bollard names (Docker
//! 20.10, API 1.41): see `docker_api`.

mod cluster;
mod cluster_deployment;
mod cluster_nodes;
mod cluster_reshard;
mod cluster_tls;
mod docker;
mod docker_api;
mod faults;
mod image;
mod interrupt;
mod process;
mod setup;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub use cluster::{
    slot_ranges as cluster_slot_ranges, RedisCluster, PRIMARIES as CLUSTER_PRIMARIES,
};
pub use cluster_deployment::Deployment;
pub use cluster_nodes::{is_cluster_url, key_slot, Nodes, Primaries, Primary};
pub use cluster_reshard::SlotMove;
pub use cluster_tls::ClusterTls;
pub use docker_api::{docker_engine, remove_leftovers, DockerEngine};
pub use faults::FaultKind;
pub use image::{build_from_host_redis, IMAGE};
pub use interrupt::{until_interrupted, Interrupted};
pub use setup::ServerSetup;

/// Environment variable that forbids `auto` from falling back to the process
/// backend and turns "Docker unavailable" into an error (CI sets it to 1).
pub const REQUIRE_DOCKER_ENV: &str = "KEYSHIFT_REQUIRE_DOCKER";

/// Which disposable Redis to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Docker when an engine answers, else a local process.
    Auto,
    /// A container of the local image (built from the host's redis-server if missing).
    Docker,
    /// A `redis-server` child process.
    Process,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Auto => "auto",
            BackendKind::Docker => "docker",
            BackendKind::Process => "process",
        })
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendKind::Auto),
            "docker" => Ok(BackendKind::Docker),
            "process" => Ok(BackendKind::Process),
            _ => Err(BackendError::UnknownKind(s.to_string())),
        }
    }
}

/// Why a disposable Redis could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unknown backend {0:?}: use auto, docker or process")]
    UnknownKind(String),
    #[error(
        "no redis-server on PATH: install it (apt-get install -y redis-server) or start Docker"
    )]
    RedisServerNotFound,
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis-server on port {port} exited during startup ({status}); log tail:\n{log_tail}")]
    ProcessExited {
        port: u16,
        status: String,
        log_tail: String,
    },
    #[error("Redis at {url} did not answer PING within {waited:?} (last error: {last_error}){}", tail_suffix(.log_tail))]
    NotReady {
        url: String,
        waited: Duration,
        last_error: String,
        log_tail: String,
    },
    #[error("Docker engine not reachable at {host} ({reason}): start it or use --backend process")]
    DockerUnavailable { host: String, reason: String },
    #[error("Docker engine not reachable at {host} ({reason}) and {REQUIRE_DOCKER_ENV}=1 forbids the process fallback: start Docker, or unset {REQUIRE_DOCKER_ENV}")]
    DockerRequired { host: String, reason: String },
    #[error("`ldd {binary}` failed: {reason}; the local image needs a dynamically linked redis-server whose libraries ldd can list")]
    Ldd { binary: String, reason: String },
    #[error("building image {image} failed: {reason}; check the engine can build a FROM scratch image offline, or set KEYSHIFT_REDIS_IMAGE to an image that has redis-server")]
    ImageBuild { image: String, reason: String },
    #[error("starting a container of {image} failed: {reason}")]
    ContainerStart { image: String, reason: String },
    #[error("container {id} never logged \"Ready to accept connections\" within {waited:?}; its logs:\n{logs}")]
    ContainerNotReady {
        id: String,
        waited: Duration,
        logs: String,
    },
    #[error("no Redis backend can start: docker: {docker}; process: {process}. Install redis-server (apt-get install -y redis-server) or start Docker")]
    NoBackend { docker: String, process: String },
    #[error("the disposable Redis cannot load the RDB snapshot {file}: {reason}")]
    RdbNotLoaded { file: String, reason: String },
    #[error("server setup file {name:?} (from {source_path}): {reason}")]
    SetupFile {
        name: String,
        source_path: String,
        reason: String,
    },
    #[error("forming the disposable Redis Cluster failed: {reason}")]
    ClusterForm { reason: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

fn tail_suffix(log_tail: &str) -> String {
    if log_tail.is_empty() {
        String::new()
    } else {
        format!("; log tail:\n{log_tail}")
    }
}

impl BackendError {
    /// The server's own log lines carried by a failed start, if any: what
    /// a caller reads to say why the server would not come up.
    pub fn server_log(&self) -> Option<&str> {
        match self {
            BackendError::ProcessExited { log_tail, .. }
            | BackendError::NotReady { log_tail, .. } => Some(log_tail),
            BackendError::ContainerNotReady { logs, .. } => Some(logs),
            _ => None,
        }
    }

    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            action: action.into(),
            source,
        }
    }
}

/// True when `KEYSHIFT_REQUIRE_DOCKER` is set to something other than
/// empty, `0`, `false` or `no`.
pub fn docker_required() -> bool {
    std::env::var(REQUIRE_DOCKER_ENV).is_ok_and(|v| env_flag(&v))
}

fn env_flag(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}

/// The version of the `redis-server` the process backend runs ("7.0.15"),
/// when one is on PATH.
pub async fn process_redis_version() -> Option<String> {
    process::redis_server_version().await
}

/// True when a Docker engine answers.
pub async fn docker_available() -> bool {
    docker_api::engine_check().await.is_ok()
}

enum Inner {
    // Boxed: it carries its start command for restarts.
    Process(Box<process::ProcessServer>),
    Docker(docker::DockerServer),
}

/// A disposable Redis server; dropping it stops and removes the server.
pub struct RedisServer {
    kind: BackendKind,
    // Its Drop kills the child / removes the container.
    inner: Inner,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("kind", &self.kind)
            .field("url", &self.url())
            .finish()
    }
}

impl RedisServer {
    /// Start a disposable server of this kind and wait until it answers PING.
    pub async fn start(kind: BackendKind) -> Result<RedisServer, BackendError> {
        Self::start_with(kind, &[]).await
    }

    /// Same, with extra redis-server arguments (e.g. `["--maxmemory", "10mb"]`).
    pub async fn start_with(
        kind: BackendKind,
        extra_args: &[&str],
    ) -> Result<RedisServer, BackendError> {
        Self::start_setup(kind, &ServerSetup::new().args(extra_args)).await
    }

    /// Same, with files placed in the server's working dir before it starts
    /// (see [`ServerSetup`]).
    pub async fn start_setup(
        kind: BackendKind,
        setup: &ServerSetup,
    ) -> Result<RedisServer, BackendError> {
        setup.check_files()?;
        match kind {
            BackendKind::Process => Self::start_process(setup).await,
            BackendKind::Docker => {
                if let Err(e) = docker_api::engine_check().await {
                    return Err(required_if_needed(e));
                }
                Self::start_docker(setup).await
            }
            BackendKind::Auto => match docker_api::engine_check().await {
                Ok(()) => Self::start_docker(setup).await,
                Err(e) if docker_required() => Err(required_if_needed(e)),
                Err(docker_err) => {
                    tracing::info!("docker unavailable ({docker_err}); using the process backend");
                    Self::start_process(setup).await.map_err(|process_err| {
                        BackendError::NoBackend {
                            docker: docker_err.to_string(),
                            process: process_err.to_string(),
                        }
                    })
                }
            },
        }
    }

    async fn start_process(setup: &ServerSetup) -> Result<RedisServer, BackendError> {
        let server = process::ProcessServer::start(setup).await?;
        Ok(RedisServer {
            kind: BackendKind::Process,
            inner: Inner::Process(Box::new(server)),
        })
    }

    async fn start_docker(setup: &ServerSetup) -> Result<RedisServer, BackendError> {
        let image = image::ensure_image().await?;
        let server = docker::DockerServer::start(&image, setup).await?;
        Ok(RedisServer {
            kind: BackendKind::Docker,
            inner: Inner::Docker(server),
        })
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        match &self.inner {
            Inner::Process(server) => server.port(),
            Inner::Docker(server) => server.port(),
        }
    }

    /// The resolved kind: `Docker` or `Process`, never `Auto`.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// A new multiplexed connection to this server.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, BackendError> {
        connect(&self.url(), Some(Duration::from_secs(5))).await
    }
}

/// `Docker` or `Process` for `kind`, as [`RedisServer::start`] resolves it
/// (a cluster resolves once for all its nodes).
pub(crate) async fn resolve_kind(kind: BackendKind) -> Result<BackendKind, BackendError> {
    match kind {
        BackendKind::Process => Ok(BackendKind::Process),
        BackendKind::Docker => match docker_api::engine_check().await {
            Ok(()) => Ok(BackendKind::Docker),
            Err(e) => Err(required_if_needed(e)),
        },
        BackendKind::Auto => match docker_api::engine_check().await {
            Ok(()) => Ok(BackendKind::Docker),
            Err(e) if docker_required() => Err(required_if_needed(e)),
            Err(e) => {
                tracing::info!("docker unavailable ({e}); using the process backend");
                Ok(BackendKind::Process)
            }
        },
    }
}

/// With `KEYSHIFT_REQUIRE_DOCKER` set, an unreachable engine says so.
fn required_if_needed(e: BackendError) -> BackendError {
    match e {
        BackendError::DockerUnavailable { host, reason } if docker_required() => {
            BackendError::DockerRequired { host, reason }
        }
        other => other,
    }
}

async fn connect(
    url: &str,
    timeout: Option<Duration>,
) -> Result<redis::aio::MultiplexedConnection, BackendError> {
    let err = |source| BackendError::Connect {
        url: url.to_string(),
        source,
    };
    let client = redis::Client::open(url).map_err(err)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(err)
}

/// One PING; Ok when the answer is PONG.
pub(crate) async fn ping_once(url: &str) -> Result<(), String> {
    let mut con = connect(url, Some(Duration::from_secs(1)))
        .await
        .map_err(|e| e.to_string())?;
    let pong: String = match redis::cmd("PING").query_async(&mut con).await {
        Ok(pong) => pong,
        // A server that wants credentials first (requirepass, an ACL file
        // without a usable default user) has started: it is up.
        Err(e) if matches!(e.code(), Some("NOAUTH" | "NOPERM")) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {pong:?}"))
    }
}

/// Wait until the Redis at `url` answers PING with PONG, or `timeout` passes.
pub async fn wait_ready(url: &str, timeout: Duration) -> Result<(), BackendError> {
    let start = Instant::now();
    loop {
        let last_error = match ping_once(url).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(BackendError::NotReady {
                url: url.to_string(),
                waited: start.elapsed(),
                last_error,
                log_tail: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips_through_strings() {
        for kind in [BackendKind::Auto, BackendKind::Docker, BackendKind::Process] {
            assert_eq!(kind.to_string().parse::<BackendKind>().unwrap(), kind);
        }
        assert_eq!(
            "Docker".parse::<BackendKind>().unwrap(),
            BackendKind::Docker
        );
        assert!(matches!(
            "podman".parse::<BackendKind>(),
            Err(BackendError::UnknownKind(_))
        ));
    }

    #[test]
    fn env_flag_values() {
        for on in ["1", "true", "yes", "YES"] {
            assert!(env_flag(on), "{on}");
        }
        for off in ["", "0", "false", "no", "off", " 0 "] {
            assert!(!env_flag(off), "{off:?}");
        }
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }

    #[test]
    fn messages_tell_the_operator_what_to_do() {
        let e = BackendError::DockerUnavailable {
            host: "unix:///var/run/docker.sock".into(),
            reason: "connection refused".into(),
        };
        assert!(e.to_string().contains("use --backend process"));
        assert!(BackendError::RedisServerNotFound
            .to_string()
            .contains("apt-get install -y redis-server"));
    }
}
