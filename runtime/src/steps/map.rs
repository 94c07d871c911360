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
