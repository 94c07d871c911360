//! The test file format (`pipelines/tests/<pipeline>.test.toml`) and its loading: every
//! problem reported at its line and column, the pipeline under test loaded and built.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use toml::de::DeValue;
use toml::Spanned;

use crate::config::diagnostic::did_you_mean;
use crate::config::document::Document;
use crate::config::pipeline::load_file;
use crate::config::{Diagnostic, PipelineFile};
use crate::contracts::Contracts;
use crate::error::ErrorCode;
use crate::jmes::Expr;
use crate::sources::SourceConfig;

/// `[[case]]`: one input and what must come out of it.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseConfig {
    /// What the case shows; printed with its result.
    pub name: String,
    /// The input, as the pipeline's source receives it.
    pub input: InputConfig,
    /// `[[case.http]]`: recorded answers to the pipeline's `enrich` calls.
    #[serde(default)]
    pub http: Vec<RecordingConfig>,
    /// `[case.expect]`: what must come out.
    pub expect: ExpectConfig,
}

/// `input`: the body (exactly one of `file`, `body`, `json`) and what travels with it.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// A fixture file, relative to the test file.
    pub file: Option<PathBuf>,
    /// The body as text.
    pub body: Option<String>,
    /// The body as JSON.
    pub json: Option<Value>,
    /// HTTP sources: the request's `Content-Type` (default: `application/json` for `json`,
    /// from the extension for a `.json` or `.xml` file, else none: the body is sniffed).
    pub content_type: Option<String>,
    /// HTTP sources: request headers; Kafka sources: record headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Kafka sources: the record key.
    pub key: Option<String>,
}

/// `[[case.http]]`: one recorded answer, given to every call with its method and URL.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// `GET` (default) or `POST`.
    #[serde(default = "default_method")]
    pub method: String,
    /// The URL exactly as the step renders it (placeholders filled in, percent-encoded).
    pub url: String,
    /// A POST's JSON body must equal this; any body when absent.
    pub request_json: Option<Value>,
    /// The status code (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// The answer's body as JSON.
    pub json: Option<Value>,
    /// The answer's body as text (XML, or anything else).
    pub body: Option<String>,
    /// The answer's `Content-Type` (default `application/json` with `json`; else none: the
    /// body is sniffed).
    pub content_type: Option<String>,
    /// More answer headers (`Retry-After`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_status() -> u16 {
    200
}

/// `[case.expect]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectConfig {
    /// Messages delivered (to `sink`, or to every sink).
    pub count: Option<usize>,
    /// The delivered bodies, in order, compared as JSON.
    pub messages: Option<Vec<Value>>,
    /// The `payload` of each delivered body, in order, compared as JSON: the events of a
    /// pipeline that ends with an `envelope` step, whose ids and correlation ids a test does
    /// not write (check the envelope's fields with `assert`).
    pub payloads: Option<Vec<Value>>,
    /// JMESPath expressions over the array of delivered bodies; each must give `true`.
    #[serde(default)]
    pub assert: Vec<String>,
    /// Only the messages to this sink (`sink.kafka`, `steps[1].branch.routes[0].sink.kafka`).
    pub sink: Option<String>,
    /// The input is dead-lettered with this failure.
    pub dead_letter: Option<FailureExpect>,
    /// Nothing delivered, nothing dead-lettered: every message was filtered out.
    #[serde(default)]
    pub filtered: bool,
    /// An `enrich` upstream is unavailable: the input is refused (HTTP `503`) or waits (Kafka).
    pub transient: Option<FailureExpect>,
}

/// A failure as a case expects it.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureExpect {
    /// The error code (`mapping_error`, `contract_violation`, `retries_exhausted`, ...).
    pub code: String,
    /// The failing component (`steps[2].map`, `source.http`); any when absent.
    pub step: Option<String>,
    /// Text the error message contains; any when absent.
    pub message: Option<String>,
}

/// A loaded test file, ready to run.
#[derive(Debug)]
pub struct TestFile {
    /// The test file.
    pub path: PathBuf,
    /// The pipeline under test, interpolated with the file's `[env]`.
    pub pipeline: PipelineFile,
    /// Its cases, in file order.
    pub cases: Vec<Case>,
}

/// A checked case.
#[derive(Debug)]
pub struct Case {
    /// Its config.
    pub config: CaseConfig,
    /// The input's bytes.
    pub body: Bytes,
    /// The `Content-Type` an HTTP source sees.
    pub content_type: Option<String>,
    /// The `assert` expressions, compiled.
    pub asserts: Vec<Expr>,
}

