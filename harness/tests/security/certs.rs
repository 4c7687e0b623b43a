//! A private CA, a server certificate for 127.0.0.1 and a client
//! certificate, made at test time as PEM files in a temp dir.

use std::path::{Path, PathBuf};

pub struct Pki {
    dir: tempfile::TempDir,
}

pub const CA: &str = "ca.crt";
pub const SERVER_CERT: &str = "redis.crt";
pub const SERVER_KEY: &str = "redis.key";
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";
/// A CA that signed nothing here: trusting it alone must fail.
pub const OTHER_CA: &str = "other-ca.crt";

fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert, rcgen::Issuer::new(params, key))
}

fn leaf(
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("leaf params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyshift-pki-")
            .tempdir()
            .expect("a temp dir");
        let (ca_cert, issuer) = ca("keyshift test CA");
        let (other_ca, _) = ca("some other CA");
        let (server_cert, server_key) = leaf(
            &["127.0.0.1", "localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let (client_cert, client_key) = leaf(
            &["keyshift-client"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        );
        for (name, pem) in [
            (CA, ca_cert.pem()),
            (OTHER_CA, other_ca.pem()),
            (SERVER_CERT, server_cert),
            (SERVER_KEY, server_key),
            (CLIENT_CERT, client_cert),
            (CLIENT_KEY, client_key),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("writing a PEM file");
        }
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
