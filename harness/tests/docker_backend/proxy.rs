//! A unix-socket proxy in front of the Docker engine that notes what goes
//! through: each HTTP request line the client sends and each `Api-Version`
//! header the engine answers with. Bytes pass unchanged (upgraded
//! connections, BuildKit's session, log streams included).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Longest line kept while scanning: request lines and headers are short,
/// and a binary body must not grow the buffer.
const MAX_LINE: usize = 4096;
const HTTP_METHODS: [&str; 5] = ["GET ", "POST ", "PUT ", "DELETE ", "HEAD "];

#[derive(Default)]
pub struct Seen {
    /// `METHOD PATH` of every request.
    pub requests: Vec<String>,
    /// Every distinct `Api-Version` the engine answered with.
    pub api_versions: BTreeSet<String>,
}

pub struct RecordingProxy {
    pub socket: PathBuf,
    pub seen: Arc<Mutex<Seen>>,
    _dir: tempfile::TempDir,
}

impl RecordingProxy {
    /// Listens on a fresh socket and forwards every connection to `engine`.
    pub fn start(engine: &Path) -> RecordingProxy {
        let dir = tempfile::tempdir().expect("a temp dir for the socket");
        let socket = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the proxy socket");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (engine, notes) = (engine.to_path_buf(), seen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = UnixStream::connect(&engine).await else {
                    continue;
                };
                tokio::spawn(relay(client, upstream, notes.clone()));
            }
        });
        RecordingProxy {
            socket,
            seen,
            _dir: dir,
        }
    }

    /// `unix://SOCKET`: what DOCKER_HOST is set to.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

async fn relay(client: UnixStream, engine: UnixStream, seen: Arc<Mutex<Seen>>) {
    let (client_in, client_out) = client.into_split();
    let (engine_in, engine_out) = engine.into_split();
    let requests = seen.clone();
    tokio::join!(
        copy_scanning(client_in, engine_out, move |line| {
            if HTTP_METHODS.iter().any(|m| line.starts_with(m)) {
                let request = line.rsplit_once(" HTTP/").map_or(line, |(r, _)| r);
                requests.lock().unwrap().requests.push(request.to_string());
            }
        }),
        copy_scanning(engine_in, client_out, move |line| {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("api-version") {
                    let mut seen = seen.lock().unwrap();
                    seen.api_versions.insert(value.trim().to_string());
                }
            }
        }),
    );
}

/// Copies `from` to `to`, handing each complete text line to `note`.
async fn copy_scanning(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut note: impl FnMut(&str),
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::with_capacity(256);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buf[..n] {
            if byte == b'\n' {
                note(String::from_utf8_lossy(&line).trim_end_matches('\r'));
                line.clear();
            } else if line.len() < MAX_LINE {
                line.push(byte);
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
