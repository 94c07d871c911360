//! Black-box: `gridflow test` runs pipeline tests without Kafka and without network.
//! No broker is needed: only the harness's non-Kafka helpers are used.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// The repository root (the shipped pipelines, tests and contracts).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `gridflow test <args>` in `dir`, without KAFKA_BROKERS.
fn gridflow_test(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out: Output = Command::new(gridflow_bin())
        .arg("test")
        .args(args)
        .current_dir(dir)
        .env_remove("KAFKA_BROKERS")
        .env("RUST_LOG", "error")
        .output()
        .expect("gridflow runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `<dir>/pipelines/tests/<name>`.
fn write_test(dir: &Path, name: &str, text: &str) {
    let tests = dir.join("pipelines/tests");
    std::fs::create_dir_all(&tests).unwrap();
    std::fs::write(tests.join(name), text).unwrap();
}

/// The first ```toml block of `readme` after the heading `heading`.
fn toml_block_after(readme: &str, heading: &str) -> String {
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let start = at + readme[at..].find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_string()
}

/// A temp dir holding the worked example of `docs/worked-example.md` and its test, as that page
/// shows them.
fn readme_example() -> tempfile::TempDir {
    let readme = std::fs::read_to_string(repo().join("docs/worked-example.md")).unwrap();
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "meter-reading-routing.toml",
        &toml_block_after(&readme, "# Worked example"),
    );
    write_test(
        dir.path(),
        "meter-reading-routing.test.toml",
        &toml_block_after(&readme, "## Its test: a pipeline with an `enrich` call"),
    );
    dir
}

#[test]
fn the_shipped_tests_pass() {
    let (code, stdout, stderr) = gridflow_test(&repo(), &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let cases: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.contains(" passed, "))
        .collect();
    assert!(cases.len() >= 4, "{stdout}");
    for line in &cases {
        assert!(line.starts_with("ok "), "{stdout}");
    }
    for pipeline in std::fs::read_dir(repo().join("pipelines")).unwrap() {
        let path = pipeline.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                stdout.contains(&format!("pipelines/tests/{stem}.test.toml: ")),
                "every shipped pipeline has tests: {stem}\n{stdout}"
            );
        }
    }
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// The worked example's page and the shipped files cannot drift: the page's pipeline is
/// `pipelines/meter-reading-routing.toml` byte for byte, and the shipped test file starts with
/// the page's test (after its one comment line), then adds cases.
#[test]
fn the_worked_example_is_the_shipped_pipeline() {
    let page = std::fs::read_to_string(repo().join("docs/worked-example.md")).unwrap();
    let shipped =
        std::fs::read_to_string(repo().join("pipelines/meter-reading-routing.toml")).unwrap();
    assert_eq!(
        toml_block_after(&page, "# Worked example"),
        shipped,
        "docs/worked-example.md and pipelines/meter-reading-routing.toml differ"
    );
    let shipped_test =
        std::fs::read_to_string(repo().join("pipelines/tests/meter-reading-routing.test.toml"))
            .unwrap();
    let (comment, rest) = shipped_test.split_once('\n').unwrap();
    assert!(comment.starts_with("# "), "{comment}");
    let page_test = toml_block_after(&page, "## Its test: a pipeline with an `enrich` call");
    assert!(
        rest.starts_with(&page_test),
        "pipelines/tests/meter-reading-routing.test.toml does not start with the test of \
         docs/worked-example.md"
    );
    assert!(rest.len() > page_test.len(), "the shipped test adds cases");
}

