//! Steps: the transformations between a source and a sink.
//!
//! Every step kind is registered in [`StepConfig`], the one registry: a closed enum tagged by
//! `kind`, whose `build` returns the running [`Step`].

pub mod blocks;
pub mod enrich;
pub mod fields;
mod filter;
mod json_to_xml;
mod map;
mod split;
mod validate;
mod xml_to_json;

use serde::Deserialize;

pub use blocks::{BranchConfig, ParallelConfig, TryConfig};
pub use enrich::EnrichConfig;
pub use fields::{RemoveConfig, RenameConfig, SetConfig};
pub use filter::FilterConfig;
pub use json_to_xml::JsonToXmlConfig;
pub use map::MapConfig;
pub use split::SplitConfig;
pub use validate::ValidateConfig;
pub use xml_to_json::XmlToJsonConfig;

use crate::error::{BuildError, StepError};
use crate::message::{Item, Payload};

/// A transformation of one message into zero, one or several messages.
///
/// Lifecycle: built once when the pipeline loads (expressions compiled then), then called for
/// every message, possibly from several tasks at once. A step is pure: an `Err` means *this
/// message* cannot be processed, is never retried, and sends the input to the dead-letter
/// destination. Steps never block and never fail transiently.
pub trait Step: Send + Sync {
    /// Processes `payload`, pushing what it produces to `out` (nothing: the message is
    /// filtered out).
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError>;

    /// Processes a whole message, body and metadata. By default the body goes through
    /// [`process`](Self::process) and every result keeps the message's metadata; steps that
    /// change metadata (`set`, `remove`, `rename`) override it.
    fn process_item(&self, item: Item, out: &mut Vec<Item>) -> Result<(), StepError> {
        let mut bodies = Vec::with_capacity(1);
        let Item {
            payload,
            headers,
            key,
            error,
        } = item;
        self.process(payload, &mut bodies)?;
        out.extend(bodies.into_iter().map(|payload| Item {
            payload,
            headers: headers.clone(),
            key: key.clone(),
            error: error.clone(),
        }));
        Ok(())
    }
}

/// One `[[steps]]` table of a pipeline file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepConfig {
    /// XML bytes to a JSON document.
    XmlToJson(XmlToJsonConfig),
    /// A JSON document to XML bytes.
    JsonToXml(JsonToXmlConfig),
    /// A JMESPath expression gives the new message.
    Map(MapConfig),
    /// A JMESPath condition keeps or drops the message.
    Filter(FilterConfig),
    /// An array becomes one message per element.
    Split(SplitConfig),
    /// The message must conform to a contract.
    Validate(ValidateConfig),
    /// Sets body fields, headers and the key.
    Set(SetConfig),
    /// Removes body fields and headers.
    Remove(RemoveConfig),
    /// Renames body fields and headers.
    Rename(RenameConfig),
    /// An HTTP call whose answer goes into the message.
    Enrich(EnrichConfig),
    /// `enrich` steps run at once.
    Parallel(ParallelConfig),
    /// Steps with `catch` steps run on failure.
    Try(TryConfig),
    /// Routes, each with its steps and sink.
    Branch(BranchConfig),
}

/// What steps may need from the process when they are built.
#[derive(Debug, Clone, Default)]
pub struct StepContext {
    /// The contracts loaded from the contracts directory.
    pub contracts: Option<std::sync::Arc<crate::contracts::Contracts>>,
    /// Answers `enrich` calls instead of the network (`gridflow test`); `None`: real calls.
    pub upstream: Option<std::sync::Arc<dyn enrich::Upstream>>,
}

