//! Black-box: the no-Docker path of `local-dev/` (prerequisites, stack up, verification of the
//! shipped flows, stack down), as a newcomer without a Docker engine runs it, against the
//! suite's broker and the binary under test. `local-dev/tests/no-docker.sh` prints its pass/fail
//! table; this test fails when any step does.

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
    assert!(!text.contains("FAIL "), "{text}");
    assert!(text.contains("local stack down"), "{text}");
}
