//! The key tables of the reference are written from the schema that `gridflow schema` prints,
//! so they cannot drift from the code: every block
//!
//! ```text
//! <!-- keys: steps.map -->
//! ...
//! <!-- /keys -->
//! ```
//!
//! of a page under `docs/` must hold the table `gridflow::schema::key_table("steps.map")`
//! writes (`UPDATE_DOCS=1 cargo test -p gridflow --test reference_tables` rewrites them), and
//! every registered source, step and sink kind has its block somewhere in `docs/`. The same
//! for each kind's registered example: `<!-- example: steps.map -->` blocks on the kind's
//! page hold the `EXAMPLE` of its registry line.

use std::path::{Path, PathBuf};

use gridflow::schema::{example_markers, key_table_markers, update_examples, update_key_tables};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ is in the repository")
        .join("docs")
}

/// The Markdown files under `dir`, at any depth, sorted.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_key_table_is_the_one_the_schema_gives() {
    let update = std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for path in markdown_files(&docs()) {
        let text = std::fs::read_to_string(&path).unwrap();
        let updated = update_key_tables(&text)
            .and_then(|t| update_examples(&t))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if updated == text {
            continue;
        }
        if update {
            std::fs::write(&path, &updated).unwrap();
        } else {
            let line = text
                .lines()
                .zip(updated.lines())
                .position(|(a, b)| a != b)
                .map_or(text.lines().count(), |i| i)
                + 1;
            stale.push(format!("{}:{line}", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "key tables or examples differ from the schema and the registries at {stale:?}; run `UPDATE_DOCS=1 cargo test -p gridflow --test reference_tables` and commit the pages"
    );
}

#[test]
fn every_registered_kind_has_a_key_table_in_the_docs() {
    let markers: Vec<String> = markdown_files(&docs())
        .iter()
        .flat_map(|path| key_table_markers(&std::fs::read_to_string(path).unwrap()))
        .collect();
    let missing: Vec<String> = [
        ("sources", gridflow::sources::KINDS),
        ("steps", gridflow::steps::KINDS),
        ("sinks", gridflow::sinks::KINDS),
    ]
    .into_iter()
    .flat_map(|(family, kinds)| kinds.iter().map(move |kind| format!("{family}.{kind}")))
    .filter(|marker| !markers.contains(marker))
    .collect();
    assert!(
        missing.is_empty(),
        "kinds without a `<!-- keys: family.kind -->` block in docs/: {missing:?}"
    );
}

/// Every registered kind's page shows the example of its registry line (the one the registry
/// test parses, builds and runs), between `<!-- example: family.kind -->` markers.
#[test]
fn every_registered_kind_shows_its_registered_example_on_its_page() {
    let mut missing = Vec::new();
    for (family, kinds) in [
        ("sources", gridflow::sources::KINDS),
        ("steps", gridflow::steps::KINDS),
        ("sinks", gridflow::sinks::KINDS),
    ] {
        for kind in kinds {
            let page = docs()
                .join("reference")
                .join(family)
                .join(format!("{kind}.md"));
            let text = std::fs::read_to_string(&page).unwrap_or_default();
            let marker = format!("{family}.{kind}");
            if !example_markers(&text).contains(&marker) {
                missing.push(page.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "pages without their kind's `<!-- example: family.kind -->` block: {missing:?}"
    );
}
