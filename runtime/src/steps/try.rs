//! `try`: steps guarded by `catch` steps (webMethods' SEQUENCE exit-on-failure / TRY-CATCH).
//! The catch steps run on a message for which one of the guarded steps failed: the message
//! as it entered the block, the failure under `meta().error`.

use std::sync::Arc;

use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use super::{
    nested_steps, run_all, split_table, BuildContext, Outcome, Run, RunContext,
    Step, StepConfig, StepKind,
};
use crate::config::document::Document;
use crate::error::{BuildError, Failure};
use crate::message::Item;

/// `kind = "try"`.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
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

impl StepKind for TryConfig {
    const KIND: &'static str = "try";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "try"
[[steps.steps]]
kind = "map"
expression = "{meter: meter_id, kwh: to_number(value)}"
[[steps.catch]]
kind = "set"
[steps.catch.fields]
failed = "`true`""#;

    fn parse<'i>(doc: &mut Document<'i>, value: &Spanned<DeValue<'i>>, context: &str) -> Option<Self> {
        let (shell, mut removed) = split_table(value, &["steps", "catch"]);
        let catch_v = removed.pop().flatten();
        let steps_v = removed.pop().flatten();
        /// The block's own keys.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Shell {
            #[serde(default)]
            rethrow: bool,
        }
        let shell: Option<Shell> = doc.section(&shell, context, &[]);
        let missing = |doc: &mut Document<'_>, key: &str, hint: &str| {
            doc.error(
                Some(value.span()),
                format!("{context}: a try block needs `{key}`"),
                Some(hint.to_string()),
            );
        };
        if steps_v.is_none() {
            missing(
                doc,
                "steps",
                "add `[[steps.steps]]` tables: the steps to guard",
            );
        }
        if catch_v.is_none() {
            missing(
                doc,
                "catch",
                "add `[[steps.catch]]` tables: the steps run on failure",
            );
        }
        let steps = nested_steps(doc, steps_v, &format!("{context}.steps"));
        let catch = nested_steps(doc, catch_v, &format!("{context}.catch"));
        Some(TryConfig {
            steps: steps?,
            catch: catch?,
            rethrow: shell?.rethrow,
        })
    }

    fn build(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError> {
        Ok(Box::new(Try {
            body: cx.steps("steps", &self.steps)?,
            catch: cx.steps("catch", &self.catch)?,
            rethrow: self.rethrow,
        }))
    }

    fn nested(&self) -> Vec<&StepConfig> {
        self.steps.iter().chain(&self.catch).collect()
    }
}

/// The running `try` block.
struct Try {
    body: Vec<Box<dyn Step>>,
    catch: Vec<Box<dyn Step>>,
    rethrow: bool,
}

impl Step for Try {
    fn run<'a>(&'a self, items: Vec<Item>, cx: RunContext<'a>, out: &'a mut Outcome) -> Run<'a> {
        Run::Pending(Box::pin(async move {
            // The messages of an input go through at once; `merge` keeps their order.
            let runs = items.into_iter().map(|item| self.item(item, cx));
            Ok(out.merge(futures::future::try_join_all(runs).await?))
        }))
    }
}

impl Try {
    /// One message through the block: its deliveries and the messages that continue.
    async fn item(&self, item: Item, cx: RunContext<'_>) -> Result<(Outcome, Vec<Item>), Failure> {
        let mut inner = Outcome::default();
        match run_all(&self.body, vec![item.clone()], cx, &mut inner).await {
            Ok(items) => Ok((inner, items)),
            // An unavailable upstream is not a fault of the message: the runner waits (or
            // answers 503); catch steps are for failures. What the body produced is discarded.
            Err(f) if f.retry_after.is_some() => Err(f),
            Err(failure) => {
                tracing::debug!(step = %failure.step, code = %failure.code, correlation_id = %cx.meta.correlation_id, "Failure caught.");
                let mut caught_outcome = Outcome {
                    deliveries: Vec::new(),
                    rethrown: self.rethrow.then(|| failure.clone()),
                };
                let mut caught = item;
                caught.error = Some(Arc::new(failure));
                let items = run_all(&self.catch, vec![caught], cx, &mut caught_outcome).await?;
                Ok((caught_outcome, items))
            }
        }
    }
}
