//! JMESPath, compiled once when a pipeline loads and evaluated per message.
//!
//! The jmespath crate parses an expression; gridflow evaluates it on the message's
//! `serde_json::Value` with its own interpreter ([`eval`]), so that an object keeps the order
//! of its fields, whether the expression copies it from the input or builds it. Expressions
//! have the standard functions plus `meta()`, which returns the metadata of the message being
//! processed (see [`meta_value`]). The engine sets that message with [`with_scope`] around
//! each step call.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::error::{BuildError, ErrorCode, Failure, StepError};
use crate::message::{Headers, Meta, Origin, Payload};

mod eval;
pub mod need;
mod plan;
mod scan;

pub use need::Need;

/// The message whose metadata `meta()` returns.
pub struct Scope {
    /// The input's facts.
    pub meta: Arc<Meta>,
    /// The message's headers.
    pub headers: Headers,
    /// The message's key.
    pub key: Option<Bytes>,
    /// The failure a `catch` block handles.
    pub error: Option<Arc<Failure>>,
}

scoped_tls::scoped_thread_local!(static SCOPE: Scope);

/// Runs `f` with `scope` as the message `meta()` describes.
pub fn with_scope<R>(scope: &Scope, f: impl FnOnce() -> R) -> R {
    SCOPE.set(scope, f)
}

/// What `meta()` returns now: the metadata of the message in scope, or null outside one.
fn current_meta() -> Value {
    if SCOPE.is_set() {
        SCOPE.with(meta_value)
    } else {
        Value::Null
    }
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}
/// What `meta()` returns for `scope`:
///
/// ```json
/// {"correlation_id": "...", "key": "..." | null,
///  "headers": {"name": "value"},
///  "source": {"kind": "kafka", "topic": "...", "partition": 0, "offset": 42}
///          | {"kind": "http", "path": "/...", "headers": {"content-type": "..."}}
///          | {"kind": "file", "path": "...", "line": 3},
///  "error": {"code": "...", "step": "...", "message": "...", "attempts": 1} | null}
/// ```
pub fn meta_value(scope: &Scope) -> Value {
    let mut headers = Map::new();
    for (k, v) in scope.headers.iter() {
        headers.insert(k.clone(), text(v));
    }
    let source = match &scope.meta.origin {
        Origin::Kafka {
            topic,
            partition,
            offset,
        } => json!({"kind": "kafka", "topic": topic, "partition": partition, "offset": offset}),
        Origin::Http { path } => {
            let mut request = Map::new();
            for (k, v) in &scope.meta.request_headers {
                request.insert(k.clone(), Value::String(v.clone()));
            }
            json!({"kind": "http", "path": path, "headers": request})
        }
        Origin::File { path, line } => json!({"kind": "file", "path": path, "line": line}),
    };
    let error = scope.error.as_ref().map(|f| {
        json!({"code": f.code.as_str(), "step": f.step, "message": f.message, "attempts": f.attempts})
    });
    json!({
        "correlation_id": scope.meta.correlation_id,
        "key": scope.key.as_deref().map(text),
        "headers": headers,
        "source": source,
        "error": error,
    })
}

/// A compiled JMESPath expression.
pub struct Expr {
    source: String,
    /// The expression as [`eval`] runs it.
    node: eval::Node,
    need: Need,
    /// An expression of field paths, `to_number` and multiselect hashes, evaluated by a
    /// shorter walk (see [`plan`]).
    plan: Option<plan::Plan>,
    /// The plan read straight from raw JSON, when its leaves allow it.
    picker: Option<Box<plan::Picker>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

/// An expression that does not compile, with the position of the fault inside it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid JMESPath expression: {reason} (at character {offset})")]
pub struct CompileError {
    /// Character offset of the fault inside the expression.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl CompileError {
    /// The build error of a component whose `key` holds this expression: located at the
    /// fault's offset inside the key's value, with a hint to the specification.
    pub fn at(self, key: &str) -> BuildError {
        BuildError {
            key: Some(key.to_string()),
            offset: Some(self.offset),
            message: self.to_string(),
            hint: Some(
                "check the expression against the JMESPath specification (jmespath.org)".into(),
            ),
        }
    }
}

/// A message read once for the expressions of a step: a parsed document as it is (borrowed),
/// raw bytes with only the parts the expressions read (see [`need`]).
pub struct Doc<'a>(Cow<'a, Value>);

