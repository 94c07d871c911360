//! Test files parsed from inline TOML through `file::parse`, run through `run_case`.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::contracts::Contracts;

/// A temp dir with `flow.toml` (the pipeline) and `flow.test.toml` (the test file).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(pipeline: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("flow.toml"), pipeline).unwrap();
        Fixture { dir }
    }

    fn load(&self, test: &str) -> Result<TestFile, Vec<Diagnostic>> {
        let path = self.dir.path().join("flow.test.toml");
        std::fs::write(&path, test).unwrap();
        file::load(&path, &contracts())
    }

    /// The problems of every case, in order.
    fn run(&self, test: &str) -> Vec<Vec<String>> {
        let file = self.load(test).unwrap_or_else(|d| panic!("{}", render(&d)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        file.cases
            .iter()
            .map(|c| runtime.block_on(run_case(&file, c, &contracts())).problems)
            .collect()
    }
}

fn contracts() -> Arc<Contracts> {
    Arc::new(Contracts::load(Path::new("/nonexistent")).0)
}

fn render(d: &[Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

const HTTP_PIPELINE: &str = r#"
name = "flow"
[source]
kind = "http"
path = "/in"
[[steps]]
kind = "filter"
condition = "kind != 'ignore'"
[[steps]]
kind = "map"
expression = "{id: id, n: to_number(n)}"
[[steps]]
kind = "enrich"
url = "${REGISTRY}/things/{id}"
target = "thing"
on_missing = "null"
[sink]
kind = "kafka"
topic = "a.b.c.v1"
"#;

const HEAD: &str = "pipeline = 'flow.toml'\n[env]\nREGISTRY = 'http://registry.test'\n";

#[test]
fn a_case_passes_when_every_expectation_holds() {
    let f = Fixture::new(HTTP_PIPELINE);
    let test = format!(
        r#"{HEAD}
[[case]]
name = "enriched"
input = {{ json = {{ id = "x 1", n = "3" }} }}
[[case.http]]
url = "http://registry.test/things/x%201"
json = {{ site = "S-7" }}
[case.expect]
count = 1
messages = [{{ id = "x 1", n = 3, thing = {{ site = "S-7" }} }}]
assert = ["[0].thing.site == 'S-7'", "length(@) == `1`"]
sink = "sink.kafka"

[[case]]
name = "404 follows on_missing"
input = {{ body = '{{"id": "y", "n": "1"}}', content_type = "application/json" }}
[[case.http]]
url = "http://registry.test/things/y"
status = 404
[case.expect]
messages = [{{ id = "y", n = 1, thing = {{}} }}]

[[case]]
name = "filtered"
input = {{ json = {{ kind = "ignore" }} }}
[case.expect]
filtered = true
"#
    );
    let results = f.run(&test);
    assert!(results[0].is_empty(), "{:?}", results[0]);
    // `thing` is null, not {}: the diff shows it.
    assert_eq!(results[1].len(), 1, "{:?}", results[1]);
    let d = &results[1][0];
    let removed = d.find("-     \"thing\": {}").expect(d);
    let added = d.find("+     \"thing\": null").expect(d);
    assert!(removed < added, "{d}");
    assert!(results[2].is_empty(), "{:?}", results[2]);
}

#[test]
fn failures_are_reported_with_what_happened() {
    let f = Fixture::new(HTTP_PIPELINE);
    let test = format!(
        r#"{HEAD}
[[case]]
name = "not JSON: dead-lettered by the source"
input = {{ body = "{{nope", content_type = "application/json" }}
[case.expect]
dead_letter = {{ code = "invalid_json", step = "source.http" }}

[[case]]
name = "a call without a recording"
input = {{ json = {{ id = "z", n = "1" }} }}
[case.expect]
count = 1

[[case]]
name = "503: retried, then transient"
input = {{ json = {{ id = "u", n = "1" }} }}
[[case.http]]
url = "http://registry.test/things/u"
status = 503
[case.expect]
transient = {{ code = "retries_exhausted", step = "steps[2].enrich" }}

[[case]]
name = "expected a dead letter, got a delivery"
input = {{ json = {{ id = "u", n = "1" }} }}
[[case.http]]
url = "http://registry.test/things/u"
json = {{}}
[case.expect]
dead_letter = {{ code = "mapping_error" }}

[[case]]
name = "an assertion that is false"
input = {{ json = {{ id = "u", n = "2" }} }}
[[case.http]]
url = "http://registry.test/things/u"
json = {{}}
[case.expect]
assert = ["[0].n == `3`"]
"#
    );
    let results = f.run(&test);
    assert!(results[0].is_empty(), "{:?}", results[0]);
    let missing = results[1].join("\n");
    assert!(
        missing.contains("no recording answers GET http://registry.test/things/z"),
        "{missing}"
    );
    assert!(missing.contains("no [[case.http]] recordings"), "{missing}");
    assert!(missing.contains("unexpected dead letter"), "{missing}");
    assert!(results[2].is_empty(), "{:?}", results[2]);
    let dl = results[3].join("\n");
    assert!(
        dl.contains("expected a dead letter with code `mapping_error`"),
        "{dl}"
    );
    let a = results[4].join("\n");
    assert!(a.contains("assertion `[0].n == `3`` gave false"), "{a}");
    assert!(a.contains("\"n\": 2"), "the value it ran on: {a}");
}

#[test]
fn kafka_inputs_keep_their_key_and_headers() {
    let f = Fixture::new(
        r#"
[source]
kind = "kafka"
topics = ["raw.thing.seen.v1"]
group = "g"
[[steps]]
kind = "map"
expression = "{k: meta().key, topic: meta().source.topic, cid: meta().correlation_id, h: meta().headers.region}"
[sink]
kind = "kafka"
topic = "a.b.c.v1"
"#,
    );
    let results = f.run(
        r#"
pipeline = "flow.toml"
[[case]]
name = "meta"
input = { body = "{}", key = "M-1", headers = { region = "eu" } }
[case.expect]
messages = [{ k = "M-1", topic = "raw.thing.seen.v1", cid = "gridflow-test", h = "eu" }]
"#,
    );
    assert!(results[0].is_empty(), "{:?}", results[0]);
}

#[test]
fn malformed_files_give_every_error_with_its_position() {
    let f = Fixture::new(HTTP_PIPELINE);
    let err = f
        .load(&format!(
            r#"{HEAD}
[[case]]
name = "a"
input = {{ json = {{}}, body = "x" }}
[case.expect]
count = 1
[[case]]
name = "b"
input = {{ json = {{}} }}
[case.expect]
cuont = 1
[[case]]
name = "c"
input = {{ json = {{}} }}
[case.expect]
dead_letter = {{ code = "maping_error" }}
assert = ["[0].a ==* 1"]
sink = "sink.http"
"#
        ))
        .unwrap_err();
    let text = render(&err);
    assert!(
        text.contains("flow.test.toml:7:9: error: the input needs exactly one of"),
        "{text}"
    );
    assert!(text.contains(":14:1: error: unknown key `cuont`"), "{text}");
    assert!(text.contains("did you mean `count`?"), "{text}");
    assert!(
        text.contains(":19:24: error: unknown error code `maping_error`"),
        "{text}"
    );
    assert!(text.contains("did you mean `mapping_error`?"), "{text}");
    assert!(
        text.contains(":20:22: error: assert[0]: invalid JMESPath"),
        "{text}"
    );
    assert!(
        text.contains("the pipeline has no sink `sink.http`"),
        "{text}"
    );
    assert!(text.contains("its sinks: sink.kafka"), "{text}");

    // The pipeline's own diagnostics, with the test file's [env] only.
    let err = f
        .load("pipeline = 'flow.toml'\n[[case]]\nname = 'a'\ninput = { body = '' }\nexpect = {}\n")
        .unwrap_err();
    let text = render(&err);
    assert!(
        text.contains("flow.toml:14:7: error: environment variable `REGISTRY` is not set"),
        "{text}"
    );
    let err = f.load("pipeline = 'nope.toml'\n").unwrap_err();
    let text = render(&err);
    assert!(text.contains(":1:12: error: no pipeline file"), "{text}");
    assert!(text.contains("at least one `[[case]]`"), "{text}");
}

#[test]
fn recorded_answers_go_through_the_step_as_real_ones() {
    let f = Fixture::new(HTTP_PIPELINE);
    let results = f.run(&format!(
        r#"{HEAD}
[[case]]
name = "an XML answer is converted"
input = {{ json = {{ id = "x", n = "1" }} }}
[[case.http]]
url = "http://registry.test/things/x"
body = "<thing><site>S-7</site></thing>"
content_type = "application/xml"
[case.expect]
assert = ["[0].thing.thing.site == 'S-7'"]

[[case]]
name = "a 403 is a refusal of the message"
input = {{ json = {{ id = "x", n = "1" }} }}
[[case.http]]
url = "http://registry.test/things/x"
status = 403
[case.expect]
dead_letter = {{ code = "enrichment_failed", step = "steps[2].enrich", message = "403" }}
"#
    ));
    assert!(results[0].is_empty(), "{:?}", results[0]);
    assert!(results[1].is_empty(), "{:?}", results[1]);
}

const ENVELOPE_PIPELINE: &str = r#"
name = "flow"
[source]
kind = "http"
path = "/in"
[[steps]]
kind = "map"
expression = "{meter: meter, at: at, kwh: to_number(kwh)}"
[[steps]]
kind = "envelope"
event_type = "grid.meter.reading"
event_version = 1
source_system = "gridflow"
partition_key = "meter"
occurred_at = "at"
[sink]
kind = "kafka"
topic = "grid.meter.reading.v1.dev"
"#;

#[test]
fn payloads_compare_what_the_envelopes_carry() {
    let f = Fixture::new(ENVELOPE_PIPELINE);
    let test = r#"pipeline = 'flow.toml'
[[case]]
name = "the payload, whatever the event id"
input = { json = { meter = "M-1", at = "2026-01-14T10:15:00Z", kwh = "1.5" } }
[case.expect]
count = 1
payloads = [{ meter = "M-1", at = "2026-01-14T10:15:00Z", kwh = 1.5 }]
assert = ["[0].partitionKey == 'M-1' && [0].occurredAt == '2026-01-14T10:15:00Z'"]

[[case]]
name = "another value is a difference"
input = { json = { meter = "M-1", at = "2026-01-14T10:15:00Z", kwh = "2" } }
[case.expect]
payloads = [{ meter = "M-1", at = "2026-01-14T10:15:00Z", kwh = 1.5 }]

[[case]]
name = "the whole envelope is not the payload"
input = { json = { meter = "M-1", at = "2026-01-14T10:15:00Z", kwh = "1.5" } }
[case.expect]
messages = [{ meter = "M-1", at = "2026-01-14T10:15:00Z", kwh = 1.5 }]
"#;
    let results = f.run(test);
    assert!(results[0].is_empty(), "{:?}", results[0]);
    assert_eq!(results[1].len(), 1, "{:?}", results[1]);
    let d = &results[1][0];
    assert!(
        d.starts_with("payloads to") || d.starts_with("payloads differ"),
        "{d}"
    );
    assert!(
        d.contains("-     \"kwh\": 1.5") && d.contains("+     \"kwh\": 2"),
        "{d}"
    );
    assert_eq!(results[2].len(), 1, "{:?}", results[2]);
    assert!(
        results[2][0].contains("+     \"eventId\""),
        "{:?}",
        results[2]
    );
}

#[test]
fn payloads_and_count_must_agree() {
    let f = Fixture::new(ENVELOPE_PIPELINE);
    let errors = f
        .load(
            r#"pipeline = 'flow.toml'
[[case]]
name = "two listed, one counted"
input = { json = {} }
[case.expect]
count = 1
payloads = [{ a = 1 }, { a = 2 }]
"#,
        )
        .expect_err("count and payloads disagree");
    let text = render(&errors);
    assert!(
        text.contains("`count` is 1 but `payloads` lists 2"),
        "{text}"
    );
}
