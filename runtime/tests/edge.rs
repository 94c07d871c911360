//! Black-box: the edge of an HTTP source. API keys from a file (401 without, 403 with a wrong
//! one), quotas per client (429 with Retry-After, one client's excess does not touch another's),
//! and hostile XML (a DOCTYPE) refused with 400 and dead-lettered.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_quotas_and_hostile_xml() {
    let topic = unique("t.edge.v1");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = test_dir();
    std::fs::write(
        dir.path().join("keys"),
        "# partners\ntso-a=key-a\ntso-b=key-b\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "edge.toml",
        &format!(
            "[source]\nkind = 'http'\npath = '/in'\n[source.auth]\napi_keys_file = 'keys'\n[source.quota]\nper_second = 1\nburst = 5\n[[steps]]\nkind = 'xml_to_json'\n[sink]\nkind = 'kafka'\ntopic = '{topic}'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let post = |key: Option<&'static str>, bearer: bool, body: &'static str| {
        let mut request = http()
            .post(gf.http_url("/in"))
            .header("content-type", "application/xml")
            .body(body);
        if let Some(key) = key {
            request = if bearer {
                request.header("authorization", format!("Bearer {key}"))
            } else {
                request.header("x-api-key", key)
            };
        }
        request.send()
    };

    // No key: 401; an unknown key: 403; both problem+json.
    let r = post(None, false, "<a/>").await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = post(Some("key-x"), false, "<a/>").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // tso-a sends 12 at once: its burst of 5 passes (a sixth may, if a token came back).
    let sends = (0..12).map(|_| post(Some("key-a"), false, "<a>1</a>"));
    let responses = futures::future::join_all(sends).await;
    let mut accepted = 0;
    for r in responses {
        let r = r.unwrap();
        match r.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&wait), "Retry-After {wait}");
                assert_eq!(r.headers()["content-type"], "application/problem+json");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!((5..=6).contains(&accepted), "{accepted} accepted");
    // tso-b has its own bucket (with a Bearer token).
    let r = post(Some("key-b"), true, "<a>2</a>").await.unwrap();
    assert_eq!(r.status(), 202);

    // A DOCTYPE (entity expansion) is refused, and the body dead-lettered.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bomb = "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;\">]><r>&b;</r>";
    let r = post(Some("key-b"), false, bomb).await.unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_xml");
    assert!(problem["detail"].as_str().unwrap().contains("DOCTYPE"));
    let dead = consume(&format!("{topic}.dlq"), 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, bomb.as_bytes());

    // Quota rejections are counted.
    let metrics = http()
        .get(gf.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gridflow_quota_rejections_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