impl<'a> Doc<'a> {
    /// `payload` with what `need` reads; raw bytes that are not JSON are an `invalid_json`
    /// failure.
    pub fn new(payload: &'a Payload, need: &Need) -> Result<Doc<'a>, StepError> {
        match payload {
            Payload::Json(value) | Payload::Parsed { value, .. } => Ok(Doc::from_value(value)),
            Payload::Bytes(bytes) => read(bytes, need).map(|value| Doc(Cow::Owned(value))),
        }
    }

    /// [`Doc::new`], owning the document: what an expression returns of it moves out of it
    /// ([`Expr::search_doc_owned`]).
    pub fn owned(payload: Payload, need: &Need) -> Result<Doc<'static>, StepError> {
        match payload {
            Payload::Json(value) | Payload::Parsed { value, .. } => Ok(Doc(Cow::Owned(value))),
            Payload::Bytes(bytes) => read(&bytes, need).map(|value| Doc(Cow::Owned(value))),
        }
    }

    /// The document `value`.
    pub fn from_value(value: &'a Value) -> Doc<'a> {
        Doc(Cow::Borrowed(value))
    }
}

/// `bytes` with what `need` reads; bytes that are not JSON are an `invalid_json` failure.
fn read(bytes: &[u8], need: &Need) -> Result<Value, StepError> {
    need::from_slice(bytes, need)
        .map_err(|e| StepError::new(ErrorCode::InvalidJson, format!("payload is not JSON: {e}")))
}

/// What all of `exprs` read.
pub fn needs<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> Need {
    exprs
        .into_iter()
        .fold(Need::nothing(), |acc, e| acc.union(e.need.clone()))
}

impl Expr {
    /// Compiles `source`.
    pub fn compile(source: &str) -> Result<Expr, CompileError> {
        let ast = jmespath::parse(source).map_err(|e| CompileError {
            offset: e.offset,
            reason: e.reason.to_string(),
        })?;
        let need = Need::of(&ast);
        let plan = plan::Plan::of(&ast);
        let picker = plan.as_ref().and_then(plan::Picker::of).map(Box::new);
        Ok(Expr {
            source: source.to_string(),
            node: eval::Node::of(&ast, source),
            need,
            plan,
            picker,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Is the expression made of field paths, `to_number` and hashes only (evaluated by a
    /// shorter walk, and read straight from raw bytes when its leaves allow it)?
    pub fn picks_fields(&self) -> bool {
        self.plan.is_some()
    }

    /// What the expression reads of a message.
    pub fn need(&self) -> &Need {
        &self.need
    }

    /// Evaluates the expression on `data`.
    pub fn search(&self, data: &Value) -> Result<Value, StepError> {
        if let Some(plan) = &self.plan {
            return Ok(plan.search(data));
        }
        Ok(self.eval(data)?.into_owned())
    }

    /// Evaluates the expression on `payload` (raw bytes are parsed for what it reads only).
    pub fn search_payload(&self, payload: &Payload) -> Result<Value, StepError> {
        match payload {
            Payload::Json(value) | Payload::Parsed { value, .. } => self.search(value),
            Payload::Bytes(bytes) => {
                let picked =
                    self.picker
                        .as_ref()
                        .zip(self.plan.as_ref())
                        .and_then(|(picker, plan)| {
                            picker.search(plan, std::str::from_utf8(bytes).ok()?)
                        });
                match picked {
                    Some(value) => Ok(value),
                    None => self.search_doc_owned(Doc::new(payload, &self.need)?),
                }
            }
        }
    }

    /// Evaluates the expression on `doc`, which must hold what it reads.
    pub fn search_doc(&self, doc: &Doc<'_>) -> Result<Value, StepError> {
        self.search(&doc.0)
    }

    /// [`Expr::search_doc`], taking what it returns out of `doc` rather than copying it when
    /// `doc` was read from bytes.
    pub fn search_doc_owned(&self, doc: Doc<'_>) -> Result<Value, StepError> {
        match doc.0 {
            Cow::Borrowed(value) => self.search(value),
            Cow::Owned(value) => {
                if let Some(plan) = &self.plan {
                    return Ok(plan.search(&value));
                }
                self.guard(|| eval::eval_owned(&self.node, value))
            }
        }
    }

    /// Evaluates the expression as a condition, with JMESPath truthiness (false, null, empty
    /// string, array or object are false).
    pub fn is_truthy(&self, data: &Value) -> Result<bool, StepError> {
        Ok(eval::truthy(&*self.eval(data)?))
    }

    /// [`Expr::is_truthy`] on `doc`, which must hold what it reads.
    pub fn is_truthy_doc(&self, doc: &Doc<'_>) -> Result<bool, StepError> {
        self.is_truthy(&doc.0)
    }

    /// The expression's result on `data`, borrowed from it where it can be.
    fn eval<'a>(&'a self, data: &'a Value) -> Result<Cow<'a, Value>, StepError> {
        self.guard(|| eval::eval(&self.node, data))
    }

    /// Runs an evaluation: its error is this message's `mapping_error`, and a panic (a defect
    /// of the interpreter) this message's failure, wherever the expression is used.
    fn guard<T>(&self, run: impl FnOnce() -> Result<T, eval::EvalError>) -> Result<T, StepError> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(result) => result.map_err(|e| {
                StepError::new(
                    ErrorCode::MappingError,
                    format!("JMESPath `{}` failed: {e}", self.source),
                )
            }),
            Err(_) => Err(StepError::new(
                ErrorCode::StepPanicked,
                format!(
                    "JMESPath `{}` panicked (an interpreter defect)",
                    self.source
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn objects_the_expression_builds_keep_the_expression_order() {
        let data = json!({"a": "x", "c": "y", "items": [{"x": 1}, {"x": 2}]});
        // Not plans (functions, projections): the interpreter builds them.
        let top = Expr::compile("{c: join('-', [a, c]), a: a, b: length(items)}").unwrap();
        let value = top.search(&data).unwrap();
        assert_eq!(keys(&value), ["c", "a", "b"]);
        assert_eq!(value, json!({"a": "x", "b": 2, "c": "x-y"}));
        // A key written twice keeps its first place and its last value.
        let twice = Expr::compile("{c: length(items), a: a, c: join('', [c])}").unwrap();
        let value = twice.search(&data).unwrap();
        assert_eq!(keys(&value), ["c", "a"]);
        assert_eq!(value["c"], json!("y"));
        // Through a projection, a sub-expression, a list and a nested hash.
        let deep = Expr::compile(
            "{z: items[*].{y: to_string(x), b: x}, k: [{y: length(a), b: a}], n: {y: a, b: length(c)}}",
        )
        .unwrap();
        let value = deep.search(&data).unwrap();
        assert_eq!(keys(&value), ["z", "k", "n"]);
        assert_eq!(keys(&value["z"][1]), ["y", "b"]);
        assert_eq!(keys(&value["k"][0]), ["y", "b"]);
        assert_eq!(keys(&value["n"]), ["y", "b"]);
        let sub = Expr::compile("items[0].{y: to_string(x), b: x}").unwrap();
        assert_eq!(keys(&sub.search(&data).unwrap()), ["y", "b"]);
        // The same through a Doc (what steps use) and on null input.
        let doc = Doc::from_value(&data);
        assert_eq!(keys(&top.search_doc(&doc).unwrap()), ["c", "a", "b"]);
        assert_eq!(top.search(&json!(null)).unwrap()["a"], json!(null));
    }

    /// Objects copied from the input keep the order of their fields through every construct,
    /// from a parsed document, from raw bytes (a pruned document) and from an owned one (the
    /// results move out of it): compared as text, so the order counts.
    #[test]
    fn objects_copied_from_the_input_keep_the_order_of_their_fields() {
        let data = json!({
            "items": [
                {"kind": "a", "z": 2, "m": {"y": 1, "b": 2}, "a": 0},
                {"kind": "b", "z": 1, "m": {"y": 3, "b": 4}, "a": 1}
            ],
            "obj": {"z": {"q": 1, "c": 2}, "y": {"q": 3, "c": 4}},
            "nested": [[{"z": 1, "a": 2}], [{"z": 3, "a": 4}]],
            "extra": {"k": 1, "b": 2}
        });
        let a = json!({"kind": "a", "z": 2, "m": {"y": 1, "b": 2}, "a": 0});
        let b = json!({"kind": "b", "z": 1, "m": {"y": 3, "b": 4}, "a": 1});
        let cases = [
            ("items[?kind == 'a']", json!([a])),
            ("items[?z > `1`] | [0].m", json!({"y": 1, "b": 2})),
            ("items[*]", json!([a, b])),
            ("items[*].m", json!([{"y": 1, "b": 2}, {"y": 3, "b": 4}])),
            ("items[0]", a.clone()),
            ("items[-1]", b.clone()),
            ("items[0:1]", json!([a])),
            ("items[::-1]", json!([b, a])),
            ("nested[]", json!([{"z": 1, "a": 2}, {"z": 3, "a": 4}])),
            ("nested[] | [?z == `3`]", json!([{"z": 3, "a": 4}])),
            ("nested[0][0]", json!({"z": 1, "a": 2})),
            ("obj.*", json!([{"q": 1, "c": 2}, {"q": 3, "c": 4}])),
            ("obj.* | [1]", json!({"q": 3, "c": 4})),
            ("values(obj)", json!([{"q": 1, "c": 2}, {"q": 3, "c": 4}])),
            ("keys(items[0])", json!(["kind", "z", "m", "a"])),
            ("keys(obj)", json!(["z", "y"])),
            ("sort_by(items, &z)", json!([b, a])),
            (
                "sort_by(items, &z)[*].m",
                json!([{"y": 3, "b": 4}, {"y": 1, "b": 2}]),
            ),
            ("sort_by(items, &kind)[0]", a.clone()),
            ("max_by(items, &z)", a.clone()),
            ("max_by(items, &z).m", json!({"y": 1, "b": 2})),
            ("min_by(items, &z)", b.clone()),
            ("reverse(items)", json!([b, a])),
            ("reverse(items)[0].m", json!({"y": 3, "b": 4})),
            ("not_null(missing, items[0])", a.clone()),
            ("not_null(missing, items[0]).m", json!({"y": 1, "b": 2})),
            ("to_array(items[1])", json!([b])),
            ("to_array(items)[1]", b.clone()),
            ("items | [0]", a.clone()),
            ("[items[0], obj.z]", json!([a, {"q": 1, "c": 2}])),
            ("{first: items[0], o: obj}.o", data["obj"].clone()),
            (
                "map(&m, items)",
                json!([{"y": 1, "b": 2}, {"y": 3, "b": 4}]),
            ),
            ("missing || items[1]", b.clone()),
            ("obj.z && items[1]", b.clone()),
            ("items[0].kind == 'a' && obj", data["obj"].clone()),
            ("to_string(items[0].m)", json!("{\"y\":1,\"b\":2}")),
            (
                "merge(items[0], extra)",
                json!({"kind": "a", "z": 2, "m": {"y": 1, "b": 2}, "a": 0, "k": 1, "b": 2}),
            ),
            (
                "merge(items[0], {a: 'x', new: `1`}, {kind: 'c'})",
                json!({"kind": "c", "z": 2, "m": {"y": 1, "b": 2}, "a": "x", "new": 1}),
            ),
            ("merge(@, {extra: `null`}).extra", json!(null)),
            ("merge(obj).y", json!({"q": 3, "c": 4})),
            (
                "merge(`{\"z\": 1, \"a\": 2}`, `{\"b\": 3, \"z\": 0}`)",
                json!({"z": 0, "a": 2, "b": 3}),
            ),
            (
                "`{\"z\": 1, \"a\": {\"y\": 1, \"b\": 2}}`",
                json!({"z": 1, "a": {"y": 1, "b": 2}}),
            ),
            ("to_number('{\"z\": 1, \"a\": 2}')", json!({"z": 1, "a": 2})),
        ];
        let bytes = Payload::Bytes(Bytes::from(serde_json::to_vec(&data).unwrap()));
        for (source, want) in cases {
            let expr = Expr::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            let want = want.to_string();
            let text = |v: Value| v.to_string();
            assert_eq!(text(expr.search(&data).unwrap()), want, "{source}");
            assert_eq!(
                text(expr.search_payload(&bytes).unwrap()),
                want,
                "{source} (bytes)"
            );
            let owned = Doc::owned(Payload::Json(data.clone()), expr.need()).unwrap();
            assert_eq!(
                text(expr.search_doc_owned(owned).unwrap()),
                want,
                "{source} (owned)"
            );
            let pruned = Doc::owned(bytes.clone(), expr.need()).unwrap();
            assert_eq!(
                text(expr.search_doc_owned(pruned).unwrap()),
                want,
                "{source} (pruned)"
            );
        }
    }

    /// A function given the wrong types fails the message with jmespath's reason and the
    /// function's name.
    #[test]
    fn wrong_argument_types_name_the_function() {
        let data = json!({"a": "x", "n": [1, "b"], "o": {"k": 1}});
        for (source, reason) in [
            ("abs(a)", "Argument 0 expects type number, given string (in abs())"),
            ("sum(n)", "Argument 0 expects type array[number], given array (in sum())"),
            ("merge(o, a)", "Argument 1 expects type object, given string (in merge())"),
            ("sort_by(n, &@)", "Argument 1 must return expression->number but invocation 1 returned string (in sort_by())"),
            ("length(a, a)", "Too many arguments: expected 1, found 2 (in length())"),
            ("not_null()", "Not enough arguments: expected 1, found 0 (in not_null())"),
            ("nope(a)", "Call to undefined function nope"),
            ("n[::0]", "Invalid slice"),
        ] {
            let Ok(expr) = Expr::compile(source) else {
                continue; // `[::0]` may be refused when compiled
            };
            let err = expr.search(&data).unwrap_err();
            assert_eq!(err.code, ErrorCode::MappingError, "{source}");
            assert!(
                err.message.starts_with(&format!("JMESPath `{source}` failed: Runtime error: "))
                    && err.message.ends_with(reason),
                "{source}: {}",
                err.message
            );
        }
    }

    #[test]
    fn field_paths_are_looked_up_as_jmespath_evaluates_them() {
        let docs = [
            json!({"a": {"b": {"c": [1, {"d": 2}]}, "n": 7}, "x-y": "z", "f": 1.5}),
            json!({"a": 5}),
            json!({"a": [{"b": 1}]}),
            json!([1, 2]),
            json!("text"),
            json!(null),
        ];
        let paths = [
            "a",
            "a.b",
            "a.b.c",
            "a.n",
            "a.b.missing",
            "\"x-y\"",
            "f",
            "none.b",
        ];
        for source in paths {
            let expr = Expr::compile(source).unwrap();
            assert!(expr.plan.is_some(), "{source} is a field path");
            for doc in &docs {
                // The interpreter, which the plan stands in for.
                let interpreted = eval::eval(&expr.node, doc).unwrap().into_owned();
                assert_eq!(expr.search(doc).unwrap(), interpreted, "{source} on {doc}");
                let payload = Payload::Json(doc.clone());
                assert_eq!(expr.search_payload(&payload).unwrap(), interpreted);
            }
        }
        for source in ["a[0]", "a.*", "length(a)", "a || b", "a.b[0].d"] {
            assert!(Expr::compile(source).unwrap().plan.is_none(), "{source}");
        }
    }

    #[test]
    fn compiles_once_and_searches() {
        let e = Expr::compile("a.b[1]").unwrap();
        assert_eq!(e.search(&json!({"a": {"b": [1, 2]}})).unwrap(), json!(2));
        assert_eq!(e.search(&json!({})).unwrap(), Value::Null);
    }

    #[test]
    fn compile_error_has_position() {
        let err = Expr::compile("a.[").unwrap_err();
        assert!(err.offset >= 2, "{err:?}");
    }

    #[test]
    fn runtime_error_is_a_mapping_error() {
        let e = Expr::compile("to_number(a) + `1`")
            .or_else(|_| Expr::compile("abs(a)"))
            .unwrap();
        let err = e.search(&json!({"a": "x"})).unwrap_err();
        assert_eq!(err.code, ErrorCode::MappingError);
    }

    #[test]
    fn meta_shows_the_message_in_scope() {
        let meta = Arc::new(Meta {
            original: Bytes::new(),
            correlation_id: "c-1".into(),
            content_type: crate::message::ContentType::Json,
            origin: Origin::Kafka {
                topic: "t".into(),
                partition: 2,
                offset: 7,
            },
            key: None,
            headers: Vec::new(),
            request_headers: Vec::new(),
            received_at: std::time::Instant::now(),
            reply: None,
        });
        let scope = Scope {
            meta,
            headers: Arc::new(vec![("region".into(), Bytes::from_static(b"north"))]),
            key: Some(Bytes::from_static(b"k")),
            error: Some(Arc::new(Failure::new(
                "steps[0].map",
                ErrorCode::MappingError,
                "bad",
            ))),
        };
        let e = Expr::compile("[meta().correlation_id, meta().headers.region, meta().key, meta().source.offset, meta().error.code, a]").unwrap();
        assert_eq!(
            with_scope(&scope, || e.search(&json!({"a": 1}))).unwrap(),
            json!(["c-1", "north", "k", 7, "mapping_error", 1])
        );
        // Outside a message: null, not a failure.
        assert_eq!(
            e.search(&json!({"a": 1})).unwrap(),
            json!([null, null, null, null, null, 1])
        );
    }

    /// jmespath 0.5 overflowed (and panicked) on such slices; the interpreter counts in 64
    /// bits.
    #[test]
    fn huge_slice_steps_do_not_overflow() {
        let e = Expr::compile("a[1::2147483647]").unwrap();
        assert_eq!(e.search(&json!({"a": [1, 2, 3]})).unwrap(), json!([2]));
        let e = Expr::compile("a[-2::-2147483647]").unwrap();
        assert_eq!(e.search(&json!({"a": [1, 2, 3]})).unwrap(), json!([2]));
        let e = Expr::compile("a[2147483647:-2147483647:-2147483647]").unwrap();
        assert_eq!(e.search(&json!({"a": [1, 2, 3]})).unwrap(), json!([3]));
    }

    #[test]
    fn truthiness() {
        let e = Expr::compile("ok").unwrap();
        assert!(e.is_truthy(&json!({"ok": true})).unwrap());
        assert!(!e.is_truthy(&json!({"ok": []})).unwrap());
        assert!(!e.is_truthy(&json!({})).unwrap());
    }
}
