//! The docker backend, driven through the `docker` CLI (it negotiates the
//! API version with old and new engines alike; see the note in `mod.rs`).

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::process::find_on_path;
use super::{tail_lines, wait_ready, BackendError, ServerSetup};

const ENGINE_TIMEOUT: Duration = Duration::from_secs(15);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const READY_LOG_TIMEOUT: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const READY_LINE: &str = "Ready to accept connections";
/// The image's WORKDIR and redis-server's `dir`: setup files go here.
const WORKDIR: &str = "/data";
/// Every container the harness starts carries this label, so leftovers of a
/// killed run can be removed with
/// `docker rm -f $(docker ps -aq --filter label=keyshift.harness)`.
pub(super) const LABEL: &str = "keyshift.harness";

/// Where the docker CLI will connect, for error messages.
pub(super) fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// Run `docker ARGS` (with extra env) and capture its output; a timeout or a
/// missing CLI is an error, a non-zero exit is not (the caller decides).
pub(super) async fn docker(
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Result<Output, BackendError> {
    if find_on_path("docker").is_none() {
        return Err(BackendError::DockerCliNotFound);
    }
    let mut cmd = Command::new("docker");
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(BackendError::io(
            format!("running docker {}", args.join(" ")),
            e,
        )),
        Err(_) => Err(BackendError::io(
            format!("running docker {}", args.join(" ")),
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        )),
    }
}

/// The trimmed stderr (else stdout) of a failed command.
pub(super) fn failure_text(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if err.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        err
    }
}

/// Ok when the docker CLI is installed and its engine answers.
pub(super) async fn engine_check() -> Result<(), BackendError> {
    let unavailable = |reason: String| BackendError::DockerUnavailable {
        host: docker_host(),
        reason,
    };
    let out = match docker(
        &["version", "--format", "{{.Server.APIVersion}}"],
        &[],
        ENGINE_TIMEOUT,
    )
    .await
    {
        Ok(out) => out,
        Err(BackendError::Io { source, .. }) => return Err(unavailable(source.to_string())),
        Err(e) => return Err(e),
    };
    let api = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !api.is_empty() {
        Ok(())
    } else {
        Err(unavailable(tail_lines(&failure_text(&out), 3)))
    }
}

/// The host port in `docker port` output such as `127.0.0.1:49153`
/// (one mapping per line; IPv6 lines look like `[::]:49153`).
fn parse_host_port(output: &str) -> Option<u16> {
    output
        .lines()
        .filter_map(|line| line.trim().rsplit_once(':'))
        .find_map(|(_, port)| port.parse().ok())
}

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

/// `docker cp` of a large snapshot takes a while: the usual command
/// timeout plus a second per 20 MB.
fn copy_timeout(source: &str) -> Duration {
    let bytes = std::fs::metadata(source).map_or(0, |m| m.len());
    COMMAND_TIMEOUT + Duration::from_secs(bytes / 20_000_000)
}

pub(super) struct DockerServer {
    id: String,
    port: u16,
}

