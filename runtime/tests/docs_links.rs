//! Every relative link of the repository's Markdown files leads somewhere.
//!
//! For every tracked `*.md` file (`git ls-files`; without git, every `*.md` under the repository
//! root outside `target/` and hidden folders), every link `[text](target)` and image
//! `![alt](target)` outside code blocks and code spans, and every reference definition
//! `[label]: target`, whose target is not a URL (`https:`, `mailto:`, ...) must name an existing
//! file or folder, relative to the file it is written in. An anchor (`#section`) must name a
//! heading of the target Markdown file (GitHub's rule: lower case, punctuation removed, spaces
//! as `-`, `-1`, `-2` for repeated headings) or an HTML `id`/`name` in it; anchors into other
//! kinds of files are not checked. `ci/advisory-db/` (a vendored copy of the RustSec database)
//! is left out.
//!
//! Also: every metric of the contract `ops/metrics.txt` is named in the metrics table of
//! `docs/operations/observability.md`, and the pipeline and the test that
//! `docs/getting-started.md` has a newcomer write pass `gridflow validate` and `gridflow test`.
//!
//! No broker, no network: this only reads files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Folders whose Markdown files are not ours to check.
const SKIPPED: &[&str] = &["ci/advisory-db/"];

/// The Markdown files of the repository, relative to `root`, sorted.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let tracked = Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success() && !o.stdout.is_empty());
    let mut files: Vec<PathBuf> = match tracked {
        Some(out) => String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => {
            let mut found = Vec::new();
            walk(root, root, &mut found);
            found
        }
    };
    files.retain(|p| {
        let text = p.to_string_lossy();
        !SKIPPED.iter().any(|s| text.starts_with(s)) && root.join(p).is_file()
    });
    files.sort();
    files
}

/// Every `*.md` under `dir`, outside `target/` and hidden folders.
fn walk(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                walk(root, &path, found);
            }
        } else if name.ends_with(".md") {
            found.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

/// The text of `line` with its code spans blanked out (same length, so columns stay true).
/// `in_span` carries an open span of that many backticks across lines.
fn without_code_spans(line: &str, in_span: &mut usize) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let run = bytes[i..].iter().take_while(|&&b| b == b'`').count();
            if *in_span == 0 {
                *in_span = run;
            } else if *in_span == run {
                *in_span = 0;
            }
            out.push_str(&" ".repeat(run));
            i += run;
            continue;
        }
        let c = line[i..].chars().next().unwrap();
        if *in_span > 0 {
            out.push(' ');
        } else {
            out.push(c);
        }
        i += c.len_utf8();
    }
    out
}

/// The link targets of a Markdown text, with their 1-based line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut fence: Option<String> = None;
    let mut in_span = 0;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if let Some(marker) = &fence {
            if trimmed.starts_with(marker.as_str()) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            let marker: String = trimmed
                .chars()
                .take_while(|&c| c == '`' || c == '~')
                .collect();
            fence = Some(marker);
            in_span = 0;
            continue;
        }
        if raw.trim().is_empty() {
            // A code span does not cross a paragraph.
            in_span = 0;
        }
        let line = without_code_spans(raw, &mut in_span);
        // [label]: target
        if let Some(rest) = line.trim_start().strip_prefix('[') {
            if let Some(end) = rest.find("]:") {
                if !rest[..end].is_empty() && !rest[..end].contains(']') {
                    let target = rest[end + 2..].split_whitespace().next().unwrap_or("");
                    if !target.is_empty() {
                        found.push((n + 1, target.trim_matches(['<', '>']).to_string()));
                    }
                }
            }
        }
        // [text](target) and ![alt](target)
        let mut from = 0;
        while let Some(at) = line[from..].find("](") {
            let start = from + at + 2;
            let rest = &line[start..];
            let target = if let Some(inner) = rest.strip_prefix('<') {
                inner.split('>').next().unwrap_or("")
            } else {
                let end = rest
                    .find(|c: char| c == ')' || c.is_whitespace())
                    .unwrap_or(rest.len());
                &rest[..end]
            };
            if !target.is_empty() {
                found.push((n + 1, target.to_string()));
            }
            from = start;
        }
    }
    found
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    // A link in a heading counts by its text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](") {
            Some(mid) => {
                let close = rest[open + mid..].find(')').map(|c| open + mid + c);
                let Some(close) = close else { break };
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                rest = &rest[close + 1..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors a Markdown text offers: its headings' slugs and its HTML `id`s and `name`s.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fence: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(marker) = &fence {
            if trimmed.starts_with(marker.as_str()) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(
                trimmed
                    .chars()
                    .take_while(|&c| c == '`' || c == '~')
                    .collect(),
            );
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(line[hashes..].trim().trim_end_matches('#'));
            let count = seen.entry(base.clone()).or_insert(0);
            let anchor = if *count == 0 {
                base.clone()
            } else {
                format!("{base}-{count}")
            };
            *count += 1;
            out.insert(anchor);
        }
        for attr in ["id=\"", "name=\""] {
            let mut from = 0;
            while let Some(at) = line[from..].find(attr) {
                let start = from + at + attr.len();
                if let Some(end) = line[start..].find('"') {
                    out.insert(line[start..start + end].to_string());
                }
                from = start;
            }
        }
    }
    out
}

