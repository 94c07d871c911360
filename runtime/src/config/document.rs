//! A TOML document parsed with positions, so that every fault is reported at its line and
//! column, and every section is checked on its own (all errors at once, like a compiler).

use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::diagnostic::{did_you_mean, Diagnostic};
use super::interpolate::interpolate;
use crate::error::BuildError;

/// Where `${VAR}` values come from.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A parsed file and the diagnostics found so far.
pub struct Document<'i> {
    path: &'i Path,
    text: &'i str,
    /// The root table, with `${VAR}` already interpolated in every string.
    pub root: Spanned<DeTable<'i>>,
    /// Every problem found so far.
    pub diagnostics: Vec<Diagnostic>,
}

impl<'i> Document<'i> {
    /// Parses `text`; syntax errors are final (the structure cannot be trusted after them).
    pub fn parse(
        path: &'i Path,
        text: &'i str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Document<'i>, Vec<Diagnostic>> {
        Self::parse_with(path, text, Some(lookup))
    }

    /// Parses `text` with its strings as written (no `${VAR}` interpolation): test files,
    /// whose bodies are data.
    pub fn parse_literal(path: &'i Path, text: &'i str) -> Result<Document<'i>, Vec<Diagnostic>> {
        Self::parse_with(path, text, None)
    }

    fn parse_with(
        path: &'i Path,
        text: &'i str,
        lookup: Option<Lookup<'_>>,
    ) -> Result<Document<'i>, Vec<Diagnostic>> {
        let (mut root, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            return Err(errors
                .iter()
                .map(|e| {
                    Diagnostic::spanned(
                        path,
                        text,
                        e.span(),
                        format!("invalid TOML: {}", e.message().trim()),
                    )
                    .with_hint(Some("see https://toml.io for the syntax".into()))
                })
                .collect());
        }
        let mut diagnostics = Vec::new();
        let Some(lookup) = lookup else {
            return Ok(Document {
                path,
                text,
                root,
                diagnostics,
            });
        };
        for (_, value) in root.get_mut().iter_mut() {
            interpolate_value(value, lookup, &mut |span, message| {
                let hint = if message.starts_with(super::interpolate::ENV_VARIABLE) {
                    "set GRIDFLOW_ENV to the environment's name (dev, recette, prod), or unset it for dev"
                } else {
                    "export the variable, or give a default: ${NAME:-default}"
                };
                diagnostics.push(
                    Diagnostic::spanned(path, text, Some(span), message)
                        .with_hint(Some(hint.into())),
                )
            });
        }
        Ok(Document {
            path,
            text,
            root,
            diagnostics,
        })
    }

    /// The root table as a value, for a file that is one section (a sink or source table
    /// given as text).
    pub fn root_value(&self) -> Spanned<DeValue<'i>> {
        Spanned::new(0..0, DeValue::Table(self.root.get_ref().clone()))
    }

    /// Records a diagnostic at `span`.
    pub fn error(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::spanned(self.path, self.text, span, message).with_hint(hint));
    }

    /// Reports keys of `table` that are not in `allowed`.
    pub fn check_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], context: &str) {
        for (key, _) in table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                let hint = match did_you_mean(key.get_ref(), allowed) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("{context} accepts: {}", quoted(allowed)),
                };
                self.error(
                    Some(key.span()),
                    format!("unknown key `{}` in {context}", key.get_ref()),
                    Some(hint),
                );
            }
        }
    }

    /// Deserializes one section; on failure records a diagnostic at the most precise place
    /// known and returns `None`. `kinds` lists the valid `kind` values of a tagged section.
    pub fn section<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'i>>,
        context: &str,
        kinds: &[&str],
    ) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                let (span, message, hint) = explain(value, e.message(), e.span(), context, kinds);
                self.error(span, message, hint);
                None
            }
        }
    }

    /// The `kind` of a tagged section (`[source]`, `[sink]`, a `[[steps]]` table) and the
    /// section without it, to deserialize as that kind's config with
    /// [`section`](Self::section). A missing or unknown kind is reported (at the `kind` value,
    /// with the valid kinds and a did-you-mean hint) and gives `None`.
    pub fn tagged(
        &mut self,
        value: &Spanned<DeValue<'i>>,
        context: &str,
        kinds: &[&str],
    ) -> Option<(String, Spanned<DeValue<'i>>)> {
        let Some(table) = value.get_ref().as_table() else {
            self.error(
                Some(value.span()),
                format!("{context}: expected a table with a `kind`"),
                Some(format!("one of {}", quoted(kinds))),
            );
            return None;
        };
        let Some((_, kind)) = table.get_key_value("kind") else {
            self.error(
                Some(value.span()),
                format!("missing key `kind` in {context}"),
                Some(format!("add `kind = \"...\"`, one of {}", quoted(kinds))),
            );
            return None;
        };
        let Some(name) = kind.get_ref().as_str() else {
            self.error(
                Some(kind.span()),
                format!("{context}: `kind` must be a string"),
                Some(format!("one of {}", quoted(kinds))),
            );
            return None;
        };
        if !kinds.contains(&name) {
            let hint = match did_you_mean(name, kinds) {
                Some(m) => format!("did you mean `{m}`? valid kinds: {}", quoted(kinds)),
                None => format!("valid kinds: {}", quoted(kinds)),
            };
            self.error(
                Some(kind.span()),
                format!("unknown kind `{name}` in {context}"),
                Some(hint),
            );
            return None;
        }
        let name = name.to_string();
        let mut rest = table.clone();
        rest.remove("kind");
        Some((name, Spanned::new(value.span(), DeValue::Table(rest))))
    }

    /// Records `e`, a component's check failure, at the key it names inside `value` (at the
    /// fault inside the key's string when its offset is known), else at `value`.
    pub fn report(&mut self, value: &Spanned<DeValue<'_>>, context: &str, e: BuildError) {
        let span = e
            .key
            .as_deref()
            .and_then(|key| self.offset_in_string(value, key, e.offset))
            .or(Some(value.span()));
        let message = match &e.key {
            Some(key) => format!("{context} `{key}`: {}", e.message),
            None => format!("{context}: {}", e.message),
        };
        self.error(span, message, e.hint);
    }

    /// Byte offset of character `offset` inside the string value of `key` in `table`.
    pub fn offset_in_string(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        offset: Option<usize>,
    ) -> Option<Range<usize>> {
        let table = value.get_ref().as_table()?;
        let (_, v) = table.get_key_value(key)?;
        let span = v.span();
        let Some(offset) = offset else {
            return Some(span);
        };
        // Skip the opening quote(s), and the line break TOML drops right after a triple
        // quote. Exact for strings without escapes (JMESPath offsets count bytes).
        let raw = &self.text[span.clone()];
        let mut quote = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
            3
        } else {
            1
        };
        if quote == 3 {
            if raw[3..].starts_with("\r\n") {
                quote += 2;
            } else if raw[3..].starts_with('\n') {
                quote += 1;
            }
        }
        let inner = &raw[quote.min(raw.len())..];
        let mut byte = offset.min(inner.len());
        while !inner.is_char_boundary(byte) {
            byte -= 1;
        }
        let start = span.start + quote + byte;
        Some(start..start)
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn between_backticks(message: &str, after: &str) -> Option<String> {
    let rest = &message[message.find(after)? + after.len()..];
    let rest = rest.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_string())
}

