//! The pipeline file model: one TOML file per flow, checked as a whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::de::DeValue;
use toml::Spanned;

use super::diagnostic::Diagnostic;
use super::document::Document;
use crate::error::BuildError;
use crate::sinks::{self, SinkConfig};
use crate::sources::{self, SourceConfig};
use crate::steps::{self, StepConfig};

/// One pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Unique name; defaults to the file stem.
    pub name: String,
    /// What the flow does, for people.
    pub description: Option<String>,
    /// Where inputs come from.
    pub source: SourceConfig,
    /// Transformations, in order.
    pub steps: Vec<StepConfig>,
    /// Where messages go.
    pub sink: SinkConfig,
    /// Retry and dead-letter policy.
    pub on_error: OnErrorConfig,
}

/// The `[on_error]` table: the same retry policy and dead-letter route for every pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OnErrorConfig {
    /// Delivery attempts for transient faults, the first included (default 5).
    pub max_attempts: u32,
    /// First backoff, in milliseconds (default 100); doubled on each retry, with jitter.
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds (default 10000).
    pub max_backoff_ms: u64,
    /// Kafka and file sources: how long a sink that keeps failing transiently (down,
    /// `5xx`, timeouts) is waited for, in milliseconds from a message's first attempt, once
    /// its `max_attempts` are used up (default 600000, 10 minutes). Meanwhile the message
    /// is retried every `max_backoff_ms` and its partition stops (backpressure); past it,
    /// it is dead-lettered (`retries_exhausted`). 0: dead-lettered as soon as the attempts
    /// are used up. HTTP and SOAP sources do not wait: the caller gets `503`.
    pub max_sink_wait_ms: u64,
    /// Dead-letter topic; default `<sink topic>.dlq` for a Kafka sink.
    pub dead_letter_topic: Option<String>,
    /// Dead-letter file (NDJSON envelopes) for pipelines without a Kafka sink; default beside
    /// a file sink (`<path>.dlq`) or `<dead_letters dir>/<pipeline>.dlq.ndjson`.
    pub dead_letter_file: Option<PathBuf>,
}

impl Default for OnErrorConfig {
    fn default() -> Self {
        OnErrorConfig {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
            max_sink_wait_ms: 600_000,
            dead_letter_topic: None,
            dead_letter_file: None,
        }
    }
}

impl OnErrorConfig {
    fn check(&self) -> Result<(), BuildError> {
        if self.max_attempts == 0 {
            return Err(
                BuildError::at("max_attempts", "max_attempts must be at least 1")
                    .with_hint("1 means no retry"),
            );
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return Err(BuildError::at(
                "initial_backoff_ms",
                "initial_backoff_ms is larger than max_backoff_ms",
            ));
        }
        if self.dead_letter_topic.is_some() && self.dead_letter_file.is_some() {
            return Err(BuildError::at(
                "dead_letter_file",
                "give dead_letter_topic or dead_letter_file, not both",
            ));
        }
        Ok(())
    }
}

/// A pipeline file as loaded: its config, where it came from, and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineFile {
    /// The file.
    pub path: PathBuf,
    /// sha256 of the file's bytes, hex.
    pub version: String,
    /// The parsed, checked config.
    pub config: PipelineConfig,
}

const TOP_LEVEL: &[&str] = &["name", "description", "source", "steps", "sink", "on_error"];

