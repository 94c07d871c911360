//! Blocks: steps that hold steps (webMethods' BRANCH and SEQUENCE/TRY-CATCH), and `parallel`
//! for enrichment calls that do not depend on each other. The engine runs them
//! ([`crate::engine::program`]); here are their configs and checks.

use serde::Deserialize;

use super::StepConfig;
use crate::error::BuildError;
use crate::jmes::Expr;
use crate::sinks::SinkConfig;

/// `kind = "parallel"`: `enrich` steps run at once on the message as it enters the block;
/// their answers are placed in the order the steps are written.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParallelConfig {
    /// The `enrich` steps (`[[steps.steps]]`).
    pub steps: Vec<StepConfig>,
}

impl ParallelConfig {
    /// Only `enrich` steps, at least two, with distinct targets.
    pub fn check(&self) -> Result<(), BuildError> {
        let mut targets = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let StepConfig::Enrich(e) = step else {
                return Err(BuildError::at(
                    "steps",
                    format!(
                        "steps[{i}] is a `{}` step; a parallel block holds only `enrich` steps",
                        step.kind()
                    ),
                )
                .with_hint("move the other steps before or after the block"));
            };
            e.check()
                .map_err(|err| nested(&format!("steps[{i}]"), err))?;
            if targets.contains(&&e.target) {
                return Err(BuildError::at(
                    "steps",
                    format!("two enrich steps of the block write `{}`", e.target),
                )
                .with_hint("give each its own `target`"));
            }
            targets.push(&e.target);
        }
        if self.steps.is_empty() {
            return Err(BuildError::at(
                "steps",
                "a parallel block needs `enrich` steps",
            ));
        }
        Ok(())
    }
}

/// `kind = "try"`: `steps`, and `catch` steps run on a message for which one of them failed
/// (the message as it entered the block, the failure under `meta().error`).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TryConfig {
    /// The guarded steps (`[[steps.steps]]`).
    pub steps: Vec<StepConfig>,
    /// The steps run on failure (`[[steps.catch]]`); their messages continue after the block.
    pub catch: Vec<StepConfig>,
    /// After the catch steps, also send the input to the dead-letter route with the original
    /// failure (what the catch steps produced is delivered too).
    #[serde(default)]
    pub rethrow: bool,
}

impl TryConfig {
    /// Checks both step lists.
    pub fn check(&self) -> Result<(), BuildError> {
        if self.steps.is_empty() {
            return Err(BuildError::at("steps", "a try block needs steps to guard"));
        }
        if self.catch.is_empty() {
            return Err(BuildError::at("catch", "a try block needs catch steps")
                .with_hint("add `[[steps.catch]]` tables; a `map` can build the reply or the compensating event"));
        }
        check_all("steps", &self.steps)?;
        check_all("catch", &self.catch)
    }
}

/// `mode` of a branch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BranchMode {
    /// The first route whose `when` holds (default).
    #[default]
    First,
    /// Every route whose `when` holds (fan-out).
    All,
}

/// One route of a branch.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and errors (default `routes[<i>]`).
    pub name: Option<String>,
    /// JMESPath condition on the message (`meta()` included), JMESPath truthiness.
    pub when: String,
    /// Steps of this route (`[[steps.routes.steps]]`).
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Where the route's messages go (`[steps.routes.sink]`); without it they continue
    /// after the branch to the next step and the pipeline's sink.
    pub sink: Option<SinkConfig>,
}

/// The route of messages no `when` matched.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultRouteConfig {
    /// Steps (`[[steps.default.steps]]`).
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Where they go (`[steps.default.sink]`); without it they continue after the branch.
    pub sink: Option<SinkConfig>,
}

/// `kind = "branch"`: ordered conditions, each with its own steps and sink, and a default.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchConfig {
    /// `first` (default) or `all`.
    #[serde(default)]
    pub mode: BranchMode,
    /// The routes, in order (`[[steps.routes]]`).
    pub routes: Vec<RouteConfig>,
    /// Messages no route took (`[steps.default]`); without it they continue unchanged.
    pub default: Option<DefaultRouteConfig>,
}

impl BranchConfig {
    /// Conditions compile, nested steps and sinks check.
    pub fn check(&self) -> Result<(), BuildError> {
        if self.routes.is_empty() {
            return Err(
                BuildError::at("routes", "a branch needs at least one route")
                    .with_hint("add a `[[steps.routes]]` table with `when`"),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            Expr::compile(&route.when)
                .map_err(|e| BuildError::at("routes", format!("{at}.when: {e}")))?;
            check_all(&format!("{at}.steps"), &route.steps)?;
            if let Some(sink) = &route.sink {
                sink.check().map_err(|e| nested(&format!("{at}.sink"), e))?;
            }
        }
        if let Some(default) = &self.default {
            check_all("default.steps", &default.steps)?;
            if let Some(sink) = &default.sink {
                sink.check().map_err(|e| nested("default.sink", e))?;
            }
        }
        Ok(())
    }
}

/// A nested component's error, reported on the block's key with the path inside it.
fn nested(at: &str, e: BuildError) -> BuildError {
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

fn check_all(at: &str, steps: &[StepConfig]) -> Result<(), BuildError> {
    for (i, step) in steps.iter().enumerate() {
        step.check()
            .map_err(|e| nested(&format!("{at}[{i}] ({})", step.kind()), e))?;
    }
    Ok(())
}
