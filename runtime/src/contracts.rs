//! Event contracts: JSON Schemas (draft 2020-12) under `contracts/<name>/<version>/schema.json`,
//! compiled once when loaded, and the topic catalog `contracts/topics.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

/// One contract version.
pub struct Contract {
    /// `name@version`.
    pub reference: String,
    /// The schema document.
    pub schema: Value,
    /// Where it was read from.
    pub dir: PathBuf,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract")
            .field("reference", &self.reference)
            .finish()
    }
}

/// One place where a document breaks its contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// JSON pointer into the document (`/quantity`; empty for the whole document).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl Contract {
    /// Every violation of `document`, or `Ok` when it conforms.
    pub fn validate(&self, document: &Value) -> Result<(), Vec<Violation>> {
        let violations: Vec<Violation> = self
            .validator
            .iter_errors(document)
            .map(|e| Violation {
                pointer: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// Violations as the JSON list carried by problem responses.
pub fn violations_json(violations: &[Violation]) -> Value {
    Value::Array(
        violations
            .iter()
            .map(|v| json!({"pointer": v.pointer, "message": v.message}))
            .collect(),
    )
}

/// The contracts of a directory, by `name@version`.
#[derive(Debug, Default)]
pub struct Contracts {
    by_reference: BTreeMap<String, Arc<Contract>>,
}

/// A contract that could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl Contracts {
    /// Loads every `<name>/<version>/schema.json` below `dir` (a missing directory gives none).
    pub fn load(dir: &Path) -> (Contracts, Vec<LoadError>) {
        let mut contracts = Contracts::default();
        let mut errors = Vec::new();
        for (name, name_dir) in subdirs(dir) {
            for (version, version_dir) in subdirs(&name_dir) {
                let path = version_dir.join("schema.json");
                let fail = |message: String| LoadError {
                    path: path.clone(),
                    message,
                };
                let schema = match std::fs::read(&path) {
                    Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                        Ok(schema) => schema,
                        Err(e) => {
                            errors.push(fail(format!("not JSON: {e}")));
                            continue;
                        }
                    },
                    Err(e) => {
                        errors.push(fail(format!("cannot read: {e}")));
                        continue;
                    }
                };
                match jsonschema::draft202012::new(&schema) {
                    Ok(validator) => {
                        let reference = format!("{name}@{version}");
                        contracts.by_reference.insert(
                            reference.clone(),
                            Arc::new(Contract {
                                reference,
                                schema,
                                dir: version_dir.clone(),
                                validator,
                            }),
                        );
                    }
                    Err(e) => errors.push(fail(format!("not a valid JSON Schema: {e}"))),
                }
            }
        }
        (contracts, errors)
    }

    /// The contract `name@version`.
    pub fn get(&self, reference: &str) -> Option<Arc<Contract>> {
        self.by_reference.get(reference).cloned()
    }

    /// Every contract, by reference.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Contract>> {
        self.by_reference.values()
    }

    /// The references known, for hints.
    pub fn references(&self) -> Vec<String> {
        self.by_reference.keys().cloned().collect()
    }
}

/// Breaking changes from schema `old` to schema `new` (the next version of one contract): a
/// required field no longer required or gone, a property gone, a changed `type`. Each is
/// reported with the JSON pointer of the place in the schema.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut found = Vec::new();
    compare(old, new, "", &mut found);
    found
}

fn compare(old: &Value, new: &Value, pointer: &str, found: &mut Vec<String>) {
    if let (Some(t_old), t_new) = (old.get("type"), new.get("type")) {
        if Some(t_old) != t_new {
            found.push(format!(
                "{pointer}/type: type changed from {t_old} to {}",
                t_new.map(Value::to_string).unwrap_or_else(|| "none".into())
            ));
        }
    }
    let names = |v: &Value, key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let new_required = names(new, "required");
    for field in names(old, "required") {
        if !new_required.contains(&field) {
            found.push(format!(
                "{pointer}/required: required field `{field}` removed"
            ));
        }
    }
    if let Some(old_props) = old.get("properties").and_then(Value::as_object) {
        let new_props = new.get("properties").and_then(Value::as_object);
        for (name, old_schema) in old_props {
            let at = format!(
                "{pointer}/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            );
            match new_props.and_then(|p| p.get(name)) {
                Some(new_schema) => compare(old_schema, new_schema, &at, found),
                None => found.push(format!("{at}: property `{name}` removed")),
            }
        }
    }
    if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
        compare(old_items, new_items, &format!("{pointer}/items"), found);
    }
}

