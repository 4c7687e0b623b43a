//! The process backend: a `redis-server` child on a free loopback port,
//! its working dir and log in a temp dir that goes away with it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{ping_once, tail_lines, BackendError, ServerSetup};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;

/// The first executable file named `name` in the directories of `PATH`.
pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The version of the `redis-server` this backend runs ("7.0.15"), from
/// its `--version` ("Redis server v=7.0.15 sha=...").
pub(super) async fn redis_server_version() -> Option<String> {
    let binary = find_on_path("redis-server")?;
    let out = Command::new(&binary).arg("--version").output().await.ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout)).map(str::to_owned)
}

fn parse_version(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .filter(|v| !v.is_empty())
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, release it).
pub(super) fn free_port() -> Result<u16, BackendError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| BackendError::io("binding 127.0.0.1:0 to find a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| BackendError::io("reading the free port", e))?
        .port();
    Ok(port)
}

/// The fixed arguments, then the caller's.
fn server_args<S: AsRef<str>>(port: u16, dir: &Path, extra: &[S]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--protected-mode".into(),
        "no".into(),
    ];
    args.extend(extra.iter().map(|a| a.as_ref().to_string()));
    args
}

/// Copies the setup's files into the server's working dir.
fn place_files(setup: &ServerSetup, dir: &Path) -> Result<(), BackendError> {
    for (source, name) in &setup.files {
        let target = dir.join(name);
        std::fs::copy(source, &target).map_err(|e| {
            BackendError::io(
                format!("copying {} to {}", source.display(), target.display()),
                e,
            )
        })?;
    }
    Ok(())
}

fn port_taken(log: &str) -> bool {
    log.contains("Address already in use")
}

pub(super) struct ProcessServer {
    port: u16,
    child: Child,
    /// How it was started, so a restart (fault injection) brings the same
    /// server back on the same port and data dir.
    binary: PathBuf,
    args: Vec<String>,
    log_path: PathBuf,
    ready_timeout: Duration,
    // Dropped after the child is dead (Drop below runs before field drops).
    dir: tempfile::TempDir,
}

impl ProcessServer {
    pub(super) async fn start(setup: &ServerSetup) -> Result<ProcessServer, BackendError> {
        let binary = find_on_path("redis-server").ok_or(BackendError::RedisServerNotFound)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::Builder::new()
                .prefix("keyshift-redis-")
                .tempdir()
                .map_err(|e| BackendError::io("creating a temp dir for redis-server", e))?;
            let port = free_port()?;
            let log_path = dir.path().join("redis.log");
            let log = File::create(&log_path)
                .map_err(|e| BackendError::io(format!("creating {}", log_path.display()), e))?;
            let log_err = log
                .try_clone()
                .map_err(|e| BackendError::io("duplicating the log file handle", e))?;
            place_files(setup, dir.path())?;
            let args = server_args(port, dir.path(), &setup.args);
            let child = spawn(&binary, &args, dir.path(), log, log_err)?;
            let mut server = ProcessServer {
                port,
                child,
                binary: binary.clone(),
                args,
                log_path: log_path.clone(),
                ready_timeout: setup.ready_timeout.unwrap_or(READY_TIMEOUT),
                dir,
            };
            match server.wait_ready(&log_path).await {
                Ok(()) => return Ok(server),
                Err(BackendError::ProcessExited { log_tail, .. })
                    if port_taken(&log_tail) && attempt < PORT_ATTEMPTS =>
                {
                    tracing::debug!("port {port} was taken before redis-server bound it; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// PING until PONG, watching for an early exit; errors carry the log tail.
    async fn wait_ready(&mut self, log_path: &Path) -> Result<(), BackendError> {
        let url = format!("redis://127.0.0.1:{}", self.port);
        let start = Instant::now();
        let read_tail = || {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            tail_lines(&log, 20)
        };
        loop {
            let exited = self
                .child
                .try_wait()
                .map_err(|e| BackendError::io("polling redis-server", e))?;
            if let Some(status) = exited {
                return Err(BackendError::ProcessExited {
                    port: self.port,
                    status: status.to_string(),
                    log_tail: read_tail(),
                });
            }
            let last_error = match ping_once(&url).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if start.elapsed() >= self.ready_timeout {
                return Err(BackendError::NotReady {
                    url,
                    waited: start.elapsed(),
                    last_error,
                    log_tail: read_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and reap it: the crash of a server (nothing flushed that
    /// `appendfsync` had not already written).
    pub(super) async fn kill(&mut self) -> Result<(), BackendError> {
        let _ = self.child.start_kill();
        self.child
            .wait()
            .await
            .map_err(|e| BackendError::io("reaping the killed redis-server", e))?;
        Ok(())
    }

    /// Waits for a server told to shut down (SHUTDOWN) to exit.
    pub(super) async fn wait_exit(&mut self, timeout: Duration) -> Result<(), BackendError> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BackendError::io("waiting for redis-server to exit", e)),
            Err(_) => Err(BackendError::io(
                "waiting for redis-server to exit",
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{timeout:?}")),
            )),
        }
    }

    /// Starts the same server again (same binary, port, data dir and
    /// settings; its AOF or RDB file is loaded on start) after it exited.
    pub(super) async fn restart(&mut self) -> Result<(), BackendError> {
        let open = |action: &str| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&self.log_path)
                .map_err(|e| BackendError::io(format!("{action} {}", self.log_path.display()), e))
        };
        let (log, log_err) = (open("reopening")?, open("reopening")?);
        let dir = self.dir.path().to_path_buf();
        self.child = spawn(&self.binary, &self.args, &dir, log, log_err)?;
        let log_path = self.log_path.clone();
        self.wait_ready(&log_path).await
    }
}

fn spawn(
    binary: &Path,
    args: &[String],
    dir: &Path,
    log: File,
    log_err: File,
) -> Result<Child, BackendError> {
    Command::new(binary)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BackendError::io(format!("spawning {}", binary.display()), e))
}

impl Drop for ProcessServer {
    fn drop(&mut self) {
        // SIGKILL, then reap it so the port is closed when drop returns.
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_put_fixed_settings_first_and_keep_the_empty_save() {
        let args = server_args(7000, Path::new("/tmp/x"), &["--maxmemory", "10mb"]);
        assert_eq!(&args[..4], ["--port", "7000", "--bind", "127.0.0.1"]);
        let save = args.iter().position(|a| a == "--save").unwrap();
        assert_eq!(args[save + 1], "");
        assert!(args.windows(2).any(|w| w == ["--dir", "/tmp/x"]));
        assert!(args.windows(2).any(|w| w == ["--protected-mode", "no"]));
        assert_eq!(&args[args.len() - 2..], ["--maxmemory", "10mb"]);
    }

    #[test]
    fn places_setup_files_under_their_names() {
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), b"REDIS0010").unwrap();
        let dir = tempfile::tempdir().unwrap();
        place_files(&ServerSetup::new().file(src.path(), "dump.rdb"), dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("dump.rdb")).unwrap(),
            b"REDIS0010"
        );
    }

    #[test]
    fn reads_the_version_from_redis_server_version_output() {
        assert_eq!(
            parse_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d7c971a948f0"),
            Some("7.0.15")
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn finds_sh_on_path_and_not_a_missing_binary() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("keyshift-no-such-binary").is_none());
    }

    #[test]
    fn recognises_a_taken_port() {
        assert!(port_taken(
            "# Warning: Could not create server TCP listening socket 127.0.0.1:6379: bind: Address already in use"
        ));
        assert!(!port_taken("* Ready to accept connections tcp"));
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
