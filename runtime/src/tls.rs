//! TLS on the ingress listener (rustls), with optional client certificates (mTLS) checked
//! against a CA and an allow-list of subjects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;

use axum::http::StatusCode;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// `[http.tls]` in `gridflow.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) that client certificates must chain to: set, every client must present one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Client certificate subjects let in (as `CN=partner-a` or `CN=x, O=y`); empty (and no
    /// `allowed_subjects_file`): any certificate the CA signed.
    #[serde(default)]
    pub allowed_subjects: Vec<String>,
    /// File of more subjects let in, one a line (`#` comments), re-read every second: a
    /// subject removed is refused on its next request, without a restart. It must list at
    /// least one subject; a file that becomes unreadable or empty keeps the last good list.
    #[serde(default)]
    pub allowed_subjects_file: Option<PathBuf>,
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// How often the client CA and the subjects file are checked for changes.
pub const ACCESS_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Who may connect: the client CA (re-read when its file changes) and the allowed subjects
/// (`allowed_subjects` plus `allowed_subjects_file`, re-read when it changes).
pub struct ClientAccess {
    config: TlsConfig,
    subjects: ArcSwap<Vec<String>>,
    verifier: Option<Arc<ReloadingVerifier>>,
    /// Bumped each time a new client CA is applied: a connection whose certificate was
    /// verified under an earlier one is verified again, against the new CA, on its next
    /// request.
    ca_generation: AtomicU64,
    /// SHA-256 of the last content seen of the CA file and of the subjects file (valid or
    /// not), so that a change is applied, or reported, once.
    seen: Mutex<[Option<[u8; 32]>; 2]>,
    /// The last check of the CA file, of the subjects file, failed.
    failing: [AtomicBool; 2],
}

impl std::fmt::Debug for ClientAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAccess")
            .field("subjects", &self.subjects.load())
            .finish()
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The subjects of a subjects file: one a line, `#` comments; at least one.
fn parse_subjects(text: &str, path: &std::path::Path) -> Result<Vec<String>, String> {
    let subjects: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if subjects.is_empty() {
        return Err(format!(
            "{}: no subject (a subjects file lets in the subjects it lists; remove the file from [http.tls] to let in any certificate the CA signed)",
            path.display()
        ));
    }
    Ok(subjects)
}

impl ClientAccess {
    /// The client CA in force now (see [`ClientAccess::still_trusted`]).
    pub fn ca_generation(&self) -> u64 {
        self.ca_generation.load(Ordering::SeqCst)
    }

    /// True when the client certificate `chain` (end entity first) of a connection is
    /// trusted by the client CA in force. `verified` is the CA generation it was last
    /// verified under here ([`NOT_VERIFIED`] at first): it is verified at the connection's
    /// first request (a resumed TLS session skips the handshake's verification) and again
    /// whenever a new CA was applied since, so a certificate of a replaced CA is refused on
    /// the connection it already holds, not only at its next full handshake.
    pub fn still_trusted(&self, chain: &[CertificateDer<'static>], verified: &AtomicU64) -> bool {
        let Some(verifier) = &self.verifier else {
            return true;
        };
        let now = self.ca_generation();
        if verified.load(Ordering::SeqCst) == now {
            return true;
        }
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        let trusted = verifier
            .current()
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .is_ok();
        if trusted {
            verified.store(now, Ordering::SeqCst);
        }
        trusted
    }

    /// True when a client certificate of `subject` may send requests.
    pub fn allows(&self, subject: Option<&str>) -> bool {
        let subjects = self.subjects.load();
        subjects.is_empty() || subject.is_some_and(|s| subjects.iter().any(|a| a == s))
    }

    fn subjects_of(&self, file: Option<&[u8]>) -> Result<Vec<String>, String> {
        let mut subjects = self.config.allowed_subjects.clone();
        if let (Some(path), Some(bytes)) = (&self.config.allowed_subjects_file, file) {
            let text =
                std::str::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
            subjects.extend(parse_subjects(text, path)?);
        }
        Ok(subjects)
    }

    /// Re-reads the CA and the subjects file: for each file that changed, or still cannot be
    /// applied, what came of it (the last good one stays in force on a failure).
    pub fn reload(&self) -> Vec<(&'static str, Check)> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut outcomes = Vec::new();
        let files = [
            ("tls_client_ca", self.config.client_ca.as_ref()),
            (
                "tls_allowed_subjects",
                self.config.allowed_subjects_file.as_ref(),
            ),
        ];
        for (i, (list, path)) in files.into_iter().enumerate() {
            let Some(path) = path else { continue };
            let failing = &self.failing[i];
            let bytes = match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    if seen[i].take().is_some() || !failing.swap(true, Ordering::Relaxed) {
                        failing.store(true, Ordering::Relaxed);
                        outcomes.push((
                            list,
                            Check::Failed(format!("cannot read {}: {e}", path.display())),
                        ));
                    } else {
                        outcomes.push((list, Check::StillFailing));
                    }
                    continue;
                }
            };
            let digest = hash(&bytes);
            if seen[i] == Some(digest) {
                if failing.load(Ordering::Relaxed) {
                    outcomes.push((list, Check::StillFailing));
                }
                continue;
            }
            seen[i] = Some(digest);
            let applied = if i == 0 {
                match (&self.verifier, client_verifier(&bytes, path)) {
                    (Some(verifier), Ok(new)) => {
                        *verifier.inner.write().unwrap_or_else(|e| e.into_inner()) = new;
                        self.ca_generation.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                    (_, Err(e)) => Err(e),
                    (None, Ok(_)) => Ok(()),
                }
            } else {
                self.subjects_of(Some(&bytes))
                    .map(|subjects| self.subjects.store(Arc::new(subjects)))
            };
            failing.store(applied.is_err(), Ordering::Relaxed);
            outcomes.push((
                list,
                match applied {
                    Ok(()) => Check::Applied,
                    Err(e) => Check::Failed(e),
                },
            ));
        }
        outcomes
    }

