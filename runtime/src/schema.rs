//! JSON Schemas (draft 2020-12) of gridflow's files, generated from the config types that
//! parse them: `gridflow schema <pipeline|config|test|catalog>` prints one, `schemas/*.json`
//! ships them for editors (see `docs/editor.md`), and the key tables of the reference
//! (`<!-- keys: steps.map -->` blocks in `docs/`) are written from them.
//!
//! The config structs derive [`JsonSchema`]: their doc comments become descriptions and their
//! serde defaults become `default`. The component families (`[source]`, `[[steps]]`,
//! `[sink]`) are described by [`tagged`]: one branch per kind, told apart by `kind`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::ExitCode;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::config::{OnErrorConfig, RuntimeConfig};
use crate::contracts::TopicCatalog;
use crate::pipeline_test::file::CaseConfig;
use crate::sinks::{self, SinkConfig};
use crate::sources::{self, SourceConfig};
use crate::steps::{self, StepConfig};

/// A file format gridflow reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A pipeline file, `pipelines/*.toml`.
    Pipeline,
    /// The runtime configuration, `gridflow.toml`.
    Config,
    /// A pipeline test file, `pipelines/tests/*.test.toml`.
    Test,
    /// The topic catalog, `contracts/topics.toml`.
    Catalog,
}

impl Format {
    /// Every format, in the order of the command's help.
    pub const ALL: [Format; 4] = [
        Format::Pipeline,
        Format::Config,
        Format::Test,
        Format::Catalog,
    ];

    /// The name given to `gridflow schema` (and the stem of the shipped `schemas/*.json`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Pipeline => "pipeline",
            Format::Config => "config",
            Format::Test => "test",
            Format::Catalog => "catalog",
        }
    }

    /// The schema, as printed.
    pub fn schema(self) -> Value {
        let generator = SchemaSettings::draft2020_12().into_generator();
        let (root, title) = match self {
            Format::Pipeline => (
                generator.into_root_schema_for::<PipelineFileSchema>(),
                "gridflow pipeline file",
            ),
            Format::Config => (
                generator.into_root_schema_for::<RuntimeConfig>(),
                "gridflow runtime configuration (gridflow.toml)",
            ),
            Format::Test => (
                generator.into_root_schema_for::<TestFileSchema>(),
                "gridflow pipeline test file",
            ),
            Format::Catalog => (
                generator.into_root_schema_for::<TopicCatalog>(),
                "gridflow topic catalog (contracts/topics.toml)",
            ),
        };
        let mut value = root.to_value();
        if let Value::Object(object) = &mut value {
            // `$schema` first, then who this is, then the rest.
            let mut ordered = Map::new();
            if let Some(dialect) = object.remove("$schema") {
                ordered.insert("$schema".into(), dialect);
            }
            ordered.insert(
                "$id".into(),
                Value::String(format!("urn:gridflow:schema:{}", self.name())),
            );
            ordered.insert("title".into(), Value::String(title.into()));
            object.remove("title");
            ordered.append(object);
            *object = ordered;
        }
        inline_definitions(&mut value);
        tidy(&mut value);
        sort_keys(&mut value);
        value
    }

    /// The schema as `gridflow schema` prints it and `schemas/<name>.json` holds it: pretty
    /// JSON and a final line break.
    pub fn text(self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema()).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Sorts the keys of every object of `value`: the schemas are printed with sorted keys (as
/// they were before serde_json kept the order of insertion), so that a change in the code's
/// order of fields does not reorder the shipped files.
fn sort_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

/// `gridflow schema <format>`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// The file format.
    #[arg(value_enum)]
    format: Format,
}

/// Prints the schema of `args.format` on standard output.
pub fn run(args: SchemaArgs) -> ExitCode {
    use std::io::Write;
    match std::io::stdout()
        .lock()
        .write_all(args.format.text().as_bytes())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the schema: {e}");
            ExitCode::FAILURE
        }
    }
}

