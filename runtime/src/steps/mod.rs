//! Steps: the transformations between a source and a sink.
//!
//! A step kind is one module (`steps/<kind>.rs`, a folder when it is big) whose config
//! struct implements [`StepKind`]: its name, its documented example, how it is read from a
//! pipeline file, checked and built. The registry below lists every kind once; from that
//! line come the [`StepConfig`] variant, the [`KINDS`] list, the parse and the build
//! dispatch, and the kind's example (walked by the registry test). The engine runs the built
//! [`Step`]s (see [`run_all`]) and knows no kind by name.
//!
//! Adding a step kind: write `steps/<kind>.rs` with its config (`Deserialize`,
//! `deny_unknown_fields`, `JsonSchema`) and its running form, then add one line to
//! `step_kinds!` below. A synchronous step implements [`Transform`] and its config
//! [`TransformKind`] (name, example, compile: the rest is given); a step that waits or holds
//! steps implements [`Step`] and its config [`StepKind`].

mod build;
pub mod fields;
mod run;

use serde::de::DeserializeOwned;
use toml::de::DeValue;
use toml::Spanned;

pub use build::{build_sink, build_steps, BuildContext, Built, ProgramSink};
pub use run::{
    guarded, run_all, scope, Each, Outcome, Run, RunContext, Step, StepResult, Transform,
};

use crate::config::document::Document;
use crate::error::BuildError;
use crate::sinks::SinkConfig;

/// A kind of step: implemented by its config struct.
pub trait StepKind: Sized + std::fmt::Debug + Clone + PartialEq + Send + Sync + 'static {
    /// The `kind` as written in pipeline files.
    const KIND: &'static str;

    /// A `[[steps]]` table of this kind as an integrator writes it in a pipeline file,
    /// header included (the reference shows it; the registry test parses it in a pipeline,
    /// builds it and runs it on [`SAMPLE`](Self::SAMPLE)).
    const EXAMPLE: &'static str;

    /// A message the example accepts.
    const SAMPLE: &'static str = DEFAULT_SAMPLE;

    /// Reads the table `value` (without its `kind`) at `context` (`steps[2]`), reporting
    /// every fault in `doc` at its line and column; `None` when one was found. A plain
    /// kind deserializes itself: [`parse_plain`]; a block parses its nested steps with
    /// [`parse_steps`].
    fn parse<'i>(
        doc: &mut Document<'i>,
        value: &Spanned<DeValue<'i>>,
        context: &str,
    ) -> Option<Self>;

    /// The checks that need nothing loaded (expressions compile, values make sense).
    fn check(&self) -> Result<(), BuildError> {
        Ok(())
    }

    /// Builds the running step.
    fn build(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError>;

    /// The steps held inside this one (a block's), at the first level.
    fn nested(&self) -> Vec<&StepConfig> {
        Vec::new()
    }

    /// The sinks this step declares itself (a branch's routes), not those of nested steps.
    fn own_sinks(&self) -> Vec<&SinkConfig> {
        Vec::new()
    }
}

/// A kind whose config is a plain table and whose running form is a [`Transform`] (a
/// synchronous step): all it writes is its name, its example and how it compiles; parse,
/// checks and build come from here (its `StepKind` is the blanket one below).
pub trait TransformKind:
    Sized + std::fmt::Debug + Clone + PartialEq + DeserializeOwned + Send + Sync + 'static
{
    /// See [`StepKind::KIND`].
    const KIND: &'static str;
    /// See [`StepKind::EXAMPLE`].
    const EXAMPLE: &'static str;
    /// See [`StepKind::SAMPLE`].
    const SAMPLE: &'static str = DEFAULT_SAMPLE;
    /// The running transform.
    type Transform: Transform + 'static;

    /// Compiles the config (expressions, paths) into its transform; `context` offers what
    /// the process loaded (contracts).
    fn compile_in(&self, context: &StepContext) -> Result<Self::Transform, BuildError>;

    /// The checks that need nothing loaded; by default, compiling with nothing loaded.
    fn check_alone(&self) -> Result<(), BuildError> {
        self.compile_in(&StepContext::default()).map(drop)
    }
}

