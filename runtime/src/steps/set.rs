//! `set`: sets body fields, headers and the record key from JMESPath expressions.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::fields::{body_only, compile, paths, set_header, to_bytes, FieldPath};
use super::{StepContext, Transform, TransformKind};
use crate::error::{BuildError, StepError};
use crate::message::{Item, Payload};
use crate::jmes::{needs, Doc, Expr, Need};

/// `kind = "set"`: sets body fields, headers and the record key from JMESPath expressions,
/// all evaluated on the message as it was before the step.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Field path → JMESPath expression.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Header name → JMESPath expression (a string as it is, other values as JSON; null
    /// removes the header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JMESPath expression giving the record key (null removes it).
    pub key: Option<String>,
}

impl SetConfig {
    /// Compiles the expressions.
    pub fn compile(&self) -> Result<SetStep, BuildError> {
        if self.fields.is_empty() && self.headers.is_empty() && self.key.is_none() {
            return Err(BuildError::at("fields", "`set` sets nothing")
                .with_hint("give `fields`, `headers` or `key`"));
        }
        let fields: Vec<(FieldPath, Expr)> = paths("fields", self.fields.keys())?
            .into_iter()
            .zip(self.fields.values())
            .map(|(p, e)| Ok((p, compile("fields", e)?)))
            .collect::<Result<_, BuildError>>()?;
        let headers: Vec<(String, Expr)> = self
            .headers
            .iter()
            .map(|(h, e)| Ok((h.clone(), compile("headers", e)?)))
            .collect::<Result<_, BuildError>>()?;
        let key = self.key.as_deref().map(|k| compile("key", k)).transpose()?;
        let need = needs(
            fields
                .iter()
                .map(|(_, e)| e)
                .chain(headers.iter().map(|(_, e)| e))
                .chain(key.iter()),
        );
        Ok(SetStep {
            fields,
            headers,
            key,
            need,
        })
    }
}

impl TransformKind for SetConfig {
    const KIND: &'static str = "set";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "set"
[steps.fields]
"site.region" = "'north'"
[steps.headers]
"x-meter" = "meter_id""#;
    type Transform = SetStep;

    fn compile_in(&self, _: &StepContext) -> Result<SetStep, BuildError> {
        self.compile()
    }
}

/// The running `set` step.
pub struct SetStep {
    fields: Vec<(FieldPath, Expr)>,
    headers: Vec<(String, Expr)>,
    key: Option<Expr>,
    /// What the expressions read.
    need: Need,
}

impl Transform for SetStep {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        body_only(self, payload, out)
    }

    fn process_item(&self, mut item: Item, out: &mut Vec<Item>) -> Result<(), StepError> {
        // Every expression sees the message as it was before the step: one conversion, of
        // what they read, for all of them.
        let input = Doc::new(&item.payload, &self.need)?;
        let mut results = Vec::with_capacity(self.fields.len());
        for (_, expr) in &self.fields {
            results.push(expr.search_doc(&input)?);
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, expr) in &self.headers {
            headers.push((name, to_bytes(expr.search_doc(&input)?)));
        }
        let key = match &self.key {
            Some(expr) => Some(to_bytes(expr.search_doc(&input)?)),
            None => None,
        };
        drop(input);
        if let Some(key) = key {
            item.key = key;
        }
        if !headers.is_empty() {
            let h = Arc::make_mut(&mut item.headers);
            for (name, v) in headers {
                set_header(h, name, v);
            }
        }
        if !self.fields.is_empty() {
            let mut body =
                std::mem::replace(&mut item.payload, Payload::Json(Value::Null)).into_json()?;
            for ((path, _), v) in self.fields.iter().zip(results) {
                path.set(&mut body, v)?;
            }
            item.payload = Payload::Json(body);
        }
        out.push(item);
        Ok(())
    }
}