const TOP_LEVEL: &[&str] = &["pipeline", "env", "case"];

/// Reads and checks the test file `path`; its pipeline's `validate` steps and contracts use
/// `contracts`. Every problem is reported, at its line and column.
pub fn load(path: &Path, contracts: &Arc<Contracts>) -> Result<TestFile, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read the test file: {e}"),
            hint: None,
        }]
    })?;
    parse(path, &text, contracts)
}

/// Checks the test file `path` whose text is `text`.
pub fn parse(
    path: &Path,
    text: &str,
    contracts: &Arc<Contracts>,
) -> Result<TestFile, Vec<Diagnostic>> {
    let mut doc = Document::parse_literal(path, text)?;
    let root = doc.root.clone();
    let table = root.get_ref();
    doc.check_keys(table, TOP_LEVEL, "a test file");
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();

    let pipeline_path = match table.get_key_value("pipeline") {
        Some((_, v)) => match v.get_ref().as_str() {
            Some(p) => Some((dir.join(p), v.span())),
            None => {
                doc.error(Some(v.span()), "`pipeline` must be a string", None);
                None
            }
        },
        None => {
            doc.error(
                Some(0..0),
                "missing key `pipeline` in a test file",
                Some("add `pipeline = \"../my-flow.toml\"` (relative to the test file)".into()),
            );
            None
        }
    };
    let env: BTreeMap<String, String> = match table.get("env") {
        Some(v) => doc.section(v, "[env]", &[]).unwrap_or_default(),
        None => BTreeMap::new(),
    };

    let mut raw_cases: Vec<(Spanned<DeValue<'_>>, CaseConfig)> = Vec::new();
    match table.get("case").map(|c| (c.span(), c.get_ref())) {
        None => doc.error(
            Some(0..0),
            "a test file needs at least one `[[case]]`",
            Some("add a `[[case]]` with `name`, `input` and `[case.expect]`".into()),
        ),
        Some((_, DeValue::Array(items))) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(c) = doc.section::<CaseConfig>(item, &format!("case[{i}]"), &[]) {
                    raw_cases.push((item.clone(), c));
                }
            }
        }
        Some((span, _)) => doc.error(
            Some(span),
            "`case` must be an array of tables",
            Some("write each case as `[[case]]`".into()),
        ),
    }

    // The pipeline, with the file's [env] only: a test does not depend on the shell.
    let pipeline = match &pipeline_path {
        Some((file, span)) if !file.is_file() => {
            doc.error(
                Some(span.clone()),
                format!("no pipeline file {}", file.display()),
                Some("the path is relative to the test file".into()),
            );
            None
        }
        Some((file, span)) => match load_file(file, &|name| env.get(name).cloned()) {
            Ok(p) => Some((p, span.clone())),
            Err(mut d) => {
                doc.diagnostics.append(&mut d);
                None
            }
        },
        None => None,
    };
    let sinks = match &pipeline {
        Some((p, span)) => match super::build(p, contracts, None) {
            Ok(program) => Some(
                program
                    .sinks
                    .iter()
                    .map(|s| s.id.clone())
                    .collect::<Vec<_>>(),
            ),
            Err(message) => {
                doc.error(
                    Some(span.clone()),
                    format!("the pipeline does not build: {message}"),
                    Some(
                        "check it with `gridflow validate`, and the contracts directory (--contracts)"
                            .into(),
                    ),
                );
                None
            }
        },
        None => None,
    };
    let source = pipeline.as_ref().map(|(p, _)| &p.config.source);
    let mut cases = Vec::new();
    for (value, config) in raw_cases {
        if let Some(case) = check_case(&mut doc, &dir, &value, config, source, sinks.as_deref()) {
            cases.push(case);
        }
    }
    match pipeline {
        Some((pipeline, _)) if doc.diagnostics.is_empty() => Ok(TestFile {
            path: path.to_path_buf(),
            pipeline,
            cases,
        }),
        _ => {
            let mut diagnostics = doc.diagnostics;
            diagnostics.sort_by_key(|d| (d.path.clone(), d.line, d.column));
            Err(diagnostics)
        }
    }
}

/// Span of the value at `keys` under `value` (the deepest that exists).
fn span_at(value: &Spanned<DeValue<'_>>, keys: &[&str]) -> Range<usize> {
    let mut current = value;
    for key in keys {
        match current.get_ref().as_table().and_then(|t| t.get(*key)) {
            Some(v) => current = v,
            None => break,
        }
    }
    current.span()
}

