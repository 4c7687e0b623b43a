//! The docker backend: one container of the local image per server, driven
//! through testcontainers (and its bollard client where testcontainers has
//! no call), never a `docker` process; see `docker_api` for the engine side.
//!
//! The host port is chosen before the container is created and published
//! on 127.0.0.1 only: it stays the same across a crash, a restart or a
//! network cut (a port docker picks itself would change on each start).

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::models::{HostConfig, NetworkConnectRequest, NetworkDisconnectRequest, PortBinding};
use bollard::query_parameters::KillContainerOptionsBuilder;
use futures_util::StreamExt;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};
use tokio::io::AsyncBufReadExt;

use super::docker_api::{
    blocking, client, note_container_started, pid_label, remove_labelled, LABEL,
};
use super::{tail_lines, wait_ready, BackendError, ServerSetup};

const START_TIMEOUT: Duration = Duration::from_secs(120);
const READY_LOG_TIMEOUT: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const READY_LINE: &str = "Ready to accept connections";
const REDIS_PORT: u16 = 6379;
/// The image's WORKDIR and redis-server's `dir`: setup files go here.
const WORKDIR: &str = "/data";
/// The network a container is attached to unless its setup names one.
const DEFAULT_NETWORK: &str = "bridge";
/// Host ports tried before giving up: another process may take the free
/// port between choosing it and the engine binding it.
const PORT_ATTEMPTS: usize = 3;
/// Log lines kept in a start error.
const LOG_TAIL_LINES: usize = 30;

/// The container's command: redis-server with the fixed settings, then the caller's.
fn container_command<S: AsRef<str>>(extra: &[S]) -> Vec<String> {
    let mut cmd: Vec<String> = [
        "redis-server",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.extend(extra.iter().map(|a| a.as_ref().to_string()));
    cmd
}

/// `name:tag` of an image reference; a reference without a tag is `latest`
/// (a registry's `host:port/` is not a tag).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

/// Each (host port, container port) published on 127.0.0.1 only, replacing
/// testcontainers' default of every exposed port on a random port of every
/// interface.
fn publish_on_loopback(ports: Vec<(u16, u16)>) -> impl Fn(&mut HostConfig) + Send + Sync + 'static {
    move |host: &mut HostConfig| {
        let bindings = ports.iter().map(|&(host_port, container_port)| {
            let binding = PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(host_port.to_string()),
            };
            (format!("{container_port}/tcp"), Some(vec![binding]))
        });
        host.publish_all_ports = Some(false);
        host.port_bindings = Some(bindings.collect());
    }
}

/// A label value no other container of this process carries: what a
/// failed start removes by.
fn instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the engine is asked to create: the setup files are copied in
/// before redis-server starts, so it reads its configuration or dump.rdb.
fn container_request(
    image: &str,
    setup: &ServerSetup,
    port: u16,
    instance: &str,
) -> ContainerRequest<GenericImage> {
    let (name, tag) = split_image(image);
    let (pid_key, pid) = pid_label();
    let mut ports = vec![(port, REDIS_PORT)];
    ports.extend(&setup.published_ports);
    let mut image = GenericImage::new(name, tag).with_wait_for(WaitFor::Nothing);
    for &(_, container_port) in &ports {
        image = image.with_exposed_port(container_port.tcp());
    }
    let mut request = image
        .with_cmd(container_command(&setup.args))
        .with_label(LABEL, "1")
        .with_label(pid_key, pid)
        .with_label(format!("{LABEL}.instance"), instance)
        .with_startup_timeout(START_TIMEOUT)
        .with_host_config_modifier(publish_on_loopback(ports));
    for (source, name) in &setup.files {
        request = request.with_copy_to(format!("{WORKDIR}/{name}"), source.clone());
    }
    if let Some(network) = &setup.docker_network {
        request = request.with_network(network);
    }
    if let Some(name) = &setup.container_name {
        request = request.with_container_name(name);
    }
    request
}

/// The engine refused the host port (taken since it was chosen).
fn port_taken(reason: &str) -> bool {
    reason.contains("port is already allocated") || reason.contains("address already in use")
}

/// One try at creating and starting a container. testcontainers owns the
/// container only once it has started: one the engine created but could
/// not start, or whose start was cancelled (Ctrl-C drops the run mid-start),
/// is removed when the attempt drops unfinished.
struct StartAttempt {
    /// The `LABEL.instance` value of the attempt's container.
    instance: String,
    finished: bool,
}

impl StartAttempt {
    fn new() -> StartAttempt {
        StartAttempt {
            instance: instance_id(),
            finished: false,
        }
    }

    fn succeeded(&mut self) {
        self.finished = true;
    }
}

