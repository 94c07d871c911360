//! JSON compared the way a test reads it: numbers by value, differences as a line diff of
//! the pretty-printed documents.

use serde_json::Value;

/// True when `a` and `b` are the same document; numbers compare by value (`1` is `1.0`).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `value` pretty-printed, with numbers that are whole written without a fraction, so that
/// `96` and `96.0` print alike.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(&normalised(value)).unwrap_or_default()
}

fn normalised(value: &Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(normalised).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalised(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Lines of context shown around each difference.
const CONTEXT: usize = 3;

/// A line diff of `expected` and `actual`: `-` lines are expected only, `+` lines actual
/// only, with a few lines of context; `...` between distant differences.
pub fn diff(expected: &str, actual: &str) -> String {
    let old: Vec<&str> = expected.lines().collect();
    let new: Vec<&str> = actual.lines().collect();
    let ops = line_ops(&old, &new);
    let changed: Vec<bool> = ops.iter().map(|op| !matches!(op, Op::Same(_))).collect();
    let near = |i: usize| {
        let from = i.saturating_sub(CONTEXT);
        let to = (i + CONTEXT + 1).min(ops.len());
        changed[from..to].iter().any(|c| *c)
    };
    let mut out = String::new();
    let mut skipped = false;
    for (i, op) in ops.iter().enumerate() {
        if !near(i) {
            skipped = true;
            continue;
        }
        if skipped && !out.is_empty() {
            out.push_str("  ...\n");
        }
        skipped = false;
        let (mark, line) = match op {
            Op::Same(l) => (' ', l),
            Op::Removed(l) => ('-', l),
            Op::Added(l) => ('+', l),
        };
        out.push(mark);
        out.push(' ');
        out.push_str(line);
        out.push('\n');
    }
    out
}

enum Op<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// The edit script of a longest common subsequence; common prefix and suffix are taken
/// first, so that large documents with a small change stay cheap.
fn line_ops<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Op<'a>> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (a, b) = (
        &old[prefix..old.len() - suffix],
        &new[prefix..new.len() - suffix],
    );
    let mut ops: Vec<Op<'a>> = old[..prefix].iter().map(|l| Op::Same(l)).collect();
    // lengths[i][j]: LCS of a[i..] and b[j..].
    let mut lengths = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lengths[i][j] = if a[i] == b[j] {
                lengths[i + 1][j + 1] + 1
            } else {
                lengths[i + 1][j].max(lengths[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push(Op::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lengths[i + 1][j] >= lengths[i][j + 1]) {
            ops.push(Op::Removed(a[i]));
            i += 1;
        } else {
            ops.push(Op::Added(b[j]));
            j += 1;
        }
    }
    ops.extend(old[old.len() - suffix..].iter().map(|l| Op::Same(l)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value() {
        assert!(same(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!same(&json!({"a": 1}), &json!({"a": "1"})));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert_eq!(pretty(&json!(96.0)), "96");
    }

    #[test]
    fn diffs_show_removed_and_added_lines_with_context() {
        let expected = pretty(&json!([{"area": "BE", "quantity": 1}]));
        let actual = pretty(&json!([{"area": "NL", "quantity": 1}]));
        let d = diff(&expected, &actual);
        assert!(d.contains("-     \"area\": \"BE\","), "{d}");
        assert!(d.contains("+     \"area\": \"NL\","), "{d}");
        assert!(d.contains("      \"quantity\": 1"), "{d}");
        let long_old: String = (0..40).map(|i| format!("{i}\n")).collect();
        let long_new = long_old.replace("20\n", "twenty\n");
        let d = diff(&long_old, &long_new);
        assert!(d.starts_with("  ...\n") || d.starts_with("  17"), "{d}");
        assert_eq!(d.lines().filter(|l| l.starts_with('-')).count(), 1, "{d}");
        assert!(!d.contains("  5\n"), "far lines are left out: {d}");
    }
}
