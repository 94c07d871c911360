//! The XML ⇄ JSON convention of the `xml_to_json` and `json_to_xml` steps.
//!
//! # XML → JSON ([`xml_to_json`])
//!
//! - The document becomes an object with a single key, the root element:
//!   `{"GL_MarketDocument": {...}}`.
//! - Attributes become keys `"@name"` with string values.
//! - An element with attributes or child elements is an object. Its text, if any non-whitespace
//!   text exists, goes under `"#text"`.
//! - A text-only element (no attributes, no children) is a plain JSON string. An empty element
//!   without attributes (`<a/>`, `<a></a>` or whitespace only) is the empty string `""`. An empty
//!   element with attributes is an object holding only its `"@"` keys.
//! - Sibling elements with the same name become an array in document order (their interleaving
//!   with other siblings is not kept: `<b/><c/><b/>` gives `"b": ["", ""], "c": ""`).
//!   [`XmlToJsonOptions::arrays`] lists element names that are always arrays, even when they occur
//!   once. Names are matched against the JSON key (and, with [`Namespaces::Keep`], also against
//!   the local name). The root element is never turned into an array.
//! - Namespaces: with [`Namespaces::Strip`] (the default) prefixes are removed from element and
//!   attribute names (`soapenv:Envelope` → `Envelope`, `xsi:type` → `@type`) and the `xmlns` /
//!   `xmlns:*` attributes are dropped; if two attributes of one element end up with the same
//!   name, the last one wins. With [`Namespaces::Keep`] the names are kept as written, including
//!   `@xmlns` and `@xmlns:p`.
//! - All values are strings (XML has no types). The character content of an element (text, the
//!   predefined entities `&lt;` `&gt;` `&amp;` `&apos;` `&quot;`, character references and CDATA
//!   sections, concatenated) is trimmed of leading and trailing XML whitespace (space, tab, CR,
//!   LF); line ends are normalised to `\n`. Whitespace-only text between elements is ignored.
//!   Attribute values are normalised as XML requires (a literal tab or line end becomes a space,
//!   `&#10;` stays a line feed) but not trimmed.
//! - Comments, processing instructions and the XML declaration are ignored. A DOCTYPE is refused
//!   (hostile input: no DTD, no entity declarations, no entity expansion).
//! - Only UTF-8 input is accepted (a UTF-8 byte order mark is skipped).
//! - Errors, never panics: malformed XML (mismatched or unclosed tags, bad syntax, unknown
//!   entities, duplicated attributes, text or elements after the root element, elements nested
//!   deeper than 128 levels) is [`XmlError::Malformed`] with the byte position, line and column.
//!
//! # JSON → XML ([`json_to_xml`])
//!
//! The inverse: objects become child elements, `"@x"` keys attributes, `"#text"` the text, arrays
//! repeated elements named by their key, strings, numbers and booleans text; `null` is an empty
//! element (and a `null` attribute or `"#text"` is left out). Inside an element, attributes come
//! first, then `"#text"`, then the children in the order of the JSON object (alphabetical with
//! serde_json's default map). An empty string or `null` is written as a self-closing `<a/>`. The
//! output starts with `<?xml version="1.0" encoding="UTF-8"?>` and is not indented. Text and
//! attribute values are escaped (`&lt;` `&gt;` `&amp;`, plus `&quot;` and tab / line-end
//! character references in attributes); characters XML 1.0 cannot carry (most C0 controls,
//! U+FFFE, U+FFFF) are an error. Keys must be XML names with at most one colon (a namespace
//! prefix); any other `#` key than `"#text"` is rejected.
//!
//! For every value produced by [`xml_to_json`], `xml_to_json(json_to_xml(v)) == v` (with the same
//! options). What XML cannot carry is lost on the way back: leading or trailing whitespace of
//! text, empty arrays, the difference between `null`, numbers, booleans and strings.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// Deepest element nesting accepted by [`xml_to_json`] and produced by [`json_to_xml`]: deeper
/// documents are rejected instead of building values whose recursive drop, serialisation or
/// conversion could overflow a thread's stack (128 is also serde_json's parsing limit).
const MAX_DEPTH: usize = 128;

/// Most elements accepted by [`xml_to_json`] in one document (hostile input: a small body of
/// many empty elements must not become an unbounded JSON value).
pub const MAX_ELEMENTS: usize = 1_000_000;

/// The key under which the text of an element with attributes or children is stored.
const TEXT_KEY: &str = "#text";

const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// How namespace prefixes are treated.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Namespaces {
    /// Remove prefixes (`soapenv:Envelope` → `Envelope`) and drop `xmlns` / `xmlns:*` attributes.
    #[default]
    Strip,
    /// Keep qualified names as written, including the `xmlns` attributes (`@xmlns`, `@xmlns:p`).
    Keep,
}

/// Options of the XML -> JSON conversion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XmlToJsonOptions {
    /// Element names (after prefix stripping) that always become arrays, even when they occur
    /// once.
    pub arrays: HashSet<String>,
    /// How namespace prefixes are treated.
    pub namespaces: Namespaces,
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The input is not well-formed XML.
    #[error("malformed XML at line {line}, column {column} (byte {position}): {message}")]
    Malformed {
        message: String,
        /// Byte offset in the input.
        position: usize,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
    },
    /// The input is not valid UTF-8.
    #[error(
        "XML input is not valid UTF-8 at byte {position} (line {line}, column {column}); \
         only UTF-8 documents are supported"
    )]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        position: usize,
        line: usize,
        column: usize,
    },
    /// The input holds no element at all (empty, whitespace, comments or declarations only).
    #[error("XML document has no root element")]
    NoRoot,
    /// A second top-level element follows the root element.
    #[error(
        "XML document has more than one root element: <{name}> at line {line}, column {column} \
         (byte {position}) follows the root element"
    )]
    MultipleRoots {
        /// Name of the second top-level element, as written.
        name: String,
        position: usize,
        line: usize,
        column: usize,
    },
    /// A JSON value has no XML representation.
    #[error("JSON value at {} cannot be converted to XML: {reason}", display_pointer(.path))]
    NotConvertible {
        /// JSON pointer (RFC 6901) of the offending value, `""` for the whole value.
        path: String,
        reason: String,
    },
    /// A JSON key (or the root name) is not a valid XML element or attribute name.
    #[error("invalid XML name {name:?} at {}", display_pointer(.path))]
    InvalidName {
        name: String,
        /// JSON pointer (RFC 6901) of the value under that key.
        path: String,
    },
}

fn display_pointer(path: &str) -> String {
    if path.is_empty() {
        "the top level".to_owned()
    } else {
        format!("`{path}`")
    }
}

// ---------------------------------------------------------------------------------------------
// XML -> JSON
// ---------------------------------------------------------------------------------------------

/// Converts an XML document to JSON following the convention of this module.
pub fn xml_to_json(input: &[u8], opts: &XmlToJsonOptions) -> Result<Value, XmlError> {
    let src = std::str::from_utf8(input).map_err(|e| {
        let position = e.valid_up_to();
        let (line, column) = line_col(input, position);
        XmlError::NotUtf8 {
            position,
            line,
            column,
        }
    })?;
    Converter { src, opts }.run()
}

