//! gridflow's JMESPath interpreter, on `serde_json::Value`.
//!
//! The jmespath crate parses an expression; gridflow evaluates it. jmespath's own interpreter
//! runs on its tree (`Variable`), whose objects are `BTreeMap`s: every object an expression
//! returns, built or copied from the input, came out with its keys sorted. This interpreter
//! walks the message itself, so that:
//!
//! - an object copied from the input (by a field path, a filter, a projection, a slice or a
//!   function such as `sort_by`, `values` or `not_null`) keeps the order of its fields;
//! - an object the expression builds (`{b: .., a: ..}`) has its keys in the order the
//!   expression writes them (a key written twice keeps its first place and its last value);
//! - `merge(a, b)` keeps the order of `a`, and appends the keys of `b` it does not have (a key
//!   both have keeps its place in `a` and takes the value of `b`);
//! - `keys()` and `values()` follow the object's order.
//!
//! Results borrow from the message where they can ([`Cow`]): a field path or a filter copies
//! only what it returns, once, and a value the evaluation owns (the result of a function, or a
//! document read for one expression) is moved rather than copied ([`eval_owned`]).
//!
//! Everything else is JMESPath as jmespath 0.5 evaluates it, down to its corners, so that no
//! pipeline's output changes but for the order of keys: its equality (numbers compared as
//! floats), its ordering, `to_number` reading a string as JSON, the functions that answer a
//! float (`abs`, `avg`, `ceil`, `floor`, `sum`), its errors and their messages. The compliance
//! suite of JMESPath runs against both (see the tests of [`super::need`]).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use jmespath::ast::{Ast, Comparator};
use serde_json::{Map, Number, Value};

/// An expression ready to evaluate: jmespath's syntax tree with its literals as `Value`s and
/// its functions looked up.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    /// `@`.
    Identity,
    /// `name`.
    Field(String),
    /// `[i]` (negative from the end).
    Index(i32),
    /// `[start:stop:step]`.
    Slice {
        start: Option<i32>,
        stop: Option<i32>,
        step: i32,
    },
    /// `` `json` `` or `'text'`.
    Literal(Value),
    /// `lhs.rhs` and `lhs | rhs`.
    Sub(Box<Node>, Box<Node>),
    /// `lhs[*].rhs`, `lhs[?...]`, `lhs.*`: `rhs` on each element of `lhs`, nulls dropped.
    Projection(Box<Node>, Box<Node>),
    /// `node[]`.
    Flatten(Box<Node>),
    /// `node.*` before its projection: the values of an object.
    ObjectValues(Box<Node>),
    /// `[a, b]`.
    List(Vec<Node>),
    /// `{k: a, ...}`, in the order written (keys may repeat).
    Hash(Vec<(String, Node)>),
    /// `lhs || rhs`.
    Or(Box<Node>, Box<Node>),
    /// `lhs && rhs`.
    And(Box<Node>, Box<Node>),
    /// `!node`.
    Not(Box<Node>),
    /// A filter's test: `then` when `predicate` is true, else null.
    Condition(Box<Node>, Box<Node>),
    /// `lhs == rhs`, `<`, ...
    Compare(Comparator, Box<Node>, Box<Node>),
    /// `name(args...)`.
    Call(Box<Call>),
    /// `&node`, with the text jmespath gives it where it is used as a value.
    Expref(Box<Node>, String),
}

/// A function call.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Call {
    /// `None`: no such function (an error when the call is evaluated, as in jmespath).
    function: Option<Function>,
    name: String,
    args: Vec<Node>,
}

impl Node {
    /// `ast` (of the expression `source`) ready to evaluate.
    pub(super) fn of(ast: &Ast, source: &str) -> Node {
        let node = |ast: &Ast| Box::new(Node::of(ast, source));
        match ast {
            Ast::Identity { .. } => Node::Identity,
            Ast::Field { name, .. } => Node::Field(name.clone()),
            Ast::Index { idx, .. } => Node::Index(*idx),
            Ast::Slice {
                start, stop, step, ..
            } => Node::Slice {
                start: *start,
                stop: *stop,
                step: *step,
            },
            Ast::Literal { value, offset } => Node::Literal(literal(value, source, *offset)),
            Ast::Subexpr { lhs, rhs, .. } => Node::Sub(node(lhs), node(rhs)),
            Ast::Projection { lhs, rhs, .. } => Node::Projection(node(lhs), node(rhs)),
            Ast::Flatten { node: n, .. } => Node::Flatten(node(n)),
            Ast::ObjectValues { node: n, .. } => Node::ObjectValues(node(n)),
            Ast::MultiList { elements, .. } => {
                Node::List(elements.iter().map(|e| Node::of(e, source)).collect())
            }
            Ast::MultiHash { elements, .. } => Node::Hash(
                elements
                    .iter()
                    .map(|kvp| (kvp.key.clone(), Node::of(&kvp.value, source)))
                    .collect(),
            ),
            Ast::Or { lhs, rhs, .. } => Node::Or(node(lhs), node(rhs)),
            Ast::And { lhs, rhs, .. } => Node::And(node(lhs), node(rhs)),
            Ast::Not { node: n, .. } => Node::Not(node(n)),
            Ast::Condition {
                predicate, then, ..
            } => Node::Condition(node(predicate), node(then)),
            Ast::Comparison {
                comparator,
                lhs,
                rhs,
                ..
            } => Node::Compare(comparator.clone(), node(lhs), node(rhs)),
            Ast::Function { name, args, .. } => Node::Call(Box::new(Call {
                function: Function::named(name),
                name: name.clone(),
                args: args.iter().map(|a| Node::of(a, source)).collect(),
            })),
            Ast::Expref { ast: inner, .. } => {
                Node::Expref(node(inner), format!("<expression: {inner:?}>"))
            }
        }
    }
}

