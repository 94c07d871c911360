//! TLS on the ingress listener (rustls), with optional client certificates (mTLS) checked
//! against a CA and an allow-list of subjects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// `[http.tls]` in `gridflow.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) that client certificates must chain to: set, every client must present one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Client certificate subjects let in (as `CN=partner-a` or `CN=x, O=y`); empty: any
    /// certificate the CA signed.
    #[serde(default)]
    pub allowed_subjects: Vec<String>,
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The TLS acceptor of `config`.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&read_pem(&config.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", config.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&config.key)?).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("{}: no private key", config.key.display()),
        e => format!("{}: {e}", config.key.display()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let server = match &config.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read_pem(ca)?) {
                roots
                    .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key do not fit: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The subject of a DER certificate, e.g. `CN=partner-a`.
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

/// Whether the client of `stream` may be served: its certificate's subject is on `allowed`
/// (or `allowed` is empty). A refused client is logged.
pub fn client_allowed<S>(
    stream: &tokio_rustls::server::TlsStream<S>,
    allowed: &[String],
    peer: SocketAddr,
) -> bool {
    let subject = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| subject(cert.as_ref()));
    let let_in = allowed.is_empty()
        || subject
            .as_ref()
            .is_some_and(|s| allowed.iter().any(|a| a == s));
    if !let_in {
        tracing::warn!(peer = %peer, subject = subject.as_deref().unwrap_or(""), "Client certificate not allowed.");
    }
    let_in
}

/// What a client whose certificate is not allowed gets: `403` problem+json on every request
/// of its connection.
pub fn forbidden() -> Router {
    Router::new().fallback(|| async {
        crate::sources::http::problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "this client certificate is not allowed",
            json!({}),
        )
    })
}

/// Where the listener is, for logs.
pub fn describe(addr: SocketAddr, config: &TlsConfig) -> String {
    match &config.client_ca {
        Some(_) => format!("https://{addr} (client certificates required)"),
        None => format!("https://{addr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn config(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert,
            key,
            client_ca,
            allowed_subjects: Vec::new(),
        }
    }

    fn error(config: &TlsConfig) -> String {
        match acceptor(config) {
            Ok(_) => panic!("the acceptor was built"),
            Err(e) => e,
        }
    }

    #[test]
    fn pem_files_are_read_and_their_faults_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = self_signed();
        let cert = write(dir.path(), "server.pem", &cert_pem);
        let key = write(dir.path(), "server.key", &key_pem);
        // A chain and key as rcgen (and openssl) write them, the CA file with two certificates.
        let (other_pem, _) = self_signed();
        let ca = write(dir.path(), "ca.pem", &format!("{cert_pem}{other_pem}"));
        assert!(acceptor(&config(cert.clone(), key.clone(), None)).is_ok());
        assert!(acceptor(&config(cert.clone(), key.clone(), Some(ca))).is_ok());

        // The key file holds a certificate only.
        let e = error(&config(cert.clone(), cert.clone(), None));
        assert!(e.ends_with("server.pem: no private key"), "{e}");
        // The certificate file holds a key only: no certificate at all.
        let e = error(&config(key.clone(), key.clone(), None));
        assert!(e.contains("do not fit") || e.contains("server.key"), "{e}");
        // A PEM block whose base64 is broken.
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let e = error(&config(broken, key.clone(), None));
        assert!(
            e.starts_with(&format!("{}: ", dir.path().join("broken.pem").display())),
            "{e}"
        );
        // A missing file.
        let e = error(&config(dir.path().join("missing.pem"), key, None));
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
