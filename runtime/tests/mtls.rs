//! Black-box: HTTPS with client certificates (mTLS) on the ingress listener, with certificates
//! made by the test (rcgen): an allowed subject is served, another subject signed by the same
//! CA gets 403, a client without a certificate is refused at the handshake.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gridflow test CA");
        let key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and its key (PEM) for `cn`, with `names` as subject alternative names.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn client(pki: &Pki, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pkcs8_pem(cert.as_bytes(), key.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_checked_against_the_ca_and_the_allow_list() {
    let pki = Pki::new();
    let dir = test_dir();
    let (server_cert, server_key) = pki.issue("gridflow", &["localhost", "127.0.0.1"]);
    for (name, content) in [
        ("server.pem", &server_cert),
        ("server.key", &server_key),
        ("ca.pem", &pki.ca_pem),
    ] {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[http.tls]\ncert = 'server.pem'\nkey = 'server.key'\nclient_ca = 'ca.pem'\nallowed_subjects = ['CN=partner-a']\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "in.toml",
        "[source]\nkind='http'\npath='/in'\n[sink]\nkind='file'\npath='out/in.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let url = format!(
        "https://localhost:{}/in",
        gf.http_addr().rsplit(':').next().unwrap()
    );

    let allowed = pki.issue("partner-a", &[]);
    let r = client(&pki, Some(&allowed))
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let other = pki.issue("partner-b", &[]);
    let r = client(&pki, Some(&other))
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"a":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let refused = client(&pki, None)
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"a":3}"#)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "no client certificate, no connection: {refused:?}"
    );

    let written = std::fs::read_to_string(dir.path().join("out/in.ndjson")).unwrap();
    assert_eq!(
        written.trim(),
        r#"{"a":1}"#,
        "only the allowed client's message"
    );
}
