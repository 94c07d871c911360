//! What `set`, `remove` and `rename` share: they change fields of the body and the message's
//! headers and key without writing a whole `map` expression.
//!
//! A field is a dotted path into the JSON body (`asset.region`); missing objects on the way
//! are created by `set`. A header is named as it is written on the record.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::Transform;
use crate::error::{BuildError, ErrorCode, StepError};
use crate::jmes::Expr;
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

    /// Removes the field; its value, if it was there. The other fields keep their order.
    pub fn remove(&self, root: &mut Value) -> Option<Value> {
        self.parent_mut(root)?.shift_remove(self.last())
    }

    /// The field's value in `root`, if it is there.
    pub fn lookup<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.0
            .iter()
            .try_fold(root, |at, segment| at.as_object()?.get(segment))
    }

    /// Moves the field to `to`; false when it was not there. Renamed inside the same object
    /// (`a.b` to `a.c`), it keeps its place among the object's fields (replacing a field
    /// `to` already there, which goes from its place); moved elsewhere, it is set there as
    /// [`FieldPath::set`] sets it.
    pub fn rename(&self, to: &FieldPath, root: &mut Value) -> Result<bool, StepError> {
        let same_object =
            self.0.len() == to.0.len() && self.0[..self.0.len() - 1] == to.0[..to.0.len() - 1];
        if !same_object {
            return match self.remove(root) {
                Some(value) => to.set(root, value).map(|()| true),
                None => Ok(false),
            };
        }
        let Some(map) = self.parent_mut(root) else {
            return Ok(false);
        };
        let (from, to) = (self.last(), to.last());
        if !map.contains_key(from) {
            return Ok(false);
        }
        if from != to {
            map.shift_remove(to);
            let fields = std::mem::take(map);
            map.extend(fields.into_iter().map(|(key, value)| {
                if key == from {
                    (to.to_string(), value)
                } else {
                    (key, value)
                }
            }));
        }
        Ok(true)
    }

    /// The object holding the field, when there is one.
    fn parent_mut<'v>(&self, root: &'v mut Value) -> Option<&'v mut Map<String, Value>> {
        let (_, parents) = self.0.split_last()?;
        let mut at = root;
        for segment in parents {
            at = at.as_object_mut()?.get_mut(segment)?;
        }
        at.as_object_mut()
    }

    /// The field's own name (its last segment).
    fn last(&self) -> &str {
        self.0.last().map_or("", String::as_str)
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

pub(super) fn paths<'a>(
    key: &str,
    names: impl Iterator<Item = &'a String>,
) -> Result<Vec<FieldPath>, BuildError> {
    names
        .map(|n| FieldPath::parse(n).map_err(|m| BuildError::at(key, m)))
        .collect()
}

pub(super) fn compile(key: &str, source: &str) -> Result<Expr, BuildError> {
    Expr::compile(source).map_err(|e| e.at(key))
}

/// A JMESPath result as header or key bytes: strings as they are, other values as compact
/// JSON; `None` for null.
pub(super) fn to_bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(Bytes::from(s)),
        other => Some(Bytes::from(other.to_string())),
    }
}

/// `process` of a step that works on whole messages: the body alone, without metadata.
pub(super) fn body_only(
    step: &dyn Transform,
    payload: Payload,
    out: &mut Vec<Payload>,
) -> Result<(), StepError> {
    let mut items = Vec::with_capacity(1);
    step.process_item(Item::new(payload), &mut items)?;
    out.extend(items.into_iter().map(|i| i.payload));
    Ok(())
}

pub(super) fn set_header(headers: &mut Vec<(String, Bytes)>, name: &str, value: Option<Bytes>) {
    headers.retain(|(k, _)| k != name);
    if let Some(value) = value {
        headers.push((name.to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn run_item(step: &dyn crate::steps::Step, item: Item) -> Item {
        let mut out = super::super::run_items(step, item).unwrap();
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
        let err =
            super::super::run_items(&*step, Item::new(Payload::Json(json!({"a": 3})))).unwrap_err();
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

    /// The body as a sink writes it.
    fn written(item: &Item) -> String {
        String::from_utf8(item.payload.to_bytes().to_vec()).unwrap()
    }

    fn raw(text: &'static str) -> Item {
        Item::new(Payload::Bytes(Bytes::from_static(text.as_bytes())))
    }

    /// `set`, `remove` and `rename` keep the order of the input's fields: a field set is
    /// changed in its place (a new one goes last), a field removed leaves the others in
    /// their order, a field renamed in its object keeps its place.
    #[test]
    fn fields_keep_the_input_order() {
        let input = r#"{"zeta":1,"unit":"kWh","id":"m-1","alpha":{"y":1,"x":2},"b":true}"#;
        let set = parse("kind = 'set'\n[fields]\nunit = \"'Wh'\"\n'alpha.w' = '`0`'\n")
            .build()
            .unwrap();
        assert_eq!(
            written(&run_item(&*set, raw(input))),
            r#"{"zeta":1,"unit":"Wh","id":"m-1","alpha":{"y":1,"x":2,"w":0},"b":true}"#
        );
        let remove = parse("kind = 'remove'\nfields = ['unit', 'alpha.y']\n")
            .build()
            .unwrap();
        assert_eq!(
            written(&run_item(&*remove, raw(input))),
            r#"{"zeta":1,"id":"m-1","alpha":{"x":2},"b":true}"#
        );
        let rename = parse(
            "kind = 'rename'\n[fields]\nunit = 'uom'\n'alpha.y' = 'alpha.a'\nb = 'moved.b'\n",
        )
        .build()
        .unwrap();
        assert_eq!(
            written(&run_item(&*rename, raw(input))),
            r#"{"zeta":1,"uom":"kWh","id":"m-1","alpha":{"a":1,"x":2},"moved":{"b":true}}"#
        );
        // Renamed onto a field that is there: the value takes the renamed field's place.
        let onto = parse("kind = 'rename'\n[fields]\nzeta = 'id'\n")
            .build()
            .unwrap();
        assert_eq!(
            written(&run_item(&*onto, raw(input))),
            r#"{"id":1,"unit":"kWh","alpha":{"y":1,"x":2},"b":true}"#
        );
    }

    /// A `remove` or `rename` that finds none of its fields changes nothing: the bytes
    /// received go on (not re-serialised); bytes that are not JSON are still an error.
    #[test]
    fn nothing_to_remove_or_rename_keeps_the_bytes() {
        let input =
            "{ \"b\": 1.0,\n  \"a\": \"caf\\u00e9\", \"n\": 123456789012345678901234567890 }";
        for toml in [
            "kind = 'remove'\nfields = ['x', 'a.b.c']\n",
            "kind = 'rename'\n[fields]\nx = 'y'\n'b.c' = 'd'\n",
        ] {
            let step = parse(toml).build().unwrap();
            let out = run_item(&*step, raw(input));
            assert_eq!(written(&out), input, "{toml}");
            assert!(out.payload.as_json().is_some(), "parsed for the next step");
            let err = super::super::run_items(&*step, raw("{\"a\": [1,}")).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidJson);
        }
    }

    #[test]
    fn bad_paths_and_empty_steps_are_build_errors() {
        assert!(parse("kind = 'remove'\nfields = ['a..b']\n")
            .build()
            .is_err());
        assert!(parse("kind = 'set'\n").build().is_err());
    }
}
