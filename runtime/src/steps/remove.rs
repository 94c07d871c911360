//! `remove`: removes body fields and headers.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::fields::{body_only, paths, FieldPath};
use super::{StepContext, Transform, TransformKind};
use crate::error::{BuildError, StepError};
use crate::message::{Item, Payload};

/// `kind = "remove"`: removes body fields and headers (missing ones are not an error).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveConfig {
    /// Field paths.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Header names.
    #[serde(default)]
    pub headers: Vec<String>,
}

impl RemoveConfig {
    /// Checks the paths.
    pub fn compile(&self) -> Result<RemoveStep, BuildError> {
        if self.fields.is_empty() && self.headers.is_empty() {
            return Err(BuildError::at("fields", "`remove` removes nothing")
                .with_hint("give `fields` or `headers`"));
        }
        Ok(RemoveStep {
            fields: paths("fields", self.fields.iter())?,
            headers: self.headers.clone(),
        })
    }
}

impl TransformKind for RemoveConfig {
    const KIND: &'static str = "remove";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "remove"
fields = ["unit"]
headers = ["x-debug"]"#;
    type Transform = RemoveStep;

    fn compile_in(&self, _: &StepContext) -> Result<RemoveStep, BuildError> {
        self.compile()
    }
}

/// The running `remove` step.
pub struct RemoveStep {
    fields: Vec<FieldPath>,
    headers: Vec<String>,
}

impl Transform for RemoveStep {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        body_only(self, payload, out)
    }

    fn process_item(&self, mut item: Item, out: &mut Vec<Item>) -> Result<(), StepError> {
        if !self.fields.is_empty() {
            // Parsed to be read; a message with none of the fields goes on unchanged (raw
            // bytes stay the bytes received).
            let parsed = std::mem::replace(&mut item.payload, Payload::Json(Value::Null))
                .into_parsed()?;
            let found = parsed
                .as_json()
                .is_some_and(|v| self.fields.iter().any(|path| path.lookup(v).is_some()));
            item.payload = if found {
                let mut value = parsed.into_json()?;
                for path in &self.fields {
                    path.remove(&mut value);
                }
                Payload::Json(value)
            } else {
                parsed
            };
        }
        if self
            .headers
            .iter()
            .any(|n| item.headers.iter().any(|(k, _)| k == n))
        {
            Arc::make_mut(&mut item.headers).retain(|(k, _)| !self.headers.contains(k));
        }
        out.push(item);
        Ok(())
    }
}
