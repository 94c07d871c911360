//! TLS on the ingress listener (rustls), with optional client certificates (mTLS) checked
//! against a CA and an allow-list of subjects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

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
    let certs: Vec<_> = rustls_pemfile::certs(&mut read_pem(&config.cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", config.cert.display()))?;
    let key = rustls_pemfile::private_key(&mut read_pem(&config.key)?.as_slice())
        .map_err(|e| format!("{}: {e}", config.key.display()))?
        .ok_or_else(|| format!("{}: no private key", config.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let server = match &config.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut read_pem(ca)?.as_slice()) {
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

/// Serves `app` over TLS on `listener` until `shutdown`. A client certificate whose subject is
/// not allowed gets `403` problem+json on every request of its connection.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allowed: Arc<Vec<String>>,
    app: Router,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS listener accept failed.");
                    continue;
                }
            },
        };
        let (acceptor, app, allowed) = (acceptor.clone(), app.clone(), Arc::clone(&allowed));
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::info!(peer = %peer, error = %e, "TLS handshake refused.");
                    return;
                }
            };
            let subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| subject(cert.as_ref()));
            let let_in =
                allowed.is_empty() || subject.as_ref().is_some_and(|s| allowed.contains(s));
            let app = if let_in {
                app.layer(axum::Extension(ConnectInfo(peer)))
            } else {
                tracing::warn!(peer = %peer, subject = subject.as_deref().unwrap_or(""), "Client certificate not allowed.");
                Router::new().fallback(|| async {
                    crate::sources::http::problem(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        "this client certificate is not allowed",
                        json!({}),
                    )
                })
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

/// Where the listener is, for logs.
pub fn describe(addr: SocketAddr, config: &TlsConfig) -> String {
    match &config.client_ca {
        Some(_) => format!("https://{addr} (client certificates required)"),
        None => format!("https://{addr}"),
    }
}
