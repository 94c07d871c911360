//! `map`: a JMESPath expression gives the new message.

use serde::Deserialize;

use super::{StepContext, Transform, TransformKind};
use crate::error::{BuildError, StepError};
use crate::jmes::Expr;
use crate::message::Payload;

/// `kind = "map"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// JMESPath evaluated on the message; its result is the new message.
    pub expression: String,
}

impl MapConfig {
    /// Compiles the expression.
    pub fn compile(&self) -> Result<Map, BuildError> {
        let expr =
            Expr::compile(&self.expression).map_err(|e| e.at("expression"))?;
        Ok(Map { expr })
    }
}

impl TransformKind for MapConfig {
    const KIND: &'static str = "map";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "map"
expression = "{meter: meter_id, kwh: to_number(value)}""#;
    type Transform = Map;

    fn compile_in(&self, _: &StepContext) -> Result<Map, BuildError> {
        self.compile()
    }
}

/// The running `map` step.
#[derive(Debug)]
pub struct Map {
    expr: Expr,
}

impl Transform for Map {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        // Raw bytes are parsed for what the expression reads only.
        out.push(Payload::Json(self.expr.search_payload(&payload)?));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, run};
    use super::*;
    use crate::error::ErrorCode;
    use bytes::Bytes;
    use serde_json::json;

    #[test]
    fn maps_json_and_raw_json_bytes() {
        let step = parse("kind = 'map'\nexpression = '{id: a, n: to_number(b)}'")
            .build()
            .unwrap();
        let out = run(&*step, Payload::Json(json!({"a": "x", "b": "2"}))).unwrap();
        assert_eq!(out, vec![Payload::Json(json!({"id": "x", "n": 2}))]);
        let out = run(
            &*step,
            Payload::Bytes(Bytes::from_static(br#"{"a":1,"b":"3.5"}"#)),
        )
        .unwrap();
        assert_eq!(out, vec![Payload::Json(json!({"id": 1, "n": 3.5}))]);
    }

    /// What `map` builds follows its expression's order; an object it copies keeps the
    /// input's order, from raw bytes or from a parsed document, whichever way the expression
    /// is evaluated (the raw-JSON picker, the plan, or the plan after a full parse).
    #[test]
    fn objects_follow_the_expression_then_the_input() {
        let input = r#"{"z":{"k":1,"c":[{"y":1,"b":2}],"a":null},"m":"x","a":"2"}"#;
        let written = |out: Vec<Payload>| String::from_utf8(out[0].to_bytes().to_vec()).unwrap();
        for (expression, want) in [
            ("{zz: m, n: to_number(a), copy: z, aa: m}", r#"{"zz":"x","n":2,"copy":{"k":1,"c":[{"y":1,"b":2}],"a":null},"aa":"x"}"#),
            // The same key twice: its first place, the last value.
            ("{b: m, a: m, b: a}", r#"{"b":"2","a":"x"}"#),
            // `@` has no raw-JSON picker: the plan runs on the parsed document.
            ("{all: @, first: m}", &format!(r#"{{"all":{input},"first":"x"}}"#)),
            ("z", r#"{"k":1,"c":[{"y":1,"b":2}],"a":null}"#),
            // Filters, functions, projections: the interpreter keeps the input's order too.
            ("z.c[?y == `1`]", r#"[{"y":1,"b":2}]"#),
            ("sort_by(z.c, &b)[0]", r#"{"y":1,"b":2}"#),
            ("values(@)[0]", r#"{"k":1,"c":[{"y":1,"b":2}],"a":null}"#),
            ("not_null(q, z)", r#"{"k":1,"c":[{"y":1,"b":2}],"a":null}"#),
            // `merge` keeps the first object's order: a key it has takes the new value in
            // place, a new key comes last.
            ("merge(z, {new: m, a: m})", r#"{"k":1,"c":[{"y":1,"b":2}],"a":"x","new":"x"}"#),
            ("merge(@, {m: `1`})", r#"{"z":{"k":1,"c":[{"y":1,"b":2}],"a":null},"m":1,"a":"2"}"#),
        ] {
            let step = parse(&format!("kind = 'map'\nexpression = '{expression}'"))
                .build()
                .unwrap();
            let bytes = Payload::Bytes(Bytes::from_static(input.as_bytes()));
            assert_eq!(written(run(&*step, bytes).unwrap()), want, "{expression} on bytes");
            let parsed: serde_json::Value = serde_json::from_str(input).unwrap();
            assert_eq!(written(run(&*step, Payload::Json(parsed)).unwrap()), want, "{expression}");
        }
    }

    #[test]
    fn bad_bytes_and_runtime_errors_are_step_errors() {
        let step = parse("kind = 'map'\nexpression = 'abs(a)'")
            .build()
            .unwrap();
        let err = run(&*step, Payload::Bytes(Bytes::from_static(b"not json"))).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        let err = run(&*step, Payload::Json(json!({"a": "text"}))).unwrap_err();
        assert_eq!(err.code, ErrorCode::MappingError);
    }

    #[test]
    fn bad_expression_fails_the_build() {
        let err = parse("kind = 'map'\nexpression = 'a.['")
            .build()
            .err()
            .unwrap();
        assert_eq!(err.key.as_deref(), Some("expression"));
        assert!(err.offset.is_some());
    }
}