/// A literal as a `Value`. jmespath parsed `` `{"b": 1, "a": 2}` `` into a sorted tree: read
/// again from the expression's text, the object keeps the order written (used only when both
/// readings agree).
fn literal(value: &jmespath::Rcvar, source: &str, offset: usize) -> Value {
    let converted = serde_json::to_value(&**value).unwrap_or(Value::Null);
    if !matches!(converted, Value::Object(_) | Value::Array(_)) {
        return converted;
    }
    let Some(text) = source.get(offset..).and_then(|s| s.strip_prefix('`')) else {
        return converted;
    };
    // As jmespath's lexer reads it: up to the first backquote that is not escaped.
    let mut inside = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '`' => break,
            '\\' => {
                inside.push(c);
                inside.extend(chars.next());
            }
            c => inside.push(c),
        }
    }
    match serde_json::from_str::<Value>(&inside.replace("\\`", "`")) {
        Ok(read) if equal(&read, &converted) => read,
        _ => converted,
    }
}

/// Why an evaluation failed, in jmespath's words (`Runtime error: ...`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EvalError(pub(super) String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, EvalError>;

fn runtime(reason: impl fmt::Display) -> EvalError {
    EvalError(format!("Runtime error: {reason}"))
}

static NULL: Value = Value::Null;

fn null<'a>() -> Cow<'a, Value> {
    Cow::Borrowed(&NULL)
}

/// `node` on `data`, borrowing from `data` (and from `node`'s literals) where it can.
pub(super) fn eval<'a>(node: &'a Node, data: &'a Value) -> Result<Cow<'a, Value>> {
    Ok(match node {
        Node::Identity => Cow::Borrowed(data),
        Node::Field(name) => match data {
            Value::Object(map) => map.get(name).map_or_else(null, Cow::Borrowed),
            _ => null(),
        },
        Node::Index(idx) => match data {
            Value::Array(items) => {
                index(items.len(), *idx).map_or_else(null, |i| Cow::Borrowed(&items[i]))
            }
            _ => null(),
        },
        Node::Slice { start, stop, step } => match data {
            Value::Array(items) => Cow::Owned(Value::Array(
                slice(items.len(), *start, *stop, *step)?
                    .into_iter()
                    .map(|i| items[i].clone())
                    .collect(),
            )),
            _ => {
                check_step(*step)?;
                null()
            }
        },
        Node::Literal(value) => Cow::Borrowed(value),
        Node::Sub(lhs, rhs) => eval_cow(rhs, eval(lhs, data)?)?,
        Node::Projection(lhs, rhs) => match eval(lhs, data)? {
            Cow::Borrowed(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let v = eval(rhs, item)?;
                    if !v.is_null() {
                        out.push(v.into_owned());
                    }
                }
                Cow::Owned(Value::Array(out))
            }
            Cow::Owned(Value::Array(items)) => Cow::Owned(project_owned(rhs, items)?),
            _ => null(),
        },
        Node::Flatten(inner) => match eval(inner, data)? {
            Cow::Borrowed(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Array(inner) => out.extend(inner.iter().cloned()),
                        other => out.push(other.clone()),
                    }
                }
                Cow::Owned(Value::Array(out))
            }
            Cow::Owned(Value::Array(items)) => Cow::Owned(flatten_owned(items)),
            _ => null(),
        },
        Node::ObjectValues(inner) => match eval(inner, data)? {
            Cow::Borrowed(Value::Object(map)) => {
                Cow::Owned(Value::Array(map.values().cloned().collect()))
            }
            Cow::Owned(Value::Object(map)) => {
                Cow::Owned(Value::Array(map.into_iter().map(|(_, v)| v).collect()))
            }
            _ => null(),
        },
        Node::List(elements) => {
            if data.is_null() {
                return Ok(null());
            }
            let mut out = Vec::with_capacity(elements.len());
            for element in elements {
                out.push(eval(element, data)?.into_owned());
            }
            Cow::Owned(Value::Array(out))
        }
        Node::Hash(elements) => {
            if data.is_null() {
                return Ok(null());
            }
            let mut out = Map::with_capacity(elements.len());
            for (key, value) in elements {
                // A key written again keeps its place and takes the new value.
                out.insert(key.clone(), eval(value, data)?.into_owned());
            }
            Cow::Owned(Value::Object(out))
        }
        Node::Or(lhs, rhs) => {
            let left = eval(lhs, data)?;
            if truthy(&left) {
                left
            } else {
                eval(rhs, data)?
            }
        }
        Node::And(lhs, rhs) => {
            let left = eval(lhs, data)?;
            if truthy(&left) {
                eval(rhs, data)?
            } else {
                left
            }
        }
        Node::Not(inner) => Cow::Owned(Value::Bool(!truthy(&*eval(inner, data)?))),
        Node::Condition(predicate, then) => {
            if truthy(&*eval(predicate, data)?) {
                eval(then, data)?
            } else {
                null()
            }
        }
        Node::Compare(comparator, lhs, rhs) => {
            let left = eval(lhs, data)?;
            let right = eval(rhs, data)?;
            compare(comparator, &left, &right).map_or_else(null, |b| Cow::Owned(Value::Bool(b)))
        }
        Node::Call(call) => call.eval(data)?,
        Node::Expref(_, text) => Cow::Owned(Value::String(text.clone())),
    })
}