// Only for the schema: pipeline files are parsed by `config::pipeline::parse_pipeline`, which
// reports problems with their positions.
/// A pipeline file (`pipelines/*.toml`): where inputs come from, the steps they go through,
/// where they go, and what happens on failure.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct PipelineFileSchema {
    /// Unique name of the pipeline: letters, digits, `.`, `_` and `-` (default: the file
    /// name without `.toml`).
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    name: Option<String>,
    /// What the flow does, for people.
    description: Option<String>,
    /// `[source]`: where inputs come from.
    source: SourceConfig,
    /// `[[steps]]`: transformations, in order.
    #[schemars(default)]
    steps: Vec<StepConfig>,
    /// `[sink]`: where messages go.
    sink: SinkConfig,
    /// `[on_error]`: retries of transient faults and the dead-letter destination.
    #[schemars(default)]
    on_error: OnErrorConfig,
}

// Only for the schema: test files are parsed by `pipeline_test::file::parse`.
/// A pipeline test file (`pipelines/tests/*.test.toml`): the pipeline under test and its
/// cases, run by `gridflow test` without Kafka and without network.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct TestFileSchema {
    /// The pipeline file under test, relative to the test file (`../my-flow.toml`).
    pipeline: String,
    /// `[env]`: the `${VAR}` values the pipeline is loaded with (the shell's environment is
    /// not read).
    #[schemars(default)]
    env: BTreeMap<String, String>,
    /// `[[case]]`: the cases, at least one.
    #[schemars(length(min = 1))]
    case: Vec<CaseConfig>,
}

/// One kind of a component family, as [`tagged`] lists it: its name (the value of `kind`),
/// what it does, and the schema of its config table (without `kind`), usually
/// `<Config as JsonSchema>::json_schema`.
pub type KindSchema = (
    &'static str,
    &'static str,
    fn(&mut SchemaGenerator) -> Schema,
);

/// The schema of a table tagged by `kind` (`[source]`, `[[steps]]`, `[sink]`): `kind` is one
/// of the kinds' names (editors complete it), and the table must match the config of that
/// kind (`oneOf` one branch per kind, each with `kind` as a required constant and no other
/// key than its config's, as `deny_unknown_fields` parses it). `family` names the family in
/// descriptions (`step`, `sink`, `source`).
pub fn tagged(generator: &mut SchemaGenerator, family: &str, kinds: &[KindSchema]) -> Schema {
    let names: Vec<&str> = kinds.iter().map(|(name, _, _)| *name).collect();
    let branches: Vec<Value> = kinds
        .iter()
        .map(|(name, description, schema)| {
            let mut branch = schema(generator).to_value();
            let object = branch.as_object_mut().expect("a kind's config is a table");
            let own = object
                .remove("description")
                .and_then(|d| d.as_str().map(str::to_string))
                .map(|d| strip_kind_prefix(&d, name))
                .unwrap_or_default();
            let description = description.trim();
            let description = if own.is_empty() {
                description.to_string()
            } else {
                format!("{description}\n\n{own}")
            };
            let mut properties = Map::new();
            properties.insert(
                "kind".into(),
                json!({ "const": name, "description": format!("This {family} kind.") }),
            );
            if let Some(Value::Object(own)) = object.remove("properties") {
                properties.extend(own);
            }
            let mut required = vec![Value::String("kind".into())];
            if let Some(Value::Array(own)) = object.remove("required") {
                required.extend(own);
            }
            let mut out = Map::new();
            out.insert("title".into(), Value::String(format!("{family} `{name}`")));
            out.insert("description".into(), Value::String(description));
            out.insert("type".into(), Value::String("object".into()));
            out.insert("properties".into(), Value::Object(properties));
            out.insert("required".into(), Value::Array(required.clone()));
            out.insert("additionalProperties".into(), Value::Bool(false));
            out.insert("x-taplo".into(), json!({ "initKeys": required }));
            // Anything else the derive said (`default` of a defaulted container, ...).
            for (k, v) in std::mem::take(object) {
                if !matches!(k.as_str(), "type" | "additionalProperties" | "title") {
                    out.entry(k).or_insert(v);
                }
            }
            Value::Object(out)
        })
        .collect();
    let kind_docs: Vec<Value> = kinds
        .iter()
        .map(|(_, description, _)| Value::String(description.trim().into()))
        .collect();
    let schema = json!({
        "title": family,
        "description": format!("A {family}: `kind` says which one; the other keys are that kind's."),
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {
                "description": format!("The {family} kind."),
                "type": "string",
                "enum": names,
                "x-taplo": { "docs": { "enumValues": kind_docs } },
            }
        },
        "oneOf": branches,
        "x-taplo": { "initKeys": ["kind"] },
    });
    Schema::try_from(schema).expect("an object is a schema")
}

