//! Smoke tests for the test harness and the broker (they do not run the gridflow binary).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_keyed_records_with_headers() {
    let topic = unique("smoke");
    create_topic(&topic, 3).await;
    assert_eq!(topic_partitions(&topic), Some(3));

    for i in 0..50 {
        let key = format!("key-{}", i % 7);
        let payload = serde_json::json!({ "i": i }).to_string();
        let idx = i.to_string();
        produce(
            &topic,
            Some(&key),
            payload.as_bytes(),
            &[("x-index", &idx), ("x-source", "smoke")],
        )
        .await;
    }

    let records = consume(&topic, 50, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 50, "records: {records:?}");

    let seen: BTreeSet<i64> = records
        .iter()
        .map(|r| r.json()["i"].as_i64().unwrap())
        .collect();
    assert_eq!(seen, (0..50).collect::<BTreeSet<i64>>());

    let mut partitions_by_key: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for r in &records {
        let i = r.json()["i"].as_i64().unwrap();
        assert_eq!(r.key.as_deref(), Some(format!("key-{}", i % 7).as_str()));
        assert_eq!(r.headers.get("x-index"), Some(&i.to_string()));
        assert_eq!(r.headers.get("x-source").map(String::as_str), Some("smoke"));
        assert!((0..3).contains(&r.partition), "partition {}", r.partition);
        assert!(r.offset >= 0);
        partitions_by_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .insert(r.partition);
    }
    // The same key always lands on the same partition.
    for (k, ps) in &partitions_by_key {
        assert_eq!(ps.len(), 1, "key {k} spread over partitions {ps:?}");
    }

    // Nothing more arrives beyond what was produced.
    let again = consume_for(&topic, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_many_and_unkeyed_records() {
    let topic = unique("smoke-many");
    create_topic(&topic, 1).await;
    let records: Vec<(Option<String>, Vec<u8>)> = (0..200)
        .map(|i| {
            let key = (i % 2 == 0).then(|| format!("k{i}"));
            (key, format!("payload-{i}").into_bytes())
        })
        .collect();
    produce_many(&topic, records).await;

    let got = consume(&topic, 200, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 200);
    // Single partition: order and offsets are preserved.
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.text(), format!("payload-{i}"));
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.partition, 0);
        if i % 2 == 0 {
            assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_str()));
        } else {
            assert_eq!(r.key, None);
        }
        assert!(r.headers.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_resumes_after_committed_offset() {
    let topic = unique("smoke-group");
    create_topic(&topic, 3).await;
    let records: Vec<(Option<String>, Vec<u8>)> = (0..60)
        .map(|i| (Some(format!("k{i}")), format!("{i}").into_bytes()))
        .collect();
    produce_many(&topic, records).await;

    let group = unique("smoke-group");

    // First session: read 20 records, commit the consumer's position, leave the group.
    let c1 = consumer(&group);
    c1.subscribe(&[&topic]).unwrap();
    let first = read_records(&c1, Some(20), Duration::from_secs(60)).await;
    assert_eq!(first.len(), 20);
    c1.commit_consumer_state(CommitMode::Sync)
        .expect("commit failed");
    let mut expected: BTreeMap<i32, Offset> = (0..3).map(|p| (p, Offset::Invalid)).collect();
    for r in &first {
        let e = expected.entry(r.partition).or_insert(Offset::Invalid);
        let next = r.offset + 1;
        if !matches!(*e, Offset::Offset(o) if o >= next) {
            *e = Offset::Offset(next);
        }
    }
    assert_eq!(committed_offsets(&c1, &topic, 3), expected);
    close_consumer(c1).await;

    // Second session with the same group resumes exactly after the committed offsets.
    let c2 = consumer(&group);
    c2.subscribe(&[&topic]).unwrap();
    let rest = read_records(&c2, Some(40), Duration::from_secs(60)).await;
    assert_eq!(rest.len(), 40);
    for r in &rest {
        if let Some(Offset::Offset(c)) = expected.get(&r.partition) {
            assert!(r.offset >= *c, "re-read {r:?} (committed {c})");
        }
    }
    let all: BTreeSet<String> = first.iter().chain(&rest).map(|r| r.text()).collect();
    assert_eq!(all.len(), 60, "duplicates or gaps across sessions");
    c2.commit_consumer_state(CommitMode::Sync)
        .expect("commit failed");
    close_consumer(c2).await;

    // A third session sees nothing new; an explicit per-partition commit is stored too.
    let c3 = consumer(&group);
    c3.subscribe(&[&topic]).unwrap();
    let none = read_records(&c3, None, Duration::from_secs(5)).await;
    assert!(none.is_empty(), "unexpected re-delivery: {none:?}");
    let total: i64 = committed_offsets(&c3, &topic, 3)
        .values()
        .map(|o| match o {
            Offset::Offset(o) => *o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 60, "committed offsets must cover all 60 records");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1))
        .unwrap();
    c3.commit(&tpl, CommitMode::Sync)
        .expect("explicit commit failed");
    drop(tpl);
    assert_eq!(
        committed_offsets(&c3, &topic, 1).get(&0),
        Some(&Offset::Offset(1))
    );
    close_consumer(c3).await;
}
