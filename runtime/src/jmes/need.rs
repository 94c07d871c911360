//! What part of a message an expression reads, and the conversions that build only that part.
//!
//! A message that arrives as raw bytes is parsed for its expressions. Parsing all of it costs
//! in proportion to the message, not to what the expression reads:
//! `GL_MarketDocument.type == 'A65'` on an ENTSO-E document would build 11 KB of JSON to read
//! one string. So when an expression is compiled, [`Need::of`] works out from its syntax tree
//! which fields (and array elements) it can ever look at, and the raw bytes are read with only
//! those ([`from_slice`]), skipping the fields nobody reads without building them. A message
//! already parsed is evaluated as it is. [`from_value`] prunes a parsed document the same way
//! (the reference the tests compare with).
//!
//! The analysis is conservative: wherever a value is used as a whole (returned, compared,
//! tested for truth, passed to a function), all of it is kept. A pruned object only ever loses
//! fields that no part of the expression names, and a pruned array keeps every element (only
//! the unread parts of each element go), so lengths, indices and types stay as they were. The
//! compliance suite of JMESPath is run both ways in this module's tests.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use jmespath::ast::Ast;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The part of a value an expression reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The whole value.
    All,
    /// Only these fields, if the value is an object, and only this part of every element, if it
    /// is an array (`None`: no element is read; the array is kept empty). A scalar is always
    /// kept whole. `Part` with no field and no element reads only the value's kind.
    Part {
        /// The fields read, each with what is read of it.
        fields: BTreeMap<String, Need>,
        /// What is read of each element.
        items: Option<Box<Need>>,
    },
}

impl Need {
    /// Nothing inside the value is read.
    pub fn nothing() -> Need {
        Need::Part {
            fields: BTreeMap::new(),
            items: None,
        }
    }

    /// What evaluating `ast` reads of its input, when `out` is read of its result.
    pub fn of(ast: &Ast) -> Need {
        need(ast, &Need::All)
    }

    /// Everything `self` or `other` reads.
    pub fn union(self, other: Need) -> Need {
        match (self, other) {
            (Need::All, _) | (_, Need::All) => Need::All,
            (
                Need::Part {
                    mut fields,
                    items: a,
                },
                Need::Part {
                    fields: more,
                    items: b,
                },
            ) => {
                for (name, need) in more {
                    let merged = match fields.remove(&name) {
                        Some(have) => have.union(need),
                        None => need,
                    };
                    fields.insert(name, merged);
                }
                let items = match (a, b) {
                    (Some(a), Some(b)) => Some(Box::new(a.union(*b))),
                    (a, b) => a.or(b),
                };
                Need::Part { fields, items }
            }
        }
    }

    fn field(name: &str, of: Need) -> Need {
        Need::Part {
            fields: BTreeMap::from([(name.to_string(), of)]),
            items: None,
        }
    }

    fn items(of: Need) -> Need {
        Need::Part {
            fields: BTreeMap::new(),
            items: Some(Box::new(of)),
        }
    }

    /// What is read of each element of an array of which `self` is read.
    fn of_items(&self) -> Need {
        match self {
            Need::All => Need::All,
            Need::Part { items, .. } => items.as_deref().cloned().unwrap_or_else(Need::nothing),
        }
    }

    /// What is read of field `name` of an object of which `self` is read.
    fn of_field(&self, name: &str) -> Need {
        match self {
            Need::All => Need::All,
            Need::Part { fields, .. } => fields.get(name).cloned().unwrap_or_else(Need::nothing),
        }
    }
}

/// What `ast` reads of its input when `out` is read of its result.
fn need(ast: &Ast, out: &Need) -> Need {
    match ast {
        Ast::Field { name, .. } => Need::field(name, out.clone()),
        Ast::Identity { .. } => out.clone(),
        Ast::Literal { .. } | Ast::Expref { .. } => Need::nothing(),
        Ast::Subexpr { lhs, rhs, .. } => need(lhs, &need(rhs, out)),
        // An index or a slice keeps elements as they are.
        Ast::Index { .. } => Need::items(out.clone()),
        Ast::Slice { .. } => Need::items(out.of_items()),
        Ast::Projection { lhs, rhs, .. } => need(lhs, &Need::items(need(rhs, &out.of_items()))),
        Ast::Flatten { node, .. } => {
            // Each element is either an array whose elements join the result, or joins it.
            let each = out.of_items();
            need(node, &Need::items(each.clone().union(Need::items(each))))
        }
        // The values of every field: all of the object.
        Ast::ObjectValues { node, .. } => need(node, &Need::All),
        Ast::MultiList { elements, .. } => {
            let each = out.of_items();
            elements
                .iter()
                .fold(Need::nothing(), |acc, e| acc.union(need(e, &each)))
        }
        Ast::MultiHash { elements, .. } => elements.iter().fold(Need::nothing(), |acc, kv| {
            acc.union(need(&kv.value, &out.of_field(&kv.key)))
        }),
        // Tested for truth, or returned as they are: whole.
        Ast::Or { lhs, rhs, .. } | Ast::And { lhs, rhs, .. } => {
            need(lhs, &Need::All).union(need(rhs, out))
        }
        Ast::Not { node, .. } => need(node, &Need::All),
        Ast::Condition {
            predicate, then, ..
        } => need(predicate, &Need::All).union(need(then, out)),
        Ast::Comparison { lhs, rhs, .. } => need(lhs, &Need::All).union(need(rhs, &Need::All)),
        // A function sees its arguments whole (an `&expression` argument reads the elements of
        // another argument, which is then whole too).
        Ast::Function { args, .. } => args
            .iter()
            .fold(Need::nothing(), |acc, a| acc.union(need(a, &Need::All))),
    }
}

