//! Disposable servers locked down as production is: the default user has a
//! password, keyshift's users come from the ACL files shipped under
//! docs/acl (the text docs/security.md shows), and optionally a TLS port that
//! asks for client certificates. Process backend by default; docker with
//! KEYSHIFT_TEST_BACKEND=docker (files placed with `ServerSetup`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keyshift_harness::backend::{docker_available, BackendKind, RedisServer, ServerSetup};
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};

use super::certs::{self, Pki};
use crate::support::test_backend;

pub const ADMIN_PASSWORD: &str = "adm1n-Kq7vX2wJ";
pub const MIGRATE_USER: &str = "keyshift-migrate";
pub const MIGRATE_PASSWORD: &str = "m1grate-Zt4pW8sR";
pub const READONLY_USER: &str = "keyshift-readonly";
pub const READONLY_PASSWORD: &str = "r3ad-Yh6nB1cQe";
/// What the shipped files hold where a password goes.
const PLACEHOLDER: &str = "#PASSWORD_SHA256";

/// The user line of docs/acl/NAME.acl, as shipped.
pub fn shipped_acl(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/acl")
        .join(format!("{name}.acl"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shipped line with the placeholder replaced as docs/security.md says:
/// `#` and the password's SHA-256.
fn with_password(line: &str, password: &str) -> String {
    assert!(line.contains(PLACEHOLDER), "no {PLACEHOLDER} in {line}");
    let hash: String = Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    line.replace(PLACEHOLDER, &format!("#{hash}"))
}

fn users_acl() -> String {
    let admin = with_password(
        "user default on #PASSWORD_SHA256 ~* &* +@all",
        ADMIN_PASSWORD,
    );
    users_acl_with(&admin)
}

/// An ACL file: `default` (its whole line), then the shipped users with
/// their test passwords.
fn users_acl_with(default: &str) -> String {
    let migrate = with_password(&shipped_acl("keyshift-migrate"), MIGRATE_PASSWORD);
    let readonly = with_password(&shipped_acl("keyshift-readonly"), READONLY_PASSWORD);
    format!(
        "{default}\n{}\n{}\n",
        migrate.trim_end(),
        readonly.trim_end()
    )
}

/// A cluster's users.acl, written in `dir`; its path. The default user
/// keeps no password there, as the harness forms the cluster through it.
pub fn cluster_acl_file(dir: &Path) -> String {
    let acl = dir.join("users.acl");
    std::fs::write(&acl, users_acl_with("user default on nopass ~* &* +@all"))
        .expect("writing users.acl");
    acl.display().to_string()
}

pub struct Secured {
    pub server: RedisServer,
    pub admin: MultiplexedConnection,
    pub tls_port: Option<u16>,
    _files: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

impl Secured {
    /// A server whose users are the shipped ACL files'; with `pki`, also a
    /// TLS port (client certificates required) whose certificate `pki`'s
    /// CA signed.
    pub async fn start(pki: Option<&Pki>) -> Self {
        let files = tempfile::tempdir().expect("a temp dir");
        let acl = files.path().join("users.acl");
        std::fs::write(&acl, users_acl()).expect("writing users.acl");
        let mut setup = ServerSetup::new()
            .file(&acl, "users.acl")
            .args(&["--aclfile", "users.acl"]);
        let mut kind = test_backend();
        if kind == BackendKind::Auto {
            kind = if docker_available().await {
                BackendKind::Docker
            } else {
                BackendKind::Process
            };
        }
        let mut tls_port = None;
        if let Some(pki) = pki {
            let port = free_port();
            for name in [certs::CA, certs::SERVER_CERT, certs::SERVER_KEY] {
                setup = setup.file(pki.path(name), name);
            }
            // Docker publishes the container's TLS port on the chosen host port.
            let listen = if kind == BackendKind::Docker {
                setup = setup.publish(port, 6380);
                6380
            } else {
                port
            };
            setup = setup.args(&[
                "--tls-port",
                &listen.to_string(),
                "--tls-cert-file",
                certs::SERVER_CERT,
                "--tls-key-file",
                certs::SERVER_KEY,
                "--tls-ca-cert-file",
                certs::CA,
                "--tls-auth-clients",
                "yes",
            ]);
            tls_port = Some(port);
        }
        let server = RedisServer::start_setup(kind, &setup)
            .await
            .expect("a disposable redis with users and TLS");
        let admin_url = format!("redis://:{ADMIN_PASSWORD}@127.0.0.1:{}", server.port());
        let admin = redis::Client::open(admin_url)
            .expect("admin URL")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        Self {
            server,
            admin,
            tls_port,
            _files: files,
        }
    }

    /// `redis://USER:PASSWORD@127.0.0.1:PORT` on the plain port.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.server.port())
    }

    /// `rediss://USER:PASSWORD@127.0.0.1:TLS_PORT`.
    pub fn tls_url(&self, user: &str, password: &str) -> String {
        let port = self.tls_port.expect("a server started with TLS");
        format!("rediss://{user}:{password}@127.0.0.1:{port}")
    }

    /// Every key's type and value, members and fields sorted (DUMP is no
    /// fingerprint: a dict may rehash, and reorder, on a read). This
    /// test's own server: KEYS is fine.
    pub async fn snapshot(&self) -> BTreeMap<String, String> {
        let mut c = self.admin.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            let mut read = match kind.as_str() {
                "string" => redis::cmd("GET"),
                "hash" => redis::cmd("HGETALL"),
                "set" => redis::cmd("SMEMBERS"),
                "zset" => redis::cmd("ZRANGE"),
                "list" => redis::cmd("LRANGE"),
                other => panic!("{k}: unexpected type {other}"),
            };
            read.arg(&k);
            match kind.as_str() {
                "zset" => read.arg(0).arg(-1).arg("WITHSCORES"),
                "list" => read.arg(0).arg(-1),
                _ => &mut read,
            };
            let value: redis::Value = read.query_async(&mut c).await.unwrap();
            let text = match &value {
                // A list's order is its value.
                redis::Value::Array(items) | redis::Value::Set(items) if kind != "list" => {
                    let step = if kind == "set" { 1 } else { 2 };
                    let mut parts: Vec<String> =
                        items.chunks(step).map(|pair| format!("{pair:?}")).collect();
                    parts.sort();
                    parts.join(",")
                }
                other => format!("{other:?}"),
            };
            out.insert(k, format!("{kind}:{text}"));
        }
        out
    }
}