/// An element being built.
struct Frame<'a> {
    /// Its key in the parent object.
    key: String,
    /// Always an array (from `XmlToJsonOptions::arrays`).
    force_array: bool,
    /// Attributes and children so far.
    map: Map<String, Value>,
    /// Character content so far, leading whitespace already trimmed. Borrowed from the input
    /// while it is a single piece.
    text: Cow<'a, str>,
}

struct Converter<'a, 'o> {
    src: &'a str,
    opts: &'o XmlToJsonOptions,
}

impl<'a> Converter<'a, '_> {
    fn run(&self) -> Result<Value, XmlError> {
        let mut reader = Reader::from_str(self.src);
        {
            let config = reader.config_mut();
            config.check_end_names = true;
            config.allow_unmatched_ends = false;
            config.allow_dangling_amp = false;
            config.expand_empty_elements = false;
            config.trim_text(false);
        }
        let mut version = XmlVersion::Implicit1_0;
        let mut stack: Vec<Frame<'a>> = Vec::with_capacity(16);
        let mut root: Option<(String, Value)> = None;
        let mut elements = 0usize;

        loop {
            let event_start = reader.buffer_position() as usize;
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(e) => {
                    return Err(self.malformed(reader.error_position() as usize, e.to_string()))
                }
            };
            if matches!(event, Event::Start(_) | Event::Empty(_)) {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(self.malformed(
                        event_start,
                        format!("the document has more than {MAX_ELEMENTS} elements"),
                    ));
                }
            }
            match event {
                Event::Start(start) => {
                    let frame = self.open(&start, &stack, &root, event_start, version)?;
                    stack.push(frame);
                }
                Event::Empty(start) => {
                    let frame = self.open(&start, &stack, &root, event_start, version)?;
                    attach(&mut stack, &mut root, frame);
                }
                Event::End(_) => match stack.pop() {
                    Some(frame) => attach(&mut stack, &mut root, frame),
                    // Unreachable with `allow_unmatched_ends = false`, kept as a safety net.
                    None => {
                        return Err(self.malformed(event_start, "close tag without open tag".into()))
                    }
                },
                Event::Text(text) => match stack.last_mut() {
                    Some(frame) => {
                        // Fast path: whitespace between elements.
                        if frame.text.is_empty() && is_xml_whitespace(&text) {
                            continue;
                        }
                        push_text(frame, text.xml_content(version));
                    }
                    None => {
                        if !is_xml_whitespace(&text) {
                            return Err(self.outside_root(event_start, root.is_some()));
                        }
                    }
                },
                Event::CData(cdata) => match stack.last_mut() {
                    Some(frame) => push_text(frame, cdata.xml_content(version)),
                    None => return Err(self.outside_root(event_start, root.is_some())),
                },
                Event::GeneralRef(reference) => {
                    let Some(frame) = stack.last_mut() else {
                        return Err(self.outside_root(event_start, root.is_some()));
                    };
                    if reference.is_char_ref() {
                        match reference.resolve_char_ref() {
                            Ok(Some(ch)) => {
                                let mut buf = [0u8; 4];
                                let s: &str = ch.encode_utf8(&mut buf);
                                push_text(frame, Cow::Owned(s.to_owned()));
                            }
                            Ok(None) | Err(_) => {
                                return Err(self.malformed(
                                    event_start,
                                    format!("invalid character reference `&{};`", &*reference),
                                ))
                            }
                        }
                    } else {
                        match resolve_predefined_entity(&reference) {
                            Some(s) => push_text(frame, Cow::Borrowed(s)),
                            None => {
                                return Err(self.malformed(
                                    event_start,
                                    format!(
                                        "unknown entity `&{};` (only the predefined XML \
                                         entities are supported)",
                                        &*reference
                                    ),
                                ))
                            }
                        }
                    }
                }
                Event::Decl(decl) => {
                    if let Ok(v) = decl.xml_version() {
                        version = v;
                    }
                }
                // Hostile input: a DTD can declare entities that expand without bound.
                Event::DocType(_) => {
                    return Err(self.malformed(
                        event_start,
                        "a DOCTYPE is not accepted (no DTD, no entity declarations)".into(),
                    ))
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => {
                    if let Some(frame) = stack.last() {
                        return Err(self.malformed(
                            self.src.len(),
                            format!(
                                "unexpected end of input: element <{}> is not closed",
                                frame.key
                            ),
                        ));
                    }
                    let (key, value) = root.ok_or(XmlError::NoRoot)?;
                    let mut map = Map::new();
                    map.insert(key, value);
                    return Ok(Value::Object(map));
                }
            }
        }
    }

    /// Starts a frame for an element: its key and attributes.
    fn open(
        &self,
        start: &BytesStart<'_>,
        stack: &[Frame<'a>],
        root: &Option<(String, Value)>,
        event_start: usize,
        version: XmlVersion,
    ) -> Result<Frame<'a>, XmlError> {
        let qname = start.name().0;
        if stack.is_empty() && root.is_some() {
            let (line, column) = line_col(self.src.as_bytes(), event_start);
            return Err(XmlError::MultipleRoots {
                name: qname.to_owned(),
                position: event_start,
                line,
                column,
            });
        }
        if stack.len() >= MAX_DEPTH {
            return Err(self.malformed(
                event_start,
                format!("elements are nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let keep = self.opts.namespaces == Namespaces::Keep;
        let local = local_name(qname);
        let key = if keep { qname } else { local };
        let force_array = !stack.is_empty()
            && !self.opts.arrays.is_empty()
            && (self.opts.arrays.contains(key) || (keep && self.opts.arrays.contains(local)));

        let mut map = Map::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| self.malformed(event_start, e.to_string()))?;
            let name = attr.key.0;
            let is_xmlns = name == "xmlns" || name.starts_with("xmlns:");
            if is_xmlns && !keep {
                continue;
            }
            let name = if keep { name } else { local_name(name) };
            let value = attr
                .normalized_value(version)
                .map_err(|e| self.malformed(event_start, e.to_string()))?;
            let mut attr_key = String::with_capacity(name.len() + 1);
            attr_key.push('@');
            attr_key.push_str(name);
            map.insert(attr_key, Value::String(value.into_owned()));
        }
        Ok(Frame {
            key: key.to_owned(),
            force_array,
            map,
            text: Cow::Borrowed(""),
        })
    }

    fn malformed(&self, position: usize, message: String) -> XmlError {
        let position = position.min(self.src.len());
        let (line, column) = line_col(self.src.as_bytes(), position);
        XmlError::Malformed {
            message,
            position,
            line,
            column,
        }
    }

    fn outside_root(&self, position: usize, after_root: bool) -> XmlError {
        let message = if after_root {
            "content after the root element"
        } else {
            "text before the root element"
        };
        self.malformed(position, message.to_owned())
    }
}

/// Adds a finished element to its parent, or makes it the root.
fn attach<'a>(stack: &mut [Frame<'a>], root: &mut Option<(String, Value)>, frame: Frame<'a>) {
    let Frame {
        key,
        force_array,
        mut map,
        text,
    } = frame;
    let text = trim_end_cow(text);
    let value = if map.is_empty() {
        Value::String(text.into_owned())
    } else {
        if !text.is_empty() {
            map.insert(TEXT_KEY.to_owned(), Value::String(text.into_owned()));
        }
        Value::Object(map)
    };
    match stack.last_mut() {
        Some(parent) => match parent.map.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(if force_array {
                    Value::Array(vec![value])
                } else {
                    value
                });
            }
            Entry::Occupied(mut slot) => match slot.get_mut() {
                // Element values are never arrays, so an array here is a repetition list.
                Value::Array(items) => items.push(value),
                other => {
                    let first = std::mem::take(other);
                    *other = Value::Array(vec![first, value]);
                }
            },
        },
        None => *root = Some((key, value)),
    }
}

