//! Expressions that only pick fields, evaluated without jmespath's interpreter.
//!
//! Most `map` steps and Kafka keys are field paths, `to_number` of them and multiselect
//! hashes of those (`{id: meter_id, value: to_number(reading.value)}`). jmespath evaluates
//! them on its own tree through a context, builds the result as another tree (every key of a
//! hash cloned into a `BTreeMap` of shared nodes) and gridflow then converts that tree into a
//! `serde_json::Value`: a third of a `map` step's time on a 1 KB message. A [`Plan`] walks the
//! document instead and builds the `Value` once. It gives what jmespath gives (the module's
//! tests and the compliance suite compare both ways), and an expression it does not cover
//! has no plan and goes to jmespath.

use jmespath::ast::Ast;
use jmespath::{Rcvar, Variable};
use serde_json::{Map, Value};

/// An expression made of field paths, `to_number` and multiselect hashes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Plan {
    /// `a.b.c` (no name: `@`).
    Path(Box<[String]>),
    /// `to_number(x)`: a number as it is, a string read as JSON (jmespath 0.5 reads it with
    /// `Variable::from_json`, so `"true"` gives `true`), anything else `null`.
    ToNumber(Box<Plan>),
    /// `{k: x, ...}`: `null` on `null`, otherwise an object. The keys are sorted and each is
    /// there once, with the last expression written for it, as jmespath's `BTreeMap` keeps.
    Hash(Box<[(String, Plan)]>),
    /// `x.y` where `x` is not a path (`to_number(a).b`).
    Sub(Box<Plan>, Box<Plan>),
}

impl Plan {
    /// The plan of `ast`, when it has one.
    pub(super) fn of(ast: &Ast) -> Option<Plan> {
        Some(match ast {
            Ast::Identity { .. } => Plan::Path(Box::default()),
            Ast::Field { name, .. } => Plan::Path(Box::new([name.clone()])),
            Ast::Subexpr { lhs, rhs, .. } => match (Plan::of(lhs)?, Plan::of(rhs)?) {
                (Plan::Path(a), Plan::Path(b)) => {
                    Plan::Path(a.iter().chain(b.iter()).cloned().collect())
                }
                // A hash on the left would have to be built as a node to be read again.
                (Plan::Hash(_), _) => return None,
                (lhs, rhs) => Plan::Sub(Box::new(lhs), Box::new(rhs)),
            },
            Ast::Function { name, args, .. } if name == "to_number" && args.len() == 1 => {
                Plan::ToNumber(Box::new(Plan::of(&args[0])?))
            }
            Ast::MultiHash { elements, .. } => {
                let mut fields = std::collections::BTreeMap::new();
                for kvp in elements {
                    fields.insert(kvp.key.clone(), Plan::of(&kvp.value)?);
                }
                Plan::Hash(fields.into_iter().collect())
            }
            _ => return None,
        })
    }

    /// The plan's result on jmespath's tree. Nodes of the result are shared with `data`:
    /// convert it with [`Out::into_value`] once `data` is dropped, so that they move.
    pub(super) fn eval(&self, data: &Rcvar) -> Out<'_> {
        match self {
            Plan::Path(names) => Out::Node(walk(data, names)),
            Plan::ToNumber(arg) => Out::Node(match arg.eval(data) {
                Out::Node(node) => to_number(node),
                Out::Object(_) => null(),
            }),
            Plan::Hash(fields) => {
                if data.is_null() {
                    return Out::Node(null());
                }
                Out::Object(
                    fields
                        .iter()
                        .map(|(key, plan)| (key.as_str(), plan.eval(data)))
                        .collect(),
                )
            }
            Plan::Sub(lhs, rhs) => match lhs.eval(data) {
                Out::Node(node) => rhs.eval(&node),
                Out::Object(_) => unreachable!("a hash is never on the left of a plan's `.`"),
            },
        }
    }

    /// The plan's result on a `serde_json::Value`.
    pub(super) fn search(&self, data: &Value) -> Value {
        match self {
            Plan::Path(names) => names
                .iter()
                .try_fold(data, |v, name| v.get(name.as_str()))
                .cloned()
                .unwrap_or(Value::Null),
            Plan::ToNumber(arg) => match arg.search(data) {
                number @ Value::Number(_) => number,
                Value::String(text) => match Variable::from_json(&text) {
                    Ok(read) => super::into_value(Rcvar::new(read)),
                    Err(_) => Value::Null,
                },
                _ => Value::Null,
            },
            Plan::Hash(fields) => {
                if data.is_null() {
                    return Value::Null;
                }
                Value::Object(
                    fields
                        .iter()
                        .map(|(key, plan)| (key.clone(), plan.search(data)))
                        .collect::<Map<String, Value>>(),
                )
            }
            Plan::Sub(lhs, rhs) => rhs.search(&lhs.search(data)),
        }
    }
}

/// A plan's result on jmespath's tree.
pub(super) enum Out<'p> {
    Node(Rcvar),
    /// A hash's fields, in key order.
    Object(Vec<(&'p str, Out<'p>)>),
}

