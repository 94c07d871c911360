//! `split`: an array becomes one message per element.
//!
//! `expression` picks the array (default: the message itself). JMESPath cannot reach a parent
//! from inside a projection, so `merge` evaluates an object on the *whole* message and merges
//! it into every element (element fields win): the way to carry document-level fields (area,
//! period start) into each point.

use serde::Deserialize;
use serde_json::Value;

use super::{type_name, StepContext, Transform, TransformKind};
use crate::error::{BuildError, ErrorCode, StepError};
use crate::jmes::{needs, Doc, Expr, Need};
use crate::message::Payload;

/// `kind = "split"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// JMESPath giving the array to split; default the whole message.
    #[serde(default)]
    pub expression: Option<String>,
    /// JMESPath giving an object, evaluated on the whole message, merged into each element.
    #[serde(default)]
    pub merge: Option<String>,
}

impl SplitConfig {
    /// Compiles the expressions.
    pub fn compile(&self) -> Result<Split, BuildError> {
        let compile = |key: &str, src: &Option<String>| {
            src.as_deref()
                .map(Expr::compile)
                .transpose()
                .map_err(|e| e.at(key))
        };
        let expression = compile("expression", &self.expression)?;
        let merge = compile("merge", &self.merge)?;
        let need = needs(expression.iter().chain(merge.iter()));
        Ok(Split {
            expression,
            merge,
            need,
        })
    }
}

impl TransformKind for SplitConfig {
    const KIND: &'static str = "split";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "split"
expression = "readings""#;
    type Transform = Split;

    fn compile_in(&self, _: &StepContext) -> Result<Split, BuildError> {
        self.compile()
    }
}

/// The running `split` step.
#[derive(Debug)]
pub struct Split {
    expression: Option<Expr>,
    merge: Option<Expr>,
    /// What both expressions read.
    need: Need,
}

impl Transform for Split {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        // One reading for both expressions, of what they read; the elements are taken out of
        // it, keeping the order of their fields.
        let (merged, array) = match &self.expression {
            Some(expr) => {
                let doc = Doc::owned(payload, &self.need)?;
                let merged = self.merge.as_ref().map(|m| m.search_doc(&doc)).transpose()?;
                (merged, expr.search_doc_owned(doc)?)
            }
            None => {
                let value = payload.into_json()?;
                let merged = self.merge.as_ref().map(|m| m.search(&value)).transpose()?;
                (merged, value)
            }
        };
        let context = match merged {
            Some(merged) => match merged {
                Value::Object(map) => Some(map),
                Value::Null => None,
                other => {
                    return Err(StepError::new(
                        ErrorCode::UnexpectedShape,
                        format!(
                            "split: `merge` must give an object, got {}",
                            type_name(&other)
                        ),
                    ))
                }
            },
            None => None,
        };
        let elements = match array {
            Value::Array(elements) => elements,
            other => {
                return Err(StepError::new(
                    ErrorCode::UnexpectedShape,
                    format!("split: expected an array, got {}", type_name(&other)),
                ))
            }
        };
        out.reserve(elements.len());
        for element in elements {
            let element = match (&context, element) {
                (Some(context), Value::Object(mut fields)) => {
                    for (k, v) in context {
                        fields.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    Value::Object(fields)
                }
                (_, element) => element,
            };
            out.push(Payload::Json(element));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, run};
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_the_whole_message_by_default() {
        let step = parse("kind = 'split'").build().unwrap();
        let out = run(&*step, Payload::Json(json!([1, {"a": 2}]))).unwrap();
        assert_eq!(
            out,
            vec![Payload::Json(json!(1)), Payload::Json(json!({"a": 2}))]
        );
        assert!(run(&*step, Payload::Json(json!([]))).unwrap().is_empty());
    }

    #[test]
    fn splits_an_expression_and_merges_parent_fields() {
        let step =
            parse("kind = 'split'\nexpression = 'points'\nmerge = '{area: area, position: `0`}'")
                .build()
                .unwrap();
        let msg = json!({"area": "BE", "points": [{"position": 1}, {"position": 2, "q": 3}]});
        let out = run(&*step, Payload::Json(msg)).unwrap();
        assert_eq!(
            out,
            vec![
                Payload::Json(json!({"area": "BE", "position": 1})),
                Payload::Json(json!({"area": "BE", "position": 2, "q": 3})),
            ]
        );
    }

    fn keys(payload: &Payload) -> Vec<String> {
        payload.as_json().unwrap().as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn elements_keep_the_order_of_their_fields() {
        let body = br#"{"zone": "BE", "points": [{"z": 1, "position": 1, "a": 2}]}"#;
        // Field paths, and an expression the interpreter runs (a filter): the elements keep
        // the order of their fields, the merge the expression's order.
        for (expression, merge) in [
            ("points", "{zone: zone, b: zone}"),
            ("points[?position == `1`]", "{zone: zone, b: join('-', [zone, zone])}"),
        ] {
            let step = parse(&format!(
                "kind = 'split'\nexpression = \"{expression}\"\nmerge = \"{merge}\""
            ))
            .build()
            .unwrap();
            for payload in [
                Payload::Bytes(bytes::Bytes::from_static(body)),
                Payload::Json(serde_json::from_slice(body).unwrap()),
            ] {
                let out = run(&*step, payload).unwrap();
                // A filter keeps the order of the element's fields too.
                let want = ["z", "position", "a", "zone", "b"];
                assert_eq!(keys(&out[0]), want, "{expression}");
            }
        }
    }

    #[test]
    fn an_input_becomes_at_most_max_messages_per_input() {
        let step = parse("kind = 'split'").build().unwrap();
        let limit = crate::steps::run::MAX_MESSAGES_PER_INPUT;
        let all = run(&*step, Payload::Json(Value::Array(vec![json!(1); limit]))).unwrap();
        assert_eq!(all.len(), limit);
        let e = run(&*step, Payload::Json(Value::Array(vec![json!(1); limit + 1]))).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyMessages, "{}", e.message);
    }

    #[test]
    fn non_array_is_an_error() {
        let step = parse("kind = 'split'\nexpression = 'a'").build().unwrap();
        let err = run(&*step, Payload::Json(json!({"a": {"b": 1}}))).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnexpectedShape);
        let err = run(&*step, Payload::Json(json!({}))).unwrap_err();
        assert!(err.message.contains("null"), "{}", err.message);
    }
}
