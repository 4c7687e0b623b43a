//! The Docker engine as the docker backend reaches it: testcontainers'
//! bollard client, whether an engine answers, which API version it serves,
//! and the sweep that removes this process's containers after a signal.
//!
//! bollard 0.21 puts `/v1.53` into its base URL, but every request path
//! starts with `/`, so `Url::join` drops the version: the engine gets
//! unversioned requests and serves them at its own newest API version (1.41
//! on Docker 20.10). That is why the backend works on old engines without
//! negotiating; tests/docker_backend.rs watches the requests to hold it so.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;

use super::BackendError;

const ENGINE_TIMEOUT: Duration = Duration::from_secs(15);
/// Every container the harness starts carries this label (`=1`), and
/// `LABEL.pid` names the process that started it, so leftovers of a killed
/// run can be removed with
/// `docker rm -f $(docker ps -aq --filter label=keyshift.harness)`.
pub(super) const LABEL: &str = "keyshift.harness";
/// A cluster's network is named `keyshift-cluster-PID-...`.
const NETWORK_PREFIX: &str = "keyshift-cluster";

/// Set once this process has started a container or made a network: only
/// then does an interrupted run ask the engine for leftovers.
static STARTED_CONTAINERS: AtomicBool = AtomicBool::new(false);

pub(super) fn note_container_started() {
    STARTED_CONTAINERS.store(true, Ordering::Relaxed);
}

/// `LABEL.pid=PID` of this process: the label its containers carry.
pub(super) fn pid_label() -> (String, String) {
    (format!("{LABEL}.pid"), std::process::id().to_string())
}

/// Where the engine is reached, for error messages (testcontainers reads
/// the same `DOCKER_HOST`).
pub(super) fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

fn unavailable(reason: impl ToString) -> BackendError {
    BackendError::DockerUnavailable {
        host: docker_host(),
        reason: reason.to_string(),
    }
}

/// testcontainers' own bollard client (same host, same settings), for the
/// calls testcontainers does not wrap.
pub(super) async fn client() -> Result<Docker, BackendError> {
    testcontainers::core::client::docker_client_instance()
        .await
        .map_err(unavailable)
}

/// What the engine says of itself, and what bollard would ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEngine {
    /// The engine's version ("20.10.24+dfsg1").
    pub version: String,
    /// The newest API version it serves: the one unversioned requests get.
    pub api_version: String,
    /// The oldest API version it accepts.
    pub min_api_version: String,
    /// The version in bollard's base URL (1.53), which never reaches the
    /// engine (see the module doc).
    pub client_api_version: String,
}

/// Asks the engine for its version; an engine that does not answer within
/// a few seconds is unavailable.
pub async fn docker_engine() -> Result<DockerEngine, BackendError> {
    let docker = client().await?;
    let answer = tokio::time::timeout(ENGINE_TIMEOUT, docker.version())
        .await
        .map_err(|_| unavailable(format!("no answer within {ENGINE_TIMEOUT:?}")))?
        .map_err(unavailable)?;
    let api_version = answer.api_version.unwrap_or_default();
    if api_version.is_empty() {
        return Err(unavailable("its /version answer names no API version"));
    }
    let client = docker.client_version();
    Ok(DockerEngine {
        version: answer.version.unwrap_or_default(),
        api_version,
        min_api_version: answer.min_api_version.unwrap_or_default(),
        client_api_version: format!("{}.{}", client.major_version, client.minor_version),
    })
}

/// Ok when an engine answers.
pub(super) async fn engine_check() -> Result<(), BackendError> {
    docker_engine().await.map(drop)
}

/// Runs `work` on the engine to its end from synchronous code (a drop), on
/// a thread and runtime of its own: the caller may be on a runtime's
/// thread, which blocking there would stall.
pub(super) fn blocking<T, F>(work: impl FnOnce(Docker) -> F + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    F: Future<Output = Result<T, bollard::errors::Error>>,
{
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let docker = client().await.map_err(|e| e.to_string())?;
            work(docker).await.map_err(|e| e.to_string())
        })
    });
    worker
        .join()
        .unwrap_or_else(|_| Err("the engine call panicked".into()))
}

/// Removes every container labelled `key=value` (running or not) with its
/// anonymous volumes; returns how many went.
pub(super) async fn remove_labelled(
    docker: &Docker,
    key: &str,
    value: &str,
) -> Result<usize, bollard::errors::Error> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker.list_containers(Some(options)).await?;
    let mut removed = 0;
    for id in containers.into_iter().filter_map(|c| c.id) {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("could not remove container {id}: {e}"),
        }
    }
    Ok(removed)
}

/// After an interrupted run: removes the containers this process started
/// and its cluster networks, whatever still holds them. Returns how many
/// containers were still there (their owners' drops normally got them).
pub async fn remove_leftovers() -> Result<usize, BackendError> {
    if !STARTED_CONTAINERS.load(Ordering::Relaxed) {
        return Ok(0);
    }
    let docker = client().await?;
    let (key, pid) = pid_label();
    let removed = remove_labelled(&docker, &key, &pid)
        .await
        .map_err(unavailable)?;
    remove_labelled_networks(&docker, &key, &pid)
        .await
        .map_err(unavailable)?;
    Ok(removed)
}

async fn remove_labelled_networks(
    docker: &Docker,
    key: &str,
    value: &str,
) -> Result<(), bollard::errors::Error> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    for name in docker
        .list_networks(Some(options))
        .await?
        .into_iter()
        .filter_map(|n| n.name)
    {
        if let Err(e) = docker.remove_network(&name).await {
            tracing::warn!("could not remove network {name}: {e}");
        }
    }
    Ok(())
}

/// A cluster's private network, labelled like the containers and removed
/// on drop. keyshift makes it rather than leaving it to testcontainers'
/// `with_network`, so that it goes after every container on it, a
/// container whose start was cancelled included.
pub(super) struct Network {
    pub(super) name: String,
}

impl Network {
    /// `keyshift-cluster-PID-NANOS`: unique among concurrent runs on this
    /// engine.
    pub(super) async fn create() -> Result<Network, BackendError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{NETWORK_PREFIX}-{}-{nanos:08x}", std::process::id());
        let (pid_key, pid) = pid_label();
        let request = NetworkCreateRequest {
            name: name.clone(),
            labels: Some(HashMap::from([(LABEL.into(), "1".into()), (pid_key, pid)])),
            ..Default::default()
        };
        note_container_started();
        let docker = client().await?;
        docker
            .create_network(request)
            .await
            .map_err(|e| BackendError::ClusterForm {
                reason: format!("creating network {name}: {e}"),
            })?;
        Ok(Network { name })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let name = self.name.clone();
        let removed = blocking(move |docker| async move { docker.remove_network(&name).await });
        if let Err(e) = removed {
            tracing::warn!("could not remove network {}: {e}", self.name);
        }
    }
}