    /// Re-reads the files every `interval` until `stop`, logging and counting what changed.
    pub async fn watch(self: Arc<Self>, interval: std::time::Duration, stop: CancellationToken) {
        if self.config.client_ca.is_none() && self.config.allowed_subjects_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            let access = Arc::clone(&self);
            let Ok(outcomes) = tokio::task::spawn_blocking(move || access.reload()).await else {
                continue;
            };
            for (list, outcome) in outcomes {
                match outcome {
                    Check::Applied => {
                        crate::metrics::access_list_reload(list, "applied");
                        tracing::info!(list, "TLS client access reloaded.");
                    }
                    Check::Failed(error) => {
                        crate::metrics::access_list_reload(list, "failed");
                        tracing::error!(list, error = %error, "TLS client access file not applied; the last good one stays in force.");
                    }
                    // Counted at every check while it lasts (for the alert), logged once.
                    Check::StillFailing => crate::metrics::access_list_reload(list, "failed"),
                }
            }
        }
    }
}

/// What a check of an access-list file came to.
#[derive(Debug, PartialEq)]
pub enum Check {
    /// A change was applied.
    Applied,
    /// A change could not be applied (unreadable, invalid): the last good list stays.
    Failed(String),
    /// Still as at the last check, which failed.
    StillFailing,
}

/// A client certificate verifier that can be replaced while connections come (a new CA).
#[derive(Debug)]
struct ReloadingVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ReloadingVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.inner.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a verifier that may be replaced: none are sent (clients
        // present their certificate all the same).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The verifier of client certificates signed by the CA (PEM `pem`, read from `ca`).
fn client_verifier(
    pem: &[u8],
    ca: &std::path::Path,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("{}: {e}", ca.display()))
}

/// The TLS acceptor of `config`.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    Ok(acceptor_with_access(config)?.0)
}

/// The TLS acceptor of `config`, and who may connect through it (to re-read with
/// [`ClientAccess::watch`]).
pub fn acceptor_with_access(
    config: &TlsConfig,
) -> Result<(TlsAcceptor, Arc<ClientAccess>), String> {
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
    let mut seen = [None, None];
    let verifier = match &config.client_ca {
        Some(ca) => {
            let pem = read_pem(ca)?;
            seen[0] = Some(hash(&pem));
            Some(Arc::new(ReloadingVerifier {
                inner: RwLock::new(client_verifier(&pem, ca)?),
            }))
        }
        None => None,
    };
    let server = match &verifier {
        Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier) as _),
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key do not fit: {e}"))?;
    let mut access = ClientAccess {
        config: config.clone(),
        subjects: ArcSwap::from_pointee(Vec::new()),
        verifier,
        ca_generation: AtomicU64::new(0),
        seen: Mutex::new([None, None]),
        failing: [AtomicBool::new(false), AtomicBool::new(false)],
    };
    let file = match &config.allowed_subjects_file {
        Some(path) => {
            let bytes = read_pem(path)?;
            seen[1] = Some(hash(&bytes));
            Some(bytes)
        }
        None => None,
    };
    access.subjects = ArcSwap::from_pointee(access.subjects_of(file.as_deref())?);
    access.seen = Mutex::new(seen);
    Ok((TlsAcceptor::from(Arc::new(server)), Arc::new(access)))
}

