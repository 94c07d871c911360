//! `xml_to_json`: XML bytes to a JSON document, with the convention of [`crate::xml`].

use serde::Deserialize;

use super::{StepContext, Transform, TransformKind};
use crate::error::{BuildError, ErrorCode, StepError};
use crate::message::Payload;
use crate::xml::{self, Namespaces, XmlToJsonOptions};

/// `kind = "xml_to_json"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XmlToJsonConfig {
    /// Element names that always become arrays, even when they occur once.
    #[serde(default)]
    pub arrays: Vec<String>,
    /// `strip` (default) removes namespace prefixes; `keep` keeps them.
    #[serde(default)]
    pub namespaces: Namespaces,
}

impl XmlToJsonConfig {
    /// Builds the step.
    pub fn compile(&self) -> Result<XmlToJson, BuildError> {
        Ok(XmlToJson {
            options: XmlToJsonOptions {
                arrays: self.arrays.iter().cloned().collect(),
                namespaces: self.namespaces,
            },
        })
    }
}

impl TransformKind for XmlToJsonConfig {
    const KIND: &'static str = "xml_to_json";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "xml_to_json"
arrays = ["Point"]"#;
    const SAMPLE: &'static str = "<Reading><Point><v>1</v></Point></Reading>";
    type Transform = XmlToJson;

    fn compile_in(&self, _: &StepContext) -> Result<XmlToJson, BuildError> {
        self.compile()
    }
}

/// The running `xml_to_json` step.
#[derive(Debug)]
pub struct XmlToJson {
    options: XmlToJsonOptions,
}

impl Transform for XmlToJson {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        let bytes = match payload {
            Payload::Bytes(bytes) => bytes,
            Payload::Json(serde_json::Value::String(text))
            | Payload::Parsed {
                value: serde_json::Value::String(text),
                ..
            } => text.into_bytes().into(),
            Payload::Json(_) | Payload::Parsed { .. } => {
                return Err(StepError::new(
                    ErrorCode::UnexpectedShape,
                    "xml_to_json: the message is already JSON",
                ))
            }
        };
        let value = xml::xml_to_json(&bytes, &self.options)
            .map_err(|e| StepError::new(ErrorCode::InvalidXml, e.to_string()))?;
        out.push(Payload::Json(value));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, run};
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    #[test]
    fn converts_with_forced_arrays() {
        let step = parse("kind = 'xml_to_json'\narrays = ['Point']")
            .build()
            .unwrap();
        let xml = Bytes::from_static(b"<Doc><Point><position>1</position></Point></Doc>");
        let out = run(&*step, Payload::Bytes(xml)).unwrap();
        assert_eq!(
            out,
            vec![Payload::Json(
                json!({"Doc": {"Point": [{"position": "1"}]}})
            )]
        );
    }

    #[test]
    fn malformed_xml_is_invalid_xml() {
        let step = parse("kind = 'xml_to_json'").build().unwrap();
        let err = run(&*step, Payload::Bytes(Bytes::from_static(b"<a><b></a>"))).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidXml);
    }
}
