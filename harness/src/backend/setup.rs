//! [`ServerSetup`]: what a disposable server gets beyond its kind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::BackendError;

/// How to start a disposable server beyond its kind: extra redis-server
/// arguments, files placed in its working dir before it starts, and how
/// long it may take to come up.
///
/// The working dir is the server's `dir` and its current directory on both
/// backends (process: its temp dir; docker: the image's /data), so a file
/// placed as `dump.rdb` is loaded on start and a relative name in `args`
/// (`--tls-cert-file redis.crt`, `--aclfile users.acl`) finds its file.
#[derive(Debug, Clone, Default)]
pub struct ServerSetup {
    /// Arguments after the backend's fixed ones (a later one wins).
    pub args: Vec<String>,
    /// (file on this host, plain file name in the server's working dir).
    pub files: Vec<(PathBuf, String)>,
    /// How long the server may take to answer PING (a large RDB loads for
    /// a while); `None`: the backend's default.
    pub ready_timeout: Option<Duration>,
    /// Docker only: an existing network the container joins instead of
    /// the default bridge (a cluster's own); the process backend ignores it.
    pub docker_network: Option<String>,
    /// Docker only: the container's name (a cluster node's, so it reads
    /// as its cluster's); the process backend ignores it.
    pub container_name: Option<String>,
    /// Docker only: (host port, container port) published on 127.0.0.1
    /// beside Redis's own port (a TLS port); the process backend ignores it.
    pub published_ports: Vec<(u16, u16)>,
}

impl ServerSetup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds redis-server arguments.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Places the host file `source` in the working dir as `name`.
    pub fn file(mut self, source: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        self.files.push((source.into(), name.into()));
        self
    }

    /// Docker: also publishes `container_port` on 127.0.0.1:`host_port`.
    pub fn publish(mut self, host_port: u16, container_port: u16) -> Self {
        self.published_ports.push((host_port, container_port));
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// Every file is a readable regular file going to a plain name, checked
    /// before anything starts.
    pub(super) fn check_files(&self) -> Result<(), BackendError> {
        for (source, name) in &self.files {
            let bad = |reason: String| BackendError::SetupFile {
                name: name.clone(),
                source_path: source.display().to_string(),
                reason,
            };
            check_file_name(name).map_err(|r| bad(r.to_string()))?;
            match std::fs::metadata(source) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(bad("not a regular file".into())),
                Err(e) => return Err(bad(format!("cannot read it: {e}"))),
            }
        }
        Ok(())
    }
}

/// A name placed in the working dir: one path component, no `.` or `..`.
fn check_file_name(name: &str) -> Result<(), &'static str> {
    let path = Path::new(name);
    let mut parts = path.components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(_)), None) if !name.contains('/') => Ok(()),
        _ => Err("the name in the working dir must be a plain file name (no directory, no `..`)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_file_names_are_plain_names() {
        for ok in ["dump.rdb", "redis.crt", "users.acl", ".hidden"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/etc/passwd", "../x", "dir/"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn setup_rejects_a_missing_file_before_starting() {
        let setup = ServerSetup::new().file("/nonexistent/keyshift/dump.rdb", "dump.rdb");
        let err = setup.check_files().unwrap_err();
        assert!(matches!(err, BackendError::SetupFile { .. }), "{err}");
        assert!(err.to_string().contains("cannot read it"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let setup = ServerSetup::new().file(dir.path(), "dump.rdb");
        assert!(setup
            .check_files()
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }
}