/// `doc` without its leading "`kind = "name"`:" or "`kind = "name"`." (struct docs start so).
fn strip_kind_prefix(doc: &str, name: &str) -> String {
    let prefix = format!("`kind = \"{name}\"`");
    match doc.strip_prefix(&prefix) {
        Some(rest) => rest.trim_start_matches([':', '.']).trim().to_string(),
        None => doc.trim().to_string(),
    }
}

/// The schema of one kind's config table, written where the kind is (not a `$ref`), for
/// [`tagged`] to add `kind` to: the third part of a [`KindSchema`].
pub fn config_schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// The step kinds, from the step registry.
const STEP_KINDS: &[KindSchema] = steps::SCHEMAS;

/// The sink kinds, from the sink registry.
const SINK_KINDS: &[KindSchema] = sinks::SCHEMAS;

/// The source kinds, from the source registry.
const SOURCE_KINDS: &[KindSchema] = sources::SCHEMAS;

impl JsonSchema for StepConfig {
    fn schema_name() -> Cow<'static, str> {
        "Step".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        tagged(generator, "step", STEP_KINDS)
    }
}

impl JsonSchema for SinkConfig {
    fn schema_name() -> Cow<'static, str> {
        "Sink".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        tagged(generator, "sink", SINK_KINDS)
    }
}

impl JsonSchema for SourceConfig {
    fn schema_name() -> Cow<'static, str> {
        "Source".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        tagged(generator, "source", SOURCE_KINDS)
    }
}

/// The definitions that stay in `$defs`: the component families, which hold one another
/// (a `try` step holds steps, a branch route holds a sink).
const SHARED_DEFINITIONS: &[&str] = &["Step", "Sink", "Source"];

/// Writes every definition but the families' where it is used: editors such as Taplo read a
/// `$ref` as draft 4 did, ignoring the description and defaults written beside it, so a
/// key's own description and its type's values are best in one object.
fn inline_definitions(root: &mut Value) {
    let Some(Value::Object(definitions)) = root.get_mut("$defs").map(Value::take) else {
        return;
    };
    let (shared, inlined): (Map<String, Value>, Map<String, Value>) = definitions
        .into_iter()
        .partition(|(name, _)| SHARED_DEFINITIONS.contains(&name.as_str()));
    inline_refs(root, &inlined, 0);
    let mut shared = Value::Object(shared);
    inline_refs(&mut shared, &inlined, 0);
    if shared.as_object().is_some_and(|s| !s.is_empty()) {
        root["$defs"] = shared;
    } else if let Value::Object(object) = root {
        object.remove("$defs");
    }
}

/// Replaces in `value` every `$ref` to one of `definitions` by the definition, the keys
/// written beside the `$ref` (description, default) kept over the definition's.
fn inline_refs(value: &mut Value, definitions: &Map<String, Value>, depth: usize) {
    assert!(
        depth < 64,
        "a definition that holds itself must stay shared"
    );
    match value {
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| inline_refs(v, definitions, depth)),
        Value::Object(object) => {
            let target = object
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .and_then(|name| definitions.get(name));
            if let Some(Value::Object(target)) = target {
                let mut inlined = target.clone();
                object.remove("$ref");
                inlined.extend(std::mem::take(object));
                *object = inlined;
                let mut nested = Value::Object(std::mem::take(object));
                inline_refs(&mut nested, definitions, depth + 1);
                if let Value::Object(nested) = nested {
                    *object = nested;
                }
            } else {
                object
                    .values_mut()
                    .for_each(|v| inline_refs(v, definitions, depth));
            }
        }
        _ => {}
    }
}

/// Adapts a generated schema to TOML and to editors, everywhere in it:
/// - TOML has no null: `null` leaves every `type` and `anyOf` (what `Option` adds), and so
///   does a `default` of null;
/// - a closed set of strings written as `oneOf` constants (a Rust enum with documented
///   variants) becomes an `enum`, its values' descriptions kept for Taplo
///   (`x-taplo.docs.enumValues`) and appended to the description;
/// - descriptions are unwrapped: a line break inside a paragraph (source line wrapping)
///   becomes a space.
fn tidy(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(tidy),
        Value::Object(object) => {
            object.values_mut().for_each(tidy);
            drop_null(object);
            constants_to_enum(object);
            if let Some(Value::String(description)) = object.get_mut("description") {
                *description = unwrap_lines(description);
            }
        }
        _ => {}
    }
}

