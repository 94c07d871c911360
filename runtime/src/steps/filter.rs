//! `filter`: a JMESPath condition keeps (truthy) or drops (falsy) the message. A dropped
//! message is counted as filtered; it is not an error.

use serde::Deserialize;

use super::{StepContext, Transform, TransformKind};
use crate::error::{BuildError, StepError};
use crate::jmes::{Doc, Expr};
use crate::message::Payload;

/// `kind = "filter"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// JMESPath condition; messages for which it is false, null or empty are dropped.
    pub condition: String,
}

impl FilterConfig {
    /// Compiles the condition.
    pub fn compile(&self) -> Result<Filter, BuildError> {
        let expr =
            Expr::compile(&self.condition).map_err(|e| e.at("condition"))?;
        Ok(Filter { expr })
    }
}

impl TransformKind for FilterConfig {
    const KIND: &'static str = "filter";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "filter"
condition = "unit == 'kWh'""#;
    type Transform = Filter;

    fn compile_in(&self, _: &StepContext) -> Result<Filter, BuildError> {
        self.compile()
    }
}

/// The running `filter` step.
#[derive(Debug)]
pub struct Filter {
    expr: Expr,
}

impl Transform for Filter {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        // Raw bytes are parsed whole, once (an object that repeats a name is refused: the
        // decision would be taken on one value and a consumer could read the other), and go on
        // as `Parsed`: the next step reads the document, a sink still writes the bytes.
        let payload = payload.into_parsed()?;
        if self
            .expr
            .is_truthy_doc(&Doc::new(&payload, self.expr.need())?)?
        {
            out.push(payload);
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
    fn raw_bytes_go_on_as_received_and_a_repeated_name_is_refused() {
        let step = parse("kind = 'filter'\ncondition = \"status == 'ok'\"")
            .build()
            .unwrap();
        let raw = bytes::Bytes::from_static(br#"{ "status" : "ok", "n": 1.0 }"#);
        let out = run(&*step, Payload::Bytes(raw.clone())).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_received(), Some(&raw), "the bytes received");
        assert_eq!(out[0].as_json().unwrap()["status"], json!("ok"), "parsed once");
        let twice = bytes::Bytes::from_static(br#"{"status": "bad", "status": "ok"}"#);
        let err = run(&*step, Payload::Bytes(twice)).unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::InvalidJson);
        assert!(err.message.contains("is repeated"), "{}", err.message);
    }

    #[test]
    fn keeps_truthy_drops_falsy() {
        let step = parse("kind = 'filter'\ncondition = \"status == 'ok'\"")
            .build()
            .unwrap();
        let keep = json!({"status": "ok"});
        assert_eq!(
            run(&*step, Payload::Json(keep.clone())).unwrap(),
            vec![Payload::Json(keep)]
        );
        assert!(run(&*step, Payload::Json(json!({"status": "bad"})))
            .unwrap()
            .is_empty());
        assert!(run(&*step, Payload::Json(json!({}))).unwrap().is_empty());
    }

    /// A kept message of raw bytes goes on as the same bytes (not re-serialised); bytes that
    /// are not JSON are an error, even where the condition would not read the bad part.
    #[test]
    fn raw_bytes_pass_through_untouched() {
        let step = parse("kind = 'filter'\ncondition = \"status == 'ok'\"")
            .build()
            .unwrap();
        let raw = bytes::Bytes::from_static(b"{ \"status\": \"ok\",  \"n\": 1.50 }");
        let out = run(&*step, Payload::Bytes(raw.clone())).unwrap();
        match out.as_slice() {
            [kept] => assert_eq!(kept.as_received().unwrap().as_ptr(), raw.as_ptr()),
            other => panic!("{other:?}"),
        }
        let bad = bytes::Bytes::from_static(b"{\"status\": \"ok\", \"n\": [1,}");
        let err = run(&*step, Payload::Bytes(bad)).unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::InvalidJson);
    }
}