impl<T: TransformKind> StepKind for T {
    const KIND: &'static str = <T as TransformKind>::KIND;
    const EXAMPLE: &'static str = <T as TransformKind>::EXAMPLE;
    const SAMPLE: &'static str = <T as TransformKind>::SAMPLE;

    fn parse<'i>(
        doc: &mut Document<'i>,
        value: &Spanned<DeValue<'i>>,
        context: &str,
    ) -> Option<Self> {
        parse_plain(doc, value, context)
    }

    fn check(&self) -> Result<(), BuildError> {
        self.check_alone()
    }

    fn build(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError> {
        let transform = self.compile_in(cx.context())?;
        Ok(Box::new(Each::new(cx.pipeline(), cx.id(), transform)))
    }
}

/// The message a kind's example runs on, unless the kind gives its own.
pub const DEFAULT_SAMPLE: &str =
    r#"{"meter_id": "m-1", "value": "42.5", "unit": "kWh", "readings": [{"v": 1}, {"v": 2}]}"#;

/// The registry: one line a kind, `Variant(module::Config)`; the module is declared here.
macro_rules! step_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident($module:ident :: $config:ident), )+) => {
        $( pub mod $module; pub use $module::$config; )+

        /// One `[[steps]]` table of a pipeline file: the config of one registered kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum StepConfig {
            $( $(#[doc = $doc])* $variant($config), )+
        }

        /// Every step kind, in registry order.
        pub const KINDS: &[&str] = &[$( <$config as StepKind>::KIND ),+];

        /// Every step kind with its documented example and a message it accepts.
        pub const EXAMPLES: &[(&str, &str, &str)] = &[$(
            (<$config as StepKind>::KIND, <$config as StepKind>::EXAMPLE, <$config as StepKind>::SAMPLE)
        ),+];

        /// Every step kind with its one-line description and the JSON Schema of its config
        /// (for `gridflow schema`, which adds `kind`).
        pub const SCHEMAS: &[(&str, &str, fn(&mut schemars::SchemaGenerator) -> schemars::Schema)] = &[$(
            (<$config as StepKind>::KIND, concat!($($doc),*), <$config as schemars::JsonSchema>::json_schema)
        ),+];

        impl StepConfig {
            /// The kind as written in pipeline files.
            pub fn kind(&self) -> &'static str {
                match self { $( StepConfig::$variant(_) => <$config as StepKind>::KIND, )+ }
            }

            /// The checks that need nothing loaded (a block's nested steps are checked where
            /// they are parsed).
            pub fn check(&self) -> Result<(), BuildError> {
                match self { $( StepConfig::$variant(c) => c.check(), )+ }
            }

            /// Builds the running step (see [`build_steps`] for a list of them).
            pub fn build_in(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError> {
                match self { $( StepConfig::$variant(c) => c.build(cx), )+ }
            }

            fn nested(&self) -> Vec<&StepConfig> {
                match self { $( StepConfig::$variant(c) => c.nested(), )+ }
            }

            fn own_sinks(&self) -> Vec<&SinkConfig> {
                match self { $( StepConfig::$variant(c) => c.own_sinks(), )+ }
            }

            fn parse_kind<'i>(
                kind: &str,
                doc: &mut Document<'i>,
                value: &Spanned<DeValue<'i>>,
                context: &str,
            ) -> Option<StepConfig> {
                $( if kind == <$config as StepKind>::KIND {
                    return <$config as StepKind>::parse(doc, value, context).map(StepConfig::$variant);
                } )+
                None
            }
        }
    };
}

