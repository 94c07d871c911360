//! A test certificate authority (rcgen) for the TLS and mTLS tests: it issues server and
//! client certificates, PEM-encoded.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use std::path::Path;

use super::{write_pipeline, Gridflow};

/// A self-signed CA and its issuer.
pub struct Pki {
    /// The CA certificate (PEM): the root a client trusts, or the `client_ca` file.
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A CA named `gridflow test CA`.
    pub fn new() -> Pki {
        Pki::named("gridflow test CA")
    }

    /// A CA with `name` as its common name.
    pub fn named(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and its key (PEM) for `cn`, with `names` as subject alternative names.
    pub fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate and its key (PEM): `CN=gridflow`, for localhost and 127.0.0.1.
    pub fn server(&self) -> (String, String) {
        self.issue("gridflow", &["localhost", "127.0.0.1"])
    }
}

/// The `https://localhost:<port><path>` URL of `gf`'s listener (localhost: the name in
/// `Pki::server`'s certificate).
pub fn https_url(gf: &Gridflow, path: &str) -> String {
    let port = gf.http_addr().rsplit(':').next().unwrap();
    format!("https://localhost:{port}{path}")
}

/// Starts gridflow in `dir` with mTLS on its listener: `pki`'s server certificate and key, and
/// its CA as the client CA (`ca.pem`), with `access` (the allow-list lines) in `[http.tls]`,
/// and the pipeline `in.toml`: HTTP `/in` to the file `out/in.ndjson`.
pub fn start_mtls(pki: &Pki, dir: &Path, access: &str) -> Gridflow {
    let (server_cert, server_key) = pki.server();
    for (name, content) in [
        ("server.pem", &server_cert),
        ("server.key", &server_key),
        ("ca.pem", &pki.ca_pem),
    ] {
        std::fs::write(dir.join(name), content).unwrap();
    }
    std::fs::write(
        dir.join("gridflow.toml"),
        format!(
            "[http.tls]\ncert = 'server.pem'\nkey = 'server.key'\nclient_ca = 'ca.pem'\n{access}"
        ),
    )
    .unwrap();
    write_pipeline(
        dir,
        "in.toml",
        "[source]\nkind='http'\npath='/in'\n[sink]\nkind='file'\npath='out/in.ndjson'\n",
    );
    Gridflow::start(dir, &[])
}
