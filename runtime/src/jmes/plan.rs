//! Expressions that only pick fields, evaluated without jmespath's interpreter.
//!
//! Most `map` steps and Kafka keys are field paths, `to_number` of them and multiselect
//! hashes of those (`{id: meter_id, value: to_number(reading.value)}`). A [`Plan`] of such an
//! expression can be read straight from the raw JSON by a [`Picker`], with no document built
//! (the scanner of [`super::scan`] fills one slot per field path). It gives what the
//! interpreter ([`super::eval`]) and jmespath give (the module's tests and the compliance
//! suite compare them), and an expression it does not cover has no plan and goes to the
//! interpreter.

use jmespath::ast::Ast;
use serde_json::{Map, Value};

use super::scan::{self, Leaf, Leaves, Root};

/// An expression made of field paths, `to_number` and multiselect hashes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Plan {
    /// `a.b.c` (no name: `@`).
    Path(Box<[String]>),
    /// `to_number(x)`: a number as it is, a string read as JSON (as jmespath 0.5 reads it,
    /// so `"true"` gives `true`), anything else `null`.
    ToNumber(Box<Plan>),
    /// `{k: x, ...}`: `null` on `null`, otherwise an object. The keys are in the order the
    /// expression writes them and each is there once, at its first place, with the last
    /// expression written for it.
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
                // A hash on the left (`{a: b}.a`, `x.{a: b}.a`) would have to be built as a
                // node to be read again.
                (lhs, _) if lhs.builds_object() => return None,
                (lhs, rhs) => Plan::Sub(Box::new(lhs), Box::new(rhs)),
            },
            Ast::Function { name, args, .. } if name == "to_number" && args.len() == 1 => {
                Plan::ToNumber(Box::new(Plan::of(&args[0])?))
            }
            Ast::MultiHash { elements, .. } => {
                let mut fields: Vec<(String, Plan)> = Vec::with_capacity(elements.len());
                for kvp in elements {
                    let plan = Plan::of(&kvp.value)?;
                    match fields.iter_mut().find(|(key, _)| *key == kvp.key) {
                        Some(field) => field.1 = plan,
                        None => fields.push((kvp.key.clone(), plan)),
                    }
                }
                Plan::Hash(fields.into_boxed_slice())
            }
            _ => return None,
        })
    }

    /// Does the plan build an object?
    fn builds_object(&self) -> bool {
        match self {
            Plan::Hash(_) => true,
            Plan::Sub(_, rhs) => rhs.builds_object(),
            Plan::Path(_) | Plan::ToNumber(_) => false,
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
            Plan::ToNumber(arg) => to_number_value(arg.search(data)),
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

/// A plan whose every leaf is a field path (`a.b`) or `to_number` of one, under hashes:
/// its values are read straight from the raw JSON into slots ([`scan::pick`]), with no tree
/// of the document and none of the result but the `Value` returned.
#[derive(Debug)]
pub(super) struct Picker {
    leaves: Leaves,
    /// The slot of each leaf, in the order [`Picker::build`] meets them.
    order: Vec<usize>,
    /// Slots read by more than one leaf (cloned, not taken).
    shared: Vec<bool>,
}

impl Picker {
    /// The picker of `plan`, when its leaves allow one: field paths, none of them the prefix
    /// of another (`a` and `a.b`), and no `@`.
    pub(super) fn of(plan: &Plan) -> Option<Picker> {
        let mut paths: Vec<&[String]> = Vec::new();
        let mut order = Vec::new();
        leaf_paths(plan, &mut |path| {
            let slot = match paths.iter().position(|p| *p == path) {
                Some(slot) => slot,
                None => {
                    paths.push(path);
                    paths.len() - 1
                }
            };
            order.push(slot);
        })?;
        let mut shared = vec![false; paths.len()];
        for (i, slot) in order.iter().enumerate() {
            if order[..i].contains(slot) {
                shared[*slot] = true;
            }
        }
        let mut leaves = Leaves::default();
        for (slot, path) in paths.iter().enumerate() {
            add_leaf(&mut leaves, path, slot)?;
        }
        Some(Picker {
            leaves,
            order,
            shared,
        })
    }

    /// The result of `plan` (the one the picker was made of) on the JSON document `text`;
    /// `None` when the scanner is not sure of it (the caller then reads it the long way,
    /// which also gives the error of a bad one).
    pub(super) fn search(&self, plan: &Plan, text: &str) -> Option<Value> {
        let mut slots = vec![None; self.shared.len()];
        let root = scan::pick(text, &self.leaves, &mut slots)?;
        let mut next = self.order.iter();
        Some(self.build(plan, root, &mut slots, &mut next))
    }

    fn build(
        &self,
        plan: &Plan,
        root: Root,
        slots: &mut [Option<Value>],
        next: &mut std::slice::Iter<'_, usize>,
    ) -> Value {
        match plan {
            Plan::Path(_) => self.take(slots, next),
            Plan::ToNumber(_) => to_number_value(self.take(slots, next)),
            // Every hash of a picker reads the document's root.
            Plan::Hash(_) if root == Root::Null => {
                // Its leaves are not read, but they keep their places in the order.
                skip_leaves(plan, next);
                Value::Null
            }
            Plan::Hash(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(key, plan)| (key.clone(), self.build(plan, root, slots, next)))
                    .collect::<Map<String, Value>>(),
            ),
            Plan::Sub(..) => unreachable!("a picker has no `.` after a function"),
        }
    }

    /// The value of the next leaf (null when its field was not there).
    fn take(&self, slots: &mut [Option<Value>], next: &mut std::slice::Iter<'_, usize>) -> Value {
        let slot = *next.next().expect("one slot per leaf");
        let value = if self.shared[slot] {
            slots[slot].clone()
        } else {
            slots[slot].take()
        };
        value.unwrap_or(Value::Null)
    }
}

/// Calls `leaf` with the path of each leaf of `plan`, in order; `None` when `plan` has a
/// leaf a picker cannot read.
fn leaf_paths<'p>(plan: &'p Plan, leaf: &mut impl FnMut(&'p [String])) -> Option<()> {
    match plan {
        Plan::Path(names) if !names.is_empty() => leaf(names),
        Plan::ToNumber(arg) => match &**arg {
            Plan::Path(names) if !names.is_empty() => leaf(names),
            _ => return None,
        },
        Plan::Hash(fields) => {
            for (_, plan) in fields.iter() {
                leaf_paths(plan, leaf)?;
            }
        }
        _ => return None,
    }
    Some(())
}

fn skip_leaves(plan: &Plan, next: &mut std::slice::Iter<'_, usize>) {
    let _ = leaf_paths(plan, &mut |_| {
        next.next();
    });
}

/// Adds `path` → `slot`; `None` when a path is the prefix of another.
fn add_leaf(leaves: &mut Leaves, path: &[String], slot: usize) -> Option<()> {
    let (name, rest) = path.split_first()?;
    let at = match leaves.0.iter().position(|(n, _)| n == name) {
        Some(at) => at,
        None => {
            let leaf = if rest.is_empty() {
                Leaf::Slot(slot)
            } else {
                Leaf::Below(Leaves::default())
            };
            leaves.0.push((name.clone(), leaf));
            if rest.is_empty() {
                return Some(());
            }
            leaves.0.len() - 1
        }
    };
    match (&mut leaves.0[at].1, rest.is_empty()) {
        (Leaf::Below(below), false) => add_leaf(below, rest, slot),
        // `a` and `a.b`, or the same path twice (paths are deduplicated before).
        _ => None,
    }
}

/// jmespath 0.5's `to_number` on a `Value`.
fn to_number_value(value: Value) -> Value {
    match value {
        number @ Value::Number(_) => number,
        other => super::eval::to_number(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Payload;
    use bytes::Bytes;
    use serde_json::json;

    use crate::jmes::scan::tests::{one_byte_changes, READING};

    /// The shipped `meter-readings` pipeline's map.
    const METER_MAP: &str = "{meter_id: meter_id, measured_at: ts, \
        value: to_number(reading.value), unit: reading.unit, quality: reading.quality, \
        substation: site.substation, feeder: site.feeder}";

    fn jmespath_result(source: &str, data: &Value) -> Value {
        let result = jmespath::compile(source).unwrap().search(data).unwrap();
        serde_json::to_value(&*result).unwrap()
    }

    /// Every expression below has a plan, and the plan gives jmespath's result on every
    /// document, from a `Value`, by the interpreter and from raw bytes.
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
            METER_MAP,
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
                let interpreted = crate::jmes::eval::eval(&expr.node, doc).unwrap();
                assert_eq!(*interpreted, want, "{context}: by the interpreter");
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

    const PICKED: &[&str] = &[
        METER_MAP,
        "meter_id",
        "to_number(site.connection_kva)",
        "{id: meter_id, again: meter_id, n: to_number(reading.interval_s), d: device}",
        "{outer: {inner: reading.value}, status: status, tags: tags}",
        "registers",
    ];

    /// What `picker` answers for `bytes`, checked against jmespath on serde_json's reading;
    /// true when it answered (rather than leaving the message to the long way).
    fn check_picked(source: &str, expr: &crate::jmes::Expr, bytes: &[u8]) -> bool {
        let (Some(plan), Some(picker)) = (&expr.plan, &expr.picker) else {
            panic!("{source}: no picker")
        };
        let Some(picked) = std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| picker.search(plan, t))
        else {
            return false;
        };
        let context = format!("`{source}` on {}", String::from_utf8_lossy(bytes));
        let parsed: Value = serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("picked what serde_json refuses ({e}): {context}"));
        assert_eq!(picked, jmespath_result(source, &parsed), "{context}");
        true
    }

    /// `source` compiled; it must have a picker.
    fn picker(source: &str) -> crate::jmes::Expr {
        let expr = crate::jmes::Expr::compile(source).unwrap();
        assert!(expr.picker.is_some(), "{source}: no picker");
        expr
    }

    /// Documents whose shape a picker must follow exactly: repeated keys (the last one
    /// wins, all of it), fields under values that are not objects, roots of every kind.
    #[test]
    fn pickers_follow_repeated_keys_and_odd_shapes() {
        let docs: &[&str] = &[
            r#"{"reading": {"value": "1", "unit": "a"}, "reading": {"unit": "b"}}"#,
            r#"{"reading": {"value": "1"}, "reading": "x"}"#,
            r#"{"reading": "x", "reading": {"value": "2"}}"#,
            r#"{"meter_id": "a", "meter_id": null, "site": {"feeder": "f", "feeder": 3}}"#,
            r#"{"reading": {"value": {"nested": [1, 2]}}, "site": []}"#,
            r#"{"reading": {"value": "1e400"}}"#,
            r#"{"reading": {"value": "\u0031\u0032"}, "meter_id": "\u00e9t\u00e9"}"#,
            r#"{"reading": {"value": 12345678901234567890123}}"#,
            r#" { "meter_id" : "m" , "reading" : { "value" : " 7 " } } "#,
            r#"{}"#,
            r#"[{"meter_id": "m"}]"#,
            r#""text""#,
            r#"null"#,
            r#"0"#,
        ];
        let mut answered = 0;
        for source in PICKED
            .iter()
            .chain(&["{v: to_number(reading.value), f: site.feeder}"])
        {
            let picker = picker(source);
            for doc in docs {
                answered += usize::from(check_picked(source, &picker, doc.as_bytes()));
            }
        }
        assert!(answered > 80, "only {answered} answered");
    }

    /// Every one-byte change of a meter reading gives jmespath's result on serde_json's
    /// reading, or goes the long way.
    #[test]
    fn every_one_byte_change_of_a_reading_is_picked_as_jmespath_reads_it() {
        let pickers: Vec<_> = PICKED.iter().map(|s| (*s, picker(s))).collect();
        let (mut answered, mut total) = (0, 0);
        for bytes in one_byte_changes(READING) {
            for (source, picker) in &pickers {
                total += 1;
                answered += usize::from(check_picked(source, picker, &bytes));
            }
        }
        assert!(answered * 4 > total, "only {answered} of {total} picked");
    }

    #[test]
    fn pickers_need_plain_field_paths() {
        for source in [
            "@",
            "to_number(@)",
            "{a: reading, b: reading.value}",
            "{a: reading.value, b: reading}",
            "reading.{v: value}",
            "to_number(reading.value).y",
        ] {
            let expr = crate::jmes::Expr::compile(source).unwrap();
            assert!(expr.plan.is_some() && expr.picker.is_none(), "{source}");
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
            "a.{x: b}.c",
            "a.{x: b}.x",
            "@.{x: a}.b",
            "a.b.{x: c}.x.y",
            "{a: b[0]}",
            "meta()",
            "[a, b]",
            "a == b",
            "`1`",
        ] {
            let expr = crate::jmes::Expr::compile(source).unwrap();
            assert!(expr.plan.is_none(), "{source}");
        }
        // A hash read again after a `.` is jmespath's to evaluate, on every kind of input.
        let doc = json!({"a": {"b": {"c": {"y": 3}}, "x": 2}, "b": 1});
        for source in ["a.{x: b}.x", "@.{x: a}.x", "a.b.{x: c}.x.y", "a.{x: b}.c"] {
            let expr = crate::jmes::Expr::compile(source).unwrap();
            let want = jmespath_result(source, &doc);
            assert_eq!(expr.search(&doc).unwrap(), want, "{source}");
            let bytes = Payload::Bytes(Bytes::from(serde_json::to_vec(&doc).unwrap()));
            assert_eq!(expr.search_payload(&bytes).unwrap(), want, "{source}");
            let tree = crate::jmes::Doc::from_value(&doc);
            assert_eq!(expr.search_doc(&tree).unwrap(), want, "{source}");
        }
    }
}
