//! `parallel`: `enrich` steps run at once on the message as it enters the block; their
//! answers are placed in the order the steps are written.

use toml::de::DeValue;
use toml::Spanned;

use super::enrich::Calls;
use super::{nested_steps, split_table, BuildContext, Step, StepConfig, StepKind};
use crate::config::document::Document;
use crate::error::BuildError;

/// `kind = "parallel"`.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParallelConfig {
    /// The `enrich` steps (`[[steps.steps]]`).
    pub steps: Vec<StepConfig>,
}

impl StepKind for ParallelConfig {
    const KIND: &'static str = "parallel";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "parallel"
[[steps.steps]]
kind = "enrich"
url = "http://assets.example/meters/{meter_id}"
target = "asset"
[[steps.steps]]
kind = "enrich"
url = "http://tariffs.example/meters/{meter_id}"
target = "tariff""#;

    fn parse<'i>(doc: &mut Document<'i>, value: &Spanned<DeValue<'i>>, context: &str) -> Option<Self> {
        let (shell, mut removed) = split_table(value, &["steps"]);
        let steps_v = removed.pop().flatten();
        if let Some(t) = shell.get_ref().as_table() {
            doc.check_keys(t, &["steps"], context);
        }
        let config = ParallelConfig {
            steps: nested_steps(doc, steps_v, &format!("{context}.steps"))?,
        };
        if let Err(e) = config.check() {
            doc.report(value, context, e);
        }
        Some(config)
    }

    /// Only `enrich` steps, at least one, with distinct targets.
    fn check(&self) -> Result<(), BuildError> {
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
                .map_err(|err| super::nested_error(&format!("steps[{i}]"), err))?;
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

    fn build(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError> {
        self.check()?;
        cx.may_wait();
        let mut calls = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let StepConfig::Enrich(e) = step else {
                unreachable!("checked: parallel holds enrich steps only")
            };
            let id = format!("{}.steps[{i}].enrich", cx.id());
            let call = e
                .compile(&id, cx.pipeline())
                .map_err(|err| cx.error_at(&format!("steps[{i}].enrich"), err))?;
            calls.push(call.with_upstream(cx.context().upstream.clone()));
        }
        Ok(Box::new(Calls::new(cx.pipeline(), cx.id(), calls)))
    }

    fn nested(&self) -> Vec<&StepConfig> {
        self.steps.iter().collect()
    }
}