/// Pairs of consecutive versions of each contract, oldest first.
pub fn consecutive_versions(contracts: &Contracts) -> Vec<(Arc<Contract>, Arc<Contract>)> {
    let mut by_name: BTreeMap<&str, Vec<(u64, &Arc<Contract>)>> = BTreeMap::new();
    for c in contracts.all() {
        if let Some((name, version)) = c.reference.split_once('@') {
            if let Ok(v) = version.parse::<u64>() {
                by_name.entry(name).or_default().push((v, c));
            }
        }
    }
    let mut pairs = Vec::new();
    for versions in by_name.values_mut() {
        versions.sort_by_key(|(v, _)| *v);
        for w in versions.windows(2) {
            pairs.push((Arc::clone(w[0].1), Arc::clone(w[1].1)));
        }
    }
    pairs
}

/// The directories directly below `dir` (none when it is unreadable), sorted, with their names.
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|p| {
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                p,
            )
        })
        .collect();
    dirs.sort();
    dirs
}

/// Is `reference` of the form `name@version`?
pub fn valid_reference(reference: &str) -> bool {
    reference.split_once('@').is_some_and(|(name, version)| {
        !name.is_empty()
            && !version.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && version.chars().all(|c| c.is_ascii_digit())
    })
}

/// `contracts/topics.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicCatalog {
    /// The topics.
    #[serde(default, rename = "topic")]
    pub topics: Vec<CatalogTopic>,
}

impl TopicCatalog {
    /// Reads and parses the catalog at `path`, `${VAR}` interpolated from the process
    /// environment (topic names end with `${GRIDFLOW_ENV:-dev}`); the error names the file.
    pub fn load(path: &Path) -> Result<TopicCatalog, String> {
        Self::load_with(path, &crate::config::interpolate::from_env)
    }

