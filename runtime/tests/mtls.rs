//! Black-box: HTTPS with client certificates (mTLS) on the ingress listener, with certificates
//! made by the test (rcgen): an allowed subject is served, another subject signed by the same
//! CA gets 403, a client without a certificate is refused at the handshake.

mod common;

use common::pki::{https_url, start_mtls, Pki};
use common::*;

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
    let gf = start_mtls(&pki, dir.path(), "allowed_subjects = ['CN=partner-a']\n");
    let url = https_url(&gf, "/in");

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
