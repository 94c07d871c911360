//! Hostile ingress, who gets in (issue 24, items 1, 9 and 13), black-box against the real
//! binary:
//! - an API-key file holding a key as `openssl rand -base64 32` prints it (ending in `=`):
//!   an empty or blank `X-API-Key` gets `401` problem+json, the real key gets in, alone on its
//!   line or as `client=key`;
//! - key rotation: a key removed from the file is refused within a bounded wait, a new one is
//!   let in, a broken file keeps the last good keys (logged and counted), no restart;
//! - mTLS rotation: a subject removed from `allowed_subjects_file` is refused on the
//!   keep-alive connection it holds, a new client CA replaces the old one, no restart;
//! - the admin listener: `POST /admin/reload` from loopback without a token works; with a
//!   token, no header or a wrong one gets `401`, the right one `200`, probes stay open;
//!   without a token, a client that is not on loopback gets `403`.
//!
//! The pipelines write to `file` sinks: no broker is needed for what these tests check.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::pki::{https_url, start_mtls, Pki};
use common::*;
use serde_json::Value;

/// A key as `openssl rand -base64 32` prints it: 44 characters, `=` padding.
fn base64_key() -> String {
    loop {
        let bytes: [u8; 32] = std::array::from_fn(|_| rand_byte());
        let key = base64::engine::general_purpose::STANDARD.encode(bytes);
        // The interesting keys hold `+` or `/` as well as the padding.
        if key.contains(['+', '/']) {
            return key;
        }
    }
}

fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

/// Writes `text` to `path` the way Kubernetes and editors replace files: beside it, then
/// renamed over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn post_with(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = http()
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"reading": 1}"#);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn status_with(url: &str, headers: &[(&str, &str)]) -> u16 {
    post_with(url, headers).await.status().as_u16()
}

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{status} is problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