fn drop_null(object: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let single = types.remove(0);
            object.insert("type".into(), single);
        }
    }
    if object.get("default") == Some(&Value::Null) {
        object.remove("default");
    }
    if let Some(Value::Array(alternatives)) = object.get_mut("anyOf") {
        alternatives.retain(|a| a.get("type") != Some(&json!("null")));
        if alternatives.len() == 1 {
            if let Some(Value::Object(single)) = object.remove("anyOf").and_then(|mut a| {
                a.as_array_mut()
                    .and_then(|a| a.pop())
                    .filter(Value::is_object)
            }) {
                for (k, v) in single {
                    object.entry(k).or_insert(v);
                }
            }
        }
    }
}

fn constants_to_enum(object: &mut Map<String, Value>) {
    let Some(Value::Array(alternatives)) = object.get("oneOf") else {
        return;
    };
    let constants: Option<Vec<(Value, String)>> = alternatives
        .iter()
        .map(|a| {
            let a = a.as_object()?;
            let constant = a.get("const").filter(|c| c.is_string())?.clone();
            let only_metadata = a
                .keys()
                .all(|k| matches!(k.as_str(), "const" | "type" | "description"));
            only_metadata.then(|| {
                let description = a.get("description").and_then(Value::as_str);
                (constant, unwrap_lines(description.unwrap_or("")))
            })
        })
        .collect();
    let Some(constants) = constants.filter(|c| !c.is_empty()) else {
        return;
    };
    object.remove("oneOf");
    let listed: Vec<String> = constants
        .iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(c, d)| format!("`{}`: {d}", c.as_str().unwrap_or_default()))
        .collect();
    if !listed.is_empty() && !object.contains_key("description") {
        object.insert("description".into(), Value::String(listed.join("\n")));
    }
    object.insert("type".into(), Value::String("string".into()));
    object.insert(
        "enum".into(),
        Value::Array(constants.iter().map(|(c, _)| c.clone()).collect()),
    );
    object.insert(
        "x-taplo".into(),
        json!({ "docs": { "enumValues": constants.iter().map(|(_, d)| d).collect::<Vec<_>>() } }),
    );
}

/// `text` with every single line break (one inside a paragraph) turned into a space.
fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The names of the kinds of `family` (`sources`, `steps`, `sinks`) as the schema lists them.
pub fn kinds(family: &str) -> Vec<&'static str> {
    let list = match family {
        "sources" => SOURCE_KINDS,
        "steps" => STEP_KINDS,
        "sinks" => SINK_KINDS,
        _ => &[],
    };
    list.iter().map(|(name, _, _)| *name).collect()
}

// --- The reference's key tables --------------------------------------------------------

/// The line that opens a generated key table: `<!-- keys: steps.map -->`.
const MARKER_OPEN: &str = "<!-- keys: ";
/// The line that closes it.
const MARKER_CLOSE: &str = "<!-- /keys -->";

