//! `rename`: moves body fields and renames headers.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::fields::{body_only, paths, FieldPath};
use super::{StepContext, Transform, TransformKind};
use crate::error::{BuildError, StepError};
use crate::message::{Item, Payload};

/// `kind = "rename"`: moves body fields and renames headers (missing ones are not an error).
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameConfig {
    /// Old field path → new field path.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Old header name → new header name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl RenameConfig {
    /// Checks the paths.
    pub fn compile(&self) -> Result<RenameStep, BuildError> {
        if self.fields.is_empty() && self.headers.is_empty() {
            return Err(BuildError::at("fields", "`rename` renames nothing")
                .with_hint("give `fields` or `headers`"));
        }
        let from = paths("fields", self.fields.keys())?;
        let to = paths("fields", self.fields.values())?;
        Ok(RenameStep {
            fields: from.into_iter().zip(to).collect(),
            headers: self
                .headers
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
        })
    }
}

impl TransformKind for RenameConfig {
    const KIND: &'static str = "rename";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "rename"
[steps.fields]
value = "reading.kwh""#;
    type Transform = RenameStep;

    fn compile_in(&self, _: &StepContext) -> Result<RenameStep, BuildError> {
        self.compile()
    }
}

/// The running `rename` step.
pub struct RenameStep {
    fields: Vec<(FieldPath, FieldPath)>,
    headers: Vec<(String, String)>,
}

impl Transform for RenameStep {
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
                .is_some_and(|v| self.fields.iter().any(|(from, _)| from.lookup(v).is_some()));
            item.payload = if found {
                let mut value = parsed.into_json()?;
                for (from, to) in &self.fields {
                    from.rename(to, &mut value)?;
                }
                Payload::Json(value)
            } else {
                parsed
            };
        }
        for (from, to) in &self.headers {
            if item.headers.iter().any(|(k, _)| k == from) {
                for (k, _) in Arc::make_mut(&mut item.headers).iter_mut() {
                    if k == from {
                        *k = to.clone();
                    }
                }
            }
        }
        out.push(item);
        Ok(())
    }
}