/// Polls `check` every 100 ms until it holds or `timeout` passed; true if it held.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn pipeline(path: &str, keys_file: &str, out: &str) -> String {
    format!(
        "[source]\nkind = 'http'\npath = '{path}'\n[source.auth]\napi_keys_file = '{keys_file}'\n\
         [sink]\nkind = 'file'\npath = '{out}'\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_is_refused_and_a_base64_key_is_let_in() {
    let dir = test_dir();
    let (alone, named) = (base64_key(), base64_key());
    assert!(alone.ends_with('=') && named.ends_with('='));
    // The issue's file: the key alone, no client name. And the `client=key` form.
    std::fs::write(dir.path().join("keys-alone"), format!("{alone}\n")).unwrap();
    std::fs::write(
        dir.path().join("keys-named"),
        format!("# partners\nelia={named}\n"),
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "alone.toml",
        &pipeline("/in/alone", "keys-alone", "out/alone.ndjson"),
    );
    write_pipeline(
        dir.path(),
        "named.toml",
        &pipeline("/in/named", "keys-named", "out/named.ndjson"),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    for (path, key, out) in [
        ("/in/alone", &alone, "out/alone.ndjson"),
        ("/in/named", &named, "out/named.ndjson"),
    ] {
        let url = gf.http_url(path);
        // Nothing, an empty key, a blank key, an empty bearer: 401, never let in.
        for headers in [
            vec![],
            vec![("x-api-key", "")],
            vec![("x-api-key", "   ")],
            vec![("authorization", "Bearer ")],
            vec![("authorization", "Bearer")],
        ] {
            let response = post_with(&url, &headers).await;
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_problem(response, 401).await;
        }
        // What the old parser accepted instead of the key: its part before `=`, the client.
        let (before, _) = key.split_once('=').unwrap();
        assert_problem(post_with(&url, &[("x-api-key", before)]).await, 403).await;
        assert_problem(post_with(&url, &[("x-api-key", "elia")]).await, 403).await;
        assert_eq!(
            lines_in(&dir.path().join(out)),
            0,
            "nothing got in to {path}"
        );

        // The real key, in either header.
        assert_eq!(
            status_with(&url, &[("x-api-key", key)]).await,
            202,
            "{path}"
        );
        let bearer = format!("Bearer {key}");
        assert_eq!(
            status_with(&url, &[("authorization", &bearer)]).await,
            202,
            "{path}"
        );
        assert_eq!(lines_in(&dir.path().join(out)), 2, "{path}");
    }
    let log = gf.log_text();
    assert!(
        !log.contains(&alone) && !log.contains(&named),
        "a key is in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_key_file_line_stops_the_pipeline_naming_the_line_not_the_key() {
    let dir = test_dir();
    let key = base64_key();
    // `tso=` with nothing after it, and a line that is neither a key nor `client=key`.
    std::fs::write(
        dir.path().join("keys"),
        format!("# partners\ntso=\nelia={key}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("keys-2"),
        format!("elia={key}\na+b={key}\n"),
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "bad.toml",
        &pipeline("/in/bad", "keys", "out/bad.ndjson"),
    );
    write_pipeline(
        dir.path(),
        "bad2.toml",
        &pipeline("/in/bad2", "keys-2", "out/bad2.ndjson"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let pipelines = gf.admin_pipelines().await.to_string();
    assert!(
        pipelines.contains("line 2: client `tso` has no key"),
        "{pipelines}"
    );
    assert!(pipelines.contains("keys-2 line 2:"), "{pipelines}");
    assert!(!pipelines.contains(&key), "the key is shown: {pipelines}");
    assert!(!gf.log_text().contains(&key), "a key is in the log");
    // Not served: nobody gets in through a pipeline whose keys could not be read.
    let r = post_with(&gf.http_url("/in/bad"), &[("x-api-key", "")]).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_and_a_new_one_let_in_without_a_restart() {
    let dir = test_dir();
    let (a, b, c) = (base64_key(), base64_key(), base64_key());
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("a={a}\nb={b}\n")).unwrap();
    write_pipeline(
        dir.path(),
        "in.toml",
        &pipeline("/in", "keys", "out/in.ndjson"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let url = gf.http_url("/in");
    assert_eq!(status_with(&url, &[("x-api-key", &a)]).await, 202);
    assert_eq!(status_with(&url, &[("x-api-key", &c)]).await, 403);

    // `a` revoked, `c` added.
    replace_file(&keys, &format!("b={b}\nc={c}\n"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_with(&url, &[("x-api-key", &a)]).await == 403
        })
        .await,
        "the revoked key is still let in 10 s later"
    );
    assert_eq!(status_with(&url, &[("x-api-key", &c)]).await, 202);
    assert_eq!(status_with(&url, &[("x-api-key", &b)]).await, 202);
    assert!(gf.wait_for_log("API keys reloaded.", Duration::from_secs(5)));

    // A broken file (a client without key) and then a missing one keep the last good keys.
    replace_file(&keys, "b=\n");
    assert!(
        gf.wait_for_log("API key file not applied", Duration::from_secs(10)),
        "no error logged for the broken key file"
    );
    assert_eq!(status_with(&url, &[("x-api-key", &b)]).await, 202);
    assert_eq!(status_with(&url, &[("x-api-key", &c)]).await, 202);
    assert_eq!(status_with(&url, &[("x-api-key", "b")]).await, 403);
    std::fs::remove_file(&keys).unwrap();
    let failed = |scrape: &str| {
        scrape
            .lines()
            .find(|l| {
                l.starts_with("gridflow_access_list_reloads_total")
                    && l.contains("list=\"api_keys\"")
                    && l.contains("outcome=\"failed\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            failed(&gf.metrics().await) >= 2.0
        })
        .await,
        "the failed reloads are not counted:\n{}",
        gf.metrics().await
    );
    assert_eq!(status_with(&url, &[("x-api-key", &b)]).await, 202);
    assert_eq!(status_with(&url, &[("x-api-key", &a)]).await, 403);

    // Back, with only `a`: `b` and `c` are refused again.
    replace_file(&keys, &format!("a={a}\n"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_with(&url, &[("x-api-key", &b)]).await == 403
        })
        .await,
        "the revoked key is still let in 10 s later"
    );
    assert_eq!(status_with(&url, &[("x-api-key", &c)]).await, 403);
    let before = lines_in(&dir.path().join("out/in.ndjson"));
    assert_eq!(status_with(&url, &[("x-api-key", &a)]).await, 202);
    assert_eq!(
        lines_in(&dir.path().join("out/in.ndjson")),
        before + 1,
        "a 202 wrote its record"
    );
    let log = gf.log_text();
    for key in [&a, &b, &c] {
        assert!(!log.contains(key.as_str()), "a key is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_from_loopback_without_a_token() {
    let dir = test_dir();
    let gf = Gridflow::start(dir.path(), &[]);
    let r = http()
        .post(gf.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert!(report["pipelines"].is_array(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_need_the_token_when_one_is_configured() {
    let dir = test_dir();
    let token = base64_key();
    std::fs::write(dir.path().join("admin-token"), format!("{token}\n")).unwrap();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[admin]\ntoken_file = 'admin-token'\n",
    )
    .unwrap();
    let gf = Gridflow::start(dir.path(), &[]);
    let reload = |authorization: Option<String>| {
        let mut request = http().post(gf.admin_url("/admin/reload"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };
    let r = reload(None).await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, 401).await;
    assert_problem(reload(Some("Bearer ".into())).await.unwrap(), 401).await;
    assert_problem(
        reload(Some("Bearer not-the-admin-token-at-all".into()))
            .await
            .unwrap(),
        401,
    )
    .await;
    // The token without its padding is another token.
    let (unpadded, _) = token.split_once('=').unwrap();
    assert_problem(
        reload(Some(format!("Bearer {unpadded}"))).await.unwrap(),
        401,
    )
    .await;
    let r = reload(Some(format!("Bearer {token}"))).await.unwrap();
    assert_eq!(r.status(), 200);
    // Any other mutating method is guarded too, even on a path that does not exist.
    let r = http()
        .delete(gf.admin_url("/admin/pipelines"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;

    // Probes, scrapes and reads stay open.
    for path in ["/health/live", "/metrics", "/admin/pipelines"] {
        let r = http().get(gf.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let scrape = gf.metrics().await;
    let refused = |reason: &str| {
        scrape
            .lines()
            .find(|l| {
                l.starts_with("gridflow_admin_requests_refused_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(refused("no_token"), 3.0, "{scrape}");
    assert_eq!(refused("wrong_token"), 2.0, "{scrape}");

    // Rotation: the file is re-read, the old token stops working at once.
    let next = base64_key();
    replace_file(&dir.path().join("admin-token"), &next);
    assert_problem(reload(Some(format!("Bearer {token}"))).await.unwrap(), 401).await;
    assert_eq!(
        reload(Some(format!("Bearer {next}")))
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(!gf.log_text().contains(&token), "the token is in the log");
}

/// A `gridflow run` whose admin listener is on every address (the shared harness binds both
/// listeners to loopback).
struct OpenAdmin {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl OpenAdmin {
    fn start(dir: &Path) -> (OpenAdmin, u16) {
        let mut child = Command::new(gridflow_bin())
            .args(["run", "--config"])
            .arg(dir.join("gridflow.toml"))
            .arg("--pipelines")
            .arg(dir.join("pipelines"))
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", "0.0.0.0:0"])
            .args(["--log-format", "json"])
            .env(
                "KAFKA_BROKERS",
                std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into()),
            )
            .env_remove("GRIDFLOW_ADMIN_TOKEN")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[gridflow] {line}");
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let gf = OpenAdmin { child, logs };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let lines = gf.logs.lock().unwrap().clone();
            let admin = lines.iter().find_map(|l| {
                (log_field(l, "message").as_deref() == Some("Admin listener started."))
                    .then(|| log_field(l, "addr"))
                    .flatten()
            });
            let started = lines
                .iter()
                .any(|l| log_field(l, "message").as_deref() == Some("Gridflow started."));
            if let (Some(admin), true) = (admin, started) {
                let port = admin.rsplit(':').next().unwrap().parse().unwrap();
                return (gf, port);
            }
            assert!(
                Instant::now() < deadline,
                "gridflow did not start:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for OpenAdmin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An address of this machine that is not loopback (the first global IPv4 address).
fn non_loopback_address() -> std::net::IpAddr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("cannot run `ip` (iproute2) to find a non-loopback address");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let cidr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            cidr.split('/').next()?.parse().ok()
        })
        .expect("this machine has no non-loopback IPv4 address to test from (the decision is unit-tested in admin.rs)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_without_a_token_answer_only_loopback_clients() {
    let dir = test_dir();
    let (gf, port) = OpenAdmin::start(dir.path());
    assert!(
        gf.log_text().contains("No admin token"),
        "no warning about the open admin listener"
    );
    let ip = non_loopback_address();
    // From this machine's non-loopback address: the peer is that address, not loopback.
    let remote = format!("http://{ip}:{port}");
    let r = http()
        .post(format!("{remote}/admin/reload"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(r, 403).await;
    assert!(
        body["detail"].as_str().unwrap().contains("loopback"),
        "{body}"
    );
    // A bearer token does not help when none is configured.
    let r = http()
        .post(format!("{remote}/admin/reload"))
        .header("authorization", "Bearer some-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_problem(r, 403).await;
    // Probes stay open from there.
    let r = http()
        .get(format!("{remote}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // From loopback, the same listener reloads.
    let r = http()
        .post(format!("http://127.0.0.1:{port}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(gf.log_text().contains("Admin request refused."));
}

/// An HTTPS client trusting `server_ca`, presenting `identity`; it keeps its connections alive.
fn tls_client(server_ca: &str, identity: &(String, String)) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pkcs8_pem(identity.0.as_bytes(), identity.1.as_bytes())
                .unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The status of a POST with `client`, or 0 when the connection was refused.
async fn tls_status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_allow_list_and_client_ca_rotate_without_a_restart() {
    let pki = Pki::new();
    let dir = test_dir();
    let subjects = dir.path().join("allowed-subjects");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&subjects, "# partners\nCN=partner-a\nCN=partner-b\n").unwrap();
    let gf = start_mtls(
        &pki,
        dir.path(),
        "allowed_subjects_file = 'allowed-subjects'\n",
    );
    let url = https_url(&gf, "/in");
    // One client each, reused: their keep-alive connections stay open across the changes.
    let a = tls_client(&pki.ca_pem, &pki.issue("partner-a", &[]));
    let b = tls_client(&pki.ca_pem, &pki.issue("partner-b", &[]));
    let c = tls_client(&pki.ca_pem, &pki.issue("partner-c", &[]));
    assert_eq!(tls_status(&a, &url).await, 202);
    assert_eq!(tls_status(&b, &url).await, 202);
    assert_eq!(tls_status(&c, &url).await, 403);

    // partner-a revoked, partner-c added: on the connections they already hold.
    replace_file(&subjects, "CN=partner-b\nCN=partner-c\n");
    assert!(
        eventually(Duration::from_secs(10), || async {
            tls_status(&a, &url).await == 403
        })
        .await,
        "the revoked subject is still let in 10 s later"
    );
    assert_eq!(tls_status(&c, &url).await, 202);
    assert_eq!(tls_status(&b, &url).await, 202);

    // A subjects file that lists nobody would let in anyone: refused, the last list stays.
    replace_file(&subjects, "# nobody\n");
    assert!(
        gf.wait_for_log(
            "TLS client access file not applied",
            Duration::from_secs(10)
        ),
        "no error logged for the empty subjects file"
    );
    assert_eq!(tls_status(&a, &url).await, 403);
    assert_eq!(tls_status(&b, &url).await, 202);

    // A new client CA: certificates of the old one are refused at the next handshake, those of
    // the new one let in (the server certificate stays the old CA's).
    let next = Pki::named("gridflow test CA 2");
    replace_file(&subjects, "CN=partner-b\n");
    replace_file(&ca, &next.ca_pem);
    let old_b = pki.issue("partner-b", &[]);
    let new_b = next.issue("partner-b", &[]);
    // Each attempt is a new connection, bounded at 3 s: in one CI run (2 cores, 7 tests at
    // once) a single connection made right after the CA swap got no answer within reqwest's
    // 10 s, which used up the whole window although the next one would have been served. A
    // server that never serves the new CA still fails here.
    assert!(
        eventually(Duration::from_secs(20), || async {
            let client = tls_client(&pki.ca_pem, &new_b);
            tokio::time::timeout(Duration::from_secs(3), tls_status(&client, &url))
                .await
                .is_ok_and(|status| status == 202)
        })
        .await,
        "a certificate of the new CA is not let in 20 s later"
    );
    assert_eq!(tls_status(&tls_client(&pki.ca_pem, &old_b), &url).await, 0);
    assert!(gf.wait_for_log("TLS client access reloaded.", Duration::from_secs(1)));
    // Nor is the old CA's certificate let in on the keep-alive connection it opened before
    // the change (a CA is replaced when its key leaks: a client that kept its connection
    // busy was let in for ever).
    assert_eq!(
        tls_status(&b, &url).await,
        403,
        "a certificate of the replaced CA is still let in on its open connection"
    );
}
