//! `validate`: the message must conform to a contract (JSON Schema); a violation sends the
//! input to the dead-letter destination with code `contract_violation` and every violation
//! with its JSON pointer.

use std::sync::Arc;

use serde::Deserialize;

use super::{StepContext, Transform, TransformKind};
use crate::contracts::{valid_reference, violations_json, Contract};
use crate::error::{BuildError, ErrorCode, StepError};
use crate::message::Payload;

/// `kind = "validate"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// The contract, `name@version` (a directory `contracts/<name>/<version>/`).
    pub contract: String,
}

impl ValidateConfig {
    /// Checks the reference's form.
    fn check_reference(&self) -> Result<(), BuildError> {
        if !valid_reference(&self.contract) {
            return Err(BuildError::at(
                "contract",
                format!("`{}` is not a contract reference", self.contract),
            )
            .with_hint("write it as `name@version`, e.g. `load-actual@1`"));
        }
        Ok(())
    }

    /// Finds the contract among those loaded.
    pub fn compile(&self, ctx: &StepContext) -> Result<Validate, BuildError> {
        self.check_reference()?;
        let contract = ctx
            .contracts
            .as_ref()
            .and_then(|c| c.get(&self.contract))
            .ok_or_else(|| {
                let known = ctx
                    .contracts
                    .as_ref()
                    .map(|c| c.references().join(", "))
                    .unwrap_or_default();
                BuildError::at("contract", format!("unknown contract `{}`", self.contract))
                    .with_hint(format!("contracts loaded: {known}"))
            })?;
        Ok(Validate { contract })
    }
}

impl TransformKind for ValidateConfig {
    const KIND: &'static str = "validate";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "validate"
contract = "meter-reading@1""#;
    const SAMPLE: &'static str = r#"{"meter_id": "FR-PRM-09182736450012", "measured_at": "2026-01-14T00:45:00Z", "value": 1.148, "unit": "kWh", "quality": null, "substation": null, "feeder": null}"#;
    type Transform = Validate;

    fn compile_in(&self, context: &StepContext) -> Result<Validate, BuildError> {
        self.compile(context)
    }

    /// The reference's form only: the contract is looked up when the pipeline is built.
    fn check_alone(&self) -> Result<(), BuildError> {
        self.check_reference()
    }
}

/// The running `validate` step.
#[derive(Debug)]
pub struct Validate {
    contract: Arc<Contract>,
}

impl Transform for Validate {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        // The message is read, not changed: raw bytes go on as they came, with the document
        // parsed for the next step.
        let payload = payload.into_parsed()?;
        let Some(value) = payload.as_json() else {
            unreachable!("a parsed payload is JSON")
        };
        if let Err(violations) = self.contract.validate(value) {
            let summary: Vec<String> = violations
                .iter()
                .map(|v| {
                    format!(
                        "{}: {}",
                        if v.pointer.is_empty() {
                            "/"
                        } else {
                            &v.pointer
                        },
                        v.message
                    )
                })
                .collect();
            return Err(StepError {
                code: ErrorCode::ContractViolation,
                message: format!(
                    "{} violation(s) of {}: {}",
                    violations.len(),
                    self.contract.reference,
                    summary.join("; ")
                ),
                details: Some(violations_json(&violations)),
            });
        }
        out.push(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn step() -> Validate {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts");
        let (contracts, _) = crate::contracts::Contracts::load(&dir);
        let context = StepContext {
            contracts: Some(Arc::new(contracts)),
            upstream: None,
        };
        ValidateConfig {
            contract: "meter-reading@1".into(),
        }
        .compile(&context)
        .unwrap()
    }

    /// A valid message goes on as it came: raw bytes stay the bytes received (whitespace,
    /// escapes, number forms, key order), with the document parsed for the next step.
    #[test]
    fn a_valid_message_goes_on_unchanged() {
        let raw = Bytes::from_static(
            b"{\"unit\" : \"kWh\", \"value\": 1.0e0, \"meter_id\": \"M-\\u00e9\",\n \"measured_at\": \"2026-01-14T00:45:00Z\", \"quality\": null}",
        );
        let mut out = Vec::new();
        step().process(Payload::Bytes(raw.clone()), &mut out).unwrap();
        let [kept] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(kept.to_bytes().as_ptr(), raw.as_ptr());
        assert_eq!(kept.as_json().unwrap()["meter_id"], "M-\u{e9}");
        // A document a step built stays that document.
        let built = Payload::Json(kept.as_json().unwrap().clone());
        let mut out = Vec::new();
        step().process(built.clone(), &mut out).unwrap();
        assert_eq!(out, vec![built]);
    }

    #[test]
    fn a_violation_is_an_error_and_bad_bytes_are_invalid_json() {
        let mut out = Vec::new();
        let err = step()
            .process(Payload::Bytes(Bytes::from_static(b"{\"value\": \"1\"}")), &mut out)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ContractViolation);
        let err = step()
            .process(Payload::Bytes(Bytes::from_static(b"{\"value\": 1,}")), &mut out)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(out.is_empty());
    }
}
