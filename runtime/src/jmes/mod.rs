//! JMESPath, compiled once when a pipeline loads and evaluated per message.
//!
//! Expressions run on gridflow's own runtime: the standard functions plus `meta()`, which
//! returns the metadata of the message being processed (see [`meta_value`]). The engine sets
//! that message with [`with_scope`] around each step call.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use jmespath::ast::Ast;
use jmespath::{Rcvar, Runtime, Variable};
use serde_json::{json, Map, Value};

use crate::error::{BuildError, ErrorCode, Failure, StepError};
use crate::message::{Headers, Meta, Origin, Payload};

pub mod need;
mod plan;
mod scan;

pub use need::{into_value, Need};

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

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let mut runtime = Runtime::new();
    runtime.register_builtin_functions();
    runtime.register_function(
        "meta",
        Box::new(|args: &[Rcvar], _ctx: &mut jmespath::Context<'_>| {
            if !args.is_empty() {
                return Ok(Rcvar::new(Variable::Null));
            }
            let value = if SCOPE.is_set() {
                SCOPE.with(meta_value)
            } else {
                Value::Null
            };
            Ok(Rcvar::new(
                Variable::from_serializable(value).unwrap_or(Variable::Null),
            ))
        }),
    );
    runtime
});

/// A compiled JMESPath expression.
pub struct Expr {
    source: String,
    compiled: jmespath::Expression<'static>,
    need: Need,
    /// An expression of field paths, `to_number` and multiselect hashes, evaluated without
    /// jmespath's interpreter (see [`plan`]).
    plan: Option<plan::Plan>,
    /// The plan read straight from raw JSON, when its leaves allow it.
    picker: Option<Box<plan::Picker>>,
    /// Does jmespath's interpreter build objects for it (`{k: ...}`) whose keys then come
    /// sorted and are put back in the expression's order ([`in_expression_order`])?
    builds_hashes: bool,
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

/// A message converted once for the expressions of a step: only the parts they read (see
/// [`need`]), from a parsed document or straight from the raw bytes.
pub struct Doc(Rcvar);

impl Doc {
    /// `payload` with what `need` reads; raw bytes that are not JSON are an `invalid_json`
    /// failure.
    pub fn new(payload: &Payload, need: &Need) -> Result<Doc, StepError> {
        match payload {
            Payload::Json(value) | Payload::Parsed { value, .. } => {
                Ok(Doc(need::from_value(value, need)))
            }
            Payload::Bytes(bytes) => need::from_slice(bytes, need).map(Doc).map_err(|e| {
                StepError::new(ErrorCode::InvalidJson, format!("payload is not JSON: {e}"))
            }),
        }
    }

