//! Black-box: faithful passthrough. A message that no step changed is delivered byte for byte
//! (HTTP → Kafka with the source's contract, Kafka → Kafka, file → file), through a `filter`
//! and a `validate` step, however unusual its valid JSON is (whitespace, `\u00e9` escapes
//! beside raw UTF-8, `1.0`, `1e2`, integers beyond 64 bits, `-0`, keys not sorted); what is
//! dead-lettered is the input's bytes; and a step that changes one field keeps the others in
//! the input's order. A body whose object repeats a name is refused where its bytes would be
//! delivered after a check (the value checked would not be the one a consumer reads).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Valid JSON of every unusual form, each kept by the filter and valid for the contract.
const KEPT: [&str; 3] = [
    "{\n  \"id\" : \"p-1\",\n\t\"name\": \"caf\\u00e9\",  \"n\": 1.0, \"m\": 1e2, \"big\": 123456789012345678901234567890, \"z\": -0, \"list\": [ 1 , 2.50 ] }\n",
    "{\"zeta\":true,\"id\":\"p-2\",\"name\":\"caf\u{e9} \u{2615} \u{1f600}\",\"esc\":\"\\ud83d\\ude00\\/\",\"alpha\":{\"y\":1,\"x\":2}}",
    "  {\"id\":\"p-3\",\"neg\":-0.0,\"exp\":1E+2,\"small\":1e-7,\"f\":0.30000000000000004,\"u64\":18446744073709551615,\"i64\":-9223372036854775808}  ",
];

/// Dropped by the filter (`keep` is false).
const DROPPED: &str = "{\"id\":\"p-4\",\"keep\":false}";

/// The contract of the tests: an object with a string `id` starting `p-`.
const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id"],
  "properties": {"id": {"type": "string", "pattern": "^p-"}, "n": {"type": "number"}}
}"#;

/// A test directory with the contract `passthrough-probe@1` and a `gridflow.toml` using it.
fn setup() -> tempfile::TempDir {
    let dir = test_dir();
    let contract = dir.path().join("contracts/passthrough-probe/1");
    std::fs::create_dir_all(&contract).unwrap();
    std::fs::write(contract.join("schema.json"), SCHEMA).unwrap();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        format!(
            "[paths]\ncontracts = '{}'\n",
            dir.path().join("contracts").display()
        ),
    )
    .unwrap();
    dir
}

/// The steps every pipeline of the tests runs: they read, they change nothing.
const READ_ONLY_STEPS: &str = "[[steps]]\nkind = 'filter'\ncondition = 'keep != `false`'\n\
                               [[steps]]\nkind = 'validate'\ncontract = 'passthrough-probe@1'\n";

fn sorted(mut payloads: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    payloads.sort();
    payloads
}