impl Drop for StartAttempt {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let instance = std::mem::take(&mut self.instance);
        let removed = blocking(move |docker| async move {
            remove_labelled(&docker, &format!("{LABEL}.instance"), &instance).await
        });
        if let Err(e) = removed {
            tracing::warn!("could not remove a container that did not start: {e}");
        }
    }
}

pub(super) struct DockerServer {
    // Some until drop: testcontainers removes the container when it drops.
    // Boxed: it carries the whole request it was made from.
    container: Option<Box<ContainerAsync<GenericImage>>>,
    id: String,
    port: u16,
    network: String,
}

impl DockerServer {
    /// Create (with the setup files copied in), start, then wait for
    /// redis-server's ready line and a PONG on the published port.
    pub(super) async fn start(
        image: &str,
        setup: &ServerSetup,
    ) -> Result<DockerServer, BackendError> {
        note_container_started();
        let mut attempt = 1;
        let server = loop {
            let port = super::process::free_port()?;
            match Self::create_and_start(image, setup, port).await {
                Ok(server) => break server,
                Err(reason) if port_taken(&reason) && attempt < PORT_ATTEMPTS => {
                    tracing::info!(
                        "host port {port} was taken before the container got it: {reason}"
                    );
                    attempt += 1;
                }
                Err(reason) => {
                    return Err(BackendError::ContainerStart {
                        image: image.to_string(),
                        reason,
                    })
                }
            }
        };
        // First the log: a server that exits at once (an RDB it cannot
        // load) never answers PING, and its log says why.
        server
            .wait_for_ready_line(setup.ready_timeout.unwrap_or(READY_LOG_TIMEOUT))
            .await?;
        server.wait_answering(PING_TIMEOUT).await?;
        Ok(server)
    }

    /// A started container, or why not.
    async fn create_and_start(
        image: &str,
        setup: &ServerSetup,
        port: u16,
    ) -> Result<DockerServer, String> {
        let mut attempt = StartAttempt::new();
        let container = container_request(image, setup, port, &attempt.instance)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        attempt.succeeded();
        Ok(DockerServer {
            id: container.id().to_string(),
            container: Some(Box::new(container)),
            port,
            network: setup
                .docker_network
                .clone()
                .unwrap_or_else(|| DEFAULT_NETWORK.to_string()),
        })
    }

    fn container(&self) -> &ContainerAsync<GenericImage> {
        self.container.as_ref().expect("taken only by drop")
    }

