//! Black-box: `gridflow validate` prints every error with file, line and column.

mod common;

use common::*;

#[test]
fn reports_every_error_with_position_and_hint() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "broken.toml",
        "name = 'broken'\n[source]\nkind = 'htp'\npath = '/x'\n[[steps]]\nkind = 'map'\nexpresion = 'a'\n[[steps]]\nkind = 'filter'\ncondition = 'a ==* b'\n[sink]\nkind = 'kafka'\n",
    );
    let out = Gridflow::spawn_raw(&["validate", "pipelines"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pipelines/broken.toml:3:8: error: unknown kind `htp` in [source]"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `http`?"), "{stderr}");
    assert!(
        stderr.contains("pipelines/broken.toml:7:1: error: unknown key `expresion` in steps[0]"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `expression`?"), "{stderr}");
    assert!(
        stderr.contains("pipelines/broken.toml:10:"),
        "the JMESPath error has a position: {stderr}"
    );
    assert!(stderr.contains("invalid JMESPath"), "{stderr}");
    assert!(
        stderr.contains("pipelines/broken.toml:11:1: error: missing key `topic` in [sink]"),
        "{stderr}"
    );
    assert!(stderr.contains("= hint:"), "{stderr}");
}

#[test]
fn syntax_errors_and_duplicate_names() {
    let dir = test_dir();
    write_pipeline(
        dir.path(),
        "a.toml",
        "name = 'same'\n[source]\nkind='http'\npath='/a'\n[sink]\nkind='stdout'\n",
    );
    write_pipeline(
        dir.path(),
        "b.toml",
        "name = 'same'\n[source]\nkind='http'\npath='/b'\n[sink]\nkind='stdout'\n",
    );
    write_pipeline(dir.path(), "c.toml", "[source\nkind='http'\n");
    let out = Gridflow::spawn_raw(&["validate"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pipelines/c.toml:1:"), "{stderr}");
    assert!(stderr.contains("invalid TOML"), "{stderr}");
    assert!(
        stderr.contains("pipeline name `same` is already used"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_pipelines_are_valid() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Gridflow::spawn_raw(&["validate", "pipelines"], std::path::Path::new(repo));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pipeline file(s) OK"));
}

#[test]
fn help_and_version() {
    let dir = test_dir();
    let out = Gridflow::spawn_raw(&["--version"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gridflow "));
    for cmd in [&["run", "--help"][..], &["validate", "--help"][..]] {
        let out = Gridflow::spawn_raw(cmd, dir.path());
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
    }
}

/// `[kafka.properties]` cannot configure at-least-once away: `validate` and `run` refuse the
/// runtime configuration, naming the property, its position and why.
#[test]
fn delivery_guarantees_cannot_be_configured_away() {
    let dir = test_dir();
    std::fs::write(
        dir.path().join("gridflow.toml"),
        "[kafka]\nbrokers = '127.0.0.1:1'\n[kafka.properties]\nacks = 1\n'enable.idempotence' = false\n'enable.auto.offset.store' = true\n",
    )
    .unwrap();
    let out = Gridflow::spawn_raw(&["validate"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gridflow.toml:4:1: error: [kafka.properties] `acks` = `1` is not allowed"),
        "{stderr}"
    );
    assert!(stderr.contains("in-sync replica"), "{stderr}");
    assert!(
        stderr.contains("gridflow.toml:5:1: error: [kafka.properties] `enable.idempotence` = `false` is not allowed"),
        "{stderr}"
    );
    assert!(stderr.contains("gridflow.toml:6:1:"), "{stderr}");
    let out = Gridflow::spawn_raw(
        &[
            "run",
            "--config",
            "gridflow.toml",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("`acks` = `1` is not allowed"),
        "{stdout}{stderr}"
    );
}

/// The `file` source's limits: a wrong value is an error at the value, with a hint.
#[test]
fn file_source_limits_are_checked_where_they_are_written() {
    let dir = test_dir();
    let pipeline = |name: &str, line: &str| {
        write_pipeline(
            dir.path(),
            &format!("{name}.toml"),
            &format!("[source]\nkind = 'file'\ndir = 'inbox'\n{line}\n[sink]\nkind = 'stdout'\n"),
        )
    };
    pipeline("size", "max_file_bytes = 0");
    pipeline("line", "max_line_bytes = 2000000000");
    pipeline("attempts", "max_attempts = 0");
    pipeline("typed", "max_line_bytes = '1 MiB'");
    pipeline(
        "fine",
        "max_file_bytes = 1000\nmax_line_bytes = 100\nmax_attempts = 1",
    );
    let out = Gridflow::spawn_raw(&["validate", "pipelines"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "pipelines/size.toml:4:18: error: [source] `max_file_bytes`: max_file_bytes must be at least 1",
        "pipelines/line.toml:4:18: error: [source] `max_line_bytes`: max_line_bytes must be between 1 and 1073741824 (1 GiB), not 2000000000",
        "pipelines/attempts.toml:4:16: error: [source] `max_attempts`: max_attempts must be at least 1",
        "pipelines/typed.toml:4:18: error: [source]: invalid type: string \"1 MiB\", expected u64",
        "= hint: a line is held in memory whole; the default is 1048576 (1 MiB)",
    ] {
        assert!(stderr.contains(expected), "{expected}\n--- got:\n{stderr}");
    }
    assert!(!stderr.contains("fine.toml"), "{stderr}");
    assert!(stderr.contains("4 error(s) in "), "{stderr}");
}
