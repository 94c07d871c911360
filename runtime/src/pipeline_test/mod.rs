//! `gridflow test`: pipeline unit tests written as TOML files, run without Kafka and without
//! network.
//!
//! Each case's input goes through the conversion its source applies
//! ([`request_input`](crate::sources::http::request_input),
//! [`record_meta`](crate::sources::record_meta), [`file_meta`](crate::sources::file_meta)),
//! then through the pipeline's [`Program`], built as the engine builds it (contracts loaded,
//! sinks built dry: nothing is contacted). `enrich` calls are answered from the case's
//! recordings ([`Recordings`]). What [`Program::run`] returns (the messages with their sink,
//! or the failure) is what the runner would deliver or dead-letter; it is compared with the
//! case's `[case.expect]`.
//!
//! Not reproduced: what happens at the sink itself (a Kafka sink's `key` expression, a
//! refusal by the destination) and the runner's later runs of an input whose upstream was
//! unavailable.

pub mod diff;
pub mod file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;

pub use file::{load, Case, TestFile};

use crate::config::Diagnostic;
use crate::contracts::Contracts;
use crate::engine::program::Program;
use crate::error::Failure;
use crate::message::{Item, Payload};
use crate::sinks::SinkContext;
use crate::sources::OfflineInput;
use crate::steps::enrich::{Response, Upstream};
use crate::steps::StepContext;
use crate::telemetry::Trace;
use file::{FailureExpect, RecordingConfig};

/// The correlation id of an input that carries none, so that outputs are the same each run.
pub const TEST_CORRELATION_ID: &str = "gridflow-test";

/// The test files among `inputs`: files as given, and the `*.test.toml` files of
/// directories (not their subdirectories), sorted.
pub fn test_paths(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut paths = Vec::new();
    let mut diagnostics = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            paths.push(input.clone());
            continue;
        }
        match std::fs::read_dir(input) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file()
                            && p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.ends_with(".test.toml") && !n.starts_with('.'))
                    })
                    .collect();
                found.sort();
                if found.is_empty() {
                    diagnostics.push(Diagnostic {
                        path: input.clone(),
                        line: 1,
                        column: 1,
                        message: "no `*.test.toml` file in this directory".into(),
                        hint: Some("name test files `<pipeline>.test.toml`".into()),
                    });
                }
                paths.append(&mut found);
            }
            Err(e) => diagnostics.push(Diagnostic {
                path: input.clone(),
                line: 1,
                column: 1,
                message: format!("cannot read: {e}"),
                hint: None,
            }),
        }
    }
    (paths, diagnostics)
}

/// Builds `pipeline`'s program as the engine does, with dry sinks and `upstream` answering
/// its `enrich` calls.
pub(crate) fn build(
    pipeline: &crate::config::PipelineFile,
    contracts: &Arc<Contracts>,
    upstream: Option<Arc<dyn Upstream>>,
) -> Result<Program, String> {
    let config = &pipeline.config;
    Program::build(
        &config.name,
        &config.steps,
        &config.sink,
        &StepContext {
            contracts: Some(Arc::clone(contracts)),
            upstream,
        },
        &SinkContext {
            pipeline: Arc::from(config.name.as_str()),
            version: Arc::from(pipeline.version.as_str()),
            producer: None,
            dry: true,
        },
    )
    .map_err(|(component, e)| format!("{component}: {e}"))
}

/// A case's recorded answers: the first recording with the call's method and URL (and
/// `request_json`, when it has one) answers it. Calls that none answers are kept, to fail
/// the case.
#[derive(Debug)]
pub struct Recordings {
    recordings: Vec<RecordingConfig>,
    unmatched: Mutex<Vec<String>>,
}

impl Recordings {
    /// The recordings of a case.
    pub fn new(recordings: Vec<RecordingConfig>) -> Self {
        Recordings {
            recordings,
            unmatched: Mutex::new(Vec::new()),
        }
    }