impl DockerServer {
    /// `docker create`, then `docker cp` of each setup file into the
    /// working dir, then `docker start`: the files are there before
    /// redis-server reads its configuration or its dump.rdb.
    pub(super) async fn start(
        image: &str,
        setup: &ServerSetup,
    ) -> Result<DockerServer, BackendError> {
        let label = format!("{LABEL}=1");
        let pid_label = format!("{LABEL}.pid={}", std::process::id());
        let mut args = vec![
            "create",
            "--label",
            &label,
            "--label",
            &pid_label,
            "-p",
            "127.0.0.1::6379",
        ];
        args.extend(setup.docker_args.iter().map(String::as_str));
        args.push(image);
        let command = container_command(&setup.args);
        args.extend(command.iter().map(String::as_str));
        let out = docker(&args, &[], COMMAND_TIMEOUT).await?;
        let start_failed = |reason: String| BackendError::ContainerStart {
            image: image.to_string(),
            reason,
        };
        if !out.status.success() {
            return Err(start_failed(failure_text(&out)));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if id.is_empty() {
            return Err(start_failed("docker create printed no container id".into()));
        }
        // From here on, Drop removes the container whatever happens next.
        let mut server = DockerServer { id, port: 0 };
        for (source, name) in &setup.files {
            let target = format!("{}:{WORKDIR}/{name}", server.id);
            let source = source.display().to_string();
            let out = docker(&["cp", &source, &target], &[], copy_timeout(&source)).await?;
            if !out.status.success() {
                return Err(start_failed(format!(
                    "docker cp {source} {target}: {}",
                    failure_text(&out)
                )));
            }
        }
        let out = docker(&["start", &server.id], &[], COMMAND_TIMEOUT).await?;
        if !out.status.success() {
            return Err(start_failed(format!(
                "docker start: {}",
                failure_text(&out)
            )));
        }

        // First the log: a server that exits at once (an RDB it cannot
        // load) has no port to read, and its log says why.
        server
            .wait_for_ready_line(setup.ready_timeout.unwrap_or(READY_LOG_TIMEOUT))
            .await?;
        let out = docker(&["port", &server.id, "6379/tcp"], &[], COMMAND_TIMEOUT).await?;
        let mapping = String::from_utf8_lossy(&out.stdout).to_string();
        server.port = parse_host_port(&mapping).ok_or_else(|| {
            start_failed(format!(
                "no host port for 6379/tcp in `docker port` output {mapping:?} ({})",
                failure_text(&out)
            ))
        })?;

        let url = format!("redis://127.0.0.1:{}", server.port);
        if let Err(BackendError::NotReady {
            url,
            waited,
            last_error,
            ..
        }) = wait_ready(&url, PING_TIMEOUT).await
        {
            return Err(BackendError::NotReady {
                url,
                waited,
                last_error,
                log_tail: server.logs_tail().await,
            });
        }
        Ok(server)
    }

    /// Follow the container's log until redis says it is ready; the stream
    /// ends early when the container exits.
    async fn wait_for_ready_line(&self, timeout: Duration) -> Result<(), BackendError> {
        let mut child = Command::new("docker")
            .args(["logs", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BackendError::io("running docker logs -f", e))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
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
        let _ = child.start_kill();
        let _ = child.wait().await;
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

    async fn logs_tail(&self) -> String {
        match docker(&["logs", "--tail", "30", &self.id], &[], COMMAND_TIMEOUT).await {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(could not read the logs: {e})"),
        }
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// `docker ARGS... ID`; a non-zero exit is an error carrying its output.
    pub(super) async fn container_cmd(&self, args: &[&str]) -> Result<(), BackendError> {
        let mut all = args.to_vec();
        all.push(&self.id);
        let out = docker(&all, &[], COMMAND_TIMEOUT).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(BackendError::ContainerStart {
                image: self.id.clone(),
                reason: format!("docker {}: {}", args.join(" "), failure_text(&out)),
            })
        }
    }

    /// After `docker start` or a network reconnect the published port may
    /// be a new one: read it again and wait until Redis answers there.
    pub(super) async fn refresh_port(&mut self) -> Result<(), BackendError> {
        let out = docker(&["port", &self.id, "6379/tcp"], &[], COMMAND_TIMEOUT).await?;
        let mapping = String::from_utf8_lossy(&out.stdout).to_string();
        self.port = parse_host_port(&mapping).ok_or_else(|| BackendError::ContainerStart {
            image: self.id.clone(),
            reason: format!("no host port for 6379/tcp after a restart: {mapping:?}"),
        })?;
        let url = format!("redis://127.0.0.1:{}", self.port);
        wait_ready(&url, READY_LOG_TIMEOUT).await
    }
}

impl Drop for DockerServer {
    fn drop(&mut self) {
        // Synchronous on purpose: the container (and its port) is gone when
        // drop returns. `-v` removes its anonymous volumes too.
        let removed = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match removed {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(
                "could not remove container {}: {}",
                self.id,
                failure_text(&out)
            ),
            Err(e) => tracing::warn!("could not remove container {}: {e}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_port_output() {
        assert_eq!(parse_host_port("127.0.0.1:49153\n"), Some(49153));
        assert_eq!(parse_host_port("0.0.0.0:1234\n[::]:1234\n"), Some(1234));
        assert_eq!(parse_host_port("[::]:555"), Some(555));
        assert_eq!(parse_host_port(""), None);
        assert_eq!(parse_host_port("Error: No public port"), None);
    }

    #[test]
    fn command_keeps_fixed_settings_then_extra_args() {
        let cmd = container_command(&["--maxmemory", "10mb"]);
        assert_eq!(cmd[0], "redis-server");
        assert!(cmd.windows(2).any(|w| w == ["--protected-mode", "no"]));
        assert!(cmd.windows(2).any(|w| w == ["--save", ""]));
        assert_eq!(&cmd[cmd.len() - 2..], ["--maxmemory", "10mb"]);
    }
}