    /// Follow the container's log until redis says it is ready; the stream
    /// ends early when the container exits.
    async fn wait_for_ready_line(&self, timeout: Duration) -> Result<(), BackendError> {
        let mut lines = self.container().stdout(true).lines();
        let found = tokio::time::timeout(timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(READY_LINE) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if found {
            Ok(())
        } else {
            Err(BackendError::ContainerNotReady {
                id: self.id.clone(),
                waited: timeout,
                logs: self.logs_tail().await,
            })
        }
    }

    /// The last lines of the container's stdout, then of its stderr.
    async fn logs_tail(&self) -> String {
        let container = self.container();
        match tokio::try_join!(container.stdout_to_vec(), container.stderr_to_vec()) {
            Ok((out, err)) => format!(
                "{}{}",
                tail_lines(&String::from_utf8_lossy(&out), LOG_TAIL_LINES),
                tail_lines(&String::from_utf8_lossy(&err), LOG_TAIL_LINES)
            ),
            Err(e) => format!("(could not read the logs: {e})"),
        }
    }

    /// Wait until Redis answers PING on the published port; a failure
    /// carries the container's log.
    async fn wait_answering(&self, timeout: Duration) -> Result<(), BackendError> {
        match wait_ready(&format!("redis://127.0.0.1:{}", self.port), timeout).await {
            Err(BackendError::NotReady {
                url,
                waited,
                last_error,
                ..
            }) => Err(BackendError::NotReady {
                url,
                waited,
                last_error,
                log_tail: self.logs_tail().await,
            }),
            other => other,
        }
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// An error of a fault injected into this container.
    fn failed(&self, action: &str, e: impl Display) -> BackendError {
        BackendError::ContainerStart {
            image: self.id.clone(),
            reason: format!("{action}: {e}"),
        }
    }

    /// Freezes every process of the container (the cgroup freezer).
    pub(super) async fn pause(&self) -> Result<(), BackendError> {
        let paused = self.container().pause().await;
        paused.map_err(|e| self.failed("pause", e))
    }

    pub(super) async fn unpause(&self) -> Result<(), BackendError> {
        let thawed = self.container().unpause().await;
        thawed.map_err(|e| self.failed("unpause", e))
    }

    /// SIGKILL to redis-server; the engine answers once it has exited.
    pub(super) async fn kill(&self) -> Result<(), BackendError> {
        let options = KillContainerOptionsBuilder::new().signal("KILL").build();
        let docker = client().await?;
        let killed = docker.kill_container(&self.id, Some(options)).await;
        killed.map_err(|e| self.failed("kill", e))
    }

    /// Waits until redis-server has exited on its own (after SHUTDOWN).
    pub(super) async fn wait_exit(&self) -> Result<(), BackendError> {
        let docker = client().await?;
        let mut waiting = docker.wait_container(&self.id, None);
        match waiting.next().await {
            // A non-zero exit is an exit all the same.
            Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {
                Ok(())
            }
            Some(Err(e)) => Err(self.failed("wait", e)),
            None => Err(self.failed("wait", "the engine closed the wait")),
        }
    }

    /// Starts the stopped container again on its own data and waits until
    /// Redis answers on the same host port.
    pub(super) async fn start_again(&self) -> Result<(), BackendError> {
        let started = self.container().start().await;
        started.map_err(|e| self.failed("start", e))?;
        self.wait_answering(READY_LOG_TIMEOUT).await
    }

    /// Detaches the container from its network: the published port goes
    /// with it and connections through it break.
    pub(super) async fn disconnect_network(&self) -> Result<(), BackendError> {
        let request = NetworkDisconnectRequest {
            container: self.id.clone(),
            force: Some(false),
        };
        let docker = client().await?;
        let cut = docker.disconnect_network(&self.network, request).await;
        cut.map_err(|e| self.failed(&format!("disconnect from {}", self.network), e))
    }

    /// Attaches the container to its network again and waits until Redis
    /// answers on its (unchanged) host port.
    pub(super) async fn reconnect_network(&self) -> Result<(), BackendError> {
        let request = NetworkConnectRequest {
            container: self.id.clone(),
            endpoint_config: None,
        };
        let docker = client().await?;
        let joined = docker.connect_network(&self.network, request).await;
        joined.map_err(|e| self.failed(&format!("connect to {}", self.network), e))?;
        self.wait_answering(READY_LOG_TIMEOUT).await
    }

    /// The container's address on its network (what cluster peers MEET).
    pub(super) async fn network_ip(&self) -> Result<String, BackendError> {
        let ip = self.container().get_bridge_ip_address().await;
        ip.map(|ip| ip.to_string())
            .map_err(|e| self.failed(&format!("address on {}", self.network), e))
    }
}

impl Drop for DockerServer {
    fn drop(&mut self) {
        let Some(container) = self.container.take() else {
            return;
        };
        // testcontainers removes the container (force, with its volumes)
        // before its drop returns, but hands the removal to the tokio
        // runtime it finds: a server dropped outside one gets one here.
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(container);
            return;
        }
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                let _entered = runtime.enter();
                drop(container);
            }
            Err(e) => tracing::warn!(
                "container {} is left running: no runtime to remove it ({e}); \
                 remove it with docker rm -f {}",
                self.id,
                self.id
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_keeps_fixed_settings_then_extra_args() {
        let cmd = container_command(&["--maxmemory", "10mb"]);
        assert_eq!(cmd[0], "redis-server");
        assert!(cmd.windows(2).any(|w| w == ["--protected-mode", "no"]));
        assert!(cmd.windows(2).any(|w| w == ["--save", ""]));
        assert_eq!(&cmd[cmd.len() - 2..], ["--maxmemory", "10mb"]);
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(
            split_image("keyshift/redis:local"),
            ("keyshift/redis", "local")
        );
        assert_eq!(split_image("redis"), ("redis", "latest"));
        assert_eq!(
            split_image("registry:5000/redis"),
            ("registry:5000/redis", "latest")
        );
        assert_eq!(
            split_image("registry:5000/redis:7"),
            ("registry:5000/redis", "7")
        );
    }

    #[test]
    fn redis_port_is_published_on_loopback_only() {
        let mut host = HostConfig {
            publish_all_ports: Some(true),
            ..Default::default()
        };
        publish_on_loopback(vec![(40123, 6379), (40124, 6380)])(&mut host);
        assert_eq!(host.publish_all_ports, Some(false));
        let bindings = host.port_bindings.unwrap();
        assert_eq!(bindings.len(), 2);
        for (container, host_port) in [("6379/tcp", "40123"), ("6380/tcp", "40124")] {
            let binding = &bindings[container].as_ref().unwrap()[0];
            assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
            assert_eq!(binding.host_port.as_deref(), Some(host_port));
        }
    }

    #[test]
    fn a_taken_port_is_recognised() {
        assert!(port_taken(
            "Bind for 127.0.0.1:40123 failed: port is already allocated"
        ));
        assert!(!port_taken("No such image: keyshift/redis:local"));
    }
}
