//! `json_to_xml`: a JSON document to XML bytes, the inverse of `xml_to_json`.

use serde::Deserialize;

use super::{StepContext, Transform, TransformKind};
use crate::error::{BuildError, ErrorCode, StepError};
use crate::message::Payload;
use crate::xml;

/// `kind = "json_to_xml"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonToXmlConfig {
    /// Name of the root element; without it the message must be an object with one key.
    #[serde(default)]
    pub root: Option<String>,
}

impl JsonToXmlConfig {
    /// Builds the step.
    pub fn compile(&self) -> Result<JsonToXml, BuildError> {
        if let Some(root) = &self.root {
            let valid = root
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && root
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
            if !valid {
                return Err(
                    BuildError::at("root", format!("`{root}` is not an XML element name"))
                        .with_hint(
                            "start with a letter or `_`; use letters, digits, `_`, `-`, `.`",
                        ),
                );
            }
        }
        Ok(JsonToXml {
            root: self.root.clone(),
        })
    }
}

impl TransformKind for JsonToXmlConfig {
    const KIND: &'static str = "json_to_xml";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "json_to_xml"
root = "Reading""#;
    type Transform = JsonToXml;

    fn compile_in(&self, _: &StepContext) -> Result<JsonToXml, BuildError> {
        self.compile()
    }
}

/// The running `json_to_xml` step.
#[derive(Debug)]
pub struct JsonToXml {
    root: Option<String>,
}

impl Transform for JsonToXml {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        let value = payload.into_json()?;
        let bytes = xml::json_to_xml(&value, self.root.as_deref())
            .map_err(|e| StepError::new(ErrorCode::XmlEncoding, e.to_string()))?;
        out.push(Payload::Bytes(bytes.into()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, run};
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_with_a_root() {
        let step = parse("kind = 'json_to_xml'\nroot = 'Reading'")
            .build()
            .unwrap();
        let out = run(&*step, Payload::Json(json!({"@id": "7", "value": "1.5"}))).unwrap();
        let Payload::Bytes(bytes) = &out[0] else {
            panic!("bytes expected")
        };
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r#"<Reading id="7"><value>1.5</value></Reading>"#),
            "{text}"
        );
    }

    #[test]
    fn rejects_a_bad_root_name() {
        assert!(parse("kind = 'json_to_xml'\nroot = '1abc'")
            .build()
            .is_err());
    }
}