#[test]
fn the_readme_example_passes() {
    let dir = readme_example();
    let (code, stdout, stderr) = gridflow_test(dir.path(), &["pipelines/tests"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
}

#[test]
fn a_failing_expectation_shows_the_case_and_the_diff() {
    let dir = test_dir();
    std::fs::copy(
        repo().join("pipelines/meter-readings.toml"),
        dir.path().join("pipelines/meter-readings.toml"),
    )
    .unwrap();
    let contracts = repo().join("contracts");
    write_test(
        dir.path(),
        "meter-readings.test.toml",
        r#"pipeline = "../meter-readings.toml"

[[case]]
name = "the value is converted"
input = { json = { meter_id = "M-1", ts = "2026-01-14T00:15:00Z", reading = { value = "0.412", unit = "kWh" }, site = { substation = "SS-1", feeder = "F-1" } }, key = "M-1" }

[case.expect]
messages = [{ meter_id = "M-1", measured_at = "2026-01-14T00:15:00Z", value = 0.5, unit = "kWh", substation = "SS-1", feeder = "F-1" }]

[[case]]
name = "a passing case"
input = { json = { meter_id = "M-1", ts = "2026-01-14T00:15:00Z", reading = { value = "1", unit = "kWh" } } }

[case.expect]
count = 1
"#,
    );
    let (code, stdout, stderr) = gridflow_test(
        dir.path(),
        &[
            "--contracts",
            contracts.to_str().unwrap(),
            "pipelines/tests",
        ],
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAILED pipelines/tests/meter-readings.test.toml: the value is converted"),
        "{stdout}"
    );
    assert!(stdout.contains("(- expected, + actual)"), "{stdout}");
    assert!(stdout.contains("-     \"value\": 0.5"), "{stdout}");
    assert!(stdout.contains("+     \"value\": 0.412"), "{stdout}");
    // `quality` is written null by the map step: the diff shows the line it adds.
    assert!(stdout.contains("+     \"quality\": null,"), "{stdout}");
    assert!(
        stdout.contains("ok     pipelines/tests/meter-readings.test.toml: a passing case"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_call_without_recording_names_the_url() {
    let dir = readme_example();
    let test = dir
        .path()
        .join("pipelines/tests/meter-reading-routing.test.toml");
    let text = std::fs::read_to_string(&test).unwrap().replace(
        "url = \"http://registry.test/v2/meters/FR-PRM-00000000000000\"",
        "url = \"http://registry.test/v2/meters/FR-PRM-0\"",
    );
    std::fs::write(&test, text).unwrap();
    let (code, stdout, stderr) = gridflow_test(dir.path(), &[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAILED pipelines/tests/meter-reading-routing.test.toml: a meter the registry does not know goes on without asset"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "no recording answers GET http://registry.test/v2/meters/FR-PRM-00000000000000; recorded: GET http://registry.test/v2/meters/FR-PRM-0 (404)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("4 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_malformed_test_file_exits_2_with_positions() {
    let dir = readme_example();
    write_test(
        dir.path(),
        "broken.test.toml",
        "pipeline = \"../meter-reading-routing.toml\"\n[env]\nASSET_REGISTRY_TOKEN = \"t\"\n\n[[case]]\nname = \"x\"\ninput = { json = {} }\n[case.expect]\ncuont = 1\n\n[[case]]\nname = \"y\"\ninput = { json = {} }\n[case.expect]\ndead_letter = { code = \"maping_error\" }\n",
    );
    let (code, stdout, stderr) = gridflow_test(dir.path(), &[]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "pipelines/tests/broken.test.toml:9:1: error: unknown key `cuont` in case[0]"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("= hint: did you mean `count`?"), "{stderr}");
    assert!(
        stderr.contains(
            "pipelines/tests/broken.test.toml:15:24: error: unknown error code `maping_error`"
        ),
        "{stderr}"
    );
    // The other test file still ran.
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
    // A syntax error too.
    write_test(dir.path(), "broken.test.toml", "pipeline = \n");
    let (code, _, stderr) = gridflow_test(dir.path(), &["pipelines/tests/broken.test.toml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("pipelines/tests/broken.test.toml:1:"),
        "{stderr}"
    );
    assert!(stderr.contains("invalid TOML"), "{stderr}");
}
