//! Black-box: the kit's tier-1 API (`pipelines/kit-meter-readings.toml`,
//! `pipelines/kit-incidents.toml`) and the environment suffix of the kit's topic names.
//!
//! - With the shipped `gridflow.toml` and no `GRIDFLOW_ENV`, `gridflow run` loads every shipped
//!   pipeline (the README's main command) and the endpoints answer.
//! - With `GRIDFLOW_ENV` set, the records land on `<topic>.v1.<env>`, keyed by `partitionKey`,
//!   and refusals on its `.dlq`.
//! - A `GRIDFLOW_ENV` that is no environment name is refused by `validate`, `contracts check`
//!   and `topics apply`, naming the variable, instead of giving a bad topic name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the repository's `gridflow.toml`, `contracts/` and the pipelines `only` names
/// (every shipped one when empty).
fn shipped(only: &[&str]) -> tempfile::TempDir {
    let dir = test_dir();
    std::fs::copy(
        repo().join("gridflow.toml"),
        dir.path().join("gridflow.toml"),
    )
    .unwrap();
    copy_dir(&repo().join("contracts"), &dir.path().join("contracts"));
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    for file in pipeline_files() {
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        if only.is_empty() || only.contains(&name.as_str()) {
            std::fs::copy(&file, pipelines.join(name)).unwrap();
        }
    }
    dir
}