fn expected_kept() -> Vec<Vec<u8>> {
    sorted(KEPT.iter().map(|b| b.as_bytes().to_vec()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_kafka_delivers_the_bytes_sent() {
    let topic = unique("passthrough.http");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dir = setup();
    write_pipeline(
        dir.path(),
        "http-passthrough.toml",
        &format!(
            "name = 'http-passthrough'\n[source]\nkind = 'http'\npath = '/in'\n\
             contract = 'passthrough-probe@1'\n{READ_ONLY_STEPS}\
             [sink]\nkind = 'kafka'\ntopic = '{topic}'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    for body in KEPT.iter().chain([&DROPPED]) {
        let response = http()
            .post(gf.http_url("/in"))
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            202,
            "{body:?}: {:?}",
            response.text().await
        );
    }
    // A byte order mark is not JSON (RFC 8259 forbids it in JSON sent over a network).
    let response = http()
        .post(gf.http_url("/in"))
        .header("content-type", "application/json")
        .body(format!("\u{feff}{}", KEPT[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A repeated name: the contract would check `"p-2"`, a consumer keeping the first value
    // would read `"x-1"`, which the contract refuses.
    let response = http()
        .post(gf.http_url("/in"))
        .header("content-type", "application/json")
        .body(r#"{"id": "x-1", "id": "p-2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem = response.text().await.unwrap();
    assert!(problem.contains("is repeated in an object"), "{problem}");

    let records = consume(&topic, KEPT.len(), Duration::from_secs(30)).await;
    let got = sorted(records.into_iter().map(|r| r.payload).collect());
    assert_eq!(
        got.iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>(),
        expected_kept()
            .iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>(),
        "the bytes sent, on the topic"
    );
    let late = consume_for(&topic, Duration::from_secs(2)).await;
    assert_eq!(
        late.len(),
        KEPT.len(),
        "the dropped one is not on the topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_kafka_delivers_and_dead_letters_the_bytes_received() {
    let input = unique("passthrough.in");
    let output = unique("passthrough.out");
    let dlq = format!("{output}.dlq");
    let set_in = unique("passthrough.set.in");
    let set_out = unique("passthrough.set.out");
    let set_dlq = format!("{set_out}.dlq");
    for topic in [&input, &output, &dlq, &set_in, &set_out, &set_dlq] {
        create_topic(topic, 1).await;
    }
    let dir = setup();
    write_pipeline(
        dir.path(),
        "kafka-passthrough.toml",
        &format!(
            "name = 'kafka-passthrough'\n[source]\nkind = 'kafka'\ntopics = ['{input}']\n\
             group = '{}'\n{READ_ONLY_STEPS}[sink]\nkind = 'kafka'\ntopic = '{output}'\n\
             [on_error]\ndead_letter_topic = '{dlq}'\n",
            unique("passthrough-group")
        ),
    );
    // A step that changes one field: the others stay in the input's order.
    write_pipeline(
        dir.path(),
        "kafka-set-one.toml",
        &format!(
            "name = 'kafka-set-one'\n[source]\nkind = 'kafka'\ntopics = ['{set_in}']\n\
             group = '{}'\n[[steps]]\nkind = 'set'\n[steps.fields]\nunit = \"'Wh'\"\n\
             [sink]\nkind = 'kafka'\ntopic = '{set_out}'\n",
            unique("passthrough-set-group")
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);

    let bom = format!("\u{feff}{}", KEPT[1]);
    let broken = "{ \"id\" : 5,\n \"n\": 1.0 }";
    let mut inputs: Vec<&str> = KEPT.to_vec();
    inputs.extend([DROPPED, bom.as_str(), broken]);
    for (i, body) in inputs.iter().enumerate() {
        produce(&input, Some(&format!("k-{i}")), body.as_bytes(), &[]).await;
    }
    produce(
        &set_in,
        None,
        br#"{"zeta":true,"id":"p-6","unit":"kWh","alpha":{"y":1,"x":2},"n":1.5,"a":[3,1]}"#,
        &[],
    )
    .await;

    let records = consume(&output, KEPT.len(), Duration::from_secs(30)).await;
    let payloads: Vec<String> = records.iter().map(Record::text).collect();
    assert_eq!(payloads, KEPT, "the bytes received, in order");
    let keys: Vec<_> = records.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys, ["k-0", "k-1", "k-2"], "the input's keys");

    let dead = consume(&dlq, 2, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    // Dead letters are sent as inputs fail, not in input order.
    let dead_letter = |code: &str| {
        let found = dead
            .iter()
            .find(|r| r.headers["gridflow.error.code"] == code);
        found
            .unwrap_or_else(|| panic!("no {code} in {dead:?}"))
            .payload
            .clone()
    };
    assert_eq!(
        dead_letter("invalid_json"),
        bom.as_bytes(),
        "the BOM input, as received"
    );
    assert_eq!(
        dead_letter("contract_violation"),
        broken.as_bytes(),
        "the violation, as received"
    );

    let changed = consume(&set_out, 1, Duration::from_secs(30)).await;
    assert_eq!(
        changed[0].text(),
        r#"{"zeta":true,"id":"p-6","unit":"Wh","alpha":{"y":1,"x":2},"n":1.5,"a":[3,1]}"#,
        "one field changed, the others in their order"
    );
    drop(gf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_to_file_writes_the_lines_read() {
    let dir = setup();
    write_pipeline(
        dir.path(),
        "file-passthrough.toml",
        &format!(
            "name = 'file-passthrough'\n[source]\nkind = 'file'\ndir = 'inbox'\n\
             poll_interval_ms = 100\n{READ_ONLY_STEPS}\
             [sink]\nkind = 'file'\npath = 'out/passthrough.ndjson'\n"
        ),
    );
    let gf = Gridflow::start(dir.path(), &[]);
    // NDJSON: one document a line, so the first body on one line; a CRLF line too.
    let lines = [
        "{ \"id\" : \"p-1\",\t\"name\": \"caf\\u00e9\", \"n\": 1.0, \"big\": 123456789012345678901234567890, \"z\": -0 }",
        KEPT[1],
        KEPT[2],
        DROPPED,
        "{\"id\":\"p-7\",\"b\":1e2}\r",
    ];
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(inbox.join("in.ndjson.tmp"), &text).unwrap();
    std::fs::rename(inbox.join("in.ndjson.tmp"), inbox.join("in.ndjson")).unwrap();

    let out = dir.path().join("out/passthrough.ndjson");
    let written = wait_for_lines(&out, 4, Duration::from_secs(30)).await;
    let mut want: Vec<String> = lines
        .iter()
        .filter(|l| **l != DROPPED)
        .map(|l| format!("{l}\n"))
        .collect();
    want.sort();
    let mut got: Vec<String> = written.split_inclusive('\n').map(str::to_string).collect();
    got.sort();
    assert_eq!(got, want, "the lines read, byte for byte");
    drop(gf);
}

/// The text of `path` once it has `lines` line breaks (or what it has at `timeout`).
async fn wait_for_lines(path: &Path, lines: usize, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches('\n').count() >= lines || tokio::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
