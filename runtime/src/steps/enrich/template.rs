//! The URL template of an `enrich` step: `text{expression}text`, each expression's result
//! percent-encoded into the URL.

use crate::error::BuildError;
use crate::jmes::Expr;

/// One piece of a URL template.
#[derive(Debug)]
pub(super) enum Part {
    Text(String),
    Expr(Expr),
}

/// Parses `text{expr}text`; `{{`/`}}` are literal braces; an expression may hold balanced
/// braces (a multi-select hash).
pub(super) fn parse_template(url: &str) -> Result<Vec<Part>, BuildError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = url.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let start = i + 1;
                let mut depth = 1;
                let mut end = None;
                for (j, c) in chars.by_ref() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    return Err(
                        BuildError::at("url", format!("unclosed `{{` at character {i}"))
                            .with_hint("close the expression with `}`, or write `{{` for a brace"),
                    );
                };
                let source = url[start..end].trim();
                let expr = Expr::compile(source).map_err(|e| {
                    let mut err = e.at("url");
                    err.offset = err.offset.map(|o| o + start);
                    err
                })?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Expr(expr));
            }
            '}' => {
                return Err(
                    BuildError::at("url", format!("unmatched `}}` at character {i}"))
                        .with_hint("write `}}` for a literal brace"),
                )
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// The first `.` or `..` segment (also written `%2e`) of the path of `url`, an absolute URL
/// as the template rendered it (before any parser resolved it).
pub(super) fn dot_segment(url: &str) -> Option<&str> {
    let after_scheme = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path = match after_scheme.find('/') {
        Some(i) => &after_scheme[i..],
        None => return None,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').find(|segment| {
        let lower = segment.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    })
}

/// Characters a template value keeps as they are: RFC 3986 unreserved.
pub(super) const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