/// `node` on `data`, which the evaluation may take apart: what it returns of `data` moves.
pub(super) fn eval_owned(node: &Node, data: Value) -> Result<Value> {
    Ok(match (node, data) {
        (Node::Identity, data) => data,
        (Node::Field(name), Value::Object(mut map)) => map.swap_remove(name).unwrap_or(Value::Null),
        (Node::Field(_), _) => Value::Null,
        (Node::Index(idx), Value::Array(mut items)) => match index(items.len(), *idx) {
            Some(i) => items.swap_remove(i),
            None => Value::Null,
        },
        (Node::Index(_), _) => Value::Null,
        (Node::Slice { start, stop, step }, Value::Array(mut items)) => Value::Array(
            // Each index once: taking leaves a null behind that is never read.
            slice(items.len(), *start, *stop, *step)?
                .into_iter()
                .map(|i| items[i].take())
                .collect(),
        ),
        (Node::Sub(lhs, rhs), data) => eval_owned(rhs, eval_owned(lhs, data)?)?,
        (Node::Projection(lhs, rhs), data) => match eval_owned(lhs, data)? {
            Value::Array(items) => project_owned(rhs, items)?,
            _ => Value::Null,
        },
        (Node::Flatten(inner), data) => match eval_owned(inner, data)? {
            Value::Array(items) => flatten_owned(items),
            _ => Value::Null,
        },
        (Node::ObjectValues(inner), data) => match eval_owned(inner, data)? {
            Value::Object(map) => Value::Array(map.into_iter().map(|(_, v)| v).collect()),
            _ => Value::Null,
        },
        (Node::Condition(predicate, then), data) => {
            if truthy(&*eval(predicate, &data)?) {
                eval_owned(then, data)?
            } else {
                Value::Null
            }
        }
        (node, data) => eval(node, &data)?.into_owned(),
    })
}

/// `node` on `data`, borrowed or owned.
fn eval_cow<'a>(node: &'a Node, data: Cow<'a, Value>) -> Result<Cow<'a, Value>> {
    match data {
        Cow::Borrowed(data) => eval(node, data),
        Cow::Owned(data) => eval_owned(node, data).map(Cow::Owned),
    }
}

fn project_owned(rhs: &Node, items: Vec<Value>) -> Result<Value> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let v = eval_owned(rhs, item)?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(Value::Array(out))
}

fn flatten_owned(items: Vec<Value>) -> Value {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Array(inner) => out.extend(inner),
            other => out.push(other),
        }
    }
    Value::Array(out)
}

/// The position of `[idx]` in an array of `len` elements.
fn index(len: usize, idx: i32) -> Option<usize> {
    if idx >= 0 {
        let i = idx as usize;
        (i < len).then_some(i)
    } else {
        // jmespath: `[-n]` is the n-th from the end.
        let back = (-(idx as i64)) as usize;
        (back <= len).then(|| len - back)
    }
}

fn check_step(step: i32) -> Result<()> {
    if step == 0 {
        Err(runtime("Invalid slice"))
    } else {
        Ok(())
    }
}

/// The positions `[start:stop:step]` selects in an array of `len` elements (jmespath's
/// algorithm, in 64 bits: no overflow for any step).
fn slice(len: usize, start: Option<i32>, stop: Option<i32>, step: i32) -> Result<Vec<usize>> {
    check_step(step)?;
    #[cfg(debug_assertions)]
    test_fault::panic_on_slice(len, step);
    let len = len as i64;
    let step = i64::from(step);
    if len == 0 {
        return Ok(Vec::new());
    }
    let adjust = |endpoint: i32| {
        let endpoint = i64::from(endpoint);
        if endpoint < 0 {
            let from_end = endpoint + len;
            if from_end >= 0 {
                from_end
            } else if step < 0 {
                -1
            } else {
                0
            }
        } else if endpoint < len {
            endpoint
        } else if step < 0 {
            len - 1
        } else {
            len
        }
    };
    let a = start.map_or(if step < 0 { len - 1 } else { 0 }, adjust);
    let b = stop.map_or(if step < 0 { -1 } else { len }, adjust);
    let mut out = Vec::new();
    let mut i = a;
    while (step > 0 && i < b) || (step < 0 && i > b) {
        out.push(i as usize);
        i += step;
    }
    Ok(out)
}

/// JMESPath truthiness: false, null, `""`, `[]` and `{}` are false.
pub(super) fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) => true,
        Value::Null => false,
    }
}

/// The JMESPath type of `value`, as messages name it.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn float(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

/// jmespath 0.5's float equality: equal, or within a relative epsilon.
fn float_eq(a: f64, b: f64) -> bool {
    let diff = (a - b).abs();
    if a == b {
        true
    } else if !a.is_normal() || !b.is_normal() {
        diff < (f64::EPSILON * f64::MIN_POSITIVE)
    } else {
        diff / (a.abs() + b.abs()) < f64::EPSILON
    }
}

/// JMESPath equality: numbers as floats (`1 == 1.0`), objects whatever the order of keys.
pub(super) fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => float_eq(float(a), float(b)),
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => false,
    }
}

/// jmespath 0.5's ordering: strings and numbers among themselves, anything else equal.
fn order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => {
            float(a).partial_cmp(&float(b)).unwrap_or(Ordering::Less)
        }
        _ => Ordering::Equal,
    }
}

/// `a <comparator> b`; `None` (null) when an ordering compares anything but numbers.
fn compare(comparator: &Comparator, a: &Value, b: &Value) -> Option<bool> {
    let numbers = a.is_number() && b.is_number();
    Some(match comparator {
        Comparator::Equal => equal(a, b),
        Comparator::NotEqual => !equal(a, b),
        _ if !numbers => return None,
        Comparator::LessThan => order(a, b) == Ordering::Less,
        Comparator::LessThanEqual => order(a, b) != Ordering::Greater,
        Comparator::GreaterThan => order(a, b) == Ordering::Greater,
        Comparator::GreaterThanEqual => order(a, b) != Ordering::Less,
    })
}