    /// `value` with what `need` reads.
    pub fn from_value(value: &Value, need: &Need) -> Doc {
        Doc(need::from_value(value, need))
    }
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
        let compiled = RUNTIME.compile(source).map_err(|e| CompileError {
            offset: e.offset,
            reason: e.reason.to_string(),
        })?;
        let need = Need::of(compiled.as_ast());
        let plan = plan::Plan::of(compiled.as_ast());
        let picker = plan.as_ref().and_then(plan::Picker::of).map(Box::new);
        let builds_hashes = builds_hashes(compiled.as_ast());
        Ok(Expr {
            source: source.to_string(),
            compiled,
            need,
            plan,
            picker,
            builds_hashes,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Is the expression made of field paths, `to_number` and hashes only, evaluated on the
    /// document itself (so that what it copies keeps the order of its fields)?
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
        self.search_owned(Doc::from_value(data, &self.need))
    }

    /// Evaluates the expression on `payload` (raw bytes are parsed for what it reads only).
    pub fn search_payload(&self, payload: &Payload) -> Result<Value, StepError> {
        match payload {
            Payload::Json(value) | Payload::Parsed { value, .. } => self.search(value),
            Payload::Bytes(bytes) => {
                let picked =
                    self.plan
                        .as_ref()
                        .zip(self.picker.as_ref())
                        .and_then(|(plan, picker)| {
                            picker.search(plan, std::str::from_utf8(bytes).ok()?)
                        });
                match (picked, &self.plan) {
                    (Some(value), _) => Ok(value),
                    // The plan on the parsed document: an object it copies keeps the order of
                    // its fields (through jmespath's tree, a `BTreeMap`, they come sorted).
                    (None, Some(plan)) => Ok(plan.search(&payload.clone().into_json()?)),
                    (None, None) => self.search_owned(Doc::new(payload, &self.need)?),
                }
            }
        }
    }

    /// Evaluates the expression on `doc`, which must hold what it reads.
    pub fn search_doc(&self, doc: &Doc) -> Result<Value, StepError> {
        if let Some(plan) = &self.plan {
            return Ok(plan.eval(&doc.0).into_value());
        }
        Ok(self.value_of(self.run(&doc.0)?))
    }

    /// jmespath's result `tree` (from [`Expr::eval_doc`]) as a `Value`, the objects the
    /// expression builds with their keys in the order it writes them.
    pub fn value_of(&self, tree: Rcvar) -> Value {
        let mut value = need::into_value(tree);
        if self.builds_hashes {
            in_expression_order(self.compiled.as_ast(), &mut value);
        }
        value
    }

    /// Evaluates the expression on `doc` and returns jmespath's tree (convert it with
    /// [`into_value`] once `doc` is dropped, so that shared parts move).
    pub fn eval_doc(&self, doc: &Doc) -> Result<Rcvar, StepError> {
        self.run(&doc.0)
    }

    fn search_owned(&self, doc: Doc) -> Result<Value, StepError> {
        if let Some(plan) = &self.plan {
            let out = plan.eval(&doc.0);
            drop(doc);
            return Ok(out.into_value());
        }
        let result = self.run(&doc.0)?;
        // The input's tree first: parts of the result it shared then move instead of copying.
        drop(doc);
        Ok(self.value_of(result))
    }

    /// Evaluates the expression as a condition, with JMESPath truthiness (false, null, empty
    /// string, array or object are false).
    pub fn is_truthy(&self, data: &Value) -> Result<bool, StepError> {
        self.is_truthy_doc(&Doc::from_value(data, &self.need))
    }

    /// [`Expr::is_truthy`] on `doc`, which must hold what it reads.
    pub fn is_truthy_doc(&self, doc: &Doc) -> Result<bool, StepError> {
        Ok(self.run(&doc.0)?.is_truthy())
    }

    /// Runs the expression; a panic inside jmespath (it overflows on some slices, such as
    /// `[1::2147483647]`) is this message's failure, wherever the expression is used.
    fn run(&self, data: &Rcvar) -> Result<Rcvar, StepError> {
        let eval = || {
            let mut ctx = jmespath::Context::new(&self.source, &RUNTIME);
            jmespath::interpret(data, self.compiled.as_ast(), &mut ctx)
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(eval)) {
            Ok(result) => result.map_err(|e| self.error(e.reason.to_string())),
            Err(_) => Err(StepError::new(
                ErrorCode::StepPanicked,
                format!(
                    "JMESPath `{}` panicked (a jmespath library defect)",
                    self.source
                ),
            )),
        }
    }

    fn error(&self, reason: String) -> StepError {
        StepError::new(
            ErrorCode::MappingError,
            format!("JMESPath `{}` failed: {reason}", self.source),
        )
    }
}

/// Does `ast` build an object jmespath's interpreter would return with sorted keys, where
/// [`in_expression_order`] puts them back?
fn builds_hashes(ast: &Ast) -> bool {
    match ast {
        Ast::MultiHash { .. } => true,
        Ast::Subexpr { rhs, .. } | Ast::Projection { rhs, .. } => builds_hashes(rhs),
        Ast::MultiList { elements, .. } => elements.iter().any(builds_hashes),
        _ => false,
    }
}

/// jmespath builds an object as a `BTreeMap`, so `{b: f(x), a: y}` comes out of its
/// interpreter as `{"a": .., "b": ..}`. This puts the keys of the objects `ast` builds back in
/// the order the expression writes them (a key written twice keeps its first place and its
/// last value, as jmespath and [`plan`] keep it), through `a.{..}`, projections
/// (`items[*].{..}`) and lists (`[{..}, {..}]`). An object taken from the input by a function,
/// a filter or a projection keeps jmespath's sorted order.
fn in_expression_order(ast: &Ast, value: &mut Value) {
    match (ast, value) {
        (Ast::MultiHash { elements, .. }, Value::Object(map)) => {
            let mut ordered = Map::with_capacity(map.len());
            for (i, kvp) in elements.iter().enumerate() {
                if elements[..i].iter().any(|earlier| earlier.key == kvp.key) {
                    continue;
                }
                // The value written last for this key is the one jmespath kept.
                let last = elements
                    .iter()
                    .rev()
                    .find(|e| e.key == kvp.key)
                    .unwrap_or(kvp);
                if let Some((key, mut v)) = map.shift_remove_entry(&kvp.key) {
                    in_expression_order(&last.value, &mut v);
                    ordered.insert(key, v);
                }
            }
            ordered.append(map);
            *map = ordered;
        }
        (Ast::Subexpr { rhs, .. }, value) => in_expression_order(rhs, value),
        (Ast::Projection { rhs, .. }, Value::Array(items)) => {
            for item in items {
                in_expression_order(rhs, item);
            }
        }
        (Ast::MultiList { elements, .. }, Value::Array(items)) if elements.len() == items.len() => {
            for (element, item) in elements.iter().zip(items) {
                in_expression_order(element, item);
            }
        }
        _ => {}
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
    fn objects_jmespath_builds_keep_the_expression_order() {
        let data = json!({"a": "x", "c": "y", "items": [{"x": 1}, {"x": 2}]});
        // Not plans (functions, projections): jmespath's interpreter builds them.
        let top = Expr::compile("{c: join('-', [a, c]), a: a, b: length(items)}").unwrap();
        let value = top.search(&data).unwrap();
        assert_eq!(keys(&value), ["c", "a", "b"]);
        assert_eq!(value, json!({"a": "x", "b": 2, "c": "x-y"}));
        // A key written twice keeps its first place and its last value, as jmespath does.
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
        let doc = Doc::from_value(&data, top.need());
        assert_eq!(keys(&top.search_doc(&doc).unwrap()), ["c", "a", "b"]);
        assert_eq!(top.search(&json!(null)).unwrap()["a"], json!(null));
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
                // jmespath's interpreter, which the plan stands in for.
                let interpreted =
                    need::into_value(expr.run(&Doc::from_value(doc, &expr.need).0).unwrap());
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

    #[test]
    fn a_panic_inside_jmespath_is_an_error() {
        let e = Expr::compile("a[1::`2147483647`]")
            .or_else(|_| Expr::compile("a[1::2147483647]"))
            .unwrap();
        let err = e.search(&json!({"a": [1, 2, 3]})).unwrap_err();
        assert_eq!(err.code, ErrorCode::StepPanicked);
    }

    #[test]
    fn truthiness() {
        let e = Expr::compile("ok").unwrap();
        assert!(e.is_truthy(&json!({"ok": true})).unwrap());
        assert!(!e.is_truthy(&json!({"ok": []})).unwrap());
        assert!(!e.is_truthy(&json!({})).unwrap());
    }
}