/// `value` with only what `need` reads (its fields in their order).
pub fn from_value(value: &Value, need: &Need) -> Value {
    match (value, need) {
        (Value::Object(map), Need::Part { fields, .. }) => Value::Object(
            map.iter()
                .filter_map(|(name, v)| Some((name.clone(), from_value(v, fields.get(name)?))))
                .collect(),
        ),
        (Value::Array(items), Need::Part { items: each, .. }) => Value::Array(match each {
            Some(each) => items.iter().map(|v| from_value(v, each)).collect(),
            None => Vec::new(),
        }),
        (value, _) => value.clone(),
    }
}

/// The JSON document in `bytes` with only what `need` reads: the other fields are checked for
/// syntax and skipped, never built.
///
/// A pruned read goes to [`super::scan`] first, which walks the text once; serde_json reads
/// what the scanner is not sure of (and a value read whole), so the result, or the error, is
/// always serde_json's.
pub fn from_slice(bytes: &[u8], need: &Need) -> Result<Value, serde_json::Error> {
    if let Need::Part { .. } = need {
        if let Some(tree) = std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| super::scan::pruned(text, need))
        {
            return Ok(tree);
        }
    }
    from_slice_by_serde(bytes, need)
}

/// [`from_slice`] through serde_json alone: the reference its fast path is tested against
/// (unit tests, the `pruned_json` fuzz target).
pub fn from_slice_by_serde(bytes: &[u8], need: &Need) -> Result<Value, serde_json::Error> {
    crate::message::json_from_bytes(bytes, Pruned(need))
}

/// Deserialises a value keeping what the need reads.
pub(super) struct Pruned<'a>(pub(super) &'a Need);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Need::All => <Value as de::Deserialize>::deserialize(d),
            part => d.deserialize_any(PartVisitor(part)),
        }
    }
}

struct PartVisitor<'a>(&'a Need);

impl<'de> Visitor<'de> for PartVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        match self.0 {
            Need::Part {
                items: Some(each), ..
            } => {
                while let Some(v) = seq.next_element_seed(Pruned(each))? {
                    out.push(v);
                }
            }
            _ => while seq.next_element_seed(Skip)?.is_some() {},
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let fields = match self.0 {
            Need::Part { fields, .. } => fields,
            Need::All => unreachable!("a whole value is deserialised as a Value"),
        };
        while let Some(key) = map.next_key_seed(Key)? {
            match fields.get(key.as_ref()) {
                // A repeated key keeps its first place and takes the last value, as in
                // serde_json's maps.
                Some(need) => {
                    let v = map.next_value_seed(Pruned(need))?;
                    out.insert(key.into_owned(), v);
                }
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(Value::Object(out))
    }
}

/// Skips a value the expression does not read, building nothing, but with the checks of a
/// full parse (serde's `IgnoredAny` does not check UTF-8, surrogates, number ranges or the
/// depth limit): a message that is not valid JSON is refused wherever its fault is.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// An object's key, borrowed from the input when it has no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jmes::{Doc, Expr};
    use crate::message::Payload;
    use bytes::Bytes;
    use serde_json::json;

    fn need_of(expr: &str) -> Need {
        Expr::compile(expr).unwrap().need().clone()
    }

    fn fields(pairs: &[(&str, Need)]) -> Need {
        Need::Part {
            fields: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            items: None,
        }
    }

    #[test]
    fn reads_only_the_named_fields() {
        assert_eq!(
            need_of("a.b == 'x'"),
            fields(&[("a", fields(&[("b", Need::All)]))])
        );
        assert_eq!(
            need_of("{id: meter_id, v: to_number(reading.value)}"),
            fields(&[
                ("meter_id", Need::All),
                ("reading", fields(&[("value", Need::All)]))
            ])
        );
        assert_eq!(
            need_of("points[*].v"),
            fields(&[("points", Need::items(fields(&[("v", Need::All)])))])
        );
        // Anything used whole is whole.
        assert_eq!(need_of("@"), Need::All);
        assert_eq!(need_of("length(@) > `1`"), Need::All);
        assert_eq!(
            need_of("a || b"),
            fields(&[("a", Need::All), ("b", Need::All)])
        );
        assert_eq!(need_of("*.x"), Need::All);
        assert_eq!(need_of("meta().key"), Need::nothing());
    }