/// `path` with `.` and `..` resolved, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Decodes the `%XX` escapes of a link target.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every broken link of `files` (relative to `root`), as `file:line: message`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut broken = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for (line, target) in links(&text) {
            let is_url = target.split_once(':').is_some_and(|(scheme, _)| {
                scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !scheme.is_empty()
            });
            if is_url {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let path = percent_decoded(path.split('?').next().unwrap_or(""));
            let resolved = if path.is_empty() {
                file.clone()
            } else if let Some(absolute) = path.strip_prefix('/') {
                normalise(Path::new(absolute))
            } else {
                normalise(&file.parent().unwrap_or(Path::new("")).join(&path))
            };
            let on_disk = root.join(&resolved);
            if !on_disk.exists() {
                broken.push(format!(
                    "{}:{line}: `{target}`: no file or folder {}",
                    file.display(),
                    resolved.display()
                ));
                continue;
            }
            let Some(anchor) = anchor.filter(|a| !a.is_empty()) else {
                continue;
            };
            if on_disk.is_dir() || resolved.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let known = cache
                .entry(resolved.clone())
                .or_insert_with(|| anchors(&std::fs::read_to_string(&on_disk).unwrap_or_default()));
            if !known.contains(&percent_decoded(anchor)) {
                broken.push(format!(
                    "{}:{line}: `{target}`: {} has no heading or id `#{anchor}`",
                    file.display(),
                    resolved.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_of_the_markdown_files_resolves() {
    let root = repo();
    let files = markdown_files(&root);
    assert!(
        files.iter().any(|f| f == Path::new("README.md"))
            && files.iter().any(|f| f.starts_with("docs")),
        "the Markdown files were not found: {files:?}"
    );
    let broken = broken_links(&root, &files);
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn every_metric_of_the_contract_is_documented_in_the_observability_page() {
    let root = repo();
    let contract = std::fs::read_to_string(root.join("ops/metrics.txt")).unwrap();
    let page = std::fs::read_to_string(root.join("docs/operations/observability.md")).unwrap();
    let missing: Vec<&str> = contract
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !page.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics of ops/metrics.txt missing from docs/operations/observability.md: {missing:?}"
    );
}

/// The first ```toml block of `page` after the heading `heading`.
fn toml_block_after(page: &str, heading: &str) -> String {
    let at = page
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let start = at + page[at..].find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + page[start..].find("```").unwrap();
    page[start..end].to_string()
}

#[test]
fn the_tutorials_pipeline_and_test_pass() {
    let root = repo();
    let page = std::fs::read_to_string(root.join("docs/getting-started.md")).unwrap();
    let pipeline = toml_block_after(&page, "## 2. Write a pipeline");
    // Step 6 changes the `map` expression; the test of step 7 expects the changed pipeline.
    let changed = toml_block_after(&page, "## 6. Change it while it runs");
    let changed = changed.trim();
    assert!(changed.starts_with("expression = "), "{changed}");
    let expression_line = pipeline
        .lines()
        .find(|l| l.starts_with("expression = "))
        .expect("the pipeline has a map expression");
    let test = toml_block_after(&page, "## 7. Test it");

    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("my-flows");
    std::fs::create_dir_all(flows.join("tests")).unwrap();
    let gridflow = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gridflow"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("KAFKA_BROKERS")
            .env("RUST_LOG", "error")
            .output()
            .expect("gridflow runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    std::fs::write(flows.join("meter-hello.toml"), &pipeline).unwrap();
    let (code, output) = gridflow(&["validate", "my-flows/"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("1 pipeline file(s) OK."), "{output}");

    std::fs::write(
        flows.join("meter-hello.toml"),
        pipeline.replace(expression_line, changed),
    )
    .unwrap();
    std::fs::write(flows.join("tests/meter-hello.test.toml"), &test).unwrap();
    let (code, output) = gridflow(&["test", "my-flows/tests/meter-hello.test.toml"]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("3 passed, 0 failed"), "{output}");
}

#[test]
fn a_broken_link_or_anchor_is_reported_and_a_good_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("docs/reference")).unwrap();
    std::fs::write(
        root.join("docs/reference/map.md"),
        "# `map`\n\n## Keys\n\n## Behaviour and errors\n\n## Keys\n",
    )
    .unwrap();
    std::fs::write(
        root.join("README.md"),
        "# gridflow\n\n\
         See [map](docs/reference/map.md), [its keys](docs/reference/map.md#keys),\n\
         [again](docs/reference/map.md#keys-1), [errors](docs/reference/map.md#behaviour-and-errors),\n\
         [the folder](docs/), [the site](https://example.org/nowhere.md), [here](#gridflow).\n\n\
         Broken: [gone](docs/reference/filter.md), [no such heading](docs/reference/map.md#example),\n\
         [no such anchor here](#set-up).\n\n\
         ```md\n[in a code block](nowhere.md)\n```\n\n\
         Not a link: `[in a code span](nowhere.md)`.\n",
    )
    .unwrap();
    let files = vec![
        PathBuf::from("README.md"),
        PathBuf::from("docs/reference/map.md"),
    ];
    let broken = broken_links(root, &files);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(
        broken[0].starts_with("README.md:7: `docs/reference/filter.md`: no file"),
        "{broken:#?}"
    );
    assert!(
        broken[1].contains("`docs/reference/map.md#example`"),
        "{broken:#?}"
    );
    assert!(
        broken[2].starts_with("README.md:8: `#set-up`"),
        "{broken:#?}"
    );
}

#[test]
fn anchors_follow_githubs_rule() {
    let text = "# Pipeline files\n## 3. The XML ⇄ JSON convention\n### `${VAR}` interpolation\n\
                ## `[on_error]`\n## Change\n## Change\n```sh\n# not a heading\n```\n<a id=\"custom\"></a>\n";
    let found = anchors(text);
    for expected in [
        "pipeline-files",
        "3-the-xml--json-convention",
        "var-interpolation",
        "on_error",
        "change",
        "change-1",
        "custom",
    ] {
        assert!(found.contains(expected), "{expected} not in {found:?}");
    }
    assert!(!found.contains("not-a-heading"), "{found:?}");
}