/// The subject of a DER certificate, e.g. `CN=partner-a`.
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

/// The subject of the client certificate a TLS connection presented, if any.
pub fn peer_subject<S>(stream: &tokio_rustls::server::TlsStream<S>) -> Option<String> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| subject(cert.as_ref()))
}

/// The client certificate chain a TLS connection presented (end entity first; empty: none).
pub fn peer_chain<S>(stream: &tokio_rustls::server::TlsStream<S>) -> Vec<CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default()
}

/// The CA generation of a connection not yet verified by [`ClientAccess::still_trusted`].
pub const NOT_VERIFIED: u64 = u64::MAX;

/// The client of one TLS connection: its certificate's subject and chain.
pub struct Peer {
    /// Its address, for logs.
    pub addr: SocketAddr,
    /// The subject of its certificate.
    pub subject: Option<String>,
    /// Its certificate chain, end entity first.
    pub chain: Vec<CertificateDer<'static>>,
}

/// `app` for one TLS connection of `peer`: the allow-list and the client CA are checked on
/// every request, not once per connection, so a subject removed from the allow-list, or a
/// certificate of a client CA that was replaced, is refused (`403` problem+json) on a
/// keep-alive connection it already holds.
pub fn guard(app: Router, access: Arc<ClientAccess>, peer: Peer) -> Router {
    let Peer {
        addr: peer,
        subject,
        chain,
    } = peer;
    let chain = Arc::new(chain);
    let verified = Arc::new(AtomicU64::new(NOT_VERIFIED));
    app.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let (access, subject) = (Arc::clone(&access), subject.clone());
            let (chain, verified) = (Arc::clone(&chain), Arc::clone(&verified));
            async move {
                if access.allows(subject.as_deref()) && access.still_trusted(&chain, &verified) {
                    return next.run(request).await;
                }
                tracing::warn!(peer = %peer, subject = subject.as_deref().unwrap_or(""), "Client certificate not allowed.");
                crate::sources::route::problem(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "this client certificate is not allowed",
                    json!({}),
                )
            }
        },
    ))
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
            allowed_subjects_file: None,
        }
    }

    fn error(config: &TlsConfig) -> String {
        match acceptor(config) {
            Ok(_) => panic!("the acceptor was built"),
            Err(e) => e,
        }
    }

    /// A CA and a client certificate it signed (DER).
    fn ca_and_client() -> (String, CertificateDer<'static>) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "CA");
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let issuer = Issuer::new(params, key);
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "partner-a");
        let client_key = KeyPair::generate().unwrap();
        let cert = client.signed_by(&client_key, &issuer).unwrap();
        (ca_pem, cert.der().clone())
    }

    /// A connection's certificate is verified against the CA in force at its first request
    /// (a resumed TLS session skips the handshake's verification) and again after a new CA
    /// is applied: one the new CA did not sign is refused on the connection it holds.
    #[test]
    fn a_connection_is_verified_again_when_the_client_ca_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = self_signed();
        let cert = write(dir.path(), "server.pem", &cert_pem);
        let key = write(dir.path(), "server.key", &key_pem);
        let (ca_pem, client) = ca_and_client();
        let (other_ca_pem, other_client) = ca_and_client();
        let ca = write(dir.path(), "ca.pem", &ca_pem);
        let (_, access) = acceptor_with_access(&config(cert, key, Some(ca.clone()))).unwrap();

        let held = AtomicU64::new(NOT_VERIFIED);
        assert!(access.still_trusted(std::slice::from_ref(&client), &held));
        assert_eq!(held.load(Ordering::SeqCst), access.ca_generation());
        // Never signed by the CA (a session resumed from before): refused at once.
        let stranger = AtomicU64::new(NOT_VERIFIED);
        assert!(!access.still_trusted(std::slice::from_ref(&other_client), &stranger));
        assert!(!access.still_trusted(&[], &AtomicU64::new(NOT_VERIFIED)));

        // The CA is replaced: the held connection's certificate is refused, the new CA's let in.
        std::fs::write(&ca, &other_ca_pem).unwrap();
        let outcomes = access.reload();
        assert_eq!(outcomes, vec![("tls_client_ca", Check::Applied)]);
        assert!(!access.still_trusted(std::slice::from_ref(&client), &held));
        assert!(access.still_trusted(std::slice::from_ref(&other_client), &stranger));
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
