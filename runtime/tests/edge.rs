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
    write_pipeline(
        dir.path(),
        "limits.toml",
        &format!("[source]\nkind = 'http'\npath = '/limits'\nmax_body_bytes = 1024\n[[steps]]\nkind = 'xml_to_json'\n[sink]\nkind = 'kafka'\ntopic = '{topic}'\n"),
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

    // Oversize and hostile bodies on an open path: 413, and 400 for JSON nested too deep.
    let big = "x".repeat(2048);
    let r = http()
        .post(gf.http_url("/limits"))
        .header("content-type", "application/json")
        .body(format!("{{\"a\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let r = http()
        .post(gf.http_url("/limits"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_json");
    let deep_xml = format!("{}{}", "<a>".repeat(130), "</a>".repeat(130));
    let r = http()
        .post(gf.http_url("/limits"))
        .header("content-type", "application/xml")
        .body(deep_xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Quota rejections are counted.
    let metrics = gf.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gridflow_quota_rejections_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_request_reply_returns_the_mapped_result() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "lookup.toml",
        "[source]\nkind='http'\npath='/lookup'\nreply='mapped'\n[[steps]]\nkind='filter'\ncondition='meter_id'\n[[steps]]\nkind='map'\nexpression='{meter: meter_id, kwh: to_number(reading.value)}'\n[sink]\nkind='file'\npath='out/lookups.ndjson'\n",
    );
    write_pipeline(
        dir.path(),
        "as-xml.toml",
        "[source]\nkind='http'\npath='/as-xml'\nreply='mapped'\n[[steps]]\nkind='json_to_xml'\nroot='Reading'\n[sink]\nkind='file'\npath='out/xml.ndjson'\n",
    );
    write_pipeline(
        dir.path(),
        "many.toml",
        "[source]\nkind='http'\npath='/many'\nreply='mapped'\n[[steps]]\nkind='split'\n[sink]\nkind='file'\npath='out/many.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let post = |path: &str, body: &'static str| {
        http()
            .post(gf.http_url(path))
            .header("content-type", "application/json")
            .header("x-correlation-id", "lookup-1")
            .body(body)
            .send()
    };
    let sample = r#"{"meter_id": "FR-1", "reading": {"value": "0.412"}}"#;
    let r = post("/lookup", sample).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["x-correlation-id"], "lookup-1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"meter": "FR-1", "kwh": 0.412}));
    // The result was written to the sink too, before the answer.
    let written = std::fs::read_to_string(dir.path().join("out/lookups.ndjson")).unwrap();
    // The fields in the order the map expression writes them.
    assert_eq!(written.trim(), r#"{"meter":"FR-1","kwh":0.412}"#);

    // Filtered out: 204; XML results keep their media type; several results are an array.
    assert_eq!(
        post("/lookup", r#"{"other": 1}"#).await.unwrap().status(),
        204
    );
    let r = post("/as-xml", r#"{"@id": "7", "value": "1.5"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/xml");
    assert!(r
        .text()
        .await
        .unwrap()
        .contains(r#"<Reading id="7"><value>1.5</value></Reading>"#));
    let r = post("/many", r#"[{"a": 1}, {"a": 2}]"#).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        serde_json::json!([{"a": 1}, {"a": 2}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_passes_an_independent_validator() {
    let dir = test_dir();
    let contract = dir.path().join("contracts/reading/1");
    std::fs::create_dir_all(&contract).unwrap();
    std::fs::write(
        contract.join("schema.json"),
        r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:test:reading:1", "type": "object", "required": ["meter_id"], "properties": {"meter_id": {"type": "string"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("keys"), "k\n").unwrap();
    write_pipeline(
        dir.path(),
        "readings.toml",
        "[source]\nkind='http'\npath='/readings'\ncontract='reading@1'\n[source.auth]\napi_keys_file='keys'\n[source.quota]\nper_second=5\n[sink]\nkind='file'\npath='out/r.ndjson'\n",
    );
    write_pipeline(
        dir.path(),
        "lookup.toml",
        "[source]\nkind='http'\npath='/lookup'\nreply='mapped'\n[sink]\nkind='stdout'\n",
    );
    write_pipeline(
        dir.path(),
        "soap.toml",
        "[source]\nkind='soap'\npath='/soap'\noperations=['urn:Submit']\n[sink]\nkind='stdout'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let doc: Value = http()
        .get(gf.admin_url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let readings = &doc["paths"]["/readings"]["post"];
    assert_eq!(readings["operationId"], "readings");
    assert_eq!(
        readings["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/reading_v1"
    );
    assert_eq!(
        doc["components"]["schemas"]["reading_v1"]["required"][0],
        "meter_id"
    );
    for status in ["202", "400", "401", "403", "413", "422", "429", "503"] {
        assert!(
            readings["responses"][status].is_object(),
            "{status} documented"
        );
    }
    assert!(doc["paths"]["/lookup"]["post"]["responses"]["200"].is_object());
    assert!(
        doc["paths"]["/soap"]["post"]["requestBody"]["content"]["application/soap+xml"].is_object()
    );

    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')",
        ])
        .arg(&file)
        .output()
        .expect("python3 runs (ci/test.sh installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