/// The Markdown table of the keys at `marker`: `sources.<kind>`, `steps.<kind>` and
/// `sinks.<kind>` (a kind's config table), `config.<section>` (a section of `gridflow.toml`),
/// `test.<key>` and `catalog.<key>`; any other name is a key of the pipeline file
/// (`on_error`). Further dotted names go down into nested tables (`steps.enrich.cache`,
/// `config.http.tls`). One row per key: its type, its default, its description; required
/// keys say so in the default column.
pub fn key_table(marker: &str) -> Result<String, String> {
    let mut parts = marker.split('.');
    let first = parts.next().unwrap_or_default();
    let (root, mut at) = match first {
        "sources" | "steps" | "sinks" => {
            let kind = parts
                .next()
                .ok_or_else(|| format!("`{marker}`: name the kind, `{first}.<kind>`"))?;
            let root = Format::Pipeline.schema();
            let family = match first {
                "sources" => "Source",
                "steps" => "Step",
                _ => "Sink",
            };
            let branch = root
                .pointer(&format!("/$defs/{family}/oneOf"))
                .and_then(Value::as_array)
                .and_then(|branches| {
                    branches
                        .iter()
                        .find(|b| b.pointer("/properties/kind/const") == Some(&json!(kind)))
                })
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "`{marker}`: no {first} kind `{kind}` (kinds: {})",
                        kinds(first).join(", ")
                    )
                })?;
            (root, branch)
        }
        "config" | "test" | "catalog" => {
            let format = match first {
                "config" => Format::Config,
                "test" => Format::Test,
                _ => Format::Catalog,
            };
            let root = format.schema();
            (root.clone(), root)
        }
        _ => {
            let root = Format::Pipeline.schema();
            let section = property(&root, &root, first)
                .ok_or_else(|| format!("`{marker}`: no key `{first}` in a pipeline file"))?;
            (root, section)
        }
    };
    for key in parts {
        at = property(&root, &at, key).ok_or_else(|| format!("`{marker}`: no key `{key}`"))?;
    }
    let mut at = resolve(&root, &at);
    if let Some(items) = at.get("items") {
        // An array of tables (`[[case]]`): the keys of each.
        at = resolve(&root, items);
    }
    let Some(properties) = at.get("properties").and_then(Value::as_object) else {
        return Err(format!("`{marker}` is not a table with keys"));
    };
    let required: Vec<&str> = at
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut keys: Vec<(&String, &Value)> =
        properties.iter().filter(|(k, _)| *k != "kind").collect();
    if keys.is_empty() {
        return Ok("No key but `kind`.\n".into());
    }
    // Required keys first, then the others, each in alphabetical order.
    keys.sort_by_key(|(k, _)| (!required.contains(&k.as_str()), k.as_str()));
    let mut table =
        String::from("| key | type | default | description |\n| --- | --- | --- | --- |\n");
    for (key, schema) in keys {
        let resolved = resolve(&root, schema);
        let default = if required.contains(&key.as_str()) {
            "required".to_string()
        } else {
            schema
                .get("default")
                .or_else(|| resolved.get("default"))
                .map(|d| format!("`{}`", toml_value(d)))
                .unwrap_or_default()
        };
        let description = schema
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        table.push_str(&format!(
            "| `{key}` | {} | {} | {} |\n",
            type_name(&root, schema),
            cell(&default),
            cell(description)
        ));
    }
    Ok(table)
}

/// The marker of `line` if it opens a generated block with `open` (`<!-- keys: steps.map -->`,
/// alone on its line).
fn opening_marker<'a>(line: &'a str, open: &str) -> Option<&'a str> {
    line.trim()
        .strip_prefix(open)
        .and_then(|rest| rest.strip_suffix("-->"))
        .map(str::trim)
}

/// Whether `line` opens or closes a fenced code block (whose content is not Markdown).
fn is_fence(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("```") || line.starts_with("~~~")
}

/// `text` with every key table between its markers written anew from the schema. Markers
/// stand alone on their lines; those inside fenced code blocks are examples, left as they are.
pub fn update_key_tables(text: &str) -> Result<String, String> {
    update_blocks(text, MARKER_OPEN, MARKER_CLOSE, key_table)
}

/// The markers of the key tables of `text` (`steps.map`, `config.http`, ...), outside fenced
/// code blocks.
pub fn key_table_markers(text: &str) -> Vec<String> {
    block_markers(text, MARKER_OPEN)
}

/// The line that opens a kind's generated example: `<!-- example: steps.map -->`.
const EXAMPLE_OPEN: &str = "<!-- example: ";
/// The line that closes it.
const EXAMPLE_CLOSE: &str = "<!-- /example -->";

/// The documented example of the kind at `marker` (`steps.map`, `sinks.kafka`,
/// `sources.http`) as a fenced TOML block: the `EXAMPLE` of its registry line, which the
/// registry test parses, builds and (steps) runs.
pub fn example_block(marker: &str) -> Result<String, String> {
    let (family, kind) = marker
        .split_once('.')
        .ok_or_else(|| format!("`{marker}` is not `<family>.<kind>`"))?;
    let examples: Vec<(&str, &str)> = match family {
        "steps" => steps::EXAMPLES.iter().map(|(k, e, _)| (*k, *e)).collect(),
        "sinks" => sinks::EXAMPLES.to_vec(),
        "sources" => sources::EXAMPLES.to_vec(),
        other => return Err(format!("no family `{other}`: sources, steps or sinks")),
    };
    let example = examples
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, e)| e)
        .ok_or_else(|| format!("no {family} kind `{kind}`"))?;
    Ok(format!("```toml\n{example}\n```\n"))
}