/// The functions an expression can call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Function {
    Abs,
    Avg,
    Ceil,
    Contains,
    EndsWith,
    Floor,
    Join,
    Keys,
    Length,
    Map,
    Max,
    MaxBy,
    Merge,
    /// gridflow's: the metadata of the message in scope ([`super::meta_value`]).
    Meta,
    Min,
    MinBy,
    NotNull,
    Reverse,
    Sort,
    SortBy,
    StartsWith,
    Sum,
    ToArray,
    ToNumber,
    ToString,
    Type,
    Values,
}

/// The type an argument must have, as jmespath names it in messages.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Any,
    Null,
    String,
    Number,
    Bool,
    Object,
    Array,
    Expref,
    Strings,
    Numbers,
    Union(&'static [Ty]),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Any => f.write_str("any"),
            Ty::Null => f.write_str("null"),
            Ty::String => f.write_str("string"),
            Ty::Number => f.write_str("number"),
            Ty::Bool => f.write_str("boolean"),
            Ty::Object => f.write_str("object"),
            Ty::Array => f.write_str("array"),
            Ty::Expref => f.write_str("expref"),
            Ty::Strings => f.write_str("array[string]"),
            Ty::Numbers => f.write_str("array[number]"),
            Ty::Union(types) => {
                for (i, t) in types.iter().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    write!(f, "{t}")?;
                }
                Ok(())
            }
        }
    }
}

impl Ty {
    fn accepts(self, arg: &Arg<'_>) -> bool {
        let value = match arg {
            Arg::Expref(..) => return matches!(self, Ty::Any | Ty::Expref),
            Arg::Value(v) => &**v,
        };
        match (self, value) {
            (Ty::Any, _)
            | (Ty::Null, Value::Null)
            | (Ty::String, Value::String(_))
            | (Ty::Number, Value::Number(_))
            | (Ty::Bool, Value::Bool(_))
            | (Ty::Object, Value::Object(_))
            | (Ty::Array, Value::Array(_)) => true,
            (Ty::Strings, Value::Array(items)) => items.iter().all(Value::is_string),
            (Ty::Numbers, Value::Array(items)) => items.iter().all(Value::is_number),
            (Ty::Union(types), _) => types.iter().any(|t| t.accepts(arg)),
            _ => false,
        }
    }
}

/// A function's argument: a value, or an `&expression`.
enum Arg<'a> {
    Value(Cow<'a, Value>),
    /// The text jmespath gives an expression used as a value.
    Expref(&'a str),
}

impl<'a> Arg<'a> {
    fn type_name(&self) -> &'static str {
        match self {
            Arg::Value(v) => type_of(v),
            Arg::Expref(..) => "expref",
        }
    }

    /// The argument as a value (an expression as the text jmespath gives it).
    fn into_value(self) -> Cow<'a, Value> {
        match self {
            Arg::Value(v) => v,
            Arg::Expref(text) => Cow::Owned(Value::String(text.to_owned())),
        }
    }
}

const STRING_OR_NUMBER_ARRAY: Ty = Ty::Union(&[Ty::Strings, Ty::Numbers]);

impl Function {
    fn named(name: &str) -> Option<Function> {
        use Function::*;
        Some(match name {
            "abs" => Abs,
            "avg" => Avg,
            "ceil" => Ceil,
            "contains" => Contains,
            "ends_with" => EndsWith,
            "floor" => Floor,
            "join" => Join,
            "keys" => Keys,
            "length" => Length,
            "map" => Map,
            "max" => Max,
            "max_by" => MaxBy,
            "merge" => Merge,
            "meta" => Meta,
            "min" => Min,
            "min_by" => MinBy,
            "not_null" => NotNull,
            "reverse" => Reverse,
            "sort" => Sort,
            "sort_by" => SortBy,
            "starts_with" => StartsWith,
            "sum" => Sum,
            "to_array" => ToArray,
            "to_number" => ToNumber,
            "to_string" => ToString,
            "type" => Type,
            "values" => Values,
            _ => return None,
        })
    }

    /// The types of the arguments, and of any further ones.
    fn signature(self) -> (&'static [Ty], Option<Ty>) {
        use Function::*;
        match self {
            Abs | Ceil | Floor => (&[Ty::Number], None),
            Avg | Sum => (&[Ty::Numbers], None),
            Contains => (&[Ty::Union(&[Ty::String, Ty::Array]), Ty::Any], None),
            EndsWith | StartsWith => (&[Ty::String, Ty::String], None),
            Join => (&[Ty::String, Ty::Strings], None),
            Keys | Values => (&[Ty::Object], None),
            Length => (&[Ty::Union(&[Ty::Array, Ty::Object, Ty::String])], None),
            Map => (&[Ty::Expref, Ty::Array], None),
            Max | Min | Sort => (&[STRING_OR_NUMBER_ARRAY], None),
            MaxBy | MinBy | SortBy => (&[Ty::Array, Ty::Expref], None),
            Merge => (&[Ty::Object], Some(Ty::Object)),
            NotNull => (&[Ty::Any], Some(Ty::Any)),
            Reverse => (&[Ty::Union(&[Ty::Array, Ty::String])], None),
            ToArray | ToNumber | Type => (&[Ty::Any], None),
            ToString => (
                &[Ty::Union(&[
                    Ty::Object,
                    Ty::Array,
                    Ty::Bool,
                    Ty::Number,
                    Ty::String,
                    Ty::Null,
                ])],
                None,
            ),
            Meta => (&[], Some(Ty::Any)),
        }
    }
}