    #[test]
    fn a_pruned_document_keeps_kinds_lengths_and_read_fields() {
        let doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "big", "list": [{"x": 1, "y": 2}, 3]});
        let need = need_of("[a.b, list[0].x]");
        let tree = from_value(&doc, &need);
        assert_eq!(tree, json!({"a": {"b": 1}, "list": [{"x": 1}, 3]}));
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(
            from_slice(&bytes, &need).unwrap(),
            json!({"a": {"b": 1}, "list": [{"x": 1}, 3]})
        );
        // Skipped fields are checked as a full parse checks them; trailing bytes are refused.
        let deep = format!(
            "{{\"a\": 1, \"d\": {}1{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let bad: [&[u8]; 8] = [
            br#"{"a": {"b": 1}, "d": [1,}"#,
            br#"{"a": 1} x"#,
            br#"{"a": 1, "d": "\ud800"}"#,
            br#"{"a": 1, "d": "\udc00"}"#,
            b"{\"a\": 1, \"d\": \"\xff\"}",
            b"{\"a\": 1, \"d\": {\"\xff\": 1}}",
            br#"{"a": 1, "d": 1e400}"#,
            deep.as_bytes(),
        ];
        for bytes in bad {
            assert!(
                serde_json::from_slice::<Value>(bytes).is_err(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert!(
                from_slice(bytes, &need).is_err(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        // Keys with escapes, duplicate keys (the last one wins, as serde_json's Value).
        assert_eq!(
            from_slice(br#"{"\u0061": {"b": 1}, "a": {"b": 2}}"#, &need).unwrap(),
            json!({"a": {"b": 2}})
        );
    }

    /// The JMESPath equality of the suite's expected results: numbers as floats, objects
    /// whatever their order.
    fn jmespath_equal(a: &Value, b: &Value) -> bool {
        crate::jmes::eval::equal(a, b)
    }

    /// Every case of the JMESPath compliance suite: gridflow's interpreter gives the suite's
    /// result (or fails where it expects an error), exactly what jmespath 0.5 gives (the same
    /// `Value`, or an error with the same reason), and the same on the whole document, on
    /// raw bytes (the document pruned to what the expression reads) and on an owned
    /// document; objects copied from the input keep the order of its fields.
    #[test]
    fn the_compliance_suite_passes_on_every_reading() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/jmes/compliance");
        let (mut cases, mut pruned, mut planned, mut errors) = (0, 0, 0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let groups: Vec<Value> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for group in groups {
                let given = &group["given"];
                let bytes = Payload::Bytes(Bytes::from(serde_json::to_vec(given).unwrap()));
                for case in group["cases"].as_array().unwrap() {
                    let source = case["expression"].as_str().unwrap();
                    let context = format!("{}: `{source}` on {given}", path.display());
                    let expr = match Expr::compile(source) {
                        Ok(expr) => expr,
                        Err(e) => {
                            assert!(case.get("result").is_none(), "{context}: {e}");
                            continue;
                        }
                    };
                    cases += 1;
                    if expr.need() != &Need::All {
                        pruned += 1;
                    }
                    planned += usize::from(expr.plan.is_some());
                    let jmespath = std::panic::catch_unwind(|| {
                        jmespath::compile(source)
                            .unwrap()
                            .search(given)
                            .map(|r| serde_json::to_value(&*r).unwrap())
                            .map_err(|e| e.reason.to_string())
                    });
                    let from_value = expr.search(given).map_err(|e| e.message);
                    let from_bytes = expr.search_payload(&bytes).map_err(|e| e.message);
                    let owned = Doc::owned(Payload::Json(given.clone()), expr.need()).unwrap();
                    let from_owned = expr.search_doc_owned(owned).map_err(|e| e.message);
                    // The suite's answer.
                    match (case.get("result"), &from_value) {
                        (Some(want), Ok(got)) => {
                            assert!(jmespath_equal(got, want), "{context}: {got}, want {want}")
                        }
                        (Some(want), Err(e)) => panic!("{context}: {e}, want {want}"),
                        // The benchmarks give no result.
                        (None, _) if case.get("error").is_none() => {}
                        (None, got) => {
                            errors += 1;
                            assert!(got.is_err(), "{context}: {got:?}, want an error");
                        }
                    }
                    // Every reading gives the same, keys in the same order.
                    let text = |r: &Result<Value, String>| r.clone().map(|v| v.to_string());
                    assert_eq!(text(&from_bytes), text(&from_value), "{context} (bytes)");
                    assert_eq!(text(&from_owned), text(&from_value), "{context} (owned)");
                    // jmespath 0.5's answer, but where it panicked (overflowing slices).
                    match jmespath {
                        Ok(Ok(result)) => {
                            assert_eq!(from_value.as_ref(), Ok(&result), "{context}")
                        }
                        Ok(Err(reason)) => assert!(
                            from_value.as_ref().is_err_and(|m| m.contains(&reason)),
                            "{context}: {from_value:?}, want {reason}"
                        ),
                        Err(_) => {}
                    }
                }
            }
        }
        assert!(cases > 600, "only {cases} cases ran");
        assert!(errors > 40, "only {errors} error cases ran");
        assert!(pruned * 2 > cases, "only {pruned} of {cases} were pruned");
        assert!(planned > 100, "only {planned} of {cases} had a plan");
    }
}