fn push_text<'a>(frame: &mut Frame<'a>, piece: Cow<'a, str>) {
    if frame.text.is_empty() {
        let piece = trim_start_cow(piece);
        if !piece.is_empty() {
            frame.text = piece;
        }
    } else {
        frame.text.to_mut().push_str(&piece);
    }
}

#[inline]
fn is_xml_ws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

#[inline]
fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn trim_start_cow(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim_start_matches(is_xml_ws_char)),
        Cow::Owned(mut o) => {
            let cut = o.len() - o.trim_start_matches(is_xml_ws_char).len();
            o.drain(..cut);
            Cow::Owned(o)
        }
    }
}

fn trim_end_cow(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim_end_matches(is_xml_ws_char)),
        Cow::Owned(mut o) => {
            let len = o.trim_end_matches(is_xml_ws_char).len();
            o.truncate(len);
            Cow::Owned(o)
        }
    }
}

fn local_name(qname: &str) -> &str {
    match qname.find(':') {
        Some(i) => &qname[i + 1..],
        None => qname,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(input: &[u8], position: usize) -> (usize, usize) {
    let before = &input[..position.min(input.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let column = 1 + before[line_start..]
        .iter()
        .filter(|&&b| (b & 0xC0) != 0x80)
        .count();
    (line, column)
}

// ---------------------------------------------------------------------------------------------
// JSON -> XML
// ---------------------------------------------------------------------------------------------

/// Converts JSON to an XML document following the convention of this module.
///
/// `root` names the root element and `value` is its content. Without `root`, `value` must be an
/// object with exactly one key: the root element (the shape [`xml_to_json`] produces).
pub fn json_to_xml(value: &Value, root: Option<&str>) -> Result<Vec<u8>, XmlError> {
    let mut out = String::with_capacity(256);
    out.push_str(XML_DECLARATION);
    let result = match root {
        Some(name) => write_root(&mut out, name, value),
        None => match value {
            Value::Object(map) if map.len() == 1 => {
                let (name, content) = map.iter().next().expect("one entry");
                write_root(&mut out, name, content).map_err(|e| e.within(name))
            }
            Value::Object(map) => Err(PathError::not_convertible(format!(
                "without a root name the value must be an object with exactly one key (the \
                 root element), found {} keys",
                map.len()
            ))),
            other => Err(PathError::not_convertible(format!(
                "without a root name the value must be an object with exactly one key (the \
                 root element), found {}",
                crate::error::type_name(other)
            ))),
        },
    };
    result.map_err(PathError::into_xml_error)?;
    Ok(out.into_bytes())
}

fn write_root(out: &mut String, name: &str, value: &Value) -> Result<(), PathError> {
    if !is_valid_name(name) {
        return Err(PathError::invalid_name(name));
    }
    if value.is_array() {
        return Err(PathError::not_convertible(
            "the root element cannot be an array: an XML document has exactly one root element"
                .to_owned(),
        ));
    }
    write_element(out, name, value, 1)
}

/// An error of `json_to_xml` whose JSON pointer is built while unwinding.
struct PathError {
    /// Path segments, innermost first.
    segments: Vec<String>,
    kind: PathErrorKind,
}

enum PathErrorKind {
    NotConvertible(String),
    InvalidName(String),
}

impl PathError {
    fn not_convertible(reason: String) -> Self {
        PathError {
            segments: Vec::new(),
            kind: PathErrorKind::NotConvertible(reason),
        }
    }

    fn invalid_name(name: &str) -> Self {
        PathError {
            segments: Vec::new(),
            kind: PathErrorKind::InvalidName(name.to_owned()),
        }
    }

    fn within(mut self, segment: impl ToString) -> Self {
        self.segments.push(segment.to_string());
        self
    }

    fn into_xml_error(self) -> XmlError {
        let mut path = String::new();
        for segment in self.segments.iter().rev() {
            path.push('/');
            // RFC 6901 escaping.
            for c in segment.chars() {
                match c {
                    '~' => path.push_str("~0"),
                    '/' => path.push_str("~1"),
                    c => path.push(c),
                }
            }
        }
        match self.kind {
            PathErrorKind::NotConvertible(reason) => XmlError::NotConvertible { path, reason },
            PathErrorKind::InvalidName(name) => XmlError::InvalidName { name, path },
        }
    }
}

/// Writes `<name ...>...</name>` for a value that is not an array.
fn write_element(
    out: &mut String,
    name: &str,
    value: &Value,
    depth: usize,
) -> Result<(), PathError> {
    if depth > MAX_DEPTH {
        return Err(PathError::not_convertible(format!(
            "elements are nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match value {
        Value::Null => empty_tag(out, name),
        Value::Bool(b) => simple_element(out, name, if *b { "true" } else { "false" }),
        Value::Number(n) => {
            open_tag(out, name);
            out.push('>');
            let _ = write!(out, "{n}");
            close_tag(out, name);
        }
        Value::String(s) if s.is_empty() => empty_tag(out, name),
        Value::String(s) => {
            open_tag(out, name);
            out.push('>');
            escape(out, s, false).map_err(PathError::not_convertible)?;
            close_tag(out, name);
        }
        Value::Array(_) => {
            return Err(PathError::not_convertible(
                "an array directly inside an array has no XML representation".to_owned(),
            ))
        }
        Value::Object(map) => write_object(out, name, map, depth)?,
    }
    Ok(())
}

fn write_object(
    out: &mut String,
    name: &str,
    map: &Map<String, Value>,
    depth: usize,
) -> Result<(), PathError> {
    open_tag(out, name);
    let mut has_content = false;
    let mut text = None;
    for (key, value) in map {
        if let Some(attr) = key.strip_prefix('@') {
            if !is_valid_name(attr) {
                return Err(PathError::invalid_name(key).within(key));
            }
            let write_attr = |out: &mut String, s: &str| -> Result<(), PathError> {
                out.push(' ');
                out.push_str(attr);
                out.push_str("=\"");
                escape(out, s, true).map_err(|r| PathError::not_convertible(r).within(key))?;
                out.push('"');
                Ok(())
            };
            match value {
                Value::Null => {}
                Value::String(s) => write_attr(out, s)?,
                Value::Bool(b) => write_attr(out, if *b { "true" } else { "false" })?,
                Value::Number(n) => write_attr(out, &n.to_string())?,
                other => {
                    return Err(PathError::not_convertible(format!(
                        "an attribute value must be a string, number, boolean or null, found {}",
                        crate::error::type_name(other)
                    ))
                    .within(key))
                }
            }
        } else if key == TEXT_KEY {
            match value {
                Value::Null => {}
                Value::String(s) if s.is_empty() => {}
                Value::String(_) | Value::Bool(_) | Value::Number(_) => {
                    has_content = true;
                    text = Some(value);
                }
                other => {
                    return Err(PathError::not_convertible(format!(
                        "\"#text\" must be a string, number, boolean or null, found {}",
                        crate::error::type_name(other)
                    ))
                    .within(key))
                }
            }
        } else {
            has_content = true;
        }
    }
    if !has_content {
        out.push_str("/>");
        return Ok(());
    }
    out.push('>');
    match text {
        Some(Value::String(s)) => {
            escape(out, s, false).map_err(|r| PathError::not_convertible(r).within(TEXT_KEY))?
        }
        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::Number(n)) => {
            let _ = write!(out, "{n}");
        }
        _ => {}
    }
    for (key, value) in map {
        if key.starts_with('@') || key == TEXT_KEY {
            continue;
        }
        if !is_valid_name(key) {
            return Err(PathError::invalid_name(key).within(key));
        }
        match value {
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    write_element(out, key, item, depth + 1)
                        .map_err(|e| e.within(index).within(key))?;
                }
            }
            _ => write_element(out, key, value, depth + 1).map_err(|e| e.within(key))?,
        }
    }
    close_tag(out, name);
    Ok(())
}

#[inline]
fn open_tag(out: &mut String, name: &str) {
    out.push('<');
    out.push_str(name);
}

#[inline]
fn close_tag(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

#[inline]
fn empty_tag(out: &mut String, name: &str) {
    open_tag(out, name);
    out.push_str("/>");
}

fn simple_element(out: &mut String, name: &str, text: &str) {
    open_tag(out, name);
    out.push('>');
    out.push_str(text);
    close_tag(out, name);
}

/// Appends `s` escaped for text (`attr == false`) or a double-quoted attribute value. Fails on
/// characters XML 1.0 cannot represent at all, not even as character references.
fn escape(out: &mut String, s: &str, attr: bool) -> Result<(), String> {
    let bytes = s.as_bytes();
    let mut last = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            // Would be normalised to a line feed (text) or a space (attributes).
            b'\r' => "&#13;",
            b'"' if attr => "&quot;",
            b'\n' if attr => "&#10;",
            b'\t' if attr => "&#9;",
            b'\n' | b'\t' | b'"' => continue,
            0x00..=0x1F => {
                return Err(format!(
                    "the string contains the character U+{b:04X}, which XML 1.0 cannot represent"
                ))
            }
            // U+FFFE and U+FFFF (EF BF BE / EF BF BF) are not XML characters either.
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE) | Some(0xBF)) =>
            {
                return Err(
                    "the string contains U+FFFE or U+FFFF, which XML 1.0 cannot represent"
                        .to_owned(),
                )
            }
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(replacement);
        last = i + 1;
    }
    out.push_str(&s[last..]);
    Ok(())
}

/// Whether `name` is an XML 1.0 `Name` usable with namespaces: at most one colon, neither first
/// nor last.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c != ':' && is_name_start_char(c) => {}
        _ => return false,
    }
    if !chars.all(is_name_char) {
        return false;
    }
    match name.find(':') {
        None => true,
        Some(i) => i + 1 < name.len() && !name[i + 1..].contains(':'),
    }
}

