use std::path::{Path, PathBuf};

use redis::IntoConnectionInfo;

use super::*;
use crate::error::unreachable_advice;

/// A CA and a client certificate it signed, as PEM files in a temp dir.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keyshift-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["keyshift".to_owned()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        for (file, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
            ("other.key", other_key.serialize_pem()),
            ("garbage.pem", "not a certificate\n".to_owned()),
        ] {
            std::fs::write(dir.join(file), pem).unwrap();
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsFiles {
    TlsFiles {
        ca_cert: ca.map(Path::to_path_buf),
        client_cert: cert.map(Path::to_path_buf),
        client_key: key.map(Path::to_path_buf),
    }
}

fn tls_error(r: Result<Option<TlsCertificates>>) -> String {
    match r {
        Err(e @ EngineError::Tls { .. }) => e.to_string(),
        Err(other) => panic!("not a TLS setting error: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn variables_are_read_by_name_and_empty_means_unset() {
    let f = TlsFiles::from_lookup(|name| match name {
        CA_CERT_ENV => Some("/etc/ca.pem".into()),
        CLIENT_CERT_ENV => Some("".into()),
        _ => None,
    });
    assert_eq!(f, files(Some(Path::new("/etc/ca.pem")), None, None));
    assert!(TlsFiles::from_lookup(|_| None).is_empty());
}

#[test]
fn no_files_means_the_system_roots() {
    assert!(TlsFiles::default().load().unwrap().is_none());
}

#[test]
fn a_ca_bundle_and_a_matching_client_pair_load() {
    let pki = Pki::new("ok");
    let certs = files(
        Some(&pki.path("ca.pem")),
        Some(&pki.path("client.pem")),
        Some(&pki.path("client.key")),
    )
    .load()
    .unwrap()
    .expect("certificates");
    assert!(certs.root_cert.is_some() && certs.client_tls.is_some());
}

#[test]
fn a_missing_ca_file_names_the_variable_and_what_to_do() {
    let text = tls_error(files(Some(Path::new("/nonexistent/ca.pem")), None, None).load());
    assert!(
        text.contains("KEYSHIFT_TLS_CA_CERT=/nonexistent/ca.pem"),
        "{text}"
    );
    assert!(text.contains("cannot be read"), "{text}");
    assert!(
        text.contains("point KEYSHIFT_TLS_CA_CERT at a PEM file"),
        "{text}"
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_refused() {
    let pki = Pki::new("garbage");
    let text = tls_error(files(Some(&pki.path("garbage.pem")), None, None).load());
    assert!(text.contains("holds no PEM certificate"), "{text}");
    // A key is not a certificate either.
    let text = tls_error(files(Some(&pki.path("client.key")), None, None).load());
    assert!(text.contains("holds no PEM certificate"), "{text}");
}

#[test]
fn half_a_client_pair_is_refused() {
    let pki = Pki::new("half");
    let text = tls_error(files(None, Some(&pki.path("client.pem")), None).load());
    assert!(text.contains("KEYSHIFT_TLS_CLIENT_KEY is not"), "{text}");
    let text = tls_error(files(None, None, Some(&pki.path("client.key"))).load());
    assert!(text.contains("KEYSHIFT_TLS_CLIENT_CERT is not"), "{text}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_without_printing_it() {
    let pki = Pki::new("mismatch");
    let text = tls_error(
        files(
            None,
            Some(&pki.path("client.pem")),
            Some(&pki.path("other.key")),
        )
        .load(),
    );
    assert!(text.contains("cannot be used together"), "{text}");
    let key = std::fs::read_to_string(pki.path("other.key")).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!text.contains(body), "{text}");
    let text = tls_error(
        files(
            None,
            Some(&pki.path("client.pem")),
            Some(&pki.path("client.pem")),
        )
        .load(),
    );
    assert!(text.contains("holds no usable private key"), "{text}");
}

#[test]
fn insecure_fragment_is_refused_with_the_ca_variable_named() {
    let info = "rediss://127.0.0.1:6380/#insecure"
        .into_connection_info()
        .unwrap();
    match client_with(info, &TlsFiles::default()) {
        Err(e @ EngineError::BadUrl(_)) => {
            assert!(e.to_string().contains("KEYSHIFT_TLS_CA_CERT"), "{e}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("#insecure accepted"),
    }
}

#[test]
fn plain_urls_ignore_the_tls_files() {
    let info = "redis://127.0.0.1:6379".into_connection_info().unwrap();
    let broken = files(Some(Path::new("/nonexistent/ca.pem")), None, None);
    assert!(client_with(info, &broken).is_ok());
    let info = "rediss://127.0.0.1:6380".into_connection_info().unwrap();
    assert!(matches!(
        client_with(info, &broken),
        Err(EngineError::Tls { .. })
    ));
}

#[test]
fn advice_matches_what_failed() {
    let plain = unreachable_advice("redis://h:1", "invalid peer certificate: UnknownIssuer");
    assert!(plain.contains("credentials"), "{plain}");
    let tls = |e| unreachable_advice("rediss://h:1", e);
    assert!(tls("invalid peer certificate: UnknownIssuer").contains("KEYSHIFT_TLS_CA_CERT"));
    assert!(tls("received fatal alert: CertificateRequired").contains("KEYSHIFT_TLS_CLIENT_CERT"));
    assert!(tls("received corrupt message of type InvalidContentType").contains("tls-port"));
    assert!(tls("Connection refused (os error 111)").contains("server is up"));
    let cluster = unreachable_advice(
        "rediss+cluster://h:1",
        "invalid peer certificate: UnknownIssuer",
    );
    assert!(cluster.contains("KEYSHIFT_TLS_CA_CERT"), "{cluster}");
    for url in ["redis://h:1", "rediss://h:1"] {
        let wrong =
            unreachable_advice(url, "Password authentication failed - AuthenticationFailed");
        assert!(
            wrong.contains("refused the user name or password"),
            "{wrong}"
        );
    }
}