/// Parses and checks one pipeline file, reporting every problem at once.
pub fn parse_pipeline(
    path: &Path,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, Vec<Diagnostic>> {
    let mut doc = Document::parse(path, text, lookup)?;
    let root = doc.root.clone();
    let table = root.get_ref();
    doc.check_keys(table, TOP_LEVEL, "a pipeline file");

    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("pipeline")
        .to_string();
    let name = match table.get_key_value("name") {
        Some((_, v)) => match v.get_ref().as_str() {
            Some(n) if valid_name(n) => n.to_string(),
            Some(n) => {
                doc.error(
                    Some(v.span()),
                    format!("`{n}` is not a valid pipeline name"),
                    Some("use letters, digits, `.`, `_` and `-`".into()),
                );
                stem
            }
            None => {
                doc.error(Some(v.span()), "`name` must be a string", None);
                stem
            }
        },
        None => stem,
    };
    let description = table
        .get("description")
        .and_then(|v| v.get_ref().as_str())
        .map(str::to_string);

    let required =
        |doc: &mut Document<'_>, key: &str, what: &str| -> Option<Spanned<DeValue<'_>>> {
            let found = table.get(key).cloned();
            if found.is_none() {
                doc.error(
                    Some(0..0),
                    format!("missing section [{key}]"),
                    Some(format!("every pipeline needs {what}")),
                );
            }
            found
        };
    let source_v = required(&mut doc, "source", "a source (`[source]` with a `kind`)");
    let sink_v = required(&mut doc, "sink", "a sink (`[sink]` with a `kind`)");

    let source = source_v
        .as_ref()
        .and_then(|v| sources::parse_source(&mut doc, v, "[source]"));
    let sink = sink_v
        .as_ref()
        .and_then(|v| sinks::parse_sink(&mut doc, v, "[sink]"));

    let (steps, steps_ok) = match table.get("steps") {
        None => (Vec::new(), true),
        Some(v) => match steps::parse_steps(&mut doc, v, "steps") {
            Some(steps) => (steps, true),
            None => (Vec::new(), false),
        },
    };

    let on_error_v = table.get("on_error").cloned();
    let on_error = match &on_error_v {
        Some(v) => doc.section::<OnErrorConfig>(v, "[on_error]", &[]),
        None => Some(OnErrorConfig::default()),
    };

    if let Some(on_error) = &on_error {
        if let Err(e) = on_error.check() {
            let at = on_error_v
                .clone()
                .unwrap_or_else(|| Spanned::new(0..0, DeValue::Boolean(false)));
            doc.report(&at, "[on_error]", e);
        }
    }

    match (source, sink, on_error) {
        (Some(source), Some(sink), Some(on_error)) if doc.diagnostics.is_empty() && steps_ok => {
            Ok(PipelineConfig {
                name,
                description,
                source,
                steps,
                sink,
                on_error,
            })
        }
        _ => {
            let mut diagnostics = doc.diagnostics;
            diagnostics.sort_by_key(|d| (d.line, d.column));
            Err(diagnostics)
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// sha256 of `bytes`, hex: a pipeline's version.
pub fn version_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads and checks one file.
pub fn load_file(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineFile, Vec<Diagnostic>> {
    let bytes = std::fs::read(path).map_err(|e| {
        vec![Diagnostic {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
            hint: None,
        }]
    })?;
    let text = String::from_utf8(bytes.clone()).map_err(|e| {
        vec![Diagnostic {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("the file is not UTF-8: {e}"),
            hint: Some("save it as UTF-8".into()),
        }]
    })?;
    let config = parse_pipeline(path, &text, lookup)?;
    Ok(PipelineFile {
        path: path.to_path_buf(),
        version: version_of(&bytes),
        config,
    })
}

/// The pipeline files of `dir` (`*.toml`, not hidden), sorted by name.
pub fn pipeline_paths(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let visible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'));
        if visible && path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Loads `paths` and checks what spans files: unique names and unique HTTP paths.
pub fn load_all(
    paths: &[PathBuf],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (Vec<PipelineFile>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    for path in paths {
        match load_file(path, lookup) {
            Ok(file) => files.push(file),
            Err(mut d) => diagnostics.append(&mut d),
        }
    }
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let mut routes: HashMap<String, String> = HashMap::new();
    files.retain(|file| {
        let at = |message: String, hint: String| Diagnostic {
            path: file.path.clone(),
            line: 1,
            column: 1,
            message,
            hint: Some(hint),
        };
        if let Some(first) = names.get(&file.config.name) {
            diagnostics.push(at(
                format!(
                    "pipeline name `{}` is already used by {}",
                    file.config.name,
                    first.display()
                ),
                "set a unique `name` in one of the files".into(),
            ));
            return false;
        }
        if let Some(http) = file.config.source.http() {
            if let Some(other) = routes.get(&http.path) {
                diagnostics.push(at(
                    format!(
                        "HTTP path `{}` is already served by pipeline `{other}`",
                        http.path
                    ),
                    "give each HTTP source its own path".into(),
                ));
                return false;
            }
            routes.insert(http.path.clone(), file.config.name.clone());
        }
        names.insert(file.config.name.clone(), file.path.clone());
        true
    });
    (files, diagnostics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineConfig, Vec<Diagnostic>> {
        parse_pipeline(Path::new("p/flow.toml"), text, &|name| {
            (name == "BROKER_TOPIC").then(|| "t.v1".to_string())
        })
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    const GOOD: &str = r#"
name = "entsoe-actual-load"
[source]
kind = "http"
path = "/ingest/x"
[[steps]]
kind = "xml_to_json"
arrays = ["Point"]
[[steps]]
kind = "map"
expression = "a.b"
[sink]
kind = "kafka"
topic = "${BROKER_TOPIC}"
key = "area"
[on_error]
max_attempts = 3
"#;

    #[test]
    fn parses_a_full_pipeline_with_interpolation() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "entsoe-actual-load");
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.sink.topic(), Some("t.v1"));
        assert_eq!(p.on_error.max_attempts, 3);
        assert_eq!(p.on_error.initial_backoff_ms, 100);
    }

    #[test]
    fn name_defaults_to_the_file_stem() {
        let p = parse("[source]\nkind='file'\ndir='in'\n[sink]\nkind='stdout'\n").unwrap();
        assert_eq!(p.name, "flow");
        assert!(p.steps.is_empty());
    }

    #[test]
    fn reports_every_error_with_line_and_column() {
        let text = "nme = 'x'\n[source]\nkind = 'http'\npth = '/x'\n[[steps]]\nkind = 'mapp'\n[[steps]]\nkind = 'map'\nexpression = 'a.['\n[sink]\nkind = 'kafka'\n";
        let errs = errors(text);
        let all = errs.join("\n");
        assert!(
            all.contains("p/flow.toml:1:1: error: unknown key `nme` in a pipeline file"),
            "{all}"
        );
        assert!(all.contains("did you mean `name`?"), "{all}");
        assert!(
            all.contains("p/flow.toml:4:1: error: unknown key `pth` in [source]"),
            "{all}"
        );
        assert!(all.contains("did you mean `path`?"), "{all}");
        assert!(
            all.contains("p/flow.toml:6:8: error: unknown kind `mapp` in steps[0]"),
            "{all}"
        );
        assert!(all.contains("did you mean `map`?"), "{all}");
        // The JMESPath error points inside the string, at the fault.
        assert!(all.contains("p/flow.toml:9:"), "{all}");
        assert!(all.contains("invalid JMESPath"), "{all}");
        assert!(all.contains("missing key `topic` in [sink]"), "{all}");
        assert_eq!(errs.len(), 5, "{all}");
    }

    #[test]
    fn jmespath_errors_point_inside_multi_line_strings() {
        let text = "[source]\nkind='http'\npath='/x'\n[[steps]]\nkind='map'\nexpression = '''\n{a: a,\n b: b.[}'''\n[sink]\nkind='stdout'\n";
        let errs = parse(text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, 8, "{errs:?}");
        assert!(errs[0].column >= 4, "{errs:?}");
    }

    #[test]
    fn wrong_types_in_tagged_sections_point_at_the_value() {
        let text = "[source]\nkind='http'\npath='/x'\nmax_body_bytes = 'big'\n[[steps]]\nkind='xml_to_json'\narrays = 'Point'\n[sink]\nkind='stdout'\n";
        let errs = parse(text).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].column), (4, 18), "{errs:?}");
        assert!(errs[0].message.contains("[source]"), "{errs:?}");
        assert_eq!((errs[1].line, errs[1].column), (7, 10), "{errs:?}");
        assert!(errs[1].message.contains("steps[0]"), "{errs:?}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errs = errors("[source\nkind = 'http'\n");
        assert!(errs[0].starts_with("p/flow.toml:1:"), "{errs:?}");
        assert!(errs[0].contains("invalid TOML"), "{errs:?}");
    }

    #[test]
    fn missing_sections_and_bad_values() {
        let all = errors("[source]\nkind='http'\npath='/x'\n[on_error]\nmax_attempts = 'five'\n")
            .join("\n");
        assert!(all.contains("missing section [sink]"), "{all}");
        assert!(all.contains("p/flow.toml:5:16: error: [on_error]"), "{all}");
    }

    #[test]
    fn unset_variables_are_reported_where_they_are_used() {
        let all =
            errors("[source]\nkind='http'\npath='/x'\n[sink]\nkind='kafka'\ntopic='${NOPE}'\n")
                .join("\n");
        assert!(
            all.contains("p/flow.toml:6:7: error: environment variable `NOPE` is not set"),
            "{all}"
        );
    }

    #[test]
    fn semantic_checks_of_sources_and_on_error() {
        let all = errors(
            "[source]\nkind='http'\npath='x'\n[sink]\nkind='stdout'\n[on_error]\nmax_attempts=0\n",
        )
        .join("\n");
        assert!(
            all.contains("p/flow.toml:3:6: error: [source] `path`"),
            "{all}"
        );
        assert!(all.contains("[on_error] `max_attempts`"), "{all}");
    }

    #[test]
    fn file_source_limits_have_defaults_and_are_checked() {
        let p = parse("[source]\nkind='file'\ndir='in'\n[sink]\nkind='stdout'\n").unwrap();
        let SourceConfig::File(f) = &p.source else {
            panic!("{:?}", p.source)
        };
        assert_eq!(
            (f.max_file_bytes, f.max_line_bytes, f.max_attempts),
            (64 << 20, 1 << 20, 10)
        );
        let all =
            errors("[source]\nkind='file'\ndir='in'\nmax_line_bytes=0\n[sink]\nkind='stdout'\n")
                .join("\n");
        assert!(
            all.contains("p/flow.toml:4:16: error: [source] `max_line_bytes`"),
            "{all}"
        );
    }

    const NESTED_FAULTS: &str = r#"[source]
kind = "http"
path = "/x"

[[steps]]
kind = "branch"
[[steps.routes]]
when = "a == `1`"
[[steps.routes.steps]]
kind = "mapp"
expression = "a"
[[steps.routes]]
when = "b.["
[steps.routes.sink]
kind = "kafka"
topic = "x.y.z.v1"

[[steps]]
kind = "try"
[[steps.steps]]
kind = "map"
expresion = "a"
[[steps.catch]]
kind = "map"
expression = "{a: ["

[[steps]]
kind = "enrich"
url = "http://h/{id.[}"
target = "a"

[sink]
kind = "stdout"
"#;

    #[test]
    fn faults_inside_blocks_are_reported_where_they_are() {
        let errs = parse(NESTED_FAULTS).unwrap_err();
        let at: Vec<(usize, usize)> = errs.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(
            at,
            [(10, 8), (13, 12), (22, 1), (25, 20), (29, 22)],
            "{errs:?}"
        );
        let all: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert!(
            all[0].contains("unknown kind `mapp` in steps[0].routes[0].steps[0]"),
            "{all:?}"
        );
        assert!(all[1].contains("steps[0].routes[1] `when`"), "{all:?}");
        assert!(
            all[2].contains("unknown key `expresion` in steps[1].steps[0]"),
            "{all:?}"
        );
        assert!(all[3].contains("steps[1].catch[0] `expression`"), "{all:?}");
    }

    #[test]
    fn blocks_parse_with_their_nested_steps_and_sinks() {
        let text = "[source]\nkind='http'\npath='/x'\n[[steps]]\nkind='try'\nrethrow=true\n[[steps.steps]]\nkind='map'\nexpression='a'\n[[steps.catch]]\nkind='branch'\nmode='all'\n[[steps.catch.routes]]\nwhen='b'\n[steps.catch.routes.sink]\nkind='kafka'\ntopic='x.y.z.v1'\n[steps.catch.default]\n[[steps.catch.default.steps]]\nkind='set'\n[steps.catch.default.steps.fields]\nc='`1`'\n[sink]\nkind='stdout'\n";
        let p = parse(text).unwrap();
        let StepConfig::Try(t) = &p.steps[0] else {
            panic!("{:?}", p.steps)
        };
        assert!(t.rethrow);
        let StepConfig::Branch(b) = &t.catch[0] else {
            panic!("{:?}", t.catch)
        };
        assert_eq!(b.mode, crate::steps::branch::BranchMode::All);
        assert_eq!(
            b.routes[0].sink.as_ref().and_then(|s| s.topic()),
            Some("x.y.z.v1")
        );
        assert_eq!(b.default.as_ref().unwrap().steps[0].kind(), "set");
        assert_eq!(p.steps[0].sinks().len(), 1);
        // A try block without catch steps, a branch without routes, a parallel block with
        // another kind of step: each is an error at the block.
        let all = errors("[source]\nkind='http'\npath='/x'\n[[steps]]\nkind='try'\n[[steps.steps]]\nkind='map'\nexpression='a'\n[[steps]]\nkind='branch'\n[[steps]]\nkind='parallel'\n[[steps.steps]]\nkind='map'\nexpression='a'\n[sink]\nkind='stdout'\n").join("\n");
        assert!(all.contains("steps[0]: a try block needs `catch`"), "{all}");
        assert!(
            all.contains("steps[1]: a branch needs at least one route"),
            "{all}"
        );
        assert!(
            all.contains("a parallel block holds only `enrich` steps"),
            "{all}"
        );
    }
}
