//! The editor schemas (`schemas/*.json`, see docs/editor.md): they are what `gridflow schema`
//! prints (so they cannot drift from the code; `UPDATE_SCHEMAS=1` rewrites them), every file
//! the repository ships validates against its schema, and faulty files fail as they fail to
//! parse.

use std::path::{Path, PathBuf};
use std::process::Command;

use gridflow::config::pipeline::parse_pipeline;
use gridflow::config::RuntimeConfig;
use gridflow::schema::Format;
use serde_json::Value;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ is in the repository")
        .to_path_buf()
}

fn validator(format: Format) -> jsonschema::Validator {
    jsonschema::draft202012::new(&format.schema())
        .unwrap_or_else(|e| panic!("the {} schema compiles: {e}", format.name()))
}

/// The errors of `toml_text` against the schema of `format` (empty: valid).
fn errors(format: Format, toml_text: &str) -> Vec<String> {
    let instance: Value = toml::from_str(toml_text).expect("the TOML parses");
    validator(format)
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The `*.toml` files of `dir` (`suffix`: `.test.toml` for test files), sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn the_shipped_schemas_are_what_gridflow_schema_prints() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for format in Format::ALL {
        let out = Command::new(env!("CARGO_BIN_EXE_gridflow"))
            .args(["schema", format.name()])
            .output()
            .expect("gridflow runs");
        assert!(out.status.success(), "{out:?}");
        let printed = String::from_utf8(out.stdout).expect("UTF-8");
        assert_eq!(printed, format.text(), "{}", format.name());
        // What is printed is a draft 2020-12 schema that compiles.
        let schema: Value = serde_json::from_str(&printed).expect("JSON");
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(
            schema["$id"],
            format!("urn:gridflow:schema:{}", format.name())
        );
        validator(format);

        let path = repo()
            .join("schemas")
            .join(format!("{}.json", format.name()));
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        if shipped != printed {
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &printed).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from `gridflow schema`; run `UPDATE_SCHEMAS=1 cargo test -p gridflow --test schema` and commit them"
    );
}

/// The files matched by `pattern`, a path from the repository's root whose last part may
/// hold one `*` (as `.taplo.toml` writes them).
fn expand(pattern: &str) -> Vec<PathBuf> {
    let path = repo().join(pattern);
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    match name.split_once('*') {
        None => vec![path],
        Some((prefix, suffix)) => {
            let dir = path.parent().unwrap();
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_str().unwrap();
                    p.is_file()
                        && n.len() >= prefix.len() + suffix.len()
                        && n.starts_with(prefix)
                        && n.ends_with(suffix)
                })
                .collect();
            found.sort();
            found
        }
    }
}

#[test]
fn every_shipped_file_validates_against_the_schema_taplo_gives_it() {
    // The associations editors use (.taplo.toml) are the ones checked here: each rule's
    // files against each rule's shipped schema.
    let taplo: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join(".taplo.toml")).expect(".taplo.toml"))
            .expect(".taplo.toml parses");
    let mut checked: Vec<(String, PathBuf)> = Vec::new();
    for rule in taplo["rule"].as_array().expect("[[rule]]") {
        let schema_path = rule["schema"]["path"].as_str().expect("schema.path");
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join(schema_path)).expect("the schema file"),
        )
        .expect("JSON");
        let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
        for pattern in rule["include"].as_array().expect("include") {
            let pattern = pattern.as_str().unwrap();
            let files = expand(pattern);
            assert!(!files.is_empty(), "`{pattern}` matches no file");
            for path in files {
                let text = std::fs::read_to_string(&path).unwrap();
                let instance: Value = toml::from_str(&text).unwrap();
                let errors: Vec<String> = validator
                    .iter_errors(&instance)
                    .map(|e| format!("{e} at {}", e.instance_path()))
                    .collect();
                assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
                checked.push((schema_path.to_string(), path));
            }
        }
    }
    // Every schema has files, and the files of each kind are there: both pipelines, both
    // test files, gridflow.toml and config/*.toml, the catalog.
    for format in Format::ALL {
        let schema = format!("./schemas/{}.json", format.name());
        assert!(
            checked.iter().any(|(s, _)| *s == schema),
            "no file is checked against {schema}"
        );
    }
    let shipped = |dir: &str, suffix: &str| files(&repo().join(dir), suffix);
    let mut expected = shipped("pipelines", ".toml");
    expected.extend(shipped("pipelines/tests", ".test.toml"));
    expected.extend(shipped("config", ".toml"));
    expected.push(repo().join("gridflow.toml"));
    expected.push(repo().join("contracts/topics.toml"));
    for path in expected {
        assert!(
            checked.iter().any(|(_, p)| *p == path),
            "{} has no schema in .taplo.toml",
            path.display()
        );
    }
}

/// A pipeline file both gridflow and the schema accept.
const GOOD_PIPELINE: &str = r#"
name = "good"
[source]
kind = "http"
path = "/in"
[[steps]]
kind = "map"
expression = "a"
[[steps]]
kind = "try"
[[steps.steps]]
kind = "enrich"
url = "http://h/{id}"
target = "x"
method = "POST"
body = "a"
cache = { ttl_ms = 1000 }
[[steps.catch]]
kind = "branch"
mode = "all"
[[steps.catch.routes]]
when = "b"
[steps.catch.routes.sink]
kind = "kafka"
topic = "x.y.z.v1"
[sink]
kind = "stdout"
[on_error]
max_attempts = 3
"#;

