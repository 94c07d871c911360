//! JMESPath, compiled once when a pipeline loads and evaluated per message.

use serde_json::Value;

use crate::error::{ErrorCode, StepError};

/// A compiled JMESPath expression.
pub struct Expr {
    source: String,
    compiled: jmespath::Expression<'static>,
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

impl Expr {
    /// Compiles `source`.
    pub fn compile(source: &str) -> Result<Expr, CompileError> {
        let compiled = jmespath::compile(source).map_err(|e| CompileError {
            offset: e.offset,
            reason: e.reason.to_string(),
        })?;
        Ok(Expr {
            source: source.to_string(),
            compiled,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression on `data`.
    pub fn search(&self, data: &Value) -> Result<Value, StepError> {
        let result = self
            .compiled
            .search(data)
            .map_err(|e| self.error(e.reason.to_string()))?;
        serde_json::to_value(&*result).map_err(|e| self.error(e.to_string()))
    }

    /// Evaluates the expression as a condition, with JMESPath truthiness (false, null, empty
    /// string, array or object are false).
    pub fn is_truthy(&self, data: &Value) -> Result<bool, StepError> {
        let result = self
            .compiled
            .search(data)
            .map_err(|e| self.error(e.reason.to_string()))?;
        Ok(result.is_truthy())
    }

    fn error(&self, reason: String) -> StepError {
        StepError::new(
            ErrorCode::MappingError,
            format!("JMESPath `{}` failed: {reason}", self.source),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn truthiness() {
        let e = Expr::compile("ok").unwrap();
        assert!(e.is_truthy(&json!({"ok": true})).unwrap());
        assert!(!e.is_truthy(&json!({"ok": []})).unwrap());
        assert!(!e.is_truthy(&json!({})).unwrap());
    }
}
