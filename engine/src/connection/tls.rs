//! `rediss://`: the TLS settings every connection to a Redis deployment
//! takes, and the one place a `redis::Client` is built from a URL.
//!
//! A server certificate signed by a private CA is trusted through
//! `KEYSHIFT_TLS_CA_CERT` (a PEM bundle); a server that asks for client
//! certificates gets `KEYSHIFT_TLS_CLIENT_CERT` and `KEYSHIFT_TLS_CLIENT_KEY`.
//! Without them the system's trust store is used. The files are read and
//! checked before any connection is tried, so a wrong path or a key that
//! does not match its certificate is a configuration error (exit 2) that
//! names the variable, not a handshake failure. They apply to `rediss://`
//! URLs only: the disposable `redis://` servers of the gate ignore them.
//!
//! The URL fragment `#insecure` (no certificate check) is refused: the
//! CA bundle is the way to trust a private certificate.

use std::path::{Path, PathBuf};

use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{EngineError, Result};

/// PEM file of the CA certificate(s) that signed the server's certificate.
pub const CA_CERT_ENV: &str = "KEYSHIFT_TLS_CA_CERT";
/// PEM file of the client certificate (chain), for servers that ask for one.
pub const CLIENT_CERT_ENV: &str = "KEYSHIFT_TLS_CLIENT_CERT";
/// PEM file of the client certificate's private key.
pub const CLIENT_KEY_ENV: &str = "KEYSHIFT_TLS_CLIENT_KEY";

/// The TLS files an operator named; each `None` when its variable is unset
/// or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// From `KEYSHIFT_TLS_CA_CERT`, `KEYSHIFT_TLS_CLIENT_CERT` and
    /// `KEYSHIFT_TLS_CLIENT_KEY`.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name).map(PathBuf::from))
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<PathBuf>) -> Self {
        let get = |name| lookup(name).filter(|p| !p.as_os_str().is_empty());
        Self {
            ca_cert: get(CA_CERT_ENV),
            client_cert: get(CLIENT_CERT_ENV),
            client_key: get(CLIENT_KEY_ENV),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }

    /// Reads and checks the files: every CA certificate parses into a
    /// trust anchor, the client key is a private key and matches its
    /// certificate. `None` when no variable is set (the system's roots).
    pub fn load(&self) -> Result<Option<TlsCertificates>> {
        if self.is_empty() {
            return Ok(None);
        }
        let root_cert = match &self.ca_cert {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        let client_tls = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(read_client(cert, key)?),
            (None, None) => None,
            (Some(_), None) => return Err(half_pair(CLIENT_CERT_ENV, CLIENT_KEY_ENV)),
            (None, Some(_)) => return Err(half_pair(CLIENT_KEY_ENV, CLIENT_CERT_ENV)),
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn half_pair(set: &'static str, missing: &'static str) -> EngineError {
    EngineError::Tls {
        setting: set.to_owned(),
        problem: format!("it is set but {missing} is not"),
        fix: format!(
            "set both {CLIENT_CERT_ENV} and {CLIENT_KEY_ENV} (the client certificate and its private key, PEM) or neither"
        ),
    }
}

fn file_error(var: &'static str, path: &Path, problem: String, what: &str) -> EngineError {
    EngineError::Tls {
        setting: format!("{var}={}", path.display()),
        problem,
        fix: format!("point {var} at {what}, or unset it"),
    }
}

const CA_WHAT: &str =
    "a PEM file of the CA certificate(s) that signed the server's certificate (-----BEGIN CERTIFICATE-----)";
const CERT_WHAT: &str = "a PEM file of the client certificate (-----BEGIN CERTIFICATE-----)";
const KEY_WHAT: &str =
    "a PEM file of the client certificate's private key (-----BEGIN PRIVATE KEY-----, RSA or EC)";

fn read(var: &'static str, path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| file_error(var, path, format!("cannot be read ({e})"), what))
}

/// The certificates of a PEM file; an error when it holds none or one
/// does not parse.
fn certificates(
    var: &'static str,
    path: &Path,
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(var, path, format!("is not valid PEM ({e})"), what))?;
    if certs.is_empty() {
        return Err(file_error(
            var,
            path,
            "holds no PEM certificate".into(),
            what,
        ));
    }
    Ok(certs)
}

fn read_ca(path: &Path) -> Result<Vec<u8>> {
    let pem = read(CA_CERT_ENV, path, CA_WHAT)?;
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates(CA_CERT_ENV, path, &pem, CA_WHAT)? {
        store.add(cert).map_err(|e| {
            file_error(
                CA_CERT_ENV,
                path,
                format!("holds a certificate that is not a usable CA certificate ({e})"),
                CA_WHAT,
            )
        })?;
    }
    Ok(pem)
}

fn read_client(cert_path: &Path, key_path: &Path) -> Result<ClientTlsConfig> {
    let client_cert = read(CLIENT_CERT_ENV, cert_path, CERT_WHAT)?;
    let chain = certificates(CLIENT_CERT_ENV, cert_path, &client_cert, CERT_WHAT)?;
    let client_key = read(CLIENT_KEY_ENV, key_path, KEY_WHAT)?;
    // The key's bytes never reach a message: only what kind of problem it has.
    let key = PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
        file_error(
            CLIENT_KEY_ENV,
            key_path,
            format!("holds no usable private key ({})", pem_problem(&e)),
            KEY_WHAT,
        )
    })?;
    // Building a client config checks that the key matches the certificate.
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
        .map_err(|e| EngineError::Tls {
            setting: format!(
                "{CLIENT_CERT_ENV}={} with {CLIENT_KEY_ENV}={}",
                cert_path.display(),
                key_path.display()
            ),
            problem: format!("the certificate and key cannot be used together ({e})"),
            fix: "set the client certificate and the private key it was issued for".into(),
        })?;
    Ok(ClientTlsConfig {
        client_cert,
        client_key,
    })
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section".into(),
        other => format!("{other:?}")
            .split('(')
            .next()
            .unwrap_or("invalid PEM")
            .to_owned(),
    }
}

/// The client for one server: with the TLS files of the environment for a
/// `rediss://` URL, as it is otherwise.
pub fn client(info: ConnectionInfo) -> Result<redis::Client> {
    client_with(info, &TlsFiles::from_env())
}

pub fn client_with(info: ConnectionInfo, files: &TlsFiles) -> Result<redis::Client> {
    // The address and file paths only: credentials live in `info.redis_settings()`.
    tracing::debug!(addr = ?info.addr(), tls_files = ?files, "building a Redis client");
    let open_error = |e: redis::RedisError| EngineError::BadUrl(e.to_string());
    match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => Err(insecure_refused()),
        ConnectionAddr::TcpTls { .. } => match files.load()? {
            Some(certs) => redis::Client::build_with_tls(info, certs).map_err(open_error),
            None => redis::Client::open(info).map_err(open_error),
        },
        _ => redis::Client::open(info).map_err(open_error),
    }
}

/// `#insecure` in a `rediss://` URL: refused, for single nodes and clusters alike.
pub fn insecure_refused() -> EngineError {
    EngineError::BadUrl(format!(
        "the #insecure fragment (no certificate check) is not supported; to trust a private certificate set {CA_CERT_ENV} to the PEM file of the CA that signed it"
    ))
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
