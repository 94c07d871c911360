//! Black-box: the no-Docker path of `local-dev/` (prerequisites, stack up, verification of the
//! shipped flows, evidence capture and its files, stack down), as a newcomer without a Docker
//! engine runs it, against the suite's broker and the binary under test.
//! `local-dev/tests/no-docker.sh` prints its pass/fail table; this test fails when any step
//! does.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_local_stack_comes_up_verifies_the_shipped_flows_and_goes_down_without_docker() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("local-dev/tests/no-docker.sh"))
        .current_dir(&root)
        .env("KAFKA_BROKERS", brokers())
        .env("GRIDFLOW_BIN", gridflow_bin())
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "no-docker.sh failed:\n{text}");
    assert!(text.contains("All checks passed."), "{text}");
    assert!(text.contains("evidence: all checks passed"), "{text}");
    assert!(!text.contains("FAIL "), "{text}");
    assert!(text.contains("local stack down"), "{text}");
}

/// A clone in an empty folder must build, test and run: no file of the repository may name a
/// path outside it (a sibling `shared/` folder, a machine's absolute path). Fixtures are copied
/// into the repository with their provenance instead.
#[test]
fn no_file_of_the_repository_refers_to_a_path_outside_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    let files: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert!(
        files.len() > 100,
        "git ls-files listed the repository: {}",
        files.len()
    );
    // Built from pieces so that this file does not match itself.
    let outside = [
        format!("../{}/", "shared"),
        format!("/{}/{}/", "work", "shared"),
        format!("/{}/{}/", "work", "main"),
    ];
    let mut offenders = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read(root.join(file)) else {
            continue; // listed but deleted in the work tree
        };
        let text = String::from_utf8_lossy(&text);
        for (n, line) in text.lines().enumerate() {
            if outside.iter().any(|o| line.contains(o.as_str())) {
                offenders.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "files refer to paths outside the repository:\n{}",
        offenders.join("\n")
    );
}
