//! `set`, `remove` and `rename`: change fields of the body and the message's headers and key
//! without writing a whole `map` expression.
//!
//! A field is a dotted path into the JSON body (`asset.region`); missing objects on the way
//! are created by `set`. A header is named as it is written on the record.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Step;
use crate::error::{BuildError, ErrorCode, StepError};
use crate::jmes::{needs, Doc, Expr, Need};
use crate::message::{Item, Payload};

/// A dotted path into a JSON body, checked when the pipeline loads.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c` (no empty segment).
    pub fn parse(path: &str) -> Result<FieldPath, String> {
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "`{path}` is not a field path (write segments separated by `.`)"
            ));
        }
        Ok(FieldPath(segments))
    }

    /// Sets the field to `value`, creating objects on the way.
    pub fn set(&self, root: &mut Value, value: Value) -> Result<(), StepError> {
        let mut at = root;
        for (i, segment) in self.0.iter().enumerate() {
            if at.is_null() {
                *at = Value::Object(Map::new());
            }
            let Value::Object(map) = at else {
                return Err(StepError::new(
                    ErrorCode::UnexpectedShape,
                    format!(
                        "cannot set `{}`: `{}` is not an object",
                        self,
                        self.prefix(i)
                    ),
                ));
            };
            if i + 1 == self.0.len() {
                map.insert(segment.clone(), value);
                return Ok(());
            }
            at = map.entry(segment.clone()).or_insert(Value::Null);
        }
        Ok(())
    }

    /// Removes the field; its value, if it was there.
    pub fn remove(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.0.split_last()?;
        let mut at = root;
        for segment in parents {
            at = at.as_object_mut()?.get_mut(segment)?;
        }
        at.as_object_mut()?.remove(last)
    }

    fn prefix(&self, len: usize) -> String {
        if len == 0 {
            "the message".into()
        } else {
            self.0[..len].join(".")
        }
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

fn paths<'a>(
    key: &str,
    names: impl Iterator<Item = &'a String>,
) -> Result<Vec<FieldPath>, BuildError> {
    names
        .map(|n| FieldPath::parse(n).map_err(|m| BuildError::at(key, m)))
        .collect()
}

fn compile(key: &str, source: &str) -> Result<Expr, BuildError> {
    Expr::compile(source).map_err(|e| BuildError::jmespath(key, e))
}

/// A JMESPath result as header or key bytes: strings as they are, other values as compact
/// JSON; `None` for null.
fn to_bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(Bytes::from(s)),
        other => Some(Bytes::from(other.to_string())),
    }
}

/// `process` of a step that works on whole messages: the body alone, without metadata.
fn body_only(step: &dyn Step, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
    let mut items = Vec::with_capacity(1);
    step.process_item(Item::new(payload), &mut items)?;
    out.extend(items.into_iter().map(|i| i.payload));
    Ok(())
}

fn set_header(headers: &mut Vec<(String, Bytes)>, name: &str, value: Option<Bytes>) {
    headers.retain(|(k, _)| k != name);
    if let Some(value) = value {
        headers.push((name.to_string(), value));
    }
}

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
    pub fn build(&self) -> Result<SetStep, BuildError> {
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

/// The running `set` step.
pub struct SetStep {
    fields: Vec<(FieldPath, Expr)>,
    headers: Vec<(String, Expr)>,
    key: Option<Expr>,
    /// What the expressions read.
    need: Need,
}

impl Step for SetStep {
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
    pub fn build(&self) -> Result<RemoveStep, BuildError> {
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

/// The running `remove` step.
pub struct RemoveStep {
    fields: Vec<FieldPath>,
    headers: Vec<String>,
}

impl Step for RemoveStep {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        body_only(self, payload, out)
    }

    fn process_item(&self, mut item: Item, out: &mut Vec<Item>) -> Result<(), StepError> {
        if !self.fields.is_empty() {
            let mut value = item.payload.into_json()?;
            for path in &self.fields {
                path.remove(&mut value);
            }
            item.payload = Payload::Json(value);
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
    pub fn build(&self) -> Result<RenameStep, BuildError> {
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

/// The running `rename` step.
pub struct RenameStep {
    fields: Vec<(FieldPath, FieldPath)>,
    headers: Vec<(String, String)>,
}

impl Step for RenameStep {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        body_only(self, payload, out)
    }

    fn process_item(&self, mut item: Item, out: &mut Vec<Item>) -> Result<(), StepError> {
        if !self.fields.is_empty() {
            let mut value = item.payload.into_json()?;
            for (from, to) in &self.fields {
                if let Some(v) = from.remove(&mut value) {
                    to.set(&mut value, v)?;
                }
            }
            item.payload = Payload::Json(value);
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

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use serde_json::json;

    fn run_item(step: &dyn Step, item: Item) -> Item {
        let mut out = Vec::new();
        step.process_item(item, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    #[test]
    fn set_writes_fields_headers_and_key_from_the_input() {
        let step = parse(
            "kind = 'set'\nkey = 'id'\n[fields]\n'a.b' = 'n'\nn = 'sum([n, n])'\n[headers]\nx-id = 'id'\nx-n = 'n'\n",
        )
        .build()
        .unwrap();
        let mut item = Item::new(Payload::Json(json!({"id": "m-1", "n": 2})));
        item.headers = Arc::new(vec![("x-id".into(), Bytes::from_static(b"old"))]);
        let out = run_item(&*step, item);
        assert_eq!(
            out.payload,
            Payload::Json(json!({"id": "m-1", "n": 4.0, "a": {"b": 2}}))
        );
        assert_eq!(out.key.as_deref(), Some(&b"m-1"[..]));
        assert_eq!(
            *out.headers,
            vec![
                ("x-id".to_string(), Bytes::from_static(b"m-1")),
                ("x-n".to_string(), Bytes::from_static(b"2")),
            ]
        );
    }

    #[test]
    fn set_refuses_to_write_through_a_scalar() {
        let step = parse("kind = 'set'\n[fields]\n'a.b' = '`1`'\n")
            .build()
            .unwrap();
        let mut out = Vec::new();
        let err = step
            .process_item(Item::new(Payload::Json(json!({"a": 3}))), &mut out)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnexpectedShape);
        assert!(err.message.contains("`a` is not an object"), "{err}");
    }

    #[test]
    fn remove_and_rename() {
        let step = parse("kind = 'remove'\nfields = ['a.b', 'nope.x']\nheaders = ['h']\n")
            .build()
            .unwrap();
        let mut item = Item::new(Payload::Json(json!({"a": {"b": 1, "c": 2}})));
        item.headers = Arc::new(vec![
            ("h".into(), Bytes::from_static(b"1")),
            ("k".into(), Bytes::from_static(b"2")),
        ]);
        let out = run_item(&*step, item);
        assert_eq!(out.payload, Payload::Json(json!({"a": {"c": 2}})));
        assert_eq!(out.headers.len(), 1);

        let step = parse("kind = 'rename'\n[fields]\n'a.c' = 'z'\n[headers]\nk = 'kk'\n")
            .build()
            .unwrap();
        let out = run_item(&*step, out);
        assert_eq!(out.payload, Payload::Json(json!({"a": {}, "z": 2})));
        assert_eq!(out.headers[0].0, "kk");
    }

    #[test]
    fn bad_paths_and_empty_steps_are_build_errors() {
        assert!(parse("kind = 'remove'\nfields = ['a..b']\n")
            .build()
            .is_err());
        assert!(parse("kind = 'set'\n").build().is_err());
    }
}