fn check_case(
    doc: &mut Document<'_>,
    dir: &Path,
    value: &Spanned<DeValue<'_>>,
    config: CaseConfig,
    source: Option<&SourceConfig>,
    sinks: Option<&[String]>,
) -> Option<Case> {
    let before = doc.diagnostics.len();
    let input = &config.input;
    let at = |keys: &[&str]| Some(span_at(value, keys));

    // The body.
    let given = [
        input.file.is_some(),
        input.body.is_some(),
        input.json.is_some(),
    ];
    let mut body = Bytes::new();
    let mut content_type = input.content_type.clone();
    if given.iter().filter(|g| **g).count() != 1 {
        doc.error(
            at(&["input"]),
            "the input needs exactly one of `file`, `body` and `json`",
            Some("`file` (a fixture, relative to the test file), `body` (text) or `json`".into()),
        );
    } else if let Some(file) = &input.file {
        let full = dir.join(file);
        match std::fs::read(&full) {
            Ok(bytes) => body = Bytes::from(bytes),
            Err(e) => doc.error(
                at(&["input", "file"]),
                format!("cannot read {}: {e}", full.display()),
                Some("the path is relative to the test file".into()),
            ),
        }
        if content_type.is_none() {
            content_type = match file.extension().and_then(|e| e.to_str()) {
                Some("json") => Some("application/json".into()),
                // A SOAP envelope in a file: SOAP 1.1's media type.
                Some("xml") if matches!(source, Some(SourceConfig::Soap(_))) => {
                    Some("text/xml".into())
                }
                Some("xml") => Some("application/xml".into()),
                _ => None,
            };
        }
    } else if let Some(text) = &input.body {
        body = Bytes::from(text.clone());
    } else if let Some(json) = &input.json {
        body = Bytes::from(json.to_string());
        content_type.get_or_insert_with(|| "application/json".into());
    }
    match source {
        Some(SourceConfig::Kafka(_)) if input.content_type.is_some() => doc.error(
            at(&["input", "content_type"]),
            "a Kafka record has no content type (gridflow sniffs its bytes)",
            Some("remove `content_type`".into()),
        ),
        Some(SourceConfig::Http(_) | SourceConfig::Soap(_) | SourceConfig::File(_))
            if input.key.is_some() =>
        {
            doc.error(
                at(&["input", "key"]),
                "only a Kafka record has a key",
                Some("remove `key`".into()),
            )
        }
        Some(SourceConfig::File(_)) if !input.headers.is_empty() => doc.error(
            at(&["input", "headers"]),
            "a file has no headers",
            Some("remove `headers`".into()),
        ),
        Some(SourceConfig::File(_)) if input.content_type.is_some() => doc.error(
            at(&["input", "content_type"]),
            "a file source takes the media type from the file's extension",
            Some("use `file` with a `.json` or `.xml` fixture, and remove `content_type`".into()),
        ),
        _ => {}
    }
    if let Some(SourceConfig::Http(_) | SourceConfig::Soap(_)) = source {
        for (name, v) in &input.headers {
            let valid = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && axum::http::HeaderValue::from_str(v).is_ok();
            if !valid {
                doc.error(
                    at(&["input", "headers"]),
                    format!("`{name}` is not a valid HTTP header"),
                    None,
                );
            }
        }
    }

    // The recordings.
    if let Some(DeValue::Array(items)) = value
        .get_ref()
        .as_table()
        .and_then(|t| t.get("http"))
        .map(|v| v.get_ref())
    {
        for (recording, item) in config.http.iter().zip(items) {
            check_recording(doc, recording, item);
        }
    }

    // The expectation.
    let expect = &config.expect;
    let e = |keys: &[&str]| {
        let mut path = vec!["expect"];
        path.extend_from_slice(keys);
        Some(span_at(value, &path))
    };
    let delivers = expect.count.is_some()
        || expect.messages.is_some()
        || expect.payloads.is_some()
        || !expect.assert.is_empty();
    if expect.filtered && (delivers || expect.dead_letter.is_some() || expect.transient.is_some()) {
        doc.error(
            e(&["filtered"]),
            "`filtered = true` means nothing comes out: it takes no other expectation",
            Some(
                "remove `count`, `messages`, `payloads`, `assert`, `dead_letter` and `transient`"
                    .into(),
            ),
        );
    }
    if expect.transient.is_some() && (delivers || expect.dead_letter.is_some()) {
        doc.error(
            e(&["transient"]),
            "a transient failure delivers nothing and dead-letters nothing",
            Some("remove `count`, `messages`, `payloads`, `assert` and `dead_letter`".into()),
        );
    }
    for (key, listed) in [
        ("messages", &expect.messages),
        ("payloads", &expect.payloads),
    ] {
        if let (Some(count), Some(listed)) = (expect.count, listed) {
            if count != listed.len() {
                doc.error(
                    e(&["count"]),
                    format!("`count` is {count} but `{key}` lists {}", listed.len()),
                    None,
                );
            }
        }
    }
    if let (Some(messages), Some(payloads)) = (&expect.messages, &expect.payloads) {
        if messages.len() != payloads.len() {
            doc.error(
                e(&["payloads"]),
                format!(
                    "`messages` lists {} but `payloads` lists {}",
                    messages.len(),
                    payloads.len()
                ),
                None,
            );
        }
    }
    for (key, failure) in [
        ("dead_letter", &expect.dead_letter),
        ("transient", &expect.transient),
    ] {
        if let Some(f) = failure {
            if ErrorCode::from_name(&f.code).is_none() {
                let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
                let hint = match did_you_mean(&f.code, &names) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("codes: {}", names.join(", ")),
                };
                doc.error(
                    e(&[key, "code"]),
                    format!("unknown error code `{}`", f.code),
                    Some(hint),
                );
            }
        }
    }
    if let (Some(sink), Some(sinks)) = (&expect.sink, sinks) {
        if !sinks.contains(sink) {
            doc.error(
                e(&["sink"]),
                format!("the pipeline has no sink `{sink}`"),
                Some(format!("its sinks: {}", sinks.join(", "))),
            );
        }
    }
    let mut asserts = Vec::new();
    let assert_items = match value
        .get_ref()
        .as_table()
        .and_then(|t| t.get("expect"))
        .and_then(|v| v.get_ref().as_table())
        .and_then(|t| t.get("assert"))
        .map(|v| v.get_ref())
    {
        Some(DeValue::Array(items)) => items.iter().map(|i| i.span()).collect(),
        _ => Vec::new(),
    };
    for (i, source) in expect.assert.iter().enumerate() {
        match Expr::compile(source) {
            Ok(expr) => asserts.push(expr),
            Err(err) => {
                let span = assert_items.get(i).map(|item: &Range<usize>| {
                    // The character inside the string (after its opening quote).
                    let start = item.start + 1 + err.offset.min(source.len());
                    start..start
                });
                doc.error(
                    span.or_else(|| e(&["assert"])),
                    format!("assert[{i}]: {err}"),
                    Some(
                        "check the expression against the JMESPath specification (jmespath.org)"
                            .into(),
                    ),
                );
            }
        }
    }
    (doc.diagnostics.len() == before).then_some(Case {
        config,
        body,
        content_type,
        asserts,
    })
}