impl Call {
    fn eval<'a>(&'a self, data: &'a Value) -> Result<Cow<'a, Value>> {
        // As jmespath: the arguments first, then the function.
        let mut args = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            args.push(match arg {
                Node::Expref(_, text) => Arg::Expref(text),
                other => Arg::Value(eval(other, data)?),
            });
        }
        let Some(function) = self.function else {
            return Err(runtime(format_args!(
                "Call to undefined function {}",
                self.name
            )));
        };
        self.check(function, &args)?;
        self.run(function, args)
    }

    /// jmespath's checks of the arguments' number and types.
    fn check(&self, function: Function, args: &[Arg<'_>]) -> Result<()> {
        let (inputs, variadic) = function.signature();
        let (expected, actual) = (inputs.len(), args.len());
        if actual < expected {
            return Err(self.error(format_args!(
                "Not enough arguments: expected {expected}, found {actual}"
            )));
        }
        if actual > expected && variadic.is_none() {
            return Err(self.error(format_args!(
                "Too many arguments: expected {expected}, found {actual}"
            )));
        }
        for (position, arg) in args.iter().enumerate() {
            let ty = inputs
                .get(position)
                .copied()
                .or(variadic)
                .unwrap_or(Ty::Any);
            if !ty.accepts(arg) {
                return Err(self.error(format_args!(
                    "Argument {position} expects type {ty}, given {}",
                    arg.type_name()
                )));
            }
        }
        Ok(())
    }

    /// A runtime error of this call, naming the function.
    fn error(&self, reason: impl fmt::Display) -> EvalError {
        EvalError(format!("Runtime error: {reason} (in {}())", self.name))
    }

    fn run<'a>(&'a self, function: Function, args: Vec<Arg<'a>>) -> Result<Cow<'a, Value>> {
        use Function::*;
        let mut args = args.into_iter();
        let mut next = || args.next().map_or_else(null, Arg::into_value);
        let owned = |v: Value| Ok(Cow::Owned(v));
        match function {
            Abs => float_result(float_of(&next()).abs()),
            Ceil => float_result(float_of(&next()).ceil()),
            Floor => float_result(float_of(&next()).floor()),
            Avg => {
                let items = next();
                let items = array(&items);
                float_result(items.iter().map(float_of).sum::<f64>() / items.len() as f64)
            }
            Sum => float_result(array(&next()).iter().map(float_of).sum::<f64>()).map_err(|_| {
                // jmespath 0.5's words for `sum`.
                EvalError("Parse error: Expected to be a valid number".into())
            }),
            Contains => {
                let (haystack, needle) = (next(), next());
                owned(Value::Bool(match &*haystack {
                    Value::Array(items) => items.iter().any(|v| equal(v, &needle)),
                    Value::String(text) => needle.as_str().is_some_and(|s| text.contains(s)),
                    _ => false,
                }))
            }
            EndsWith | StartsWith => {
                let (subject, affix) = (next(), next());
                let (subject, affix) = (text(&subject), text(&affix));
                owned(Value::Bool(if function == EndsWith {
                    subject.ends_with(affix)
                } else {
                    subject.starts_with(affix)
                }))
            }
            Join => {
                let (glue, items) = (next(), next());
                let parts: Vec<&str> = array(&items).iter().map(text).collect();
                owned(Value::String(parts.join(text(&glue))))
            }
            Keys => owned(Value::Array(
                object(&next())
                    .keys()
                    .map(|k| Value::String(k.clone()))
                    .collect(),
            )),
            Values => owned(match next() {
                Cow::Borrowed(Value::Object(map)) => Value::Array(map.values().cloned().collect()),
                Cow::Owned(Value::Object(map)) => {
                    Value::Array(map.into_iter().map(|(_, v)| v).collect())
                }
                _ => Value::Null,
            }),
            Length => owned(Value::from(match &*next() {
                Value::Array(items) => items.len(),
                Value::Object(map) => map.len(),
                Value::String(s) => s.chars().count(),
                _ => 0,
            })),
            Map => {
                let expref = self.expref_arg(0);
                let _expref_text = next();
                let items = next();
                let mut out = Vec::new();
                for item in array(&items) {
                    out.push(eval(expref, item)?.into_owned());
                }
                owned(Value::Array(out))
            }
            Max | Min => {
                let items = next();
                let list = array(&items);
                if list.is_empty() {
                    return Ok(null());
                }
                let mut best = 0;
                for (i, item) in list.iter().enumerate().skip(1) {
                    // As `std::cmp::max` and `min` choose between equals.
                    let ordering = order(&list[best], item);
                    if (function == Max && ordering != Ordering::Greater)
                        || (function == Min && ordering == Ordering::Greater)
                    {
                        best = i;
                    }
                }
                Ok(element(items, best))
            }
            MaxBy | MinBy => {
                let items = next();
                let expref = self.expref_arg(1);
                let list = array(&items);
                if list.is_empty() {
                    return Ok(null());
                }
                let keys = self.keys_of(list, expref, "expression->number|expression->string")?;
                let mut best = 0;
                for i in 1..keys.len() {
                    let ordering = order(&keys[i], &keys[best]);
                    if (function == MaxBy && ordering == Ordering::Greater)
                        || (function == MinBy && ordering == Ordering::Less)
                    {
                        best = i;
                    }
                }
                drop(keys);
                Ok(element(items, best))
            }
            Sort => {
                let items = next();
                let mut positions: Vec<usize> = (0..array(&items).len()).collect();
                let list = array(&items);
                positions.sort_by(|&a, &b| order(&list[a], &list[b]));
                owned(Value::Array(reordered(items, &positions)))
            }
            SortBy => {
                let items = next();
                let expref = self.expref_arg(1);
                let list = array(&items);
                if list.is_empty() {
                    return Ok(items);
                }
                let keys = self.keys_of(list, expref, "expression->string|expression->number")?;
                let mut positions: Vec<usize> = (0..keys.len()).collect();
                positions.sort_by(|&a, &b| order(&keys[a], &keys[b]));
                drop(keys);
                owned(Value::Array(reordered(items, &positions)))
            }
            Reverse => owned(match next() {
                Cow::Borrowed(Value::Array(items)) => {
                    Value::Array(items.iter().rev().cloned().collect())
                }
                Cow::Owned(Value::Array(mut items)) => {
                    items.reverse();
                    Value::Array(items)
                }
                other => Value::String(text(&other).chars().rev().collect()),
            }),
            Merge => {
                let mut objects = args.map(Arg::into_value);
                let mut merged = match objects.next() {
                    Some(Cow::Owned(Value::Object(map))) => map,
                    Some(first) => object(&first).clone(),
                    None => serde_json::Map::new(),
                };
                for more in objects {
                    match more {
                        Cow::Owned(Value::Object(map)) => {
                            for (k, v) in map {
                                merged.insert(k, v);
                            }
                        }
                        other => {
                            for (k, v) in object(&other) {
                                merged.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                owned(Value::Object(merged))
            }
            NotNull => Ok(args
                .map(Arg::into_value)
                .find(|v| !v.is_null())
                .unwrap_or_else(null)),
            ToArray => Ok(match next() {
                array @ Cow::Borrowed(Value::Array(_)) | array @ Cow::Owned(Value::Array(_)) => {
                    array
                }
                other => Cow::Owned(Value::Array(vec![other.into_owned()])),
            }),
            ToNumber => Ok(match next() {
                number @ (Cow::Borrowed(Value::Number(_)) | Cow::Owned(Value::Number(_))) => number,
                other => Cow::Owned(to_number(&other)),
            }),
            ToString => Ok(match next() {
                string @ (Cow::Borrowed(Value::String(_)) | Cow::Owned(Value::String(_))) => string,
                other => Cow::Owned(Value::String(
                    serde_json::to_string(&*other).unwrap_or_default(),
                )),
            }),
            Type => {
                let name = args.next().map_or("null", |a| a.type_name());
                owned(Value::String(name.to_owned()))
            }
            Meta => {
                if args.next().is_some() {
                    return Ok(null());
                }
                owned(super::current_meta())
            }
        }
    }

    /// The node of the `&expression` argument at `position` (checked by the signature).
    fn expref_arg(&self, position: usize) -> &Node {
        match &self.args[position] {
            Node::Expref(node, _) => node,
            _ => unreachable!("the signature checked the expref"),
        }
    }

    /// `expref` on each of `items` (not empty), all numbers or all strings.
    fn keys_of<'a>(
        &self,
        items: &'a [Value],
        expref: &'a Node,
        first_expected: &str,
    ) -> Result<Vec<Cow<'a, Value>>> {
        let mut keys = Vec::with_capacity(items.len());
        let first = eval(expref, &items[0])?;
        let kind = type_of(&first);
        if kind != "string" && kind != "number" {
            return Err(self.error(format_args!(
                "Argument 1 must return {first_expected} but invocation 1 returned {kind}"
            )));
        }
        keys.push(first);
        for (invocation, item) in items.iter().enumerate().skip(1) {
            let key = eval(expref, item)?;
            if type_of(&key) != kind {
                return Err(self.error(format_args!(
                    "Argument 1 must return expression->{kind} but invocation {invocation} returned {}",
                    type_of(&key)
                )));
            }
            keys.push(key);
        }
        Ok(keys)
    }
}

/// jmespath 0.5's `to_number` of anything but a number: a string read as JSON (`"true"` gives
/// `true`), otherwise null.
pub(super) fn to_number(value: &Value) -> Value {
    match value {
        Value::Number(_) => value.clone(),
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// jmespath's float results: a float `Number`; one that is not finite is an error.
fn float_result<'a>(n: f64) -> Result<Cow<'a, Value>> {
    Number::from_f64(n)
        .map(|n| Cow::Owned(Value::Number(n)))
        .ok_or_else(|| EvalError("Parse error: Expected to be a valid f64".into()))
}

fn float_of(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn object(value: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    value.as_object().unwrap_or(&EMPTY)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Element `i` of the array `items`, borrowed or moved.
fn element(items: Cow<'_, Value>, i: usize) -> Cow<'_, Value> {
    match items {
        Cow::Borrowed(Value::Array(list)) => Cow::Borrowed(&list[i]),
        Cow::Owned(Value::Array(mut list)) => Cow::Owned(list.swap_remove(i)),
        _ => null(),
    }
}

/// The elements of the array `items` at `positions` (each once), moved when owned.
fn reordered(items: Cow<'_, Value>, positions: &[usize]) -> Vec<Value> {
    match items {
        Cow::Borrowed(Value::Array(list)) => positions.iter().map(|&i| list[i].clone()).collect(),
        Cow::Owned(Value::Array(mut list)) => positions.iter().map(|&i| list[i].take()).collect(),
        _ => Vec::new(),
    }
}

/// A fault for the black-box tests, compiled into debug builds only (the tests run the debug
/// binary; a release build has no trace of it): with `GRIDFLOW_TEST_PANIC_ON_SLICE_STEP` set
/// to a step, a slice with that step of an array of two or more elements panics, as
/// jmespath 0.5 did (an overflow) on `[1::2147483647]`, so that a test can check what a panic
/// inside a step does to the message and the pipeline (`runtime/tests/dead_letters.rs`,
/// `runtime/tests/hostile_kafka.rs`).
#[cfg(debug_assertions)]
mod test_fault {
    use std::sync::OnceLock;

    pub(super) fn panic_on_slice(len: usize, step: i32) {
        static STEP: OnceLock<Option<i32>> = OnceLock::new();
        let marker = STEP.get_or_init(|| {
            std::env::var("GRIDFLOW_TEST_PANIC_ON_SLICE_STEP")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if *marker == Some(step) && len >= 2 {
            panic!(
                "test fault: a slice with step {step} panics (GRIDFLOW_TEST_PANIC_ON_SLICE_STEP)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jmes::Expr;
    use serde_json::json;

    /// jmespath 0.5's answer: its value, or its error's reason.
    fn jmespath(source: &str, data: &Value) -> Option<std::result::Result<Value, String>> {
        std::panic::catch_unwind(|| {
            jmespath::compile(source)
                .unwrap()
                .search(data)
                .map(|r| serde_json::to_value(&*r).unwrap())
                .map_err(|e| e.reason.to_string())
        })
        .ok()
    }

    /// `value` with the keys of every object sorted, as jmespath 0.5 holds it.
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }

    /// Expressions against documents of every odd shape: on the document with its keys
    /// sorted (where the order of an object's values, `*` or `values()`, cannot differ), the
    /// interpreter answers what jmespath 0.5 answers (the same value, or an error with the
    /// same reason), borrowed or owned.
    #[test]
    fn the_interpreter_answers_what_jmespath_answers_on_odd_shapes() {
        let docs = [
            json!({"a": [3, 1.0, 2, -0.0], "s": ["b", "a", "c"], "o": {"z": 1, "y": [1, 2]},
                   "m": [1, "a", null, true, {"k": 1}, [1]], "n": null, "t": "text",
                   "e": [], "eo": {}, "f": 1.5, "i": 1, "big": 18446744073709551615u64,
                   "neg": -9223372036854775808i64, "x": [{"v": 2, "k": "b"}, {"v": 1, "k": "a"},
                   {"v": 2, "k": "c"}, {"k": "d"}]}),
            json!([[1, [2, [3]]], [], null, {"a": 1}, "s"]),
            json!({"a": {"a": {"a": null}}}),
            json!(null),
            json!("text"),
            json!(0),
        ];
        let sources = [
            "a",
            "a[0]",
            "a[-1]",
            "a[-5]",
            "a[5]",
            "a[::2]",
            "a[::-1]",
            "a[1:-1]",
            "a[-10:10:3]",
            "a[10:-10:-3]",
            "@[0][1][1]",
            "@[]",
            "@[][]",
            "[*][]",
            "*.a",
            "*",
            "o.*",
            "o.*[]",
            "x[*].v",
            "x[?v > `1`].k",
            "x[?v == `2`] | [1]",
            "x[?k < 'c']",
            "x[?!v]",
            "x[?v].k | sort(@)",
            "a[?@ > `1`]",
            "m[?@]",
            "[a, s][]",
            "{a: a, b: n}",
            "n.{a: a}",
            "n.[a]",
            "a || s",
            "n || e || eo || t",
            "e && a",
            "!e",
            "!t",
            "a == `[3, 1, 2, 0]`",
            "i == f",
            "i == `1.0`",
            "big > `1`",
            "neg < `0`",
            "t < 'u'",
            "t == 'text'",
            "o == `{\"y\": [1, 2], \"z\": 1}`",
            "abs(neg)",
            "abs(i)",
            "avg(a)",
            "avg(e)",
            "ceil(f)",
            "floor(f)",
            "sum(a)",
            "sum(e)",
            "max(a)",
            "min(a)",
            "max(s)",
            "min(e)",
            "max(m)",
            "contains(a, `1`)",
            "contains(t, 'ex')",
            "contains(t, `1`)",
            "ends_with(t, 'xt')",
            "starts_with(t, 'te')",
            "join(', ', s)",
            "join(', ', a)",
            "keys(o)",
            "values(o)",
            "keys(t)",
            "length(t)",
            "length(o)",
            "length(n)",
            "map(&v, x)",
            "map(&[k, v], x)",
            "max_by(x, &v)",
            "min_by(x, &v)",
            "max_by(x, &k)",
            "sort_by(x, &k)[*].k",
            "sort_by(x, &v)",
            "sort_by(e, &v)",
            "sort_by(a, &@)",
            "sort(a)",
            "sort(s)",
            "sort(m)",
            "reverse(a)",
            "reverse(t)",
            "reverse(o)",
            "merge(o, `{\"z\": 2, \"w\": 3}`)",
            "merge(o)",
            "merge(o, a)",
            "not_null(n, e, t)",
            "not_null(n)",
            "to_array(t)",
            "to_array(a)",
            "to_number('12')",
            "to_number('x')",
            "to_number(t)",
            "to_number('true')",
            "to_number(f)",
            "to_string(o)",
            "to_string(a)",
            "to_string(t)",
            "type(a)",
            "type(n)",
            "type(&a)",
            "not_null(&a)",
            "to_array(&a)",
            "length(&a)",
            "nope(a)",
            "sum(`[1e308, 1e308]`)",
            "avg(`[1e308, 1e308]`)",
            "abs()",
            "abs(a, a)",
            "sort_by(x, v)",
            "map(&abs(@), a)",
            "map(&abs(@), s)",
            "a[?abs(@) > `1`]",
            "o.y[-1:]",
            "`[1, {\"b\": 2, \"a\": 1}]`[1]",
            "'raw'",
            "x[*].{k: k, v: v}",
            "x[*].[k]",
            "x[].v",
            "x[*].v | [0]",
        ];
        let mut compared = 0;
        for source in sources {
            let expr = Expr::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            for doc in &docs {
                let Some(want) = jmespath(source, doc) else {
                    continue; // jmespath panicked
                };
                compared += 1;
                let context = format!("`{source}` on {doc}");
                let doc = &sorted(doc);
                let borrowed = eval(&expr.node, doc).map(Cow::into_owned);
                let owned = eval_owned(&expr.node, doc.clone());
                for (how, got) in [("borrowed", borrowed), ("owned", owned)] {
                    match (&want, got) {
                        (Ok(want), Ok(got)) => assert_eq!(&got, want, "{context} ({how})"),
                        (Err(reason), Err(got)) => {
                            assert!(
                                got.0.starts_with(reason.as_str()),
                                "{context}: {got}, want {reason}"
                            )
                        }
                        (want, got) => panic!("{context} ({how}): {got:?}, want {want:?}"),
                    }
                }
            }
        }
        assert!(compared > 600, "only {compared} compared");
    }

    /// `merge` keeps the first object's order, a key of a later one in its place.
    #[test]
    fn merge_keeps_the_first_objects_order() {
        let data = json!({"a": {"z": 1, "m": 2, "a": 3}, "b": {"m": 20, "new": 4, "z": 10}});
        let expr = Expr::compile("merge(a, b, {first: `0`})").unwrap();
        let want = r#"{"z":10,"m":20,"a":3,"new":4,"first":0}"#;
        assert_eq!(expr.search(&data).unwrap().to_string(), want);
        let doc = crate::jmes::Doc::owned(crate::message::Payload::Json(data), expr.need());
        assert_eq!(
            expr.search_doc_owned(doc.unwrap()).unwrap().to_string(),
            want
        );
    }

    /// Expressions of the generated test, on keys `a` to `e`.
    const GENERATED: &[&str] = &[
        "a",
        "a.b",
        "a[0]",
        "a[-1]",
        "a[1:]",
        "a[::-1]",
        "*",
        "*.a",
        "a.*",
        "a[*].b",
        "a[?b]",
        "a[?b == c]",
        "a[?b > `0`]",
        "a[]",
        "a[][]",
        "[a, b]",
        "{x: a, y: b.c, x: c}",
        "a || b",
        "a && b",
        "!a",
        "a == b",
        "a < b",
        "length(a)",
        "keys(a)",
        "values(a)",
        "sort(a)",
        "sort_by(a, &b)",
        "max_by(a, &b)",
        "min_by(a, &@)",
        "reverse(a)",
        "merge(a, b)",
        "merge(@, {e: a})",
        "not_null(c, a)",
        "to_array(a)",
        "to_string(a)",
        "to_number(a)",
        "type(a)",
        "contains(a, b)",
        "join('-', a)",
        "sum(a)",
        "avg(a)",
        "max(a)",
        "min(a)",
        "map(&b, a)",
        "abs(a)",
        "floor(a)",
        "starts_with(a, b)",
        "a | [0]",
        "a[0].b | c",
        "a[*].[b, c][]",
        "@.*[?a]",
        "max_by(a[*], &b)",
        "min_by(a[?c], &b).c",
        "sort_by(a[:], &b)[0]",
        "max(a[*].b)",
        "not_null(a[*])",
        "to_array(a[?b])",
        "reverse(a[*])[0]",
        "values(merge(a[0], b))",
        "merge(a[0], {x: b})",
        "a[*] | [-1]",
        "map(&c, a[::-1])",
        "sort(a[*].c)",
        "keys(a[0])",
        "a[?b > `0`].c | [0]",
    ];

    /// Records (`a`: objects with numbers `b` and strings `c`, their keys in either order,
    /// `b`: the first of them) for the functions that need homogeneous arrays.
    fn records() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        proptest::collection::vec((-3i64..4, "[a-c]{0,2}", any::<bool>()), 0..6).prop_map(|rows| {
            let objects: Vec<Value> = rows
                .into_iter()
                .map(|(b, c, b_first)| {
                    let b = ("b".to_string(), Value::from(b));
                    let c = ("c".to_string(), Value::from(c));
                    let pairs = if b_first { [b, c] } else { [c, b] };
                    Value::Object(pairs.into_iter().collect())
                })
                .collect();
            let first = objects.first().cloned().unwrap_or(Value::Null);
            let mut doc = Map::new();
            doc.insert("a".into(), Value::Array(objects));
            doc.insert("b".into(), first);
            Value::Object(doc)
        })
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..4).prop_map(Value::from),
            (-3.0f64..3.0).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec(("[a-e]", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// On any document: the interpreter answers what jmespath 0.5 answers on it (keys
        /// sorted, as jmespath holds them), and the document parsed, read from raw bytes
        /// (pruned) and owned by the evaluation give the same text, fields in the same order.
        #[test]
        fn generated_documents_answer_as_jmespath_and_alike_every_way(
            doc in proptest::prop_oneof![json(), records()]
        ) {
            use crate::jmes::Doc;
            use crate::message::Payload;
            let bytes = Payload::Bytes(bytes::Bytes::from(serde_json::to_vec(&doc).unwrap()));
            let sorted_doc = sorted(&doc);
            for source in GENERATED {
                let expr = Expr::compile(source).unwrap();
                let text = |r: std::result::Result<Value, crate::error::StepError>| {
                    r.map(|v| v.to_string()).map_err(|e| e.message)
                };
                let parsed = text(expr.search(&doc));
                let owned = Doc::owned(Payload::Json(doc.clone()), expr.need()).unwrap();
                proptest::prop_assert_eq!(&text(expr.search_doc_owned(owned)), &parsed, "{} owned", source);
                proptest::prop_assert_eq!(&text(expr.search_payload(&bytes)), &parsed, "{} bytes", source);
                let Some(want) = jmespath(source, &doc) else { continue };
                match (want, expr.search(&sorted_doc)) {
                    (Ok(want), Ok(got)) => proptest::prop_assert_eq!(got, want, "{}", source),
                    (Err(reason), Err(got)) => proptest::prop_assert!(
                        got.message.contains(&reason), "{}: {} want {}", source, got.message, reason
                    ),
                    (want, got) => proptest::prop_assert!(false, "{}: {:?} want {:?}", source, got, want),
                }
            }
        }
    }
}
