//! The fast path of the pruned read ([`super::need::from_slice`]): a scanner that walks the
//! JSON text once, keeps the fields an expression reads and checks the others without
//! building them.
//!
//! Reading a 1 KB meter reading through serde_json's visitors cost ~29,000 instructions, most
//! of them in the machinery around each skipped string and number, not in looking at the
//! bytes. This scanner looks at the bytes.
//!
//! It is exact by construction, not by imitation: it only ever answers `Some` for a text that
//! serde_json accepts too, with the same tree. Whatever it is not sure of (an escape in a key,
//! a surrogate escape, a control character, a malformed token, deep nesting, trailing bytes)
//! makes it answer `None`, and the caller reads the message again with serde_json, whose
//! answer (value or error, with line and column) is then the one given. Values the
//! expression reads whole, and every number it reads, are handed to serde_json as they are,
//! so their conversion is serde_json's own.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::need::{Need, Pruned};

/// Deepest nesting the scanner follows. Below serde_json's limit (128), so that a value it
/// hands over on its own is never refused for a depth the whole document would have passed,
/// nor accepted for one it would have failed.
const MAX_DEPTH: usize = 100;

/// Longest number (in bytes) taken without asking serde_json: shorter ones without an
/// exponent cannot leave the range of an `f64`.
const PLAIN_NUMBER_MAX: usize = 300;

/// The document `text` with only what `need` reads; `None` when the scanner is not sure (the
/// caller then asks serde_json).
pub(super) fn pruned(text: &str, need: &Need) -> Option<Value> {
    Scanner::whole_text(text, |s| s.value(need))
}

/// Where the values a [`Picker`](super::plan::Picker) reads are: field names leading to a
/// slot of the caller's, or to more fields.
#[derive(Debug, Default)]
pub(super) struct Leaves(pub(super) Vec<(String, Leaf)>);

#[derive(Debug)]
pub(super) enum Leaf {
    /// The field's whole value goes to this slot.
    Slot(usize),
    /// Fields of the field's value, when it is an object.
    Below(Leaves),
}

impl Leaves {
    fn find(&self, key: &str) -> Option<&Leaf> {
        self.0
            .iter()
            .find(|(name, _)| name.as_str() == key)
            .map(|(_, leaf)| leaf)
    }

    /// Empties every slot at or below these fields.
    fn clear(&self, slots: &mut [Option<serde_json::Value>]) {
        for (_, leaf) in &self.0 {
            match leaf {
                Leaf::Slot(i) => slots[*i] = None,
                Leaf::Below(below) => below.clear(slots),
            }
        }
    }
}

/// The kind of a document's root, as far as a picker cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Root {
    Object,
    Null,
    Other,
}

/// Reads the values at `leaves` of the document `text` into `slots` (a field that is absent,
/// or under a value that is not an object, leaves its slot empty: JMESPath's null), checking
/// the rest without building it. `None` when the scanner is not sure, as for [`pruned`].
pub(super) fn pick(
    text: &str,
    leaves: &Leaves,
    slots: &mut [Option<serde_json::Value>],
) -> Option<Root> {
    Scanner::whole_text(text, |s| {
        Some(match s.peek()? {
            b'{' => {
                s.pick_object(leaves, slots)?;
                Root::Object
            }
            b'n' => {
                s.literal(b"null")?;
                Root::Null
            }
            _ => {
                s.skip()?;
                Root::Other
            }
        })
    })
}