    /// [`load`](Self::load), variables looked up with `lookup`.
    pub fn load_with(
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TopicCatalog, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (_, value) in table.iter_mut() {
            interpolate_strings(value, lookup).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Interpolates `${VAR}` in every string of `value`.
fn interpolate_strings(
    value: &mut toml::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        toml::Value::String(s) => {
            *s = crate::config::interpolate::interpolate(s, lookup)
                .map_err(|e| format!("`{s}`: {e}"))?;
        }
        toml::Value::Array(items) => {
            for item in items {
                interpolate_strings(item, lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (_, item) in table.iter_mut() {
                interpolate_strings(item, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One `[[topic]]` of the catalog.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogTopic {
    /// Topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Retention, e.g. `7d`.
    pub retention: String,
    /// The field used as record key.
    pub key: Option<String>,
    /// `name@version` of the records' contract.
    pub contract: Option<String>,
    /// The owning team.
    pub owner: String,
    /// Its dead-letter topic.
    pub dead_letter: Option<String>,
}

/// Does `topic` follow `<domain>.<entity>.<event>.v<major>`, optionally followed by the
/// environment (`.dev`, `.recette`, `.prod`: the kit's naming), then optionally `.dlq`?
pub fn conventional_topic(topic: &str) -> bool {
    let base = topic.strip_suffix(".dlq").unwrap_or(topic);
    let mut parts: Vec<&str> = base.split('.').collect();
    let word = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let version = |p: &str| {
        p.strip_prefix('v')
            .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
    };
    if parts.last().is_some_and(|last| !version(last))
        && parts.len() >= 2
        && version(parts[parts.len() - 2])
        && crate::config::interpolate::valid_env_name(parts[parts.len() - 1])
    {
        parts.pop();
    }
    parts.len() >= 4
        && parts[..parts.len() - 1].iter().all(|p| word(p))
        && version(parts[parts.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_validates_and_reports_pointers() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("reading/1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(
            v1.join("schema.json"),
            r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["id","value"],"properties":{"id":{"type":"string"},"value":{"type":"number","minimum":0}}}"#,
        )
        .unwrap();
        let (contracts, errors) = Contracts::load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        let c = contracts.get("reading@1").unwrap();
        assert!(c.validate(&json!({"id": "m", "value": 1.5})).is_ok());
        let v = c.validate(&json!({"value": -1})).unwrap_err();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().any(|v| v.pointer == "/value"), "{v:?}");
        assert!(
            v.iter()
                .any(|v| v.pointer.is_empty() && v.message.contains("id")),
            "{v:?}"
        );
    }

    #[test]
    fn breaking_changes_have_pointers() {
        let v1 = json!({"type": "object", "required": ["a", "b"], "properties": {
            "a": {"type": "string"}, "b": {"type": "number"}, "c": {"type": "object", "properties": {"d": {"type": "string"}}}}});
        let compatible = json!({"type": "object", "required": ["a", "b"], "properties": {
            "a": {"type": "string"}, "b": {"type": "number"}, "c": {"type": "object", "properties": {"d": {"type": "string"}}}, "e": {"type": "string"}}});
        assert!(breaking_changes(&v1, &compatible).is_empty());
        let breaking = json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "integer"}, "b": {"type": "number"}, "c": {"type": "object", "properties": {}}}});
        let found = breaking_changes(&v1, &breaking);
        assert!(
            found.contains(&"/required: required field `b` removed".to_string()),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("/properties/a/type: type changed")),
            "{found:?}"
        );
        assert!(
            found.contains(&"/properties/c/properties/d: property `d` removed".to_string()),
            "{found:?}"
        );
    }

    #[test]
    fn references_and_topic_names() {
        assert!(valid_reference("load-actual@1"));
        assert!(!valid_reference("load-actual"));
        assert!(!valid_reference("Load@v1"));
        assert!(conventional_topic("energy.load.actual.v1"));
        assert!(conventional_topic("energy.load.actual.v1.dlq"));
        assert!(conventional_topic("energy.meter.reading.raw.v1"));
        assert!(!conventional_topic("energy.load.v1"));
        assert!(!conventional_topic("Energy.Load.Actual.v1"));
        assert!(!conventional_topic("energy.load.actual.1"));
        // The kit's naming: the environment after the version.
        assert!(conventional_topic("grid.meter.reading.v1.dev"));
        assert!(conventional_topic("grid.meter.reading.v1.recette.dlq"));
        assert!(!conventional_topic("grid.meter.reading.v1.Prod"));
        assert!(!conventional_topic("grid.meter.reading.v1.re.cette"));
        assert!(!conventional_topic("grid.meter.reading.v1.dev.dev"));
        assert!(!conventional_topic("meter.reading.v1.dev"));
    }

    #[test]
    fn the_catalog_is_interpolated_and_a_bad_environment_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.toml");
        std::fs::write(
            &path,
            "# ${NOT_INTERPOLATED} in a comment\n[[topic]]\nname = \"grid.meter.reading.v1.${GRIDFLOW_ENV:-dev}\"\npartitions = 3\nretention = \"7d\"\nowner = \"o\"\ndead_letter = \"grid.meter.reading.v1.${GRIDFLOW_ENV:-dev}.dlq\"\n",
        )
        .unwrap();
        let env = |value: &'static str| {
            move |name: &str| (name == "GRIDFLOW_ENV").then(|| value.to_string())
        };
        let dev = TopicCatalog::load_with(&path, &|_| None).unwrap();
        assert_eq!(dev.topics[0].name, "grid.meter.reading.v1.dev");
        let prod = TopicCatalog::load_with(&path, &env("prod")).unwrap();
        assert_eq!(prod.topics[0].name, "grid.meter.reading.v1.prod");
        assert_eq!(
            prod.topics[0].dead_letter.as_deref(),
            Some("grid.meter.reading.v1.prod.dlq")
        );
        let e = TopicCatalog::load_with(&path, &env("PROD.eu")).unwrap_err();
        assert!(
            e.contains("topics.toml") && e.contains("GRIDFLOW_ENV=`PROD.eu`"),
            "{e}"
        );
    }
}