impl Out<'_> {
    /// The result as a `Value` (nodes no longer shared move their strings).
    pub(super) fn into_value(self) -> Value {
        match self {
            Out::Node(node) => super::into_value(node),
            Out::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(key, out)| (key.to_owned(), out.into_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

fn null() -> Rcvar {
    Rcvar::new(Variable::Null)
}

/// jmespath's field lookup along `names`: a field of anything but an object is null.
fn walk(data: &Rcvar, names: &[String]) -> Rcvar {
    let mut node = data;
    for name in names {
        match &**node {
            Variable::Object(fields) => match fields.get(name) {
                Some(field) => node = field,
                None => return null(),
            },
            _ => return null(),
        }
    }
    node.clone()
}

/// jmespath 0.5's `to_number`.
fn to_number(node: Rcvar) -> Rcvar {
    match &*node {
        Variable::Number(_) => node,
        Variable::String(text) => match Variable::from_json(text) {
            Ok(read) => Rcvar::new(read),
            Err(_) => null(),
        },
        _ => null(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jmes::{need, Need};
    use crate::message::Payload;
    use bytes::Bytes;
    use serde_json::json;

    fn jmespath_result(source: &str, data: &Value) -> Value {
        let result = jmespath::compile(source).unwrap().search(data).unwrap();
        serde_json::to_value(&*result).unwrap()
    }

    /// Every expression below has a plan, and the plan gives jmespath's result on every
    /// document, from a `Value`, from jmespath's tree and from raw bytes.
    #[test]
    fn plans_give_what_jmespath_gives() {
        let docs = [
            json!({"meter_id": "M-1", "ts": "2026-01-14T00:15:00Z",
                   "reading": {"value": "0.412", "unit": "kWh", "quality": "A"},
                   "site": {"substation": "SS-118", "feeder": "F-0412"}}),
            json!({"reading": {"value": 7}, "site": null}),
            json!({"reading": {"value": 1.5e3}, "meter_id": ["a"], "x": {"y": {"z": 1}}}),
            json!({"reading": {"value": "true"}}),
            json!({"reading": {"value": "[1, 2]"}}),
            json!({"reading": {"value": "{\"y\": 3}"}}),
            json!({"reading": {"value": " 12 "}}),
            json!({"reading": {"value": "12abc"}}),
            json!({"reading": {"value": ""}}),
            json!({"reading": {"value": "-0.0"}}),
            json!({"reading": {"value": "18446744073709551616"}}),
            json!({"reading": {"value": {"a": 1}}}),
            json!({"reading": {"value": null}}),
            json!({"reading": "text"}),
            json!({"a": {"b": {"c": [1, {"d": 2}]}, "n": 7}, "x-y": "z", "f": 1.5}),
            json!([1, 2]),
            json!("text"),
            json!(12),
            json!(null),
        ];
        let sources = [
            "meter_id",
            "reading.value",
            "a.b.c",
            "\"x-y\"",
            "@",
            "to_number(reading.value)",
            "to_number(@)",
            "to_number(reading)",
            "to_number(reading.value).y",
            "x.y.z",
            "{a: meter_id}",
            "{meter_id: meter_id, measured_at: ts, value: to_number(reading.value), \
             unit: reading.unit, quality: reading.quality, substation: site.substation, \
             feeder: site.feeder}",
            "{b: meter_id, a: reading, b: ts}",
            "reading.{v: value, n: to_number(value)}",
            "{outer: {inner: reading.value, all: @}, n: to_number(reading.value)}",
            "to_number({a: reading})",
        ];
        for source in sources {
            let expr = crate::jmes::Expr::compile(source).unwrap();
            let plan = expr
                .plan
                .as_ref()
                .unwrap_or_else(|| panic!("{source}: no plan"));
            for doc in &docs {
                let want = jmespath_result(source, doc);
                let context = format!("`{source}` on {doc}");
                assert_eq!(plan.search(doc), want, "{context}: from a Value");
                let tree = need::from_value(doc, &Need::All);
                assert_eq!(
                    plan.eval(&tree).into_value(),
                    want,
                    "{context}: on the tree"
                );
                assert_eq!(expr.search(doc).unwrap(), want, "{context}: search");
                let bytes = Payload::Bytes(Bytes::from(serde_json::to_vec(doc).unwrap()));
                assert_eq!(
                    expr.search_payload(&bytes).unwrap(),
                    want,
                    "{context}: from bytes"
                );
            }
        }
    }

    #[test]
    fn other_expressions_have_no_plan() {
        for source in [
            "a[0]",
            "a.*",
            "length(a)",
            "a || b",
            "a.b[0].d",
            "to_number(a, b)",
            "to_string(a)",
            "{a: b}.a",
            "{a: b[0]}",
            "meta()",
            "[a, b]",
            "a == b",
            "`1`",
        ] {
            let expr = crate::jmes::Expr::compile(source).unwrap();
            assert!(expr.plan.is_none(), "{source}");
        }
    }

    /// A hash's nodes are moved into the result once the document is gone, not copied.
    #[test]
    fn a_result_outliving_its_document_takes_its_strings() {
        let plan = Plan::of(jmespath::compile("{id: meter_id}").unwrap().as_ast()).unwrap();
        let tree = need::from_value(&json!({"meter_id": "M-1"}), &Need::All);
        let out = plan.eval(&tree);
        let Out::Object(fields) = &out else {
            panic!("an object")
        };
        let Out::Node(node) = &fields[0].1 else {
            panic!("a node")
        };
        assert_eq!(
            std::sync::Arc::strong_count(node),
            2,
            "shared with the document"
        );
        drop(tree);
        assert_eq!(std::sync::Arc::strong_count(node), 1, "the result's alone");
        assert_eq!(out.into_value(), json!({"id": "M-1"}));
    }
}