/// `text` with every example block between its markers written anew from the registries.
pub fn update_examples(text: &str) -> Result<String, String> {
    update_blocks(text, EXAMPLE_OPEN, EXAMPLE_CLOSE, example_block)
}

/// The markers of the example blocks of `text`, outside fenced code blocks.
pub fn example_markers(text: &str) -> Vec<String> {
    block_markers(text, EXAMPLE_OPEN)
}

/// `text` with the content between each `open`…`close` marker pair written by `generate`
/// from the marker.
fn update_blocks(
    text: &str,
    open: &str,
    close: &str,
    generate: fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split_inclusive('\n').enumerate();
    let mut in_fence = false;
    while let Some((number, line)) = lines.next() {
        out.push_str(line);
        if is_fence(line) {
            in_fence = !in_fence;
        }
        let Some(marker) = opening_marker(line, open).filter(|_| !in_fence) else {
            continue;
        };
        if !line.ends_with('\n') {
            out.push('\n');
        }
        let block = generate(marker).map_err(|e| format!("line {}: {e}", number + 1))?;
        let end = lines
            .by_ref()
            .find(|(_, l)| l.trim() == close)
            .map(|(_, l)| l)
            .ok_or_else(|| format!("line {}: `{}` has no `{close}`", number + 1, line.trim()))?;
        // Blank lines around the block: no Markdown reader takes a marker for part of it.
        out.push('\n');
        out.push_str(&block);
        out.push('\n');
        out.push_str(end);
    }
    Ok(out)
}

/// The markers opened with `open` in `text`, outside fenced code blocks.
fn block_markers(text: &str, open: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut markers = Vec::new();
    for line in text.lines() {
        if is_fence(line) {
            in_fence = !in_fence;
        } else if let Some(marker) = opening_marker(line, open).filter(|_| !in_fence) {
            markers.push(marker.to_string());
        }
    }
    markers
}

/// `schema` with its `$ref` followed (within `root`).
fn resolve(root: &Value, schema: &Value) -> Value {
    let mut schema = schema.clone();
    for _ in 0..8 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        match reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
        {
            Some(target) => schema = target.clone(),
            None => break,
        }
    }
    schema
}

/// The schema of `key` in the table `schema` (of the elements, for an array of tables).
fn property(root: &Value, schema: &Value, key: &str) -> Option<Value> {
    let mut table = resolve(root, schema);
    if let Some(items) = table.get("items") {
        table = resolve(root, items);
    }
    table.pointer(&format!("/properties/{key}")).cloned()
}

/// The type of `schema` in words: `string`, `integer`, `table of strings`, `array of steps`,
/// `` `first` or `all` ``.
fn type_name(root: &Value, schema: &Value) -> String {
    let resolved = resolve(root, schema);
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", toml_value(v)))
            .collect();
        return match values.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => values.concat(),
        };
    }
    if resolved.get("oneOf").is_some() {
        if let Some(family) = resolved.get("title").and_then(Value::as_str) {
            return family.to_string();
        }
    }
    if let Some(alternatives) = resolved.get("anyOf").and_then(Value::as_array) {
        let names: Vec<String> = alternatives.iter().map(|a| type_name(root, a)).collect();
        return match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        };
    }
    // `array of strings`, `table of (string, integer or table)`; `array` of anything.
    let of = |what: &str, each: String| match each.as_str() {
        "any" => what.to_string(),
        _ if each.contains(['`', ' ']) => format!("{what} of ({each})"),
        _ => format!("{what} of {each}s"),
    };
    match resolved.get("type").and_then(Value::as_str) {
        Some("array") => match resolved.get("items") {
            Some(items) => of("array", type_name(root, items)),
            None => "array".into(),
        },
        Some("object") => match resolved.get("additionalProperties") {
            Some(each @ Value::Object(_)) if resolved.get("properties").is_none() => {
                of("table", type_name(root, each))
            }
            _ => "table".into(),
        },
        Some(other) => other.to_string(),
        None => "any".into(),
    }
}

