//! Fault injection on a disposable server (issue 5): freeze it, crash it,
//! shut it down and start it again on its own data, cut its network.
//! Faults only a container can suffer ([`RedisServer::supports`]) are
//! refused on the process backend, so a caller reports them as skipped
//! instead of passing them silently.

use std::time::Duration;

use super::{BackendError, BackendKind, Inner, RedisServer};

/// How long a server told to SHUTDOWN may take to save and exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A fault a backend may or may not be able to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Pause,
    Restart,
    /// Cutting the container off its network (docker only).
    NetworkCut,
}

impl RedisServer {
    /// Whether this backend can inject `fault`.
    pub fn supports(&self, fault: FaultKind) -> bool {
        match fault {
            FaultKind::Pause | FaultKind::Restart => true,
            FaultKind::NetworkCut => self.kind == BackendKind::Docker,
        }
    }

    /// Freezes the server: a container pause (the cgroup freezer) or SIGSTOP
    /// of the child process, the same thing seen from a client: the TCP
    /// connections stay open and every command waits for an answer.
    pub async fn pause(&self) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Process(p) => signal(p.pid(), "STOP"),
            Inner::Docker(d) => d.pause().await,
        }
    }

    /// Thaws a paused server (container unpause or SIGCONT).
    pub async fn unpause(&self) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Process(p) => signal(p.pid(), "CONT"),
            Inner::Docker(d) => d.unpause().await,
        }
    }

    /// Crashes the server (SIGKILL: `kill -9` of the child, a container
    /// kill with KILL) and starts it again on the same data and port: with
    /// `appendonly yes` the AOF brings back every acknowledged write. Its
    /// clients' connections are gone.
    pub async fn crash_and_restart(&mut self) -> Result<(), BackendError> {
        match &mut self.inner {
            Inner::Process(p) => {
                p.kill().await?;
                p.restart().await
            }
            Inner::Docker(d) => {
                d.kill().await?;
                d.start_again().await
            }
        }
    }

    /// Shuts the server down gracefully (`SHUTDOWN SAVE`: an RDB snapshot
    /// of everything written so far, even with `save ""`), then starts it
    /// again on the same port and data dir, loading that snapshot.
    pub async fn shutdown_and_restart(&mut self) -> Result<(), BackendError> {
        let mut conn = self.connection().await?;
        // The server closes the connection instead of answering.
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query_async::<()>(&mut conn)
            .await;
        drop(conn);
        match &mut self.inner {
            Inner::Process(p) => {
                p.wait_exit(SHUTDOWN_TIMEOUT).await?;
                p.restart().await
            }
            Inner::Docker(d) => {
                d.wait_exit().await?;
                d.start_again().await
            }
        }
    }

    /// Disconnects the container from its network: the published port
    /// goes away with it and established connections through it break.
    pub async fn disconnect_network(&self) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Docker(d) => d.disconnect_network().await,
            Inner::Process(_) => Err(docker_only("a network disconnect")),
        }
    }

    /// Connects the container to its network again; the published port
    /// is the one it had.
    pub async fn reconnect_network(&mut self) -> Result<(), BackendError> {
        match &mut self.inner {
            Inner::Docker(d) => d.reconnect_network().await,
            Inner::Process(_) => Err(docker_only("a network reconnect")),
        }
    }
}

fn docker_only(what: &str) -> BackendError {
    BackendError::io(
        what,
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "docker-only fault: run with --backend docker",
        ),
    )
}

/// `kill -SIG pid`: std has no signal API, and this spares a libc dependency.
fn signal(pid: Option<u32>, sig: &str) -> Result<(), BackendError> {
    let pid = pid.ok_or_else(|| {
        BackendError::io(
            format!("sending SIG{sig} to redis-server"),
            std::io::Error::new(std::io::ErrorKind::NotFound, "the server is not running"),
        )
    })?;
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| BackendError::io(format!("kill -{sig} {pid}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(BackendError::io(
            format!("kill -{sig} {pid}"),
            std::io::Error::other(status.to_string()),
        ))
    }
}