fn check_recording(doc: &mut Document<'_>, recording: &RecordingConfig, item: &Spanned<DeValue>) {
    let at = |key: &str| Some(span_at(item, &[key]));
    if !matches!(recording.method.as_str(), "GET" | "POST") {
        doc.error(
            at("method"),
            format!("`{}` is not a method an enrich step uses", recording.method),
            Some("`GET` or `POST`".into()),
        );
    }
    if recording.request_json.is_some() && recording.method != "POST" {
        doc.error(
            at("request_json"),
            "only a POST has a request body",
            Some("set `method = \"POST\"`, or remove `request_json`".into()),
        );
    }
    if !(100..=599).contains(&recording.status) {
        doc.error(
            at("status"),
            format!("{} is not an HTTP status", recording.status),
            None,
        );
    }
    if recording.json.is_some() && recording.body.is_some() {
        doc.error(
            at("body"),
            "give the answer as `json` or as `body`, not both",
            None,
        );
    }
    for (name, v) in &recording.headers {
        let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(v).is_ok();
        if !valid {
            doc.error(
                at("headers"),
                format!("`{name}` is not a valid HTTP header"),
                None,
            );
        }
    }
    if let Some(ct) = &recording.content_type {
        if reqwest::header::HeaderValue::from_str(ct).is_err() {
            doc.error(at("content_type"), "not a valid `Content-Type`", None);
        }
    }
}