/// `value` as it would be written in TOML (short forms: `[]`, `{}`).
fn toml_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// `text` fit for a table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_every_family_is_a_branch_of_its_schema() {
        let pipeline = Format::Pipeline.schema();
        for (family, def, registered) in [
            ("steps", "Step", steps::KINDS),
            ("sinks", "Sink", sinks::KINDS),
            ("sources", "Source", sources::KINDS),
        ] {
            assert_eq!(kinds(family), registered, "{family}");
            let listed = pipeline
                .pointer(&format!("/$defs/{def}/properties/kind/enum"))
                .unwrap();
            assert_eq!(listed, &json!(registered), "{family}");
            for kind in registered {
                assert!(
                    key_table(&format!("{family}.{kind}")).is_ok(),
                    "{family}.{kind}"
                );
            }
        }
    }

    /// Keywords that draft 7 (what editors' TOML validators often implement) reads as draft
    /// 2020-12 does, and Taplo's extension.
    const PORTABLE: &[&str] = &[
        "$schema",
        "$id",
        "$defs",
        "$ref",
        "title",
        "description",
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "oneOf",
        "anyOf",
        "default",
        "pattern",
        "minimum",
        "maximum",
        "minItems",
        "format",
        "x-taplo",
    ];

    fn only_portable_keywords(schema: &Value, at: &str) {
        let Some(object) = schema.as_object() else {
            assert!(schema.is_boolean(), "{at}: {schema}");
            return;
        };
        for (keyword, value) in object {
            assert!(PORTABLE.contains(&keyword.as_str()), "{at}: `{keyword}`");
            match (keyword.as_str(), value) {
                ("properties" | "$defs", Value::Object(named)) => named
                    .iter()
                    .for_each(|(name, s)| only_portable_keywords(s, &format!("{at}/{name}"))),
                ("items" | "additionalProperties", s) => {
                    only_portable_keywords(s, &format!("{at}/{keyword}"))
                }
                ("oneOf" | "anyOf", Value::Array(all)) => all
                    .iter()
                    .for_each(|s| only_portable_keywords(s, &format!("{at}/{keyword}"))),
                _ => {}
            }
        }
    }

    #[test]
    fn the_schemas_use_only_keywords_older_drafts_read_alike() {
        for format in Format::ALL {
            let schema = format.schema();
            only_portable_keywords(&schema, format.name());
            // Only the families stay shared: a key's description and its type are together.
            let shared: Vec<&String> = schema
                .get("$defs")
                .and_then(Value::as_object)
                .map(|d| d.keys().collect())
                .unwrap_or_default();
            assert!(
                shared
                    .iter()
                    .all(|d| SHARED_DEFINITIONS.contains(&d.as_str())),
                "{shared:?}"
            );
        }
    }

    /// Every key's schema, with its path, at any depth.
    fn keys<'a>(schema: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
        let Some(object) = schema.as_object() else {
            return;
        };
        for (name, key) in object
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            out.push((format!("{at}.{name}"), key));
            keys(key, format!("{at}.{name}"), out);
        }
        for nested in ["items", "additionalProperties"] {
            if let Some(s) = object.get(nested) {
                keys(s, format!("{at}[]"), out);
            }
        }
        for list in ["oneOf", "anyOf"] {
            for (i, s) in object
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                keys(s, format!("{at}|{i}"), out);
            }
        }
        for (name, s) in object
            .get("$defs")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            keys(s, format!("#{name}"), out);
        }
    }

    /// The value a description says is the default: `(default 5000)`, `(default 10 MiB)`,
    /// `(default `0.0.0.0:8080`)`; `None` when it says it otherwise, or not at all.
    fn stated_default(description: &str) -> Option<Value> {
        let after = &description[description.find("(default ")? + "(default ".len()..];
        if let Some(quoted) = after.strip_prefix('`') {
            return Some(Value::String(quoted[..quoted.find('`')?].into()));
        }
        let text = &after[..after.find([')', ',', ';', ':'].as_slice())?];
        let (number, unit) = text.split_once(' ').unwrap_or((text, ""));
        let scale: u64 = match unit {
            "" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return None,
        };
        number.parse::<u64>().ok().map(|n| json!(n * scale))
    }

    #[test]
    fn defaults_stated_in_descriptions_are_the_real_ones() {
        let mut checked = 0;
        for format in Format::ALL {
            let schema = format.schema();
            let mut all = Vec::new();
            keys(&schema, format.name().into(), &mut all);
            for (at, key) in all {
                let (Some(default), Some(description)) = (
                    key.get("default"),
                    key.get("description").and_then(Value::as_str),
                ) else {
                    continue;
                };
                if let Some(stated) = stated_default(description) {
                    assert_eq!(&stated, default, "{at}: {description}");
                    checked += 1;
                }
            }
        }
        // The timeouts, limits, addresses and paths whose doc comments give their default.
        assert!(checked >= 30, "{checked}");
        assert_eq!(
            stated_default("Port (default `0.0.0.0:80`)."),
            Some(json!("0.0.0.0:80"))
        );
        assert_eq!(
            stated_default("Size (default 64 MiB)."),
            Some(json!(64 << 20))
        );
        assert_eq!(stated_default("Mode (default false: refused)."), None);
    }

    #[test]
    fn nulls_leave_and_documented_constants_become_an_enum() {
        let mut schema = json!({
            "type": ["string", "null"],
            "default": null,
            "properties": {
                "mode": { "oneOf": [
                    { "type": "string", "const": "first", "description": "The first\nroute." },
                    { "type": "string", "const": "all", "description": "Every route." },
                ]},
                "sink": { "anyOf": [{ "$ref": "#/$defs/Sink" }, { "type": "null" }], "description": "x" },
            }
        });
        tidy(&mut schema);
        assert_eq!(schema["type"], "string");
        assert!(schema.get("default").is_none());
        assert_eq!(
            schema["properties"]["mode"]["enum"],
            json!(["first", "all"])
        );
        assert_eq!(
            schema["properties"]["mode"]["x-taplo"]["docs"]["enumValues"],
            json!(["The first route.", "Every route."])
        );
        assert_eq!(
            schema["properties"]["sink"],
            json!({ "$ref": "#/$defs/Sink", "description": "x" })
        );
    }

    #[test]
    fn a_kind_table_lists_required_keys_first_with_types_and_defaults() {
        let table = key_table("sinks.http").unwrap();
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows[0], "| key | type | default | description |");
        assert!(
            rows[2].starts_with("| `url` | string | required | The endpoint"),
            "{table}"
        );
        assert!(
            table.contains("| `timeout_ms` | integer | `10000` | Timeout of one request"),
            "{table}"
        );
        let enrich = key_table("steps.enrich").unwrap();
        assert!(
            enrich.contains("| `method` | `\"GET\"` or `\"POST\"` |"),
            "{enrich}"
        );
        assert!(key_table("steps.enrich.cache")
            .unwrap()
            .contains("`ttl_ms`"));
        assert!(key_table("config.http.tls")
            .unwrap()
            .contains("`client_ca`"));
        assert!(key_table("on_error").unwrap().contains("`max_attempts`"));
        assert_eq!(key_table("sinks.stdout").unwrap(), "No key but `kind`.\n");
        assert!(key_table("config.kafka")
            .unwrap()
            .contains("| `properties` | table of (string, integer, boolean, number or table) |"));
        assert!(key_table("test.case.expect")
            .unwrap()
            .contains("| `messages` | array |"));
        assert!(key_table("steps.try")
            .unwrap()
            .contains("| `catch` | array of steps | required |"));
        assert!(key_table("steps.mapp")
            .unwrap_err()
            .contains("no steps kind `mapp`"));
    }

    #[test]
    fn key_tables_are_written_between_their_markers() {
        let page = "# map\n\n<!-- keys: steps.map -->\nstale\n<!-- /keys -->\n\nAfter.\n";
        let updated = update_key_tables(page).unwrap();
        assert!(updated.starts_with("# map\n\n<!-- keys: steps.map -->\n\n| key |"));
        assert!(
            updated.contains("| `expression` | string | required |"),
            "{updated}"
        );
        assert!(
            updated.ends_with(" |\n\n<!-- /keys -->\n\nAfter.\n"),
            "{updated}"
        );
        assert_eq!(update_key_tables(&updated).unwrap(), updated);
        assert_eq!(key_table_markers(page), ["steps.map"]);
        assert!(update_key_tables("<!-- keys: steps.map -->\n").is_err());
        assert!(
            update_key_tables("<!-- keys: steps.mapp -->\n<!-- /keys -->\n")
                .unwrap_err()
                .starts_with("line 1: ")
        );
        // Examples in code blocks are left alone.
        let example = "```markdown\n<!-- keys: steps.map -->\n<!-- /keys -->\n```\n";
        assert_eq!(update_key_tables(example).unwrap(), example);
        assert!(key_table_markers(example).is_empty());
    }
}