step_kinds! {
    /// XML bytes to a JSON document.
    XmlToJson(xml_to_json::XmlToJsonConfig),
    /// A JSON document to XML bytes.
    JsonToXml(json_to_xml::JsonToXmlConfig),
    /// A JMESPath expression gives the new message.
    Map(map::MapConfig),
    /// A JMESPath condition keeps or drops the message.
    Filter(filter::FilterConfig),
    /// An array becomes one message per element.
    Split(split::SplitConfig),
    /// Time series periods become one message per point, with UTC start and end.
    Timeseries(timeseries::TimeseriesConfig),
    /// The message must conform to a contract.
    Validate(validate::ValidateConfig),
    /// Sets body fields, headers and the key.
    Set(set::SetConfig),
    /// Removes body fields and headers.
    Remove(remove::RemoveConfig),
    /// Renames body fields and headers.
    Rename(rename::RenameConfig),
    /// An HTTP call whose answer goes into the message.
    Enrich(enrich::EnrichConfig),
    /// `enrich` steps run at once.
    Parallel(parallel::ParallelConfig),
    /// Steps with `catch` steps run on failure.
    Try(r#try::TryConfig),
    /// Routes, each with its steps and sink.
    Branch(branch::BranchConfig),
    /// The message becomes the payload of the kit's event envelope.
    Envelope(envelope::EnvelopeConfig),
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
    /// This step and every step inside it, at any depth.
    pub fn all(&self) -> Vec<&StepConfig> {
        std::iter::once(self)
            .chain(self.nested().into_iter().flat_map(StepConfig::all))
            .collect()
    }

    /// Sinks declared inside this step (branch routes, at any depth).
    pub fn sinks(&self) -> Vec<&SinkConfig> {
        self.all()
            .into_iter()
            .flat_map(StepConfig::own_sinks)
            .collect()
    }
}

/// Reads one step table at `context` (`steps[0]`, `steps[1].catch[0]`): its `kind`, then
/// the kind's own parse; every fault is reported in `doc`.
pub fn parse_step<'i>(
    doc: &mut Document<'i>,
    value: &Spanned<DeValue<'i>>,
    context: &str,
) -> Option<StepConfig> {
    let (kind, rest) = doc.tagged(value, context, KINDS)?;
    StepConfig::parse_kind(&kind, doc, &rest, context)
}

/// Reads an array of step tables (`steps`, a block's `steps` or `catch`, a route's
/// `steps`), reporting every problem with its position; `None` when one of them is wrong.
pub fn parse_steps<'i>(
    doc: &mut Document<'i>,
    value: &Spanned<DeValue<'i>>,
    prefix: &str,
) -> Option<Vec<StepConfig>> {
    let Some(items) = value.get_ref().as_array() else {
        doc.error(
            Some(value.span()),
            format!("`{prefix}` must be an array of tables"),
            Some(format!("write each step as a `[[{prefix}]]` table")),
        );
        return None;
    };
    let mut steps = Vec::new();
    let mut ok = true;
    for (i, v) in items.iter().enumerate() {
        match parse_step(doc, v, &format!("{prefix}[{i}]")) {
            Some(step) => steps.push(step),
            None => ok = false,
        }
    }
    ok.then_some(steps)
}

pub(crate) use crate::error::type_name;

/// Reads the `[[steps]]` tables of a TOML text (a pipeline file or a fragment of one), as
/// written, without `${VAR}` interpolation (benchmarks, tools): the pipeline file's path.
pub fn parse_steps_text(text: &str) -> Result<Vec<StepConfig>, Vec<crate::config::Diagnostic>> {
    let path = std::path::Path::new("steps.toml");
    let mut doc = Document::parse_literal(path, text)?;
    let Some(value) = doc.root.get_ref().get("steps").cloned() else {
        return Ok(Vec::new());
    };
    match parse_steps(&mut doc, &value, "steps") {
        Some(steps) if doc.diagnostics.is_empty() => Ok(steps),
        _ => Err(doc.diagnostics),
    }
}

/// The parse of a kind whose config is a plain table: deserialized (unknown keys and wrong
/// types reported at their place), then [`StepKind::check`]ed.
pub fn parse_plain<'i, T: StepKind + DeserializeOwned>(
    doc: &mut Document<'i>,
    value: &Spanned<DeValue<'i>>,
    context: &str,
) -> Option<T> {
    let config: T = doc.section(value, context, &[])?;
    if let Err(e) = config.check() {
        doc.report(value, context, e);
    }
    Some(config)
}