/// What is read of field `key`: a linear search in the few fields an expression names
/// (a string comparison looks at the lengths first), the tree's search in larger sets.
fn field<'n>(fields: &'n BTreeMap<String, Need>, key: &str) -> Option<&'n Need> {
    if fields.len() <= 8 {
        fields
            .iter()
            .find(|(name, _)| name.as_str() == key)
            .map(|(_, need)| need)
    } else {
        fields.get(key)
    }
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    /// `read` of the one value `text` holds (whitespace around it allowed).
    fn whole_text<T>(text: &'a str, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let mut s = Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            depth: 0,
        };
        s.ws();
        let read = read(&mut s)?;
        s.ws();
        (s.pos == s.bytes.len()).then_some(read)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `byte` (after whitespace).
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// The value at the cursor (whitespace skipped), with what `need` reads of it.
    fn value(&mut self, need: &Need) -> Option<Value> {
        match (self.peek()?, need) {
            (b'{', Need::Part { fields, .. }) => self.object(fields),
            (b'[', Need::Part { items, .. }) => self.array(items.as_deref()),
            (b'"', _) => {
                let start = self.pos;
                if self.string()? {
                    // Escapes: serde_json decodes them.
                    return self.hand_over(start, need);
                }
                let content = &self.text[start + 1..self.pos - 1];
                Some(Value::String(content.to_owned()))
            }
            (b't', _) => self.literal(b"true").map(|_| Value::Bool(true)),
            (b'f', _) => self.literal(b"false").map(|_| Value::Bool(false)),
            (b'n', _) => self.literal(b"null").map(|_| Value::Null),
            _ => {
                let start = self.pos;
                self.skip()?;
                self.hand_over(start, need)
            }
        }
    }

    /// The object at the cursor, its fields named in `leaves` read into `slots`.
    fn pick_object(
        &mut self,
        leaves: &Leaves,
        slots: &mut [Option<serde_json::Value>],
    ) -> Option<()> {
        self.members(|s, key| match leaves.find(key?) {
            // The last of duplicate keys wins, as in serde_json's maps.
            Some(Leaf::Slot(i)) => {
                slots[*i] = Some(s.whole()?);
                Some(())
            }
            Some(Leaf::Below(below)) => {
                // A repeated key replaces all of the value before it.
                below.clear(slots);
                if s.peek()? == b'{' {
                    s.pick_object(below, slots)
                } else {
                    s.skip()
                }
            }
            None => s.skip(),
        })
    }

    /// The whole value at the cursor, as serde_json reads it.
    fn whole(&mut self) -> Option<serde_json::Value> {
        let start = self.pos;
        match self.peek()? {
            b'"' => {
                if self.string()? {
                    // Escapes: serde_json decodes them.
                    return serde_json::from_str(&self.text[start..self.pos]).ok();
                }
                Some(Value::String(self.text[start + 1..self.pos - 1].to_owned()))
            }
            b't' => self.literal(b"true").map(|_| Value::Bool(true)),
            b'f' => self.literal(b"false").map(|_| Value::Bool(false)),
            b'n' => self.literal(b"null").map(|_| Value::Null),
            _ => {
                self.skip()?;
                serde_json::from_str(&self.text[start..self.pos]).ok()
            }
        }
    }

    /// serde_json's reading of the value between `start` and the cursor.
    fn hand_over(&self, start: usize, need: &Need) -> Option<Value> {
        let mut de = serde_json::Deserializer::from_str(&self.text[start..self.pos]);
        serde::de::DeserializeSeed::deserialize(Pruned(need), &mut de).ok()
    }

    fn object(&mut self, fields: &BTreeMap<String, Need>) -> Option<Value> {
        let mut out = Map::new();
        self.members(|s, key| {
            // An escaped key would have to be decoded to be compared: serde_json reads it.
            let key = key?;
            match field(fields, key) {
                // The last of duplicate keys wins, at the first one's place, as in
                // serde_json's maps.
                Some(need) => {
                    let v = s.value(need)?;
                    out.insert(key.to_owned(), v);
                    Some(())
                }
                None => s.skip(),
            }
        })?;
        Some(Value::Object(out))
    }

    fn array(&mut self, each: Option<&Need>) -> Option<Value> {
        let mut out = Vec::new();
        self.elements(|s| match each {
            Some(need) => {
                out.push(s.value(need)?);
                Some(())
            }
            None => s.skip(),
        })?;
        Some(Value::Array(out))
    }

    /// Walks the object at the cursor: `member` gets each key (`None` when it has an escape)
    /// with the cursor on its value, and must move past the value.
    fn members(
        &mut self,
        mut member: impl FnMut(&mut Self, Option<&'a str>) -> Option<()>,
    ) -> Option<()> {
        self.container(b'}', |s| {
            s.ws();
            if s.peek()? != b'"' {
                return None;
            }
            let start = s.pos + 1;
            let escaped = s.string()?;
            let key = (!escaped).then(|| &s.text[start..s.pos - 1]);
            s.expect(b':')?;
            s.ws();
            member(s, key)
        })
    }

    /// Walks the array at the cursor: `element` is called with the cursor on each element,
    /// and must move past it.
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.container(b']', |s| {
            s.ws();
            element(s)
        })
    }

    /// The frame shared by objects and arrays: the opening byte at the cursor, `item` for
    /// each comma-separated item, then `close`.
    fn container(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.enter()?;
        self.pos += 1;
        self.ws();
        if self.peek()? == close {
            self.pos += 1;
        } else {
            loop {
                item(self)?;
                self.ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b if b == close => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// Checks the string at the cursor and moves past its closing quote; `Some(true)` when
    /// it holds an escape. `None` for a control character, a surrogate escape or a bad escape.
    #[inline]
    fn string(&mut self) -> Option<bool> {
        self.pos = special(self.bytes, self.pos + 1)?;
        if self.bytes[self.pos] == b'"' {
            self.pos += 1;
            return Some(false);
        }
        self.string_after_special()
    }

    /// The rest of [`string`](Self::string) from an escape or a control character (rare:
    /// kept out of the inlined path).
    #[cold]
    #[inline(never)]
    fn string_after_special(&mut self) -> Option<bool> {
        loop {
            match self.bytes[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Some(true);
                }
                b'\\' => match *self.bytes.get(self.pos + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 2,
                    b'u' => {
                        let hex = self.bytes.get(self.pos + 2..self.pos + 6)?;
                        let hex = std::str::from_utf8(hex).ok()?;
                        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return None;
                        }
                        let unit = u16::from_str_radix(hex, 16).ok()?;
                        // Surrogates must pair up: serde_json decides.
                        if (0xD800..=0xDFFF).contains(&unit) {
                            return None;
                        }
                        self.pos += 6;
                    }
                    _ => return None,
                },
                // A control character: refused by serde_json.
                _ => return None,
            }
            self.pos = special(self.bytes, self.pos)?;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// Checks the number at the cursor and moves past it.
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        let digits = |s: &mut Self| {
            let from = s.pos;
            while let Some(b'0'..=b'9') = s.peek() {
                s.pos += 1;
            }
            s.pos - from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        if exponent || self.pos - start > PLAIN_NUMBER_MAX {
            // It may leave the range of an f64: serde_json decides.
            serde_json::from_str::<f64>(&self.text[start..self.pos]).ok()?;
        }
        Some(())
    }

    /// Checks the value at the cursor and moves past it, building nothing.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.members(|s, _| s.skip()),
            b'[' => self.elements(Self::skip),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }
}

/// The position of the first `"`, `\\` or control character at or after `from`: eight bytes
/// at a time (one test for the three kinds in each word), then byte by byte.
#[inline(always)]
fn special(bytes: &[u8], mut from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = bytes.get(from..from + 8) {
        let w = u64::from_le_bytes(word.try_into().ok()?);
        // A byte's high bit is set in `found` where it is below 0x20, a quote or a backslash
        // (Mycroft's zero-byte test; bytes >= 0x80 are cleared by `!w`).
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let found = (w.wrapping_sub(ONES * 0x20) & !w
            | quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash)
            & HIGH;
        if found != 0 {
            return Some(from + found.trailing_zeros() as usize / 8);
        }
        from += 8;
    }
    let rest = bytes.get(from..)?;
    rest.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|at| from + at)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::need::{from_slice, from_slice_by_serde};
    use super::*;
    use crate::jmes::Expr;

    pub(in crate::jmes) const READING: &[u8] =
        include_bytes!("../../benches/fixtures/meter-reading-1k.json");

    /// `text` with each byte replaced by each of 21 JSON-significant bytes, and removed.
    pub(in crate::jmes) fn one_byte_changes(text: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
        let replacements = b"{}[]:,\"\\ 0-.eE+tfnu\x01\x7f";
        (0..text.len()).flat_map(move |at| {
            let replaced = replacements.iter().map(move |&b| {
                let mut v = text.to_vec();
                v[at] = b;
                v
            });
            let mut removed = text.to_vec();
            removed.remove(at);
            replaced.chain(std::iter::once(removed))
        })
    }

    /// Expressions whose needs cover fields, nested fields, projections, indices, whole
    /// values and nothing at all.
    const EXPRESSIONS: &[&str] = &[
        "{meter_id: meter_id, measured_at: ts, value: to_number(reading.value), unit: reading.unit, quality: reading.quality, substation: site.substation, feeder: site.feeder}",
        "registers[*].value",
        "registers[0].name",
        "status.alarms",
        "device",
        "a.b == 'x'",
        "length(tags)",
        "[a.b, list[0].x]",
        "points[*].v",
        "meta().key",
        "head_end.retries",
        "site.connection_kva",
    ];

    fn needs() -> Vec<Need> {
        EXPRESSIONS
            .iter()
            .map(|e| Expr::compile(e).unwrap().need().clone())
            .collect()
    }

    /// The scanner's answer, when it gives one, is serde_json's; the composite read
    /// (`from_slice`) always equals serde_json's, error messages included.
    fn check(bytes: &[u8], need: &Need) -> bool {
        let serde = from_slice_by_serde(bytes, need);
        let both = from_slice(bytes, need);
        let context = String::from_utf8_lossy(bytes);
        match (&serde, &both) {
            // As text: the fields in the same order too.
            (Ok(a), Ok(b)) => assert_eq!(a.to_string(), b.to_string(), "{context}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{context}"),
            _ => panic!("serde_json {serde:?}, composite {both:?} on {context}"),
        }
        let fast = std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| pruned(t, need));
        if let Some(fast) = &fast {
            let serde = serde.unwrap_or_else(|e| {
                panic!("scanner accepted what serde_json refuses ({e}): {context}")
            });
            assert_eq!(fast.to_string(), serde.to_string(), "{context}");
        }
        fast.is_some()
    }

    #[test]
    fn the_word_at_a_time_search_finds_what_a_byte_loop_finds() {
        let naive = |bytes: &[u8], from: usize| {
            bytes[from..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map(|at| from + at)
        };
        for fill in [b'a', 0x80, 0xff, 0x21, 0x5d] {
            for b in 0..=255u8 {
                for at in 0..20 {
                    let mut bytes = vec![fill; 21];
                    bytes[at] = b;
                    if at > 3 {
                        // A second special byte after the first one must not hide it.
                        bytes[at - 3] = b'\\';
                    }
                    for from in 0..bytes.len() {
                        assert_eq!(
                            special(&bytes, from),
                            naive(&bytes, from),
                            "{bytes:?} from {from}"
                        );
                    }
                }
            }
        }
        for from in 0..READING.len() {
            assert_eq!(special(READING, from), naive(READING, from));
        }
    }

    #[test]
    fn the_meter_reading_takes_the_fast_path_with_serde_jsons_result() {
        for need in needs() {
            if matches!(need, Need::Part { .. }) {
                assert!(check(READING, &need), "{need:?} fell back to serde_json");
            }
        }
    }

    #[test]
    fn unsure_inputs_fall_back_and_get_serde_jsons_answer() {
        let deep = |n: usize| format!("{{\"a\": 1, \"d\": {}1{}}}", "[".repeat(n), "]".repeat(n));
        let (d100, d127, d128, d200) = (deep(100), deep(126), deep(127), deep(200));
        let fall_back: &[&[u8]] = &[
            br#"{"\u0061": {"b": 1}, "a": {"b": 2}}"#, // escaped key
            br#"{"a": 1, "d": "\ud800"}"#,             // lone surrogate
            br#"{"a": 1, "d": "\ud83d\ude00"}"#,       // surrogate pair (valid)
            br#"{"a": 1, "d": "\x"}"#,
            b"{\"a\": 1, \"d\": \"tab\there\"}", // control character
            br#"{"a": 1, "d": 1e400}"#,          // out of range
            br#"{"a": 1, "d": [1,]}"#,
            br#"{"a": 1, "d": 01}"#,
            br#"{"a": 1, "d": -}"#,
            br#"{"a": 1, "d": 1.}"#,
            br#"{"a": 1,}"#,
            br#"{"a": 1} x"#,
            br#"{"a": tru}"#,
            b"\xef\xbb\xbf{\"a\": 1}", // byte order mark
            br#"{"a" 1}"#,
            br#"{"a": 1"#,
            br#""#,
            d100.as_bytes(), // deeper than the scanner follows
            d127.as_bytes(),
            d128.as_bytes(), // deeper than serde_json reads
            d200.as_bytes(),
        ];
        for need in needs() {
            for bytes in fall_back {
                assert!(!check(bytes, &need), "{}", String::from_utf8_lossy(bytes));
            }
        }
        let d99 = deep(99);
        let fast: &[&[u8]] = &[
            d99.as_bytes(),
            br#"{"a": {"b": "x\n\"y\" \u00e9"}, "list": [{"x": 1.5e3}, 3]}"#,
            br#"{"a": {"b": -0}, "d": [1e308, -2.5E-7, 18446744073709551616, -9223372036854775809]}"#,
            br#" { "a" : { "b" : true } , "a" : { "b" : null } } "#,
            "{\"a\": {\"b\": \"été\"}, \"d\": \"\u{1F600}\"}".as_bytes(),
            br#"[]"#,
            br#"42"#,
            br#""str""#,
        ];
        for bytes in fast {
            let need = Expr::compile("[a.b, list[0].x]").unwrap().need().clone();
            assert!(check(bytes, &need), "{}", String::from_utf8_lossy(bytes));
        }
    }

    /// Every one-byte change of the meter reading (a byte replaced by each of the JSON
    /// punctuation and a few others, a byte removed) is read as serde_json reads it.
    #[test]
    fn every_one_byte_change_of_a_reading_is_read_as_serde_json_reads_it() {
        let needs = needs();
        let (mut fast, mut total) = (0, 0);
        for bytes in one_byte_changes(READING) {
            for need in &needs {
                total += 1;
                fast += usize::from(check(&bytes, need));
            }
        }
        // Most changes still make JSON that serde_json reads (inside strings): the scanner
        // must have taken a good share of them.
        assert!(
            fast * 4 > total,
            "only {fast} of {total} read by the scanner"
        );
    }
}
