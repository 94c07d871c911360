//! The layering of the crate, kept.
//!
//! Every module of `src` belongs to one layer of [`LAYERS`] (a submodule to the longest entry
//! that prefixes its path: `config::pipeline` has its own entry, `config::mod` falls to
//! `config`). A module may import modules of its own layer or of a lower one, never of a higher
//! one; modules of one layer import each other without a cycle (a submodule may use its
//! enclosing module, `use super::Source`, without that counting as a cycle).
//!
//! What counts as an import: every `crate::…` path and every `super::…` path (resolved to the
//! module it names, inline `mod tests` included) in the code of a file, comments and string
//! literals left out; `use crate::{a, b::c}` groups name each of their modules. A path through
//! a re-export counts where the item is defined: `crate::config::Diagnostic` (re-exported by
//! `config`) is an import of `config::diagnostic`.
//!
//! `lib.rs` states the same layers in its `# Layout` section; the test checks that it lists
//! exactly the modules of this table, layer by layer, so that the documentation cannot drift.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: their name and their modules. The one table of the layering
/// (`lib.rs`'s Layout section is checked against it).
const LAYERS: &[(&str, &[&str])] = &[
    (
        "ground",
        &[
            "error",
            "xml",
            "secrets",
            "logging",
            "contracts",
            "retry",
            "config::diagnostic",
            "config::interpolate",
        ],
    ),
    (
        "core",
        &[
            "ack",
            "message",
            "metrics",
            "jmes",
            "telemetry",
            "kafka",
            "config::document",
        ],
    ),
    (
        "components",
        &[
            "sources",
            "sources::route",
            "sources::http",
            "sources::soap",
            "steps",
            "sinks",
            "tls",
        ],
    ),
    ("configuration", &["config::pipeline", "config"]),
    ("engine", &["engine"]),
    (
        "processes",
        &[
            "listener",
            "admin",
            "server",
            "replay",
            "topics",
            "pipeline_test",
        ],
    ),
    ("command line", &["cli", "schema"]),
];

/// The layer of a table entry.
fn layer_of(entry: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&entry))
}

/// The table entry a module path belongs to: the longest entry that prefixes it.
fn entry_of(path: &[String]) -> Option<&'static str> {
    (1..=path.len()).rev().find_map(|n| {
        let prefix = path[..n].join("::");
        LAYERS
            .iter()
            .flat_map(|(_, modules)| modules.iter())
            .find(|m| **m == prefix)
            .copied()
    })
}

/// "3 (configuration)".
fn describe(layer: usize) -> String {
    format!("{layer} ({})", LAYERS[layer].0)
}

/// One import of a crate module by a file.
#[derive(Debug, Clone, PartialEq)]
struct Import {
    /// 1-based line of the path.
    line: usize,
    /// The module path written (`config::pipeline::OnErrorConfig`), resolved from the crate
    /// root; items after the module are harmless, the table is matched by prefix.
    path: Vec<String>,
}