impl StepConfig {
    /// The kind as written in pipeline files.
    pub fn kind(&self) -> &'static str {
        match self {
            StepConfig::XmlToJson(_) => "xml_to_json",
            StepConfig::JsonToXml(_) => "json_to_xml",
            StepConfig::Map(_) => "map",
            StepConfig::Filter(_) => "filter",
            StepConfig::Split(_) => "split",
            StepConfig::Validate(_) => "validate",
            StepConfig::Set(_) => "set",
            StepConfig::Remove(_) => "remove",
            StepConfig::Rename(_) => "rename",
            StepConfig::Enrich(_) => "enrich",
            StepConfig::Parallel(_) => "parallel",
            StepConfig::Try(_) => "try",
            StepConfig::Branch(_) => "branch",
        }
    }

    /// This step and every step inside it, at any depth.
    pub fn all(&self) -> Vec<&StepConfig> {
        let inner: Vec<&StepConfig> = match self {
            StepConfig::Parallel(p) => p.steps.iter().collect(),
            StepConfig::Try(t) => t.steps.iter().chain(&t.catch).collect(),
            StepConfig::Branch(b) => b
                .routes
                .iter()
                .flat_map(|r| &r.steps)
                .chain(b.default.iter().flat_map(|d| &d.steps))
                .collect(),
            _ => Vec::new(),
        };
        std::iter::once(self)
            .chain(inner.into_iter().flat_map(StepConfig::all))
            .collect()
    }

    /// Sinks declared inside this step (branch routes, at any depth).
    pub fn sinks(&self) -> Vec<&crate::sinks::SinkConfig> {
        self.all()
            .into_iter()
            .flat_map(|s| match s {
                StepConfig::Branch(b) => b
                    .routes
                    .iter()
                    .filter_map(|r| r.sink.as_ref())
                    .chain(b.default.iter().filter_map(|d| d.sink.as_ref()))
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Builds the running step (compiles its expressions) with no contracts loaded.
    pub fn build(&self) -> Result<Box<dyn Step>, BuildError> {
        self.build_in(&StepContext::default())
    }

    /// Builds the running step of a plain (synchronous, message-by-message) kind; the engine
    /// builds `enrich` and the blocks itself.
    pub fn build_in(&self, ctx: &StepContext) -> Result<Box<dyn Step>, BuildError> {
        Ok(match self {
            StepConfig::XmlToJson(c) => Box::new(c.build()?),
            StepConfig::JsonToXml(c) => Box::new(c.build()?),
            StepConfig::Map(c) => Box::new(c.build()?),
            StepConfig::Filter(c) => Box::new(c.build()?),
            StepConfig::Split(c) => Box::new(c.build()?),
            StepConfig::Validate(c) => Box::new(c.build(ctx)?),
            StepConfig::Set(c) => Box::new(c.build()?),
            StepConfig::Remove(c) => Box::new(c.build()?),
            StepConfig::Rename(c) => Box::new(c.build()?),
            StepConfig::Enrich(_)
            | StepConfig::Parallel(_)
            | StepConfig::Try(_)
            | StepConfig::Branch(_) => {
                return Err(BuildError::at(
                    "kind",
                    format!(
                        "`{}` is run by the engine, not built as a plain step",
                        self.kind()
                    ),
                ))
            }
        })
    }

    /// The checks that need nothing loaded (for `gridflow validate`).
    pub fn check(&self) -> Result<(), BuildError> {
        match self {
            StepConfig::Validate(c) => c.check(),
            StepConfig::Enrich(c) => c.check(),
            StepConfig::Parallel(c) => c.check(),
            StepConfig::Try(c) => c.check(),
            StepConfig::Branch(c) => c.check(),
            other => other.build().map(drop),
        }
    }
}

impl StepConfig {
    /// Deserializes the variant `kind` from a table without its `kind` key (for diagnostics
    /// with exact positions; the derive above is the normal path).
    pub fn variant<'de, D: serde::Deserializer<'de>>(kind: &str, de: D) -> Result<Self, D::Error> {
        Ok(match kind {
            "xml_to_json" => StepConfig::XmlToJson(Deserialize::deserialize(de)?),
            "json_to_xml" => StepConfig::JsonToXml(Deserialize::deserialize(de)?),
            "map" => StepConfig::Map(Deserialize::deserialize(de)?),
            "filter" => StepConfig::Filter(Deserialize::deserialize(de)?),
            "split" => StepConfig::Split(Deserialize::deserialize(de)?),
            "validate" => StepConfig::Validate(Deserialize::deserialize(de)?),
            "set" => StepConfig::Set(Deserialize::deserialize(de)?),
            "remove" => StepConfig::Remove(Deserialize::deserialize(de)?),
            "rename" => StepConfig::Rename(Deserialize::deserialize(de)?),
            "enrich" => StepConfig::Enrich(Deserialize::deserialize(de)?),
            "parallel" => StepConfig::Parallel(Deserialize::deserialize(de)?),
            "try" => StepConfig::Try(Deserialize::deserialize(de)?),
            "branch" => StepConfig::Branch(Deserialize::deserialize(de)?),
            other => return Err(serde::de::Error::unknown_variant(other, KINDS)),
        })
    }
}

/// Every step kind, for hints.
pub const KINDS: &[&str] = &[
    "xml_to_json",
    "json_to_xml",
    "map",
    "filter",
    "split",
    "validate",
    "set",
    "remove",
    "rename",
    "enrich",
    "parallel",
    "try",
    "branch",
];

#[cfg(test)]
pub(crate) fn parse(toml_text: &str) -> StepConfig {
    toml::from_str(toml_text).expect("step config parses")
}

#[cfg(test)]
pub(crate) fn run(step: &dyn Step, payload: Payload) -> Result<Vec<Payload>, StepError> {
    let mut out = Vec::new();
    step.process(payload, &mut out)?;
    Ok(out)
}
