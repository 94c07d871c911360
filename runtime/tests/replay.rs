//! Black-box: `gridflow replay` against a real broker. Dead letters are re-injected with their
//! original bytes and key, without their error headers, with `gridflow.replayed_from` and a
//! replay count; the same command resumes where it stopped and sends nothing twice; a record
//! that fails again comes back to the dead-letter topic with its count increased; `--dry-run`
//! sends and commits nothing; `--to-pipeline` resolves the pipeline's source topic.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn relay(input: &str, output: &str, group: &str, expression: &str) -> String {
    format!(
        "name = 'relay'\n[source]\nkind = 'kafka'\ntopics = ['{input}']\ngroup = '{group}'\n[[steps]]\nkind = 'map'\nexpression = \"{expression}\"\n[sink]\nkind = 'kafka'\ntopic = '{output}'\n"
    )
}

fn replay(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    let out = Gridflow::spawn_raw(&all, dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_once_with_their_bytes_key_and_a_count() {
    let input = unique("grid.reading.raw.v1");
    let output = unique("grid.reading.clean.v1");
    let dlq = format!("{output}.dlq");
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    create_topic(&dlq, 1).await;
    let group = unique("relay");
    let dir = test_dir();
    // abs() fails on a string: such readings are dead-lettered.
    write_pipeline(
        dir.path(),
        "relay.toml",
        &relay(&input, &output, &group, "{id: id, value: abs(value)}"),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    for (id, value) in [
        ("g1", json!(1)),
        ("b1", json!("1,5")),
        ("g2", json!(-2)),
        ("b2", json!("x")),
    ] {
        let body = json!({"id": id, "value": value}).to_string();
        produce(
            &input,
            Some(&format!("key-{id}")),
            body.as_bytes(),
            &[("origin", "meter-head-end")],
        )
        .await;
    }
    assert_eq!(consume(&output, 2, Duration::from_secs(30)).await.len(), 2);
    let letters = consume(&dlq, 2, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 2);
    // Dead letters are written as failures happen: their order is not the input's.
    let b1 = letters
        .iter()
        .find(|r| r.json()["id"] == "b1")
        .expect("b1 dead-lettered");
    assert_eq!(
        b1.key.as_deref(),
        Some("key-b1"),
        "the dead letter keeps the input key"
    );
    let b1_at = format!("{dlq}/0/{}", b1.offset);

    // A dry run lists what would be sent, sends and commits nothing.
    for _ in 0..2 {
        let (ok, stdout, stderr) = replay(
            dir.path(),
            &[
                "--from",
                &dlq,
                "--where",
                "error.code == 'mapping_error'",
                "--dry-run",
            ],
        );
        assert!(ok, "{stdout}{stderr}");
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with("would send"))
                .count(),
            2,
            "{stdout}"
        );
        assert!(
            stdout.contains("read 2, matched 2, would send 2"),
            "{stdout}"
        );
        assert!(stdout.contains("code=mapping_error"), "{stdout}");
    }

    // Replay b1 (the pipeline still fails on it): it comes back with replay count 1.
    let only_b1 = ["--from", dlq.as_str(), "--where", "body.id == 'b1'"];
    let (ok, stdout, stderr) = replay(dir.path(), &only_b1);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("read 2, matched 1, sent 1, skipped 1 (where 1"),
        "{stdout}"
    );
    let letters = consume(&dlq, 3, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 3, "b1 failed again");
    let again = &letters[2];
    assert_eq!(again.json()["id"], "b1");
    assert_eq!(again.headers["gridflow.replay.count"], "1");
    assert_eq!(again.headers["gridflow.replayed_from"], b1_at);

    // The same command again resumes: only the new dead letter is read, sent with count 2.
    let (ok, stdout, stderr) = replay(dir.path(), &only_b1);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("read 1, matched 1, sent 1"), "{stdout}");
    let letters = consume(&dlq, 4, Duration::from_secs(30)).await;
    assert_eq!(letters[3].headers["gridflow.replay.count"], "2");

    // The pipeline is fixed (hot reload); b2 is replayed to it by name.
    let fixed = relay(
        &input,
        &output,
        &group,
        "{id: id, value: to_number(value) || value}",
    );
    write_pipeline(dir.path(), "relay.toml", &fixed);
    assert!(
        gf.wait_for_log_async("Pipeline loaded.", Duration::from_secs(30))
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, stdout, stderr) = replay(
        dir.path(),
        &[
            "--from",
            &dlq,
            "--to-pipeline",
            "relay",
            "--where",
            "body.id == 'b2'",
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("to {input}")), "{stdout}");
    let delivered = consume(&output, 3, Duration::from_secs(30)).await;
    assert!(
        delivered.iter().any(|r| r.json()["id"] == "b2"),
        "b2 delivered after the fix: {delivered:?}"
    );

    // What went back to the source topic: original bytes and key, no error headers.
    let injected: Vec<Record> = consume(&input, 7, Duration::from_secs(30))
        .await
        .into_iter()
        .filter(|r| r.headers.contains_key("gridflow.replayed_from"))
        .collect();
    assert!(injected.len() >= 3, "{injected:?}");
    for r in &injected {
        assert!(
            !r.headers.keys().any(|k| k.starts_with("gridflow.error.")),
            "{r:?}"
        );
        assert_eq!(r.headers["origin"], "meter-head-end", "other headers kept");
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(r.key.as_deref(), Some(format!("key-{id}").as_str()));
    }
    let b2 = injected.iter().find(|r| r.json()["id"] == "b2").unwrap();
    assert_eq!(
        b2.payload,
        br#"{"id":"b2","value":"x"}"#.to_vec(),
        "original bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reports_bad_arguments_plainly() {
    let dir = test_dir();
    let (ok, _, stderr) = replay(
        dir.path(),
        &["--from", "nope.topic.v1.dlq", "--where", "a.["],
    );
    assert!(!ok);
    assert!(stderr.contains("--where"), "{stderr}");
    let (ok, _, stderr) = replay(
        dir.path(),
        &["--from", "nope.topic.v1.dlq", "--since", "yesterday"],
    );
    assert!(!ok);
    assert!(stderr.contains("RFC 3339"), "{stderr}");
    let (ok, _, stderr) = replay(dir.path(), &["--from", &unique("missing.topic.v1.dlq")]);
    assert!(!ok);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumes_without_sending_twice() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let dlq = unique("grid.reading.raw.v1.dlq");
    let target = unique("grid.reading.raw.v1");
    create_topic(&dlq, 1).await;
    create_topic(&target, 1).await;
    for id in ["r0", "r1", "r2"] {
        let body = json!({"id": id}).to_string();
        produce(
            &dlq,
            Some(id),
            body.as_bytes(),
            &[
                ("gridflow.source.topic", target.as_str()),
                ("gridflow.error.code", "mapping_error"),
            ],
        )
        .await;
    }
    // A replay that stopped after the first record of its batch reached the target: its
    // journal record (the target's end offsets before the batch) is written and not followed
    // by `done`; r0 is in the target, r1 and r2 are not.
    let group = unique("gridflow-replay");
    create_topic("gridflow.replay.journal.v1", 1).await;
    let c: BaseConsumer = client_config().create().unwrap();
    let (_, high) = c
        .fetch_watermarks(&target, 0, Duration::from_secs(10))
        .unwrap();
    close_consumer_base(c).await;
    let journal = json!({"marks": {format!("{target}/0"): high}}).to_string();
    produce(
        "gridflow.replay.journal.v1",
        Some(&group),
        journal.as_bytes(),
        &[],
    )
    .await;
    produce(
        &target,
        Some("r0"),
        br#"{"id":"r0"}"#,
        &[("gridflow.replayed_from", format!("{dlq}/0/0").as_str())],
    )
    .await;

    let dir = test_dir();
    let (ok, stdout, stderr) = replay(dir.path(), &["--from", &dlq, "--group", &group]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("already sent {dlq}/0/0")),
        "{stdout}"
    );
    assert!(stdout.contains("read 3, matched 3, sent 2"), "{stdout}");
    assert!(stdout.contains("already sent 1"), "{stdout}");
    let records = consume(&target, 4, Duration::from_secs(10)).await;
    let ids: Vec<String> = records
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2"], "r0 once");
    // Everything is committed: the same command sends nothing more.
    let (ok, stdout, _) = replay(dir.path(), &["--from", &dlq, "--group", &group]);
    assert!(ok);
    assert!(stdout.contains("read 0, matched 0, sent 0"), "{stdout}");
}

/// Drops a base consumer on a helper thread (see `close_consumer`).
async fn close_consumer_base(c: rdkafka::consumer::BaseConsumer) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(c);
        let _ = tx.send(());
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
}