    /// The calls no recording answered, each with what was recorded.
    pub fn unmatched(&self) -> Vec<String> {
        self.unmatched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn listing(&self) -> String {
        if self.recordings.is_empty() {
            return "the case has no [[case.http]] recordings".into();
        }
        let list: Vec<String> = self
            .recordings
            .iter()
            .map(|r| format!("{} {} ({})", r.method, r.url, r.status))
            .collect();
        format!("recorded: {}", list.join(", "))
    }
}

impl Upstream for Recordings {
    fn answer(&self, method: &str, url: &str, body: Option<&[u8]>) -> Result<Response, String> {
        let sent: Option<Value> = body.and_then(|b| serde_json::from_slice(b).ok());
        let found = self.recordings.iter().find(|r| {
            r.method == method
                && r.url == url
                && r.request_json
                    .as_ref()
                    .is_none_or(|want| sent.as_ref().is_some_and(|s| diff::same(want, s)))
        });
        let Some(r) = found else {
            let body = match &sent {
                Some(v) => format!(" with body {v}"),
                None => String::new(),
            };
            let reason = format!(
                "no recording answers {method} {url}{body}; {}",
                self.listing()
            );
            self.unmatched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(reason.clone());
            return Err(reason);
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &r.headers {
            // Checked when the file loaded.
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let content_type = r
            .content_type
            .clone()
            .or_else(|| r.json.as_ref().map(|_| "application/json".to_string()));
        if let Some(Ok(ct)) = content_type.map(|c| reqwest::header::HeaderValue::from_str(&c)) {
            headers.insert(reqwest::header::CONTENT_TYPE, ct);
        }
        let body = match (&r.json, &r.body) {
            (Some(json), _) => Bytes::from(json.to_string()),
            (None, Some(text)) => Bytes::from(text.clone()),
            (None, None) => Bytes::new(),
        };
        Ok(Response {
            status: reqwest::StatusCode::from_u16(r.status)
                .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR),
            headers,
            body,
        })
    }
}

/// What one input gave.
#[derive(Debug, Default)]
pub struct Actual {
    /// Each delivered message: its sink's id and its body as JSON (raw bytes that are not
    /// JSON as a string).
    pub deliveries: Vec<(String, Value)>,
    /// The failure the input was dead-lettered with.
    pub dead_letter: Option<Failure>,
    /// The transient failure it was refused with (or waits on).
    pub transient: Option<Failure>,
}

/// How a case ended.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Why it failed; empty when it passed.
    pub problems: Vec<String>,
}

impl CaseResult {
    /// True when every expectation held.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

fn body_json(payload: &Payload) -> Value {
    match payload {
        Payload::Json(v) | Payload::Parsed { value: v, .. } => v.clone(),
        Payload::Bytes(b) => serde_json::from_slice(b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned())),
    }
}

/// Runs `case` of `file` (its program built afresh: breaker and cache start empty).
pub async fn run_case(file: &TestFile, case: &Case, contracts: &Arc<Contracts>) -> CaseResult {
    let recordings = Arc::new(Recordings::new(case.config.http.clone()));
    let mut result = CaseResult {
        name: case.config.name.clone(),
        problems: Vec::new(),
    };
    let actual = match execute(file, case, contracts, Arc::clone(&recordings)).await {
        Ok(actual) => actual,
        Err(problem) => {
            result.problems.push(problem);
            return result;
        }
    };
    result.problems.extend(recordings.unmatched());
    result.problems.extend(check(case, &actual));
    result
}

/// Reads the case's input as the pipeline's source would, and runs the program on it.
async fn execute(
    file: &TestFile,
    case: &Case,
    contracts: &Arc<Contracts>,
    recordings: Arc<Recordings>,
) -> Result<Actual, String> {
    let pipeline = &file.pipeline;
    let program = build(pipeline, contracts, Some(recordings))?;
    let input = &case.config.input;
    let (meta, first) = pipeline.config.source.offline_input(&OfflineInput {
        body: case.body.clone(),
        headers: &input.headers,
        content_type: case.content_type.as_deref(),
        key: input.key.as_deref(),
        file: input.file.as_deref(),
        contracts,
        correlation_id: TEST_CORRELATION_ID,
    })?;
    let payload = match first {
        Ok(payload) => payload,
        // The source rejects the input: the runner dead-letters it.
        Err(failure) => {
            return Ok(Actual {
                dead_letter: Some(failure),
                ..Actual::default()
            })
        }
    };
    let item = Item::from_input(payload, &meta);
    let trace = Trace::start(None, &pipeline.config.name, &meta);
    Ok(match program.run(item, &meta, &trace).await {
        Ok(outcome) => Actual {
            deliveries: outcome
                .deliveries
                .iter()
                .map(|(sink, item)| (program.sinks[*sink].id.clone(), body_json(&item.payload)))
                .collect(),
            dead_letter: outcome.rethrown,
            transient: None,
        },
        // An unavailable upstream is not the message's fault: refused or waiting, not
        // dead-lettered (see `Runner::run_program`).
        Err(failure) if failure.retry_after.is_some() => Actual {
            transient: Some(failure),
            ..Actual::default()
        },
        Err(failure) => Actual {
            dead_letter: Some(failure),
            ..Actual::default()
        },
    })
}

/// A failure as a case reads it.
fn describe(failure: &Failure) -> String {
    let mut text = format!(
        "code `{}` at `{}`: {}",
        failure.code, failure.step, failure.message
    );
    if let Some(details) = &failure.details {
        text.push_str(&format!(
            "\n  details: {}",
            indent(&diff::pretty(details), 2)
        ));
    }
    text
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compares one expected failure with what happened; `what` names it (`dead letter`).
fn check_failure(
    what: &str,
    expected: Option<&FailureExpect>,
    actual: Option<&Failure>,
    problems: &mut Vec<String>,
) {
    match (expected, actual) {
        (None, None) => {}
        (Some(e), None) => problems.push(format!(
            "expected a {what} with code `{}`{}, but there was none",
            e.code,
            e.step
                .as_ref()
                .map(|s| format!(" at `{s}`"))
                .unwrap_or_default()
        )),
        (None, Some(f)) => problems.push(format!("unexpected {what}: {}", describe(f))),
        (Some(e), Some(f)) => {
            let code_ok = e.code == f.code.as_str();
            let step_ok = e.step.as_ref().is_none_or(|s| *s == f.step);
            let message_ok = e.message.as_ref().is_none_or(|m| f.message.contains(m));
            if !(code_ok && step_ok && message_ok) {
                let mut want = format!("code `{}`", e.code);
                if let Some(s) = &e.step {
                    want.push_str(&format!(" at `{s}`"));
                }
                if let Some(m) = &e.message {
                    want.push_str(&format!(" with a message containing {m:?}"));
                }
                problems.push(format!("{what}: expected {want}\n  got {}", describe(f)));
            }
        }
    }
}

/// Every expectation of `case` that `actual` breaks.
pub fn check(case: &Case, actual: &Actual) -> Vec<String> {
    let expect = &case.config.expect;
    let mut problems = Vec::new();
    check_failure(
        "transient failure",
        expect.transient.as_ref(),
        actual.transient.as_ref(),
        &mut problems,
    );
    if actual.transient.is_some() {
        return problems;
    }
    check_failure(
        "dead letter",
        expect.dead_letter.as_ref(),
        actual.dead_letter.as_ref(),
        &mut problems,
    );
    let bodies: Vec<Value> = actual
        .deliveries
        .iter()
        .filter(|(sink, _)| expect.sink.as_ref().is_none_or(|s| s == sink))
        .map(|(_, body)| body.clone())
        .collect();
    let array = Value::Array(bodies.clone());
    let to = expect
        .sink
        .as_ref()
        .map(|s| format!(" to `{s}`"))
        .unwrap_or_default();
    if expect.filtered && !actual.deliveries.is_empty() {
        problems.push(format!(
            "expected every message to be filtered out, but {} were delivered:\n  {}",
            actual.deliveries.len(),
            indent(&diff::pretty(&array), 2)
        ));
    }
    let anything_expected = expect.filtered
        || expect.transient.is_some()
        || expect.dead_letter.is_some()
        || expect.count.is_some()
        || expect.messages.is_some()
        || expect.payloads.is_some();
    if !anything_expected && bodies.is_empty() && actual.dead_letter.is_none() {
        problems.push(format!(
            "nothing was delivered{to}: every message was filtered out (write `filtered = true` if that is expected)"
        ));
    }
    if let Some(count) = expect.count {
        if count != bodies.len() {
            problems.push(format!(
                "expected {count} message(s){to}, got {}",
                bodies.len()
            ));
        }
    }
    let compare = |what: &str, expected: &[Value], actual: &Value, problems: &mut Vec<String>| {
        let expected = Value::Array(expected.to_vec());
        if !diff::same(&expected, actual) {
            problems.push(format!(
                "{what}{to} differ (- expected, + actual):\n{}",
                diff::diff(&diff::pretty(&expected), &diff::pretty(actual))
                    .trim_end()
                    .lines()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    };
    if let Some(messages) = &expect.messages {
        compare("messages", messages, &array, &mut problems);
    }
    if let Some(payloads) = &expect.payloads {
        // A body without `payload` shows as null in the difference.
        let actual = bodies
            .iter()
            .map(|body| body.get("payload").cloned().unwrap_or(Value::Null))
            .collect();
        compare("payloads", payloads, &Value::Array(actual), &mut problems);
    }
    for expr in &case.asserts {
        match expr.search(&array) {
            Ok(Value::Bool(true)) => {}
            Ok(other) => problems.push(format!(
                "assertion `{}` gave {} (not true); it ran on:\n  {}",
                expr.source(),
                other,
                indent(&shortened(&diff::pretty(&array)), 2)
            )),
            Err(e) => problems.push(format!(
                "assertion `{}` failed: {}",
                expr.source(),
                e.message
            )),
        }
    }
    problems
}

/// At most 40 lines of `text`.
fn shortened(text: &str) -> String {
    const MAX: usize = 40;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= MAX {
        return text.to_string();
    }
    format!(
        "{}\n... ({} more lines)",
        lines[..MAX].join("\n"),
        lines.len() - MAX
    )
}

/// One line per case and the details of failures, as `gridflow test` prints them.
pub struct Report<'a> {
    /// The test file.
    pub path: &'a Path,
    /// Its results.
    pub results: &'a [CaseResult],
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.results {
            let status = if r.passed() { "ok" } else { "FAILED" };
            writeln!(f, "{status:<6} {}: {}", self.path.display(), r.name)?;
            for problem in &r.problems {
                writeln!(f, "  {}", indent(problem, 2))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
