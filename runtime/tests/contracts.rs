//! Black-box: contracts. A `validate` step lets conforming messages through and answers a
//! violation with 422 listing each violation's JSON pointer, the input dead-lettered with
//! `contract_violation`; `gridflow contracts check` checks the shipped set and names what is
//! wrong in a broken one.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["meter_id", "value"],
  "properties": {
    "meter_id": {"type": "string"},
    "value": {"type": "number", "minimum": 0}
  },
  "additionalProperties": false
}"#;

fn write_contract(root: &Path, name: &str, version: &str, schema: &str, examples: &[&str]) {
    let dir = root.join("contracts").join(name).join(version);
    std::fs::create_dir_all(dir.join("examples")).unwrap();
    std::fs::write(dir.join("schema.json"), schema).unwrap();
    for (i, e) in examples.iter().enumerate() {
        std::fs::write(dir.join("examples").join(format!("{i}.json")), e).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_are_422_with_pointers_and_dead_lettered() {
    let topic = unique("energy.meter.reading.v1");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = test_dir();
    write_contract(dir.path(), "reading", "1", SCHEMA, &[]);
    write_pipeline(
        dir.path(),
        "readings.toml",
        &format!("[source]\nkind='http'\npath='/readings'\n[[steps]]\nkind='validate'\ncontract='reading@1'\n[sink]\nkind='kafka'\ntopic='{topic}'\n"),
    );
    write_pipeline(
        dir.path(),
        "strict.toml",
        &format!("[source]\nkind='http'\npath='/strict'\ncontract='reading@1'\n[sink]\nkind='kafka'\ntopic='{topic}'\n"),
    );
    write_pipeline(
        dir.path(),
        "strict-xml.toml",
        &format!("[source]\nkind='http'\npath='/strict-xml'\ncontract='reading@1'\n[[steps]]\nkind='xml_to_json'\n[[steps]]\nkind='map'\nexpression='{{meter_id: reading.meter_id, value: to_number(reading.value)}}'\n[sink]\nkind='kafka'\ntopic='{topic}'\n"),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    // On an XML body, the contract applies to the body after conversion.
    let xml = |body: &'static str| {
        http()
            .post(gf.http_url("/strict-xml"))
            .header("content-type", "application/xml")
            .body(body)
            .send()
    };
    let r = xml("<reading><value>1</value></reading>").await.unwrap();
    assert_eq!(
        r.status(),
        422,
        "the converted document is {{reading: {{...}}}}, not a reading"
    );
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "contract_violation");

    // A contract on the source checks the request body itself.
    let strict = |body: &'static str| {
        http()
            .post(gf.http_url("/strict"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = strict(r#"{"meter_id":7}"#).await.unwrap();
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["step"], "source.http");
    assert_eq!(problem["code"], "contract_violation");
    let pointers: Vec<&str> = problem["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"/meter_id"), "{pointers:?}");
    assert_eq!(
        strict(r#"{"meter_id":"m-0","value":0}"#)
            .await
            .unwrap()
            .status(),
        202
    );

    let post = |body: &'static str| {
        http()
            .post(gf.http_url("/readings"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        post(r#"{"meter_id":"m-1","value":1.5}"#)
            .await
            .unwrap()
            .status(),
        202
    );
    let r = post(r#"{"value":-2,"extra":true}"#).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "contract_violation");
    assert_eq!(problem["step"], "steps[0].validate");
    let violations = problem["violations"].as_array().unwrap();
    let pointers: Vec<&str> = violations
        .iter()
        .map(|v| v["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"/value"), "{violations:?}");
    assert!(
        pointers.contains(&""),
        "the missing meter_id and the extra field are at the root: {violations:?}"
    );
    assert!(violations.len() >= 3, "{violations:?}");

    let out = consume(&topic, 2, Duration::from_secs(20)).await;
    let ids: Vec<Value> = out.iter().map(|r| r.json()["meter_id"].clone()).collect();
    assert_eq!(ids, vec![Value::from("m-0"), Value::from("m-1")]);
    let dead = consume(&format!("{topic}.dlq"), 3, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 3);
    assert!(dead
        .iter()
        .all(|d| d.headers["gridflow.error.code"] == "contract_violation"));
    assert!(dead
        .iter()
        .any(|d| d.payload == br#"{"value":-2,"extra":true}"#));
    assert!(dead.iter().any(|d| d.payload == br#"{"meter_id":7}"#));
}

#[test]
fn contracts_check_passes_on_the_shipped_set_and_names_faults() {
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let out = Gridflow::spawn_raw(&["contracts", "check"], repo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("contract(s) OK"));

    let dir = test_dir();
    write_contract(
        dir.path(),
        "reading",
        "1",
        SCHEMA,
        &[
            r#"{"meter_id":"m","value":1}"#,
            r#"{"meter_id":"m","value":-1}"#,
        ],
    );
    std::fs::write(
        dir.path().join("contracts/topics.toml"),
        "[[topic]]\nname='Readings'\npartitions=3\nretention='7d'\nowner='metering'\ncontract='reading@3'\n",
    )
    .unwrap();
    // Version 2 drops a required field and changes a type.
    write_contract(
        dir.path(),
        "reading",
        "2",
        &SCHEMA
            .replace(r#"["meter_id", "value"]"#, r#"["value"]"#)
            .replace(r#""type": "number""#, r#""type": "string""#),
        &[],
    );
    write_pipeline(
        dir.path(),
        "p.toml",
        "[source]\nkind='http'\npath='/x'\n[[steps]]\nkind='validate'\ncontract='nope@1'\n[sink]\nkind='kafka'\ntopic='energy.meter.reading.v1'\n",
    );
    let out = Gridflow::spawn_raw(&["contracts", "check"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("examples/1.json: reading@1 at `/value`"),
        "{stderr}"
    );
    assert!(stderr.contains("reading@2 is not backward compatible with reading@1: /required: required field `meter_id` removed"), "{stderr}");
    assert!(
        stderr.contains("/properties/value/type: type changed"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown contract `nope@1`"), "{stderr}");
    assert!(stderr.contains("unknown contract `reading@3`"), "{stderr}");
    assert!(
        stderr.contains("topic `Readings` does not follow"),
        "{stderr}"
    );
}