fn expected_names(message: &str) -> Vec<String> {
    let Some(i) = message.find("expected") else {
        return Vec::new();
    };
    message[i..]
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

fn key_span(value: &Spanned<DeValue<'_>>, key: &str) -> Option<Range<usize>> {
    value
        .get_ref()
        .as_table()?
        .get_key_value(key)
        .map(|(k, _)| k.span())
}

/// Turns a serde message into a place, a message and a hint.
fn explain(
    value: &Spanned<DeValue<'_>>,
    message: &str,
    span: Option<Range<usize>>,
    context: &str,
    kinds: &[&str],
) -> (Option<Range<usize>>, String, Option<String>) {
    let message = message.trim();
    if let Some(field) = between_backticks(message, "unknown field ") {
        let expected = expected_names(message);
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        let hint = match did_you_mean(&field, &expected) {
            Some(m) => Some(format!("did you mean `{m}`?")),
            None if expected.is_empty() => Some(format!("{context} takes no other keys")),
            None => Some(format!("{context} accepts: {}", quoted(&expected))),
        };
        let span = key_span(value, &field).or(span);
        return (span, format!("unknown key `{field}` in {context}"), hint);
    }
    if let Some(variant) = between_backticks(message, "unknown variant ") {
        let hint = match did_you_mean(&variant, kinds) {
            Some(m) => format!("did you mean `{m}`? valid kinds: {}", quoted(kinds)),
            None => format!("valid kinds: {}", quoted(kinds)),
        };
        let span = value
            .get_ref()
            .as_table()
            .and_then(|t| t.get_key_value("kind"))
            .map(|(_, v)| v.span())
            .or(span);
        return (
            span,
            format!("unknown kind `{variant}` in {context}"),
            Some(hint),
        );
    }
    if let Some(field) = between_backticks(message, "missing field ") {
        let hint = if field == "kind" && !kinds.is_empty() {
            format!("add `kind = \"...\"`, one of {}", quoted(kinds))
        } else {
            format!("add `{field} = ...` to {context}")
        };
        return (
            Some(value.span()),
            format!("missing key `{field}` in {context}"),
            Some(hint),
        );
    }
    (
        span.or(Some(value.span())),
        format!("{context}: {message}"),
        None,
    )
}

fn interpolate_value(
    value: &mut Spanned<DeValue<'_>>,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(Range<usize>, String),
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains('$') => match interpolate(s, lookup) {
            Ok(new) => *s = new.into(),
            Err(message) => report(span, message),
        },
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                interpolate_value(item, lookup, report);
            }
        }
        DeValue::Table(table) => {
            for (_, item) in table.iter_mut() {
                interpolate_value(item, lookup, report);
            }
        }
        _ => {}
    }
}
