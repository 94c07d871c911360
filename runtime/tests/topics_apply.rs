//! Black-box: `gridflow topics apply` against the real broker: a dry run changes nothing,
//! applying creates the topics and their dead-letter topics, applying again changes
//! nothing, a catalog with more partitions grows the topic, one with fewer is refused.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn catalog(dir: &Path, topic: &str, other: &str, partitions: i32) -> std::path::PathBuf {
    let path = dir.join("topics.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[topic]]
name = "{topic}"
partitions = {partitions}
retention = "7d"
owner = "test"
dead_letter = "{topic}.dlq"

[[topic]]
name = "{other}"
partitions = 1
retention = "12h"
owner = "test"
"#
        ),
    )
    .unwrap();
    path
}

fn apply(dir: &Path, catalog: &Path, extra: &[&str]) -> (Output, String) {
    let mut args = vec![
        "topics",
        "apply",
        "--catalog",
        catalog.to_str().unwrap(),
        "--replication-factor",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = Gridflow::spawn_raw(&args, dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn line<'a>(text: &'a str, topic: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(topic))
        .unwrap_or_else(|| panic!("no line for {topic} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_applied_once_and_kept() {
    let dir = test_dir();
    let topic = unique("t.catalog.events.v1");
    let other = unique("t.catalog.other.v1");
    let dlq = format!("{topic}.dlq");
    let path = catalog(dir.path(), &topic, &other, 2);

    // Dry run: the plan, nothing created.
    let (out, text) = apply(dir.path(), &path, &["--dry-run"]);
    assert!(out.status.success(), "{text}");
    assert!(line(&text, &topic).starts_with("create"), "{text}");
    assert!(line(&text, &dlq).contains("partitions 2"), "{text}");
    assert!(
        line(&text, &other).contains("retention.ms=43200000"),
        "{text}"
    );
    assert!(
        text.contains("3 created, 0 updated, 0 unchanged, 0 conflicts (dry run"),
        "{text}"
    );
    assert_eq!(topic_partitions(&topic), None, "a dry run created {topic}");

    // Apply: every topic, its dead-letter topic too.
    let (out, text) = apply(dir.path(), &path, &[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 created"), "{text}");
    for (name, partitions) in [(&topic, 2), (&dlq, 2), (&other, 1)] {
        assert_eq!(topic_partitions(name), Some(partitions), "{name}");
    }

    // Again: nothing to do.
    let (out, text) = apply(dir.path(), &path, &[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 created, 0 updated, 3 unchanged"), "{text}");
    assert!(line(&text, &topic).starts_with("unchanged"), "{text}");

    // More partitions: the topic and its dead-letter topic grow. tansu 0.6.0 does not
    // implement CreatePartitions: there gridflow must say so and exit 1, the topic untouched;
    // on Apache Kafka (KAFKA_BROKERS) the topics grow.
    let path = catalog(dir.path(), &topic, &other, 4);
    let (out, text) = apply(dir.path(), &path, &[]);
    assert!(line(&text, &topic).contains("partitions 2 -> 4"), "{text}");
    assert!(line(&text, &dlq).contains("partitions 2 -> 4"), "{text}");
    let grown = if text.contains("the broker does not support CreatePartitions") {
        assert_eq!(out.status.code(), Some(1), "{text}");
        eprintln!("this broker cannot add partitions (tansu 0.6.0): refusal checked");
        2
    } else {
        assert!(out.status.success(), "{text}");
        4
    };
    assert_eq!(topic_partitions(&topic), Some(grown));
    assert_eq!(topic_partitions(&dlq), Some(grown));

    // Fewer than it has: refused before any change, exit 1.
    let path = catalog(dir.path(), &topic, &other, 1);
    let (out, text) = apply(dir.path(), &path, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, &topic).starts_with("conflict"), "{text}");
    assert!(text.contains("cannot remove partitions"), "{text}");
    assert_eq!(topic_partitions(&topic), Some(grown));
}

#[test]
fn a_bad_catalog_is_named() {
    let dir = test_dir();
    let path = dir.path().join("topics.toml");
    std::fs::write(
        &path,
        "[[topic]]\nname = \"x.y.z.v1\"\npartitions = 1\nretention = \"a week\"\nowner = \"t\"\n",
    )
    .unwrap();
    let (out, text) = apply(dir.path(), &path, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("x.y.z.v1") && text.contains("retention"),
        "{text}"
    );
}