#[test]
fn faulty_pipeline_files_fail_the_schema_as_they_fail_to_parse() {
    let parses = |text: &str| parse_pipeline(Path::new("p.toml"), text, &|_| None).is_ok();
    assert!(parses(GOOD_PIPELINE));
    assert_eq!(
        errors(Format::Pipeline, GOOD_PIPELINE),
        Vec::<String>::new()
    );
    for (what, from, to) in [
        (
            "an unknown top-level key",
            "name = \"good\"",
            "nme = \"good\"",
        ),
        (
            "an unknown key in a step",
            "expression = \"a\"",
            "expresion = \"a\"",
        ),
        (
            "an unknown key in a nested step",
            "target = \"x\"",
            "targt = \"x\"",
        ),
        ("an unknown kind", "kind = \"map\"", "kind = \"mapp\""),
        (
            "an unknown sink kind",
            "kind = \"stdout\"",
            "kind = \"stdot\"",
        ),
        ("a wrong type", "max_attempts = 3", "max_attempts = \"3\""),
        ("a wrong type in a step", "ttl_ms = 1000", "ttl_ms = true"),
        (
            "a closed value not in its set",
            "method = \"POST\"",
            "method = \"PUT\"",
        ),
        ("a missing required key", "topic = \"x.y.z.v1\"", ""),
        ("a missing required key of a step", "expression = \"a\"", ""),
        ("a missing section", "[sink]\nkind = \"stdout\"", ""),
        (
            "a name that is not one",
            "name = \"good\"",
            "name = \"a b\"",
        ),
    ] {
        let bad = GOOD_PIPELINE.replacen(from, to, 1);
        assert_ne!(bad, GOOD_PIPELINE, "{what}");
        assert!(!parses(&bad), "gridflow accepts {what}");
        assert!(
            !errors(Format::Pipeline, &bad).is_empty(),
            "the schema accepts {what}"
        );
    }
}

#[test]
fn faulty_config_test_and_catalog_files_fail_the_schema() {
    let config = "[kafka]\nbrokers = 'b:9092'\n[kafka.properties]\n'linger.ms' = 5\n'sasl.password' = { file = '/run/pw' }\n[http]\nlisten = '127.0.0.1:8080'\nmax_connections = 10\n";
    let parses = |text: &str| RuntimeConfig::parse(Path::new("g.toml"), text, &|_| None).is_ok();
    assert!(parses(config));
    assert_eq!(errors(Format::Config, config), Vec::<String>::new());
    for (from, to) in [
        ("brokers", "broker"),
        ("max_connections = 10", "max_connections = '10'"),
        ("[http]", "[htp]"),
        ("{ file = '/run/pw' }", "{ path = '/run/pw' }"),
    ] {
        let bad = config.replacen(from, to, 1);
        assert!(!parses(&bad), "{bad}");
        assert!(!errors(Format::Config, &bad).is_empty(), "{bad}");
    }

    let test = "pipeline = '../p.toml'\n[[case]]\nname = 'c'\ninput = { json = { a = 1 } }\n[case.expect]\ncount = 1\n";
    assert_eq!(errors(Format::Test, test), Vec::<String>::new());
    for bad in [
        test.replace("pipeline = '../p.toml'\n", ""),
        test.replace("count = 1", "count = 'one'"),
        test.replace("count = 1", "cont = 1"),
        "pipeline = '../p.toml'\n".to_string(),
    ] {
        assert!(!errors(Format::Test, &bad).is_empty(), "{bad}");
    }

    let catalog =
        "[[topic]]\nname = 'a.b.c.v1'\npartitions = 3\nretention = '7d'\nowner = 'team'\n";
    assert_eq!(errors(Format::Catalog, catalog), Vec::<String>::new());
    for bad in [
        catalog.replace("owner = 'team'\n", ""),
        catalog.replace("partitions = 3", "partitions = 'three'"),
        catalog.replace("owner", "owners"),
    ] {
        assert!(
            toml::from_str::<gridflow::contracts::TopicCatalog>(&bad).is_err(),
            "{bad}"
        );
        assert!(!errors(Format::Catalog, &bad).is_empty(), "{bad}");
    }
}

#[test]
fn every_registered_kind_is_in_the_schema() {
    let schema = Format::Pipeline.schema();
    for (def, kinds) in [
        ("Step", gridflow::steps::KINDS),
        ("Sink", gridflow::sinks::KINDS),
        ("Source", gridflow::sources::KINDS),
    ] {
        let family = &schema["$defs"][def];
        assert_eq!(
            family["properties"]["kind"]["enum"],
            serde_json::json!(kinds)
        );
        let branches = family["oneOf"].as_array().unwrap();
        assert_eq!(branches.len(), kinds.len(), "{def}");
        for kind in kinds {
            let branch = branches
                .iter()
                .find(|b| b["properties"]["kind"]["const"] == *kind)
                .unwrap_or_else(|| panic!("{def} `{kind}` has no branch"));
            assert_eq!(branch["additionalProperties"], false, "{def} `{kind}`");
            assert!(
                branch["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{def} `{kind}` has no description"
            );
        }
    }
}
