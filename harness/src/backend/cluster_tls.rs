//! [`ClusterTls`]: the TLS a disposable cluster's nodes serve and speak on
//! their bus (see `cluster`'s module doc).

use std::path::PathBuf;

use super::ServerSetup;

/// The TLS files of a TLS cluster (PEM files on this host): each node gets
/// a copy in its working dir.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// The server certificate (for 127.0.0.1), also used on the bus.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed `cert`: what nodes trust on the bus, and what
    /// client certificates must be signed by.
    pub ca: PathBuf,
    /// `tls-auth-clients yes`: clients must present a certificate.
    pub auth_clients: bool,
    /// The certificate and key a node presents when it connects to
    /// another (bus, MIGRATE) as a client: needed with `auth_clients` when
    /// `cert` is for server use only. `None`: `cert` serves both ways.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl ClusterTls {
    /// The node arguments for a TLS port `port` (files by the names
    /// [`ClusterTls::setup`] places them under).
    pub(super) fn args(&self, port: u16) -> Vec<String> {
        let auth = if self.auth_clients { "yes" } else { "no" };
        let client = if self.client.is_some() {
            [
                "--tls-client-cert-file",
                "client.crt",
                "--tls-client-key-file",
                "client.key",
            ]
            .as_slice()
        } else {
            &[]
        };
        [
            "--tls-port",
            &port.to_string(),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            "node.crt",
            "--tls-key-file",
            "node.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            auth,
        ]
        .iter()
        .chain(client)
        .map(|a| (*a).to_owned())
        .collect()
    }

    pub(super) fn setup(&self, setup: ServerSetup) -> ServerSetup {
        let setup = setup
            .file(&self.cert, "node.crt")
            .file(&self.key, "node.key")
            .file(&self.ca, "ca.crt");
        match &self.client {
            Some((cert, key)) => setup.file(cert, "client.crt").file(key, "client.key"),
            None => setup,
        }
    }
}
