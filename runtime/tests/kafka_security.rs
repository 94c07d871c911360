//! Black-box: Kafka SASL/SCRAM with the password in a file. The test starts its own tansu
//! with `--authentication` (its users are created before, on the same storage, without it).
//! gridflow starts with a wrong password (not ready, nothing consumed), the file is rotated to
//! the right one, and without a restart the running consumer and producer authenticate and
//! the flow runs. Neither password is ever printed: logs, admin endpoints.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn sasl_client(port: u16, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "alice")
        .set("sasl.password", password);
    c
}

fn write_secret(dir: &Path, value: &str) {
    // As a secret volume does: a new file renamed over the old one.
    let tmp = dir.join("secrets/.kafka-password.tmp");
    std::fs::write(&tmp, format!("{value}\n")).unwrap();
    std::fs::rename(&tmp, dir.join("secrets/kafka-password")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_password_rotated_in_its_file_without_restart_and_never_printed() {
    let broker_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    {
        let _setup = start_tansu(broker_dir.path(), port, false);
        tansu_cli(port, &["user", "create", "alice", &password]);
        for topic in [
            "sec.reading.in.v1",
            "sec.reading.out.v1",
            "sec.reading.out.v1.dlq",
        ] {
            tansu_cli(port, &["topic", "create", "--partitions", "1", topic]);
        }
    }
    let _broker = start_tansu(broker_dir.path(), port, true);

    let dir = test_dir();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    write_secret(dir.path(), &wrong);
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[kafka.properties]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"alice\"\n\"sasl.password\" = { file = \"secrets/kafka-password\" }\n",
    )
    .unwrap();
    write_pipeline(
        dir.path(),
        "relay.toml",
        "[source]\nkind='kafka'\ntopics=['sec.reading.in.v1']\ngroup='secure-relay'\n[[steps]]\nkind='map'\nexpression='{id: id, checked: `true`}'\n[sink]\nkind='kafka'\ntopic='sec.reading.out.v1'\n",
    );
    let brokers = format!("127.0.0.1:{port}");
    let gf = Gridflow::start(dir.path(), &["--brokers", &brokers]);

    // Wrong password: the broker refuses gridflow.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!gf.is_ready().await, "ready with a wrong password");

    // Rotation: the file gets the right password; no restart.
    write_secret(dir.path(), &password);
    assert!(
        gf.wait_for_log_async("Kafka credentials reloaded.", Duration::from_secs(15))
            .await
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gf.is_ready().await {
        assert!(Instant::now() < deadline, "not ready after the rotation");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let producer: FutureProducer = sasl_client(port, &password).create().unwrap();
    producer
        .send(
            FutureRecord::to("sec.reading.in.v1")
                .key("m1")
                .payload(r#"{"id":"m1"}"#),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let consumer: StreamConsumer = sasl_client(port, &password)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["sec.reading.out.v1"]).unwrap();
    let out = read_records(&consumer, Some(1), Duration::from_secs(60)).await;
    close_consumer(consumer).await;
    assert_eq!(
        out.len(),
        1,
        "the running consumer and producer use the new password"
    );
    assert_eq!(
        out[0].json(),
        serde_json::json!({"id": "m1", "checked": true})
    );

    // Neither password was ever shown.
    let mut shown = gf.log_text();
    for path in [
        "/health/ready",
        "/health/live",
        "/metrics",
        "/admin/pipelines",
        "/openapi.json",
    ] {
        shown.push_str(
            &http()
                .get(gf.admin_url(path))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(shown.contains("Authentication"), "the refusal was logged");
    assert!(!shown.contains(&password), "the password was printed");
    assert!(!shown.contains(&wrong), "the wrong password was printed");
}