/// `src` with its comments and its string and character literals blanked (newlines kept, so
/// that lines still count).
fn code_only(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        match skipped_end(&chars, i) {
            Some(end) => {
                let end = end.min(chars.len());
                out.extend(
                    chars[i..end]
                        .iter()
                        .map(|&c| if c == '\n' { '\n' } else { ' ' }),
                );
                i = end;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

/// The end (exclusive) of the comment or literal that starts at `i`, if one does.
fn skipped_end(chars: &[char], i: usize) -> Option<usize> {
    let at = |j: usize| chars.get(j).copied();
    match (chars[i], at(i + 1)) {
        ('/', Some('/')) => Some(
            (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len()),
        ),
        ('/', Some('*')) => Some(block_comment_end(chars, i)),
        ('r', Some('"' | '#')) if starts_literal(chars, i) => raw_string_end(chars, i),
        ('"', _) => {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            Some(j + 1)
        }
        // A character literal ('"', '\n', '\''); a lifetime ('a) is not one.
        ('\'', Some('\\')) => (i + 3..chars.len())
            .find(|&j| chars[j] == '\'')
            .map(|j| j + 1),
        ('\'', _) if at(i + 2) == Some('\'') => Some(i + 3),
        _ => None,
    }
}

/// The end of the block comment (nested ones included) that starts at `i`.
fn block_comment_end(chars: &[char], i: usize) -> usize {
    let (mut depth, mut j) = (0, i);
    while j < chars.len() {
        if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
            depth += 1;
            j += 2;
        } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    j
}

/// The end of the raw string (`r"…"`, `r#"…"#`) that starts at `i`; none for a raw
/// identifier (`r#type`).
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    let hashes = j - i - 1;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    (j + 1..chars.len())
        .find(|&k| chars[k] == '"' && (1..=hashes).all(|h| chars.get(k + h) == Some(&'#')))
        .map(|k| k + hashes + 1)
}

/// True when the `r` at `i` is not the end of an identifier (`br` of a raw byte string is).
fn starts_literal(chars: &[char], i: usize) -> bool {
    let before = |n: usize| i.checked_sub(n).map(|j| chars[j]);
    match before(1) {
        None => true,
        Some('b') => !before(2).is_some_and(is_ident),
        Some(c) => !is_ident(c),
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A token of code: an identifier, `::`, or one other character.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    text: String,
    line: usize,
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// The crate modules `src`, the file of module `module`, imports.
fn imports(module: &[String], src: &str) -> Vec<Import> {
    let toks = tokens(&code_only(src));
    let text = |i: usize| toks.get(i).map(|t| t.text.as_str()).unwrap_or("");
    let mut found = Vec::new();
    // The inline modules (`mod tests {`) the scan is in, by brace.
    let mut braces: Vec<Option<String>> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match text(i) {
            "{" => {
                let inline = (i >= 2 && text(i - 2) == "mod").then(|| text(i - 1).to_string());
                braces.push(inline);
            }
            "}" => {
                braces.pop();
            }
            head @ ("crate" | "super")
                if text(i + 1) == "::" && (i == 0 || !matches!(text(i - 1), "$" | "::")) =>
            {
                let mut base: Vec<String> = Vec::new();
                let mut j = i;
                if head == "super" {
                    base = module.to_vec();
                    base.extend(braces.iter().flatten().cloned());
                    while text(j) == "super" && text(j + 1) == "::" {
                        base.pop();
                        j += 2;
                    }
                } else {
                    j += 2;
                }
                let line = toks[i].line;
                let (paths, end) = path_tree(&toks, j, base);
                found.extend(paths.into_iter().map(|path| Import { line, path }));
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The paths written from token `i` on, after `base::`: `a::b::C`, or a `{…}` group of
/// them. Returns them and the index of the first token after.
fn path_tree(toks: &[Token], mut i: usize, mut base: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let text = |i: usize| toks.get(i).map(|t| t.text.as_str()).unwrap_or("");
    loop {
        let t = text(i);
        if t == "{" {
            let mut paths = Vec::new();
            i += 1;
            while text(i) != "}" && i < toks.len() {
                if text(i) == "," {
                    i += 1;
                    continue;
                }
                let (inner, end) = path_tree(toks, i, base.clone());
                paths.extend(inner);
                i = end;
                // Skip what follows a path in a group (`as name`).
                while !matches!(text(i), "," | "}") && i < toks.len() {
                    i += 1;
                }
            }
            return (paths, i + 1);
        }
        if t.chars().next().is_some_and(is_ident) {
            if t != "self" {
                base.push(t.to_string());
            }
            i += 1;
            if text(i) == "::" {
                i += 1;
                continue;
            }
        }
        return (vec![base], i);
    }
}

/// The re-exports of `src`, the file of module `module`: `pub use diagnostic::Diagnostic;` in
/// `config` makes `config::Diagnostic` an alias of `config::diagnostic::Diagnostic`.
/// Returns (alias, what it names), both from the crate root.
fn reexports(module: &[String], src: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let toks = tokens(&code_only(src));
    let text = |i: usize| toks.get(i).map(|t| t.text.as_str()).unwrap_or("");
    let mut found = Vec::new();
    for i in 1..toks.len() {
        // `pub use`, `pub(crate) use`.
        if text(i) != "use" || !matches!(text(i - 1), "pub" | ")") {
            continue;
        }
        let (base, start) = match (text(i + 1), text(i + 2)) {
            ("crate", "::") => (Vec::new(), i + 3),
            ("self", "::") => (module.to_vec(), i + 3),
            ("super", "::") => {
                let mut base = module.to_vec();
                let mut j = i + 1;
                while text(j) == "super" && text(j + 1) == "::" {
                    base.pop();
                    j += 2;
                }
                (base, j)
            }
            _ => (module.to_vec(), i + 1),
        };
        for path in path_tree(&toks, start, base.clone()).0 {
            // A glob (`pub use x::*`) names no item of its own.
            if let Some(name) = path.last().filter(|_| path.len() > base.len()) {
                let mut alias = module.to_vec();
                alias.push(name.clone());
                if alias != path {
                    found.push((alias, path));
                }
            }
        }
    }
    found
}

/// Where `path` is defined: re-exports followed (`config::Diagnostic` →
/// `config::diagnostic::Diagnostic`), the longest alias first.
fn defined(aliases: &[(Vec<String>, Vec<String>)], path: &[String]) -> Vec<String> {
    let mut path = path.to_vec();
    // A bound, in case re-exports go round.
    for _ in 0..8 {
        let longest = aliases
            .iter()
            .filter(|(alias, _)| path.starts_with(alias))
            .max_by_key(|(alias, _)| alias.len());
        let Some((alias, target)) = longest else {
            break;
        };
        let mut resolved = target.clone();
        resolved.extend_from_slice(&path[alias.len()..]);
        path = resolved;
    }
    path
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; `lib.rs` → `[]`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The faults of the layering in `files` (path shown, module, source): imports of a higher
/// layer, modules outside the table, and cycles among the modules of one layer.
fn faults(files: &[(String, Vec<String>, String)]) -> Vec<String> {
    let mut faults = Vec::new();
    // entry → entries of its layer it imports (a submodule's imports of its enclosing modules
    // left out).
    let mut graph: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
    let aliases: Vec<(Vec<String>, Vec<String>)> = files
        .iter()
        .flat_map(|(_, module, src)| reexports(module, src))
        .collect();
    for (shown, module, src) in files {
        let Some(from) = entry_of(module) else {
            faults.push(format!(
                "{shown}: module `{}` is in no layer; add it to LAYERS in tests/layering.rs and to lib.rs's Layout",
                module.join("::")
            ));
            continue;
        };
        let from_layer = layer_of(from).expect("an entry has a layer");
        for import in imports(module, src) {
            let written = import.path.join("::");
            let path = defined(&aliases, &import.path);
            let Some(to) = entry_of(&path) else {
                faults.push(format!(
                    "{shown}:{}: `{from}` imports `{}`, which is in no layer",
                    import.line,
                    import.path.join("::")
                ));
                continue;
            };
            if to == from {
                continue;
            }
            let to_layer = layer_of(to).expect("an entry has a layer");
            if to_layer > from_layer {
                faults.push(format!(
                    "{shown}:{}: `{from}` (layer {}) imports `{written}` of `{to}` (layer {}), a higher layer",
                    import.line,
                    describe(from_layer),
                    describe(to_layer),
                ));
            }
            // Cycles are looked for within a layer (one across layers has an upward import,
            // reported above).
            let enclosing = from.starts_with(&format!("{to}::"));
            if to_layer == from_layer && !enclosing {
                graph
                    .entry(from)
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| format!("{shown}:{}", import.line));
            }
        }
    }
    faults.extend(cycles(&graph));
    faults
}

/// The cycles of `graph` (each named once, by the first edge found in it, with where each of
/// its imports is written).
fn cycles(graph: &BTreeMap<&str, BTreeMap<&str, String>>) -> Vec<String> {
    let mut found = Vec::new();
    let mut seen: BTreeSet<Vec<&str>> = BTreeSet::new();
    for start in graph.keys() {
        // Depth-first search for a way back to `start`.
        let mut stack: Vec<(Vec<&str>, &str)> = vec![(vec![*start], *start)];
        let mut visited: BTreeSet<&str> = BTreeSet::new();
        while let Some((way, at)) = stack.pop() {
            for next in graph.get(at).into_iter().flat_map(|n| n.keys()) {
                if *next == *start {
                    let mut key = way.clone();
                    key.sort();
                    if seen.insert(key) {
                        let mut steps = Vec::new();
                        let mut walk = way.clone();
                        walk.push(start);
                        for pair in walk.windows(2) {
                            steps.push(format!(
                                "`{}` imports `{}` ({})",
                                pair[0], pair[1], graph[pair[0]][pair[1]]
                            ));
                        }
                        found.push(format!("import cycle: {}", steps.join(", ")));
                    }
                } else if visited.insert(next) {
                    let mut longer = way.clone();
                    longer.push(next);
                    stack.push((longer, next));
                }
            }
        }
    }
    found
}

/// The layers `lib.rs`'s `# Layout` section states: under each `## Layer N, name` heading,
/// the modules named at the start of its list items (``- [`a`], `b`: …``: a link, or code
/// for a module private to the crate, that rustdoc cannot link to).
fn documented_layers(lib: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut layers: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut in_layout = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim();
        if let Some(heading) = doc.strip_prefix("# ") {
            in_layout = heading.trim() == "Layout";
            continue;
        }
        if !in_layout {
            continue;
        }
        if let Some(heading) = doc.strip_prefix("## Layer ") {
            layers.push((heading.to_string(), BTreeSet::new()));
        } else if let (Some(item), Some((_, modules))) = (doc.strip_prefix("- "), layers.last_mut())
        {
            let head = item.split(": ").next().unwrap_or("");
            for link in head.split(',') {
                let link = link.trim();
                let name = link
                    .strip_prefix('[')
                    .and_then(|l| l.strip_suffix(']'))
                    .unwrap_or(link);
                if let Some(name) = name.strip_prefix('`').and_then(|l| l.strip_suffix('`')) {
                    modules.insert(name.to_string());
                }
            }
        }
    }
    layers
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_a_higher_layer_and_no_layer_has_a_cycle() {
    let src = src_dir();
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<(String, Vec<String>, String)> = paths
        .iter()
        // The binary: it only calls `cli::main`, from outside the library.
        .filter(|p| p.file_name().is_some_and(|n| n != "main.rs"))
        .map(|p| {
            let relative = p.strip_prefix(&src).expect("under src");
            (
                format!("src/{}", relative.display()),
                module_of(relative),
                std::fs::read_to_string(p).expect("readable source"),
            )
        })
        .filter(|(_, module, _)| !module.is_empty())
        .collect();
    assert!(
        files.len() > 20,
        "the sources were not found in {}",
        src.display()
    );
    let faults = faults(&files);
    assert!(
        faults.is_empty(),
        "the layering is broken ({} fault(s)):\n  {}\n\nA module imports only modules of its own layer or of a lower one (the layers: LAYERS in tests/layering.rs and lib.rs's Layout). Move the shared code down, or pass it in from above.",
        faults.len(),
        faults.join("\n  ")
    );
}

#[test]
fn lib_rs_states_the_same_layers_and_every_module_has_one() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs");
    let documented = documented_layers(&lib);
    let mut problems = Vec::new();
    if documented.len() != LAYERS.len() {
        problems.push(format!(
            "lib.rs's Layout has {} `## Layer` headings, the table {} layers",
            documented.len(),
            LAYERS.len()
        ));
    }
    for (n, (name, modules)) in LAYERS.iter().enumerate() {
        let heading = format!("{n}, {name}");
        let Some((found, listed)) = documented.get(n) else {
            continue;
        };
        if !found.starts_with(&heading) {
            problems.push(format!("lib.rs: the heading of layer {n} is `## Layer {found}`, expected `## Layer {heading}…`"));
        }
        let expected: BTreeSet<String> = modules.iter().map(|m| m.to_string()).collect();
        for missing in expected.difference(listed) {
            problems.push(format!(
                "lib.rs's Layout does not list `{missing}` under layer {}",
                describe(n)
            ));
        }
        for extra in listed.difference(&expected) {
            let truth = layer_of(extra).map_or("in no layer".to_string(), |l| {
                format!("in layer {}", describe(l))
            });
            problems.push(format!(
                "lib.rs's Layout lists `{extra}` under layer {}, the table has it {truth}",
                describe(n)
            ));
        }
    }
    // Every module declared in lib.rs has an entry, and every entry names a module that exists.
    for line in lib.lines() {
        let decl = line.trim().trim_start_matches("pub ");
        if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
            if layer_of(name).is_none() {
                problems.push(format!(
                    "lib.rs declares `mod {name}`, which is in no layer of LAYERS"
                ));
            }
        }
    }
    for entry in LAYERS.iter().flat_map(|(_, m)| m.iter()) {
        let base = src_dir().join(entry.replace("::", "/"));
        if !base.with_extension("rs").is_file() && !base.join("mod.rs").is_file() {
            problems.push(format!(
                "LAYERS names `{entry}`, which is not a module of src"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "lib.rs and the layer table disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The checker itself: an upward import, a `super::` inside `mod tests`, a group, a cycle, and
/// paths in comments and strings that are not imports.
#[test]
fn the_checker_finds_upward_imports_and_cycles_and_ignores_comments_and_strings() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    let src = r##"
//! See [`crate::engine`].
use crate::{message::Message, config::pipeline::OnErrorConfig};
const DOC: &str = "crate::cli::main";
const RAW: &str = r#"crate::server"#;
const Q: char = '"';
fn f<'a>(x: &'a str) -> Vec<u8> { crate::metrics::noted(x); Vec::new() }
#[cfg(test)]
mod tests {
    use super::*;
    use super::super::document::Document;
}
"##;
    let found: Vec<(usize, String)> = imports(&m("config::diagnostic"), src)
        .into_iter()
        .map(|i| (i.line, i.path.join("::")))
        .collect();
    assert_eq!(
        found,
        vec![
            (3, "message::Message".to_string()),
            (3, "config::pipeline::OnErrorConfig".to_string()),
            (7, "metrics::noted".to_string()),
            (10, "config::diagnostic".to_string()),
            (11, "config::document::Document".to_string()),
        ]
    );
    let faults = faults(&[
        (
            "src/config/diagnostic.rs".into(),
            m("config::diagnostic"),
            src.into(),
        ),
        (
            "src/sources/http.rs".into(),
            m("sources::http"),
            "use super::soap::fault;".into(),
        ),
        (
            "src/sources/soap.rs".into(),
            m("sources::soap"),
            "\n\nuse super::http::Route;".into(),
        ),
    ]);
    assert_eq!(faults.len(), 5, "{faults:#?}");
    assert!(faults[0].contains("src/config/diagnostic.rs:3: `config::diagnostic` (layer 0 (ground)) imports `message::Message` of `message` (layer 1 (core))"), "{}", faults[0]);
    assert!(faults[1].contains("imports `config::pipeline::OnErrorConfig` of `config::pipeline` (layer 3 (configuration))"), "{}", faults[1]);
    assert!(
        faults[2].contains(":7: `config::diagnostic` (layer 0 (ground)) imports `metrics::noted`"),
        "{}",
        faults[2]
    );
    assert!(
        faults[3].contains(
            ":11: `config::diagnostic` (layer 0 (ground)) imports `config::document::Document`"
        ),
        "{}",
        faults[3]
    );
    assert_eq!(
        faults[4],
        "import cycle: `sources::http` imports `sources::soap` (src/sources/http.rs:1), `sources::soap` imports `sources::http` (src/sources/soap.rs:3)"
    );
}

/// A path through a re-export counts where the item is defined.
#[test]
fn the_checker_follows_re_exports() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    let config = "pub mod diagnostic;\npub use diagnostic::Diagnostic;\npub use pipeline::{OnErrorConfig, PipelineFile};\npub use crate::retry;\n";
    let step = "use crate::config::Diagnostic;\nuse crate::config::retry::RetryPolicy;\nuse crate::config::OnErrorConfig;\n";
    assert_eq!(
        reexports(&m("config"), config),
        vec![
            (m("config::Diagnostic"), m("config::diagnostic::Diagnostic")),
            (
                m("config::OnErrorConfig"),
                m("config::pipeline::OnErrorConfig")
            ),
            (
                m("config::PipelineFile"),
                m("config::pipeline::PipelineFile")
            ),
            (m("config::retry"), m("retry")),
        ]
    );
    let faults = faults(&[
        ("src/config/mod.rs".into(), m("config"), config.into()),
        ("src/steps/step.rs".into(), m("steps::step"), step.into()),
    ]);
    assert_eq!(
        faults,
        vec!["src/steps/step.rs:3: `steps` (layer 2 (components)) imports `config::OnErrorConfig` of `config::pipeline` (layer 3 (configuration)), a higher layer"]
    );
}