fn is_name_start_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z' | '_' | ':'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A65: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/entsoe/A65-actual-total-load-BE.xml"
    );
    const A75: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/entsoe/A75-generation-per-type-NL.xml"
    );
    const A44: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/entsoe/A44-day-ahead-prices-FR.xml"
    );
    const SOAP: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/soap/generation-forecast-A67-soap11.xml"
    );
    const METER: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samples/meter/MeterReadings-head-end.xml"
    );
    const ALL_SAMPLES: [&str; 5] = [A65, A75, A44, SOAP, METER];

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read sample {path}: {e}"))
    }

    fn strip() -> XmlToJsonOptions {
        XmlToJsonOptions::default()
    }

    fn keep() -> XmlToJsonOptions {
        XmlToJsonOptions {
            namespaces: Namespaces::Keep,
            ..Default::default()
        }
    }

    fn with_arrays(names: &[&str]) -> XmlToJsonOptions {
        XmlToJsonOptions {
            arrays: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn conv(xml: &str) -> Value {
        xml_to_json(xml.as_bytes(), &strip()).unwrap_or_else(|e| panic!("{xml}: {e}"))
    }

    fn to_xml(value: &Value, root: Option<&str>) -> String {
        String::from_utf8(json_to_xml(value, root).unwrap()).unwrap()
    }

    // ----- samples -----

    #[test]
    fn a65_sample() {
        let v = xml_to_json(&read(A65), &strip()).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1);
        let doc = &v["GL_MarketDocument"];
        assert!(doc.is_object());
        // The default namespace declaration is dropped when stripping.
        assert!(doc.get("@xmlns").is_none());
        assert_eq!(doc["mRID"], "5c1d0e4f2a7b4c1e9d3f6a8b0c2e4d6f");
        assert_eq!(doc["revisionNumber"], "1");
        assert_eq!(doc["type"], "A65");
        assert_eq!(doc["process.processType"], "A16");
        assert_eq!(
            doc["sender_MarketParticipant.mRID"],
            json!({"@codingScheme": "A01", "#text": "10X1001A1001A450"})
        );
        assert_eq!(
            doc["time_Period.timeInterval"],
            json!({"start": "2026-01-13T23:00Z", "end": "2026-01-14T23:00Z"})
        );
        let ts = &doc["TimeSeries"];
        assert!(ts.is_object(), "a single TimeSeries is not an array");
        assert_eq!(
            ts["outBiddingZone_Domain.mRID"],
            json!({"@codingScheme": "A01", "#text": "10YBE----------2"})
        );
        assert_eq!(
            ts["outBiddingZone_Domain.mRID"]["#text"],
            "10YBE----------2"
        );
        assert_eq!(ts["Period"]["resolution"], "PT15M");
        let points = ts["Period"]["Point"].as_array().unwrap();
        assert_eq!(points.len(), 96);
        assert_eq!(points[0], json!({"position": "1", "quantity": "9175"}));
        assert_eq!(points[1], json!({"position": "2", "quantity": "10817"}));
        assert_eq!(points[95], json!({"position": "96", "quantity": "10330"}));
        for (i, p) in points.iter().enumerate() {
            assert_eq!(p["position"], (i + 1).to_string());
        }
    }

    #[test]
    fn a65_keep_namespaces_keeps_default_xmlns() {
        let v = xml_to_json(&read(A65), &keep()).unwrap();
        assert_eq!(
            v["GL_MarketDocument"]["@xmlns"],
            "urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0"
        );
        assert_eq!(
            v["GL_MarketDocument"]["mRID"],
            "5c1d0e4f2a7b4c1e9d3f6a8b0c2e4d6f"
        );
    }

    #[test]
    fn a75_sample_has_three_time_series() {
        let v = xml_to_json(&read(A75), &strip()).unwrap();
        let series = v["GL_MarketDocument"]["TimeSeries"].as_array().unwrap();
        assert_eq!(series.len(), 3);
        let psr: Vec<&str> = series
            .iter()
            .map(|s| s["MktPSRType"]["psrType"].as_str().unwrap())
            .collect();
        assert_eq!(psr, ["B16", "B19", "B14"]);
        for s in series {
            assert_eq!(s["Period"]["Point"].as_array().unwrap().len(), 24);
        }
    }

    #[test]
    fn a44_sample_prices() {
        let v = xml_to_json(&read(A44), &strip()).unwrap();
        let doc = &v["Publication_MarketDocument"];
        assert_eq!(doc["type"], "A44");
        let ts = &doc["TimeSeries"];
        assert_eq!(ts["curveType"], "A03");
        let points = ts["Period"]["Point"].as_array().unwrap();
        assert!(points.iter().all(|p| p["price.amount"].is_string()));
        // Position 7 is absent (curve type A03).
        assert!(points.iter().all(|p| p["position"] != "7"));
        assert_eq!(points[0]["position"], "1");
    }

    /// The example of docs/xml-json.md: objects keep the document's order (attributes first,
    /// an element repeated as an array at its first occurrence).
    #[test]
    fn objects_keep_the_document_order() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<gl:Reading xmlns:gl="urn:example:meter" id="M-17">
  <gl:unit>kWh</gl:unit>
  <quantity unit="MWh">12.5</quantity>
  <Point><position>1</position></Point>
  <status code="OK"/>
  <note>peak &amp; shoulder</note>
  <empty/>
  <Flag>a</Flag><Other>x</Other><Flag>b</Flag>
</gl:Reading>"#;
        let options = XmlToJsonOptions {
            arrays: HashSet::from(["Point".to_string()]),
            ..strip()
        };
        let v = xml_to_json(xml, &options).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            concat!(
                r##"{"Reading":{"@id":"M-17","unit":"kWh","quantity":{"@unit":"MWh","#text":"12.5"},"##,
                r#""Point":[{"position":"1"}],"status":{"@code":"OK"},"note":"peak & shoulder","#,
                r#""empty":"","Flag":["a","b"],"Other":"x"}}"#
            )
        );
    }

    #[test]
    fn soap_sample_prefixes_stripped() {
        let v = xml_to_json(&read(SOAP), &strip()).unwrap();
        assert_eq!(
            v.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["Envelope"]
        );
        let env = &v["Envelope"];
        // xmlns:soapenv is dropped, so the envelope holds only Header and Body, in the
        // document's order.
        assert_eq!(
            env.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["Header", "Body"]
        );
        let hdr = &env["Header"]["MessageAddressing"];
        assert_eq!(
            hdr,
            &json!({
                "technicalMessageId": "7b0e2c4a-9f1d-4e6b-a3c5-2d8f0b1e7a94",
                "senderId": "8712423000001",
                "receiverId": "8716867000002",
                "carrierId": "8712423000001",
                "contentType": "GenerationLoadForecast",
            })
        );
        let doc = &env["Body"]["GL_MarketDocument"];
        assert_eq!(doc["mRID"], "3e7a1c5b-0d2f-4a6e-8b1c-9f3d5e7a0b2c");
        assert_eq!(doc["type"], "A67");
        assert_eq!(
            doc["sender_MarketParticipant.mRID"],
            json!({"@codingScheme": "A10", "#text": "8712423000001"})
        );
        let points = doc["TimeSeries"]["Period"]["Point"].as_array().unwrap();
        assert_eq!(points.len(), 96);
        assert_eq!(points[0], json!({"position": "1", "quantity": "7.690"}));
        assert_eq!(points[95], json!({"position": "96", "quantity": "0.692"}));
    }

    #[test]
    fn soap_sample_prefixes_kept() {
        let v = xml_to_json(&read(SOAP), &keep()).unwrap();
        let env = &v["soapenv:Envelope"];
        assert_eq!(
            env["@xmlns:soapenv"],
            "http://schemas.xmlsoap.org/soap/envelope/"
        );
        let hdr = &env["soapenv:Header"]["hdr:MessageAddressing"];
        assert_eq!(hdr["@xmlns:hdr"], "urn:example:energy:hub:header:v1");
        assert_eq!(hdr["hdr:senderId"], "8712423000001");
        let doc = &env["soapenv:Body"]["gl:GL_MarketDocument"];
        assert_eq!(
            doc["@xmlns:gl"],
            "urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0"
        );
        assert_eq!(doc["gl:type"], "A67");
        // Unprefixed attributes stay unprefixed.
        assert_eq!(
            doc["gl:sender_MarketParticipant.mRID"],
            json!({"@codingScheme": "A10", "#text": "8712423000001"})
        );
        let points = doc["gl:TimeSeries"]["gl:Period"]["gl:Point"]
            .as_array()
            .unwrap();
        assert_eq!(points.len(), 96);
        assert_eq!(
            points[0],
            json!({"gl:position": "1", "gl:quantity": "7.690"})
        );
    }

    #[test]
    fn meter_sample_repeated_and_empty_with_attribute() {
        let v = xml_to_json(&read(METER), &strip()).unwrap();
        let readings = v["MeterReadings"]["MeterReading"].as_array().unwrap();
        assert_eq!(readings.len(), 3);
        let mrids: Vec<&str> = readings
            .iter()
            .map(|r| r["Meter"]["mRID"].as_str().unwrap())
            .collect();
        assert_eq!(
            mrids,
            [
                "FR-PRM-09182736450011",
                "FR-PRM-09182736450012",
                "FR-PRM-09182736450013"
            ]
        );
        let first = &readings[0];
        assert_eq!(first["UsagePoint"]["mRID"], "UP-450011");
        let blocks = &first["IntervalBlocks"];
        // Empty element with an attribute: an object with only the "@" key.
        assert_eq!(
            blocks["ReadingType"],
            json!({"@ref": "0.0.2.4.1.1.12.0.0.0.0.0.0.0.224.3.72.0"})
        );
        let interval = blocks["IntervalReadings"].as_array().unwrap();
        assert_eq!(interval.len(), 8);
        assert_eq!(
            interval[0],
            json!({
                "timeStamp": "2026-01-14T00:00:00Z",
                "value": "0.858",
                "ReadingQualities": {"ReadingQualityType": {"@ref": "1.0.0"}},
            })
        );
        assert_eq!(interval[7]["value"], "0.356");
        assert_eq!(
            readings[2]["IntervalBlocks"]["IntervalReadings"][7]["value"],
            "0.152"
        );
    }

    #[test]
    fn arrays_option_on_samples() {
        let opts = with_arrays(&["TimeSeries", "ReadingQualityType"]);
        let v = xml_to_json(&read(A65), &opts).unwrap();
        let series = v["GL_MarketDocument"]["TimeSeries"].as_array().unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0]["mRID"], "1");
        assert_eq!(series[0]["Period"]["Point"].as_array().unwrap().len(), 96);

        let v = xml_to_json(&read(METER), &opts).unwrap();
        assert_eq!(
            v["MeterReadings"]["MeterReading"][0]["IntervalBlocks"]["IntervalReadings"][0]
                ["ReadingQualities"]["ReadingQualityType"],
            json!([{"@ref": "1.0.0"}])
        );

        // With Keep, the local name matches too.
        let opts = XmlToJsonOptions {
            arrays: ["TimeSeries".to_string()].into_iter().collect(),
            namespaces: Namespaces::Keep,
        };
        let v = xml_to_json(&read(SOAP), &opts).unwrap();
        let series = v["soapenv:Envelope"]["soapenv:Body"]["gl:GL_MarketDocument"]["gl:TimeSeries"]
            .as_array()
            .unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0]["gl:businessType"], "A01");
    }

    #[test]
    fn samples_round_trip() {
        for path in ALL_SAMPLES {
            for opts in [
                strip(),
                keep(),
                with_arrays(&["TimeSeries", "Point", "Meter"]),
            ] {
                let v = xml_to_json(&read(path), &opts).unwrap();
                let xml = json_to_xml(&v, None).unwrap();
                assert!(xml.starts_with(br#"<?xml version="1.0" encoding="UTF-8"?><"#));
                let back = xml_to_json(&xml, &opts)
                    .unwrap_or_else(|e| panic!("{path}: re-parse failed: {e}"));
                assert_eq!(back, v, "{path} with {opts:?}");
            }
        }
    }

    #[test]
    fn round_trip_with_explicit_root() {
        let v = xml_to_json(&read(METER), &strip()).unwrap();
        let content = &v["MeterReadings"];
        let xml = json_to_xml(content, Some("MeterReadings")).unwrap();
        assert_eq!(xml_to_json(&xml, &strip()).unwrap(), v);
        let xml = json_to_xml(content, Some("Renamed")).unwrap();
        assert_eq!(
            xml_to_json(&xml, &strip()).unwrap(),
            json!({"Renamed": content})
        );
    }

    // ----- the convention, bullet by bullet -----

    #[test]
    fn root_is_single_key() {
        assert_eq!(conv("<r><a>1</a></r>"), json!({"r": {"a": "1"}}));
        assert_eq!(conv("<r>text</r>"), json!({"r": "text"}));
        assert_eq!(conv("<r/>"), json!({"r": ""}));
        assert_eq!(conv(r#"<r a="1"/>"#), json!({"r": {"@a": "1"}}));
    }

    #[test]
    fn attributes_become_at_keys() {
        assert_eq!(
            conv(r#"<r><m unit="MW" scale='3'>12</m></r>"#),
            json!({"r": {"m": {"@unit": "MW", "@scale": "3", "#text": "12"}}})
        );
        // Attribute values are strings, entities decoded, whitespace normalised but kept.
        assert_eq!(
            conv(
                "<r a=\"x &amp; &lt;y&gt; &quot;q&quot; &apos;\" b=\" 1\tand\n2 \" c=\"1&#10;2\"/>"
            ),
            json!({"r": {"@a": "x & <y> \"q\" '", "@b": " 1 and 2 ", "@c": "1\n2"}})
        );
    }

    #[test]
    fn text_with_attributes_or_children_goes_under_hash_text() {
        assert_eq!(
            conv(r#"<r><p id="1">hello</p></r>"#),
            json!({"r": {"p": {"@id": "1", "#text": "hello"}}})
        );
        // Mixed content: all text pieces are concatenated and trimmed.
        assert_eq!(
            conv("<r>\n  hello <b>bold</b> world\n</r>"),
            json!({"r": {"#text": "hello  world", "b": "bold"}})
        );
        // No "#text" when the text is whitespace only.
        assert_eq!(conv("<r id=\"1\">\n   \n</r>"), json!({"r": {"@id": "1"}}));
        assert_eq!(conv("<r>  <a>1</a>  </r>"), json!({"r": {"a": "1"}}));
    }

    #[test]
    fn text_only_and_empty_elements() {
        assert_eq!(
            conv("<r><a>x</a><b/><c></c><d>   </d><e k=\"v\"/><f k=\"v\"></f></r>"),
            json!({"r": {
                "a": "x",
                "b": "",
                "c": "",
                "d": "",
                "e": {"@k": "v"},
                "f": {"@k": "v"},
            }})
        );
    }

    #[test]
    fn repeated_siblings_become_arrays_in_document_order() {
        assert_eq!(
            conv("<r><p>1</p><p>2</p><p>3</p></r>"),
            json!({"r": {"p": ["1", "2", "3"]}})
        );
        // Non-adjacent repetitions are collected too; mixed shapes are kept per item.
        assert_eq!(
            conv(r#"<r><p>1</p><q/><p a="x">2</p><p/></r>"#),
            json!({"r": {"p": ["1", {"@a": "x", "#text": "2"}, ""], "q": ""}})
        );
        // Repetition is per parent.
        assert_eq!(
            conv("<r><s><p>1</p></s><s><p>2</p><p>3</p></s></r>"),
            json!({"r": {"s": [{"p": "1"}, {"p": ["2", "3"]}]}})
        );
    }

    #[test]
    fn arrays_option_forces_arrays() {
        let opts = with_arrays(&["p", "s"]);
        let v = xml_to_json(b"<r><s><p>1</p></s><q>x</q></r>", &opts).unwrap();
        assert_eq!(v, json!({"r": {"s": [{"p": ["1"]}], "q": "x"}}));
        let v = xml_to_json(b"<r><p>1</p><p>2</p></r>", &opts).unwrap();
        assert_eq!(v, json!({"r": {"p": ["1", "2"]}}));
        // Names are local names after stripping.
        let v = xml_to_json(br#"<x:r xmlns:x="u"><x:p>1</x:p></x:r>"#, &opts).unwrap();
        assert_eq!(v, json!({"r": {"p": ["1"]}}));
        // The root element is never an array.
        let opts = with_arrays(&["r"]);
        let v = xml_to_json(b"<r><p>1</p></r>", &opts).unwrap();
        assert_eq!(v, json!({"r": {"p": "1"}}));
    }

    #[test]
    fn namespaces_strip_and_keep() {
        let xml = br#"<s:Env xmlns:s="urn:s" xmlns="urn:d" xmlns:xsi="urn:xsi"><s:Body xsi:type="T" id="7"><s:V>1</s:V><V>2</V></s:Body></s:Env>"#;
        assert_eq!(
            xml_to_json(xml, &strip()).unwrap(),
            json!({"Env": {"Body": {"@type": "T", "@id": "7", "V": ["1", "2"]}}})
        );
        assert_eq!(
            xml_to_json(xml, &keep()).unwrap(),
            json!({"s:Env": {
                "@xmlns:s": "urn:s",
                "@xmlns": "urn:d",
                "@xmlns:xsi": "urn:xsi",
                "s:Body": {"@xsi:type": "T", "@id": "7", "s:V": "1", "V": "2"},
            }})
        );
        // An element whose only attributes are namespace declarations is text-only when
        // stripping.
        assert_eq!(
            xml_to_json(br#"<r xmlns="urn:x">v</r>"#, &strip()).unwrap(),
            json!({"r": "v"})
        );
    }

    #[test]
    fn namespaces_deserialize_lowercase() {
        let s: Namespaces = serde_json::from_str("\"strip\"").unwrap();
        assert_eq!(s, Namespaces::Strip);
        let k: Namespaces = serde_json::from_str("\"keep\"").unwrap();
        assert_eq!(k, Namespaces::Keep);
        assert!(serde_json::from_str::<Namespaces>("\"Keep\"").is_err());
        assert_eq!(Namespaces::default(), Namespaces::Strip);
    }

    #[test]
    fn values_stay_strings_and_text_is_trimmed() {
        assert_eq!(
            conv("<r><n>  42 </n><b>true</b><z>\n\t007\r\n</z></r>"),
            json!({"r": {"n": "42", "b": "true", "z": "007"}})
        );
        // Inner whitespace and line ends are kept (CRLF normalised to LF).
        assert_eq!(
            conv("<r>  line one\r\n  line two  </r>"),
            json!({"r": "line one\n  line two"})
        );
    }

    #[test]
    fn entities_cdata_and_char_refs_are_decoded() {
        assert_eq!(
            conv(
                "<r><a>a &lt; b &amp;&amp; c &gt; d &quot;&apos;</a><b>&#65;&#x42;&#x20AC;</b></r>"
            ),
            json!({"r": {"a": "a < b && c > d \"'", "b": "AB€"}})
        );
        assert_eq!(
            conv("<r><c><![CDATA[<not> & markup]]></c><d>x <![CDATA[y]]> z</d></r>"),
            json!({"r": {"c": "<not> & markup", "d": "x y z"}})
        );
        // Text starting with an entity.
        assert_eq!(conv("<r>&amp;x</r>"), json!({"r": "&x"}));
        // Non-ASCII text.
        assert_eq!(conv("<r>Zürich — 5 °C</r>"), json!({"r": "Zürich — 5 °C"}));
    }

    #[test]
    fn comments_pis_and_declaration_are_ignored() {
        let xml = "\u{FEFF}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                   <!-- before -->\n<?pi before?>\n\
                   <r><!-- inside --><a>1<!-- split -->2</a><?pi inside?><b/></r>\n\
                   <!-- after --><?pi after?>\n";
        assert_eq!(conv(xml), json!({"r": {"a": "12", "b": ""}}));
    }

    // ----- errors -----

    #[test]
    fn too_many_elements_are_refused() {
        let many = format!("<r>{}</r>", "<a/>".repeat(MAX_ELEMENTS));
        let e = err(many.as_bytes());
        assert!(e.to_string().contains("more than"), "{e}");
        let fine = format!("<r>{}</r>", "<a/>".repeat(1000));
        assert!(xml_to_json(fine.as_bytes(), &strip()).is_ok());
    }

    #[test]
    fn a_doctype_is_refused() {
        let bomb = b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><r>&lol2;</r>";
        let e = err(bomb);
        assert!(e.to_string().contains("DOCTYPE is not accepted"), "{e}");
        assert!(err(b"<!DOCTYPE r><r/>").to_string().contains("DOCTYPE"));
    }

    fn err(xml: &[u8]) -> XmlError {
        match xml_to_json(xml, &strip()) {
            Ok(v) => panic!("{:?} should fail, got {v}", String::from_utf8_lossy(xml)),
            Err(e) => e,
        }
    }

    #[test]
    fn mismatched_tag_is_malformed_with_position() {
        let e = err(b"<r>\n  <a>1</b>\n</r>");
        match &e {
            XmlError::Malformed {
                position,
                line,
                column,
                message,
            } => {
                assert_eq!((*line, *column, *position), (2, 7, 10));
                assert!(
                    message.contains("</a>") && message.contains("</b>"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("line 2, column 7"), "{e}");
    }

    #[test]
    fn truncated_documents_are_malformed() {
        let full = std::fs::read_to_string(A65).unwrap();
        let full = full.trim_end();
        for cut in [full.len() - 1, full.len() / 2, 120, 60, 45] {
            let e = err(&full.as_bytes()[..cut]);
            assert!(matches!(e, XmlError::Malformed { .. }), "cut {cut}: {e:?}");
        }
        assert!(matches!(err(b"<r><a>1</a>"), XmlError::Malformed { .. }));
        assert!(matches!(err(b"<r><a"), XmlError::Malformed { .. }));
        assert!(matches!(err(b"<r a=\"1></r>"), XmlError::Malformed { .. }));
        assert!(matches!(err(b"<r><!-- x</r>"), XmlError::Malformed { .. }));
        assert!(matches!(
            err(b"<r><![CDATA[x</r>"),
            XmlError::Malformed { .. }
        ));
        match err(b"<r>\n<a>") {
            XmlError::Malformed {
                message,
                line,
                column,
                ..
            } => {
                assert!(message.contains("<a>"), "{message}");
                assert_eq!((line, column), (2, 4));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn two_roots_is_an_error() {
        match err(b"<a>1</a>\n<b>2</b>") {
            XmlError::MultipleRoots {
                name,
                position,
                line,
                column,
            } => {
                assert_eq!(name, "b");
                assert_eq!((position, line, column), (9, 2, 1));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(err(b"<a/><a/>"), XmlError::MultipleRoots { .. }));
    }

    #[test]
    fn empty_or_rootless_input_is_an_error() {
        assert!(matches!(err(b""), XmlError::NoRoot));
        assert!(matches!(err(b"  \n\t "), XmlError::NoRoot));
        assert!(matches!(
            err(b"<?xml version=\"1.0\"?><!-- only a comment -->"),
            XmlError::NoRoot
        ));
    }

    #[test]
    fn text_outside_root_is_an_error() {
        match err(b"<r/>\ntrailing") {
            XmlError::Malformed {
                message,
                line,
                column,
                ..
            } => {
                assert!(message.contains("after the root"), "{message}");
                assert_eq!((line, column), (1, 5));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(err(b"garbage"), XmlError::Malformed { .. }));
        assert!(matches!(err(b"lead<r/>"), XmlError::Malformed { .. }));
        assert!(matches!(err(b"<r/>&amp;"), XmlError::Malformed { .. }));
        assert!(matches!(
            err(b"<r/><![CDATA[x]]>"),
            XmlError::Malformed { .. }
        ));
        assert!(matches!(
            err(b"{\"not\": \"xml\"}"),
            XmlError::Malformed { .. }
        ));
    }

    #[test]
    fn other_malformed_inputs() {
        // Close tag without open tag.
        assert!(matches!(err(b"<r></r></r>"), XmlError::Malformed { .. }));
        assert!(matches!(err(b"</r>"), XmlError::Malformed { .. }));
        // Unknown entity, invalid character reference, dangling ampersand.
        match err(b"<r>&nbsp;</r>") {
            XmlError::Malformed { message, .. } => assert!(message.contains("nbsp"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(err(b"<r>&#0;</r>"), XmlError::Malformed { .. }));
        assert!(matches!(err(b"<r>a & b</r>"), XmlError::Malformed { .. }));
        // Duplicated attribute, attribute without value.
        assert!(matches!(
            err(b"<r a=\"1\" a=\"2\"/>"),
            XmlError::Malformed { .. }
        ));
        assert!(matches!(err(b"<r a/>"), XmlError::Malformed { .. }));
        assert!(matches!(
            err(b"<r a=\"&bogus;\"/>"),
            XmlError::Malformed { .. }
        ));
    }

    #[test]
    fn not_utf8_is_an_error() {
        match err(b"<r>\n caf\xE9</r>") {
            XmlError::NotUtf8 {
                position,
                line,
                column,
            } => assert_eq!((position, line, column), (8, 2, 5)),
            other => panic!("unexpected {other:?}"),
        }
        // UTF-16 with BOM.
        assert!(matches!(
            err(b"\xFF\xFE<\0r\0/\0>\0"),
            XmlError::NotUtf8 { .. }
        ));
    }

    #[test]
    fn too_deep_nesting_is_an_error_not_a_crash() {
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(xml_to_json(ok.as_bytes(), &strip()).is_ok());
        let deep = "<a>".repeat(100_000);
        match err(deep.as_bytes()) {
            XmlError::Malformed { message, .. } => assert!(message.contains("deeper"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_never_panic_on_prefixes_of_samples() {
        // Every prefix of a real document is either valid or an error.
        let xml = read(METER);
        for cut in (0..xml.len()).step_by(7) {
            let _ = xml_to_json(&xml[..cut], &strip());
        }
    }

    // ----- JSON -> XML -----

    #[test]
    fn json_to_xml_basic_shape() {
        let v = json!({"r": {
            "@id": "7",
            "#text": "hello",
            "a": "1",
            "b": ["x", "y"],
            "c": {"@k": "v"},
            "d": "",
            "e": null,
            "f": 1.5,
            "g": true,
            "h": {"@n": 3, "@m": false, "@skip": null, "#text": 42},
        }});
        assert_eq!(
            to_xml(&v, None),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<r id="7">hello<a>1</a><b>x</b><b>y</b><c k="v"/><d/><e/><f>1.5</f>"#,
                r#"<g>true</g><h n="3" m="false">42</h></r>"#
            )
        );
    }

    #[test]
    fn json_to_xml_explicit_root() {
        assert_eq!(
            to_xml(&json!({"a": "1"}), Some("Doc")),
            r#"<?xml version="1.0" encoding="UTF-8"?><Doc><a>1</a></Doc>"#
        );
        assert_eq!(
            to_xml(&json!("text"), Some("Doc")),
            r#"<?xml version="1.0" encoding="UTF-8"?><Doc>text</Doc>"#
        );
        assert_eq!(
            to_xml(&json!(null), Some("Doc")),
            r#"<?xml version="1.0" encoding="UTF-8"?><Doc/>"#
        );
        assert_eq!(
            to_xml(&json!({"x": 1, "y": 2}), Some("gl:Doc")),
            r#"<?xml version="1.0" encoding="UTF-8"?><gl:Doc><x>1</x><y>2</y></gl:Doc>"#
        );
    }

    #[test]
    fn json_to_xml_escapes_text_and_attributes() {
        let v = json!({"r": {
            "@q": "say \"hi\" & <bye> 'ok'",
            "@ws": "a\tb\nc\rd",
            "t": "1 < 2 && 3 > 2 ]]> \"quoted\" 'single'\r\n",
        }});
        let xml = to_xml(&v, None);
        assert_eq!(
            xml,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<r q="say &quot;hi&quot; &amp; &lt;bye&gt; 'ok'" ws="a&#9;b&#10;c&#13;d">"#,
                "<t>1 &lt; 2 &amp;&amp; 3 &gt; 2 ]]&gt; \"quoted\" 'single'&#13;\n</t></r>"
            )
        );
        // And it parses back to the same strings (text is trimmed, attributes are not).
        let back = xml_to_json(xml.as_bytes(), &strip()).unwrap();
        assert_eq!(back["r"]["@q"], "say \"hi\" & <bye> 'ok'");
        assert_eq!(back["r"]["@ws"], "a\tb\nc\rd");
        assert_eq!(back["r"]["t"], "1 < 2 && 3 > 2 ]]> \"quoted\" 'single'");
    }

    #[test]
    fn json_to_xml_round_trips_convention_examples() {
        let docs = [
            r#"<r><m unit="MW">12</m><p>1</p><p>2</p><e/><f k="v"/></r>"#,
            r#"<r id="1">mixed<b>bold</b></r>"#,
            "<r>only text with &lt;escapes&gt; &amp; stuff</r>",
            "<r/>",
            r#"<r a="1&#10;2" b="&quot;x&quot;"/>"#,
            "<r><s><p>1</p></s><s><p>2</p><p>3</p></s></r>",
            "<r><c><![CDATA[<x>&]]></c></r>",
        ];
        for doc in docs {
            let v = conv(doc);
            let xml = json_to_xml(&v, None).unwrap();
            assert_eq!(xml_to_json(&xml, &strip()).unwrap(), v, "{doc}");
        }
    }

    fn xml_err(value: &Value, root: Option<&str>) -> XmlError {
        match json_to_xml(value, root) {
            Ok(xml) => panic!("{value} should fail, got {}", String::from_utf8_lossy(&xml)),
            Err(e) => e,
        }
    }

    #[test]
    fn json_to_xml_root_errors() {
        for v in [
            json!({}),
            json!({"a": 1, "b": 2}),
            json!("x"),
            json!([1]),
            json!(null),
        ] {
            assert!(
                matches!(xml_err(&v, None), XmlError::NotConvertible { ref path, .. } if path.is_empty()),
                "{v}"
            );
        }
        match xml_err(&json!({"r": [1, 2]}), None) {
            XmlError::NotConvertible { path, reason } => {
                assert_eq!(path, "/r");
                assert!(reason.contains("root"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            xml_err(&json!([1, 2]), Some("r")),
            XmlError::NotConvertible { .. }
        ));
        match xml_err(&json!({"a": 1}), Some("1bad")) {
            XmlError::InvalidName { name, path } => {
                assert_eq!(name, "1bad");
                assert_eq!(path, "");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_to_xml_value_errors_carry_a_path() {
        match xml_err(&json!({"r": {"a": [{"b": [[1]]}]}}), None) {
            XmlError::NotConvertible { path, .. } => assert_eq!(path, "/r/a/0/b/0"),
            other => panic!("unexpected {other:?}"),
        }
        match xml_err(&json!({"r": {"a": {"@x": {"y": 1}}}}), None) {
            XmlError::NotConvertible { path, reason } => {
                assert_eq!(path, "/r/a/@x");
                assert!(reason.contains("attribute"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        match xml_err(&json!({"r": {"#text": [1]}}), None) {
            XmlError::NotConvertible { path, .. } => assert_eq!(path, "/r/#text"),
            other => panic!("unexpected {other:?}"),
        }
        match xml_err(&json!({"r": {"a/b": {"c": "bad\u{1}char"}}}), None) {
            XmlError::InvalidName { name, path } => {
                assert_eq!(name, "a/b");
                assert_eq!(path, "/r/a~1b");
            }
            other => panic!("unexpected {other:?}"),
        }
        match xml_err(&json!({"r": {"ok": {"c": "bad\u{1}char"}}}), None) {
            XmlError::NotConvertible { path, reason } => {
                assert_eq!(path, "/r/ok/c");
                assert!(reason.contains("U+0001"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = xml_err(&json!({"r": {"x": "\u{FFFF}"}}), None);
        assert!(matches!(e, XmlError::NotConvertible { ref path, .. } if path == "/r/x"));
    }

    #[test]
    fn json_to_xml_invalid_names() {
        for bad in [
            "", "1a", "a b", "-a", "a<b", "#comment", ":a", "a:", "a:b:c", "a\"b",
        ] {
            let v = json!({"r": {bad: "x"}});
            match xml_err(&v, None) {
                XmlError::InvalidName { name, .. } => assert_eq!(name, bad),
                other => panic!("{bad:?}: unexpected {other:?}"),
            }
        }
        for bad in ["@", "@1a", "@a b"] {
            let v = json!({"r": {bad: "x"}});
            assert!(
                matches!(xml_err(&v, None), XmlError::InvalidName { .. }),
                "{bad}"
            );
        }
        for good in ["a", "_a", "a-b.c_d", "gl:Point", "Zähler", "a1", "xmlns"] {
            assert!(is_valid_name(good), "{good}");
        }
        let e = xml_err(&json!({"r": {"a b": 1}}), None);
        assert_eq!(e.to_string(), "invalid XML name \"a b\" at `/r/a b`");
    }

    #[test]
    fn json_to_xml_rejects_too_deep_values() {
        let mut v = json!("leaf");
        for _ in 0..(MAX_DEPTH + 5) {
            v = json!({ "a": v });
        }
        assert!(matches!(xml_err(&v, None), XmlError::NotConvertible { .. }));
    }
}