/// The table of `value` without `keys`, and the removed values (a block's nested parts).
pub fn split_table<'i>(
    value: &Spanned<DeValue<'i>>,
    keys: &[&str],
) -> (Spanned<DeValue<'i>>, Vec<Option<Spanned<DeValue<'i>>>>) {
    let mut table = value.get_ref().as_table().cloned().unwrap_or_default();
    let removed = keys.iter().map(|k| table.remove(*k)).collect();
    (Spanned::new(value.span(), DeValue::Table(table)), removed)
}

/// A block's nested step list, when it has one (none: an empty list).
pub fn nested_steps<'i>(
    doc: &mut Document<'i>,
    value: Option<Spanned<DeValue<'i>>>,
    prefix: &str,
) -> Option<Vec<StepConfig>> {
    match value {
        Some(v) => parse_steps(doc, &v, prefix),
        None => Some(Vec::new()),
    }
}

/// A nested component's error, reported on the block's key with the path inside it.
pub fn nested_error(at: &str, e: BuildError) -> BuildError {
    let key = at.split(['.', '[']).next().unwrap_or(at).to_string();
    let message = match &e.key {
        Some(k) => format!("{at}.{k}: {}", e.message),
        None => format!("{at}: {}", e.message),
    };
    BuildError {
        key: Some(key),
        offset: None,
        message,
        hint: e.hint,
    }
}

#[cfg(test)]
pub(crate) fn parse(toml_text: &str) -> StepConfig {
    let path = std::path::Path::new("step.toml");
    let mut doc = Document::parse_literal(path, toml_text).expect("step config parses");
    let root = doc.root_value();
    // Check failures (a bad expression) are left to the test: it builds the step.
    parse_step(&mut doc, &root, "steps[0]").expect("step config parses")
}

#[cfg(test)]
impl StepConfig {
    /// Builds the step alone, as `steps[0]` of a pipeline `test` without contracts.
    pub(crate) fn build(&self) -> Result<Box<dyn Step>, BuildError> {
        let sinks = crate::sinks::SinkContext {
            pipeline: "test".into(),
            version: "v".into(),
            producer: None,
            dry: true,
        };
        let mut built = Built::default();
        let steps = StepContext::default();
        let mut cx = BuildContext::new("test", &steps, &sinks, &mut built);
        let mut all = build_steps(&mut cx, std::slice::from_ref(self)).map_err(|(_, e)| e)?;
        Ok(all.remove(0))
    }
}

/// Runs a built step on one message's body, as the engine does.
#[cfg(test)]
pub(crate) fn run(
    step: &dyn Step,
    payload: crate::message::Payload,
) -> Result<Vec<crate::message::Payload>, crate::error::StepError> {
    let items = run_items(step, crate::message::Item::new(payload))?;
    Ok(items.into_iter().map(|i| i.payload).collect())
}

/// Runs a built step on one message, as the engine does.
#[cfg(test)]
pub(crate) fn run_items(
    step: &dyn Step,
    item: crate::message::Item,
) -> Result<Vec<crate::message::Item>, crate::error::StepError> {
    let meta = std::sync::Arc::new(crate::message::Meta {
        original: bytes::Bytes::new(),
        correlation_id: "c-1".into(),
        content_type: crate::message::ContentType::Json,
        origin: crate::message::Origin::Http {
            path: "/test".into(),
        },
        key: None,
        headers: Vec::new(),
        request_headers: Vec::new(),
        received_at: std::time::Instant::now(),
        reply: None,
    });
    let trace = crate::telemetry::Trace::default();
    let cx = RunContext {
        meta: &meta,
        trace: &trace,
    };
    let mut out = Outcome::default();
    let result = match step.run(vec![item], cx, &mut out) {
        Run::Ready(result) => result,
        Run::Pending(run) => futures::executor::block_on(run),
    };
    match result {
        Ok(items) => Ok(items),
        Err(f) => {
            let mut e = crate::error::StepError::new(f.code, f.message);
            e.details = f.details;
            Err(e)
        }
    }
}