fn pipeline_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("pipelines/tests/fixtures").join(name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gridflow_env_every_shipped_pipeline_loads_and_the_api_answers() {
    let dir = shipped(&[]);
    // Empty counts as unset for `${GRIDFLOW_ENV:-dev}`: the dev topics.
    let gf = Gridflow::start_with_env(dir.path(), &["--brokers", ""], &[("GRIDFLOW_ENV", "")]);
    let listed = gf.admin_pipelines().await;
    let text = listed.to_string();
    for file in pipeline_files() {
        let stem = file.file_stem().unwrap().to_str().unwrap();
        assert!(
            text.contains(&format!("\"{stem}\"")),
            "pipeline {stem} is loaded: {text}\n{}",
            gf.log_text()
        );
    }
    assert!(
        !gf.log_text().contains("Pipeline file rejected."),
        "{}",
        gf.log_text()
    );

    let r = http()
        .post(gf.http_url("/v1/meter-readings"))
        .header("content-type", "application/json")
        .header("x-correlation-id", "kit-api-1")
        .body(fixture("kit-meter-reading.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["messages"], 1, "{body}");

    // An unknown severity: 422, problem+json, dead-lettered.
    let mut incident: serde_json::Value =
        serde_json::from_slice(&fixture("kit-incident.json")).unwrap();
    incident["payload"]["severity"] = "SEVERE".into();
    let r = http()
        .post(gf.http_url("/v1/incidents"))
        .header("content-type", "application/json")
        .body(incident.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "contract_violation", "{problem}");
    assert_eq!(problem["dead_lettered"], true, "{problem}");
    drop(gf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_names_the_topics_and_records_are_keyed_by_partition_key() {
    // A fresh environment name: fresh topics on the shared broker.
    let env = unique("t").replace('-', "");
    let readings = format!("grid.meter.reading.v1.{env}");
    let incidents = format!("grid.incident.created.v1.{env}");
    for topic in [&readings, &incidents] {
        create_topic(topic, 3).await;
        create_topic(&format!("{topic}.dlq"), 1).await;
    }
    let dir = shipped(&["kit-meter-readings.toml", "kit-incidents.toml"]);
    let gf = Gridflow::start_with_env(dir.path(), &[], &[("GRIDFLOW_ENV", &env)]);

    let reading = fixture("kit-meter-reading.json");
    let r = post(&gf, "/v1/meter-readings", &reading).await;
    assert_eq!(r, 202);
    let mut incident: serde_json::Value =
        serde_json::from_slice(&fixture("kit-incident.json")).unwrap();
    incident["partitionKey"] = "SITE-42".into();
    let r = post(&gf, "/v1/incidents", incident.to_string().as_bytes()).await;
    assert_eq!(r, 202);

    let got = consume(&readings, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key.as_deref(), Some("FR-PRM-09182736450011"));
    let sent: serde_json::Value = serde_json::from_slice(&reading).unwrap();
    assert_eq!(got[0].json(), sent);
    let got = consume(&incidents, 1, Duration::from_secs(30)).await;
    assert_eq!(
        got[0].key.as_deref(),
        Some("SITE-42"),
        "keyed by partitionKey, not siteId"
    );
    assert_eq!(got[0].json(), incident);

    // An eventId that is not a UUID: refused, and its bytes on the environment's .dlq.
    let mut bad = incident.clone();
    bad["eventId"] = "INC-1".into();
    let bad = bad.to_string();
    assert_eq!(post(&gf, "/v1/incidents", bad.as_bytes()).await, 422);
    let dead = consume(&format!("{incidents}.dlq"), 1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].payload, bad.as_bytes());
    assert_eq!(
        dead[0]
            .headers
            .get("gridflow.error.code")
            .map(String::as_str),
        Some("contract_violation")
    );
    // Nothing of it on the topic itself.
    let after = consume_for(&incidents, Duration::from_secs(2)).await;
    assert_eq!(after.len(), 1, "only the valid incident");
    drop(gf);
}

async fn post(gf: &Gridflow, path: &str, body: &[u8]) -> u16 {
    http()
        .post(gf.http_url(path))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `gridflow <args>` in a copy of the repository with `GRIDFLOW_ENV=<env>`.
fn run_with_env(args: &[&str], env: &str) -> (bool, String) {
    let dir = shipped(&[]);
    let out = Command::new(gridflow_bin())
        .args(args)
        .current_dir(dir.path())
        .env("GRIDFLOW_ENV", env)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_bad_environment_name_is_refused_everywhere_topic_names_are_read() {
    for env in ["recette", "prod", "pre-prod2"] {
        let (ok, out) = run_with_env(&["contracts", "check"], env);
        assert!(ok, "GRIDFLOW_ENV={env}: {out}");
    }
    for env in ["Prod", "re.cette", "prod ", "dev/../x", "1dev"] {
        for args in [
            &["validate", "pipelines"][..],
            &["contracts", "check"],
            &["topics", "apply", "--dry-run", "--brokers", "127.0.0.1:1"],
        ] {
            let (ok, out) = run_with_env(args, env);
            assert!(!ok, "GRIDFLOW_ENV={env:?} {args:?} must fail: {out}");
            assert!(
                out.contains(&format!("GRIDFLOW_ENV=`{env}` is not an environment name")),
                "GRIDFLOW_ENV={env:?} {args:?}: {out}"
            );
            assert!(
                !out.contains(&format!("v1.{env}")),
                "no topic is named with it: {out}"
            );
        }
    }
}

/// The OCPP flows through a real broker: one record per sampled value, keyed by the charge
/// point; the same frame posted again with the same `X-Correlation-ID` (a bridge's retry)
/// gives the same event ids, another correlation id other ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocpp_events_are_enveloped_keyed_by_charge_point_and_stable_across_retries() {
    let env = unique("o").replace('-', "");
    let values = format!("emobility.meter.values.v1.{env}");
    let status = format!("emobility.charger.status.v1.{env}");
    for topic in [&values, &status] {
        create_topic(topic, 3).await;
        create_topic(&format!("{topic}.dlq"), 1).await;
    }
    let dir = shipped(&["ocpp-meter-values.toml", "ocpp-status-notification.toml"]);
    let gf = Gridflow::start_with_env(dir.path(), &[], &[("GRIDFLOW_ENV", &env)]);
    let frame = fixture("ocpp-meter-values-request.json");
    let send = |correlation: &'static str| {
        let (url, frame) = (gf.http_url("/ocpp/1.6/meter-values"), frame.clone());
        async move {
            http()
                .post(url)
                .header("content-type", "application/json")
                .header("x-correlation-id", correlation)
                .body(frame)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send("CP-LYON-PARTDIEU-0042:19223201").await, 202);
    assert_eq!(
        send("CP-LYON-PARTDIEU-0042:19223201").await,
        202,
        "the retry"
    );
    assert_eq!(
        send("CP-LYON-PARTDIEU-0042:19223299").await,
        202,
        "another frame"
    );
    let records = consume(&values, 15, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 15);
    let ids = |correlation: &str| -> Vec<String> {
        records
            .iter()
            .map(|r| r.json())
            .filter(|v| v["correlationId"] == correlation)
            .map(|v| v["eventId"].as_str().unwrap().to_string())
            .collect()
    };
    let first = ids("CP-LYON-PARTDIEU-0042:19223201");
    assert_eq!(first.len(), 10, "two deliveries of five events");
    let (a, b) = first.split_at(5);
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    assert_eq!(a, b, "the retry carries the same five ids");
    a.dedup();
    assert_eq!(a.len(), 5, "five events, five ids");
    let other = ids("CP-LYON-PARTDIEU-0042:19223299");
    assert!(other.iter().all(|id| !a.contains(id)), "{other:?} vs {a:?}");
    for r in &records {
        assert_eq!(r.key.as_deref(), Some("CP-LYON-PARTDIEU-0042"));
        assert_eq!(r.json()["eventType"], "emobility.meter.values");
    }

    let request = serde_json::json!({
        "chargePointId": "CP-GENT-DOK-0007",
        "frame": serde_json::from_slice::<serde_json::Value>(&fixture("ocpp-StatusNotification-1.6.json")).unwrap(),
    });
    let r = http()
        .post(gf.http_url("/ocpp/1.6/status-notification"))
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = consume(&status, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].key.as_deref(), Some("CP-GENT-DOK-0007"));
    let event = got[0].json();
    assert_eq!(event["payload"]["status"], "Faulted");
    assert_eq!(event["occurredAt"], "2026-01-14T10:16:41Z");
    drop(gf);
}
