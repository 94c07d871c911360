//! Black-box: the Ansible skeleton of `ansible/` (inventories dev, recette and prod, the role
//! `gridflow`, the playbooks `site.yml` and `check.yml`), checked by `ansible/check.sh` with
//! ansible-core from PyPI: syntax of every playbook with every inventory, `site.yml --check`
//! against this machine and, as root, `site.yml` applied into a temporary root (files,
//! idempotence), and `check.yml` against a gridflow run from the binary under test, then
//! against that gridflow stopped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One check.sh at a time: the first one installs ansible-core into the shared virtualenv.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `bash <dir>/check.sh` with `GRIDFLOW_BIN` when given; (success, output).
fn check_sh(dir: &Path, bin: Option<&str>) -> (bool, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("bash");
    cmd.arg(dir.join("check.sh")).current_dir(dir);
    cmd.env_remove("GRIDFLOW_BIN");
    if let Some(bin) = bin {
        cmd.env("GRIDFLOW_BIN", bin);
    }
    let out = cmd.output().expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn the_playbooks_pass_syntax_and_check_mode_and_the_check_playbook_sees_gridflow_up_and_down() {
    let (ok, text) = check_sh(&root().join("ansible"), Some(gridflow_bin()));
    assert!(ok, "ansible/check.sh failed:\n{text}");
    for env in ["dev", "recette", "prod"] {
        assert!(
            text.contains(&format!(
                "syntax-check site.yml check.yml -i inventories/{env}: ok"
            )),
            "no syntax check with the {env} inventory:\n{text}"
        );
    }
    if is_root() {
        assert!(
            text.contains("site.yml --check against localhost: ok"),
            "{text}"
        );
        assert!(
            text.contains("site.yml into a temporary root: ok"),
            "{text}"
        );
        assert!(
            text.contains("site.yml again: idempotent, only the retired pipeline removed"),
            "{text}"
        );
    }
    assert!(
        text.contains("check.yml against a running gridflow: ok"),
        "{text}"
    );
    assert!(
        text.contains("check.yml against a stopped gridflow: fails, as it should"),
        "{text}"
    );
    assert!(text.contains("all checks passed"), "{text}");
}

/// A playbook that does not parse (an unknown module option, a broken task list) fails the
/// check: the syntax check is not a formality.
#[test]
fn a_broken_playbook_fails_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("ansible");
    let status = Command::new("cp")
        .arg("-r")
        .arg(root().join("ansible"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    // A task with two modules: ansible-playbook --syntax-check refuses it.
    let check = copy.join("check.yml");
    let text = std::fs::read_to_string(&check).unwrap();
    let broken = text.replacen(
        "    - name: Say what answered\n",
        "    - name: Two modules in one task\n      ansible.builtin.ping:\n      ansible.builtin.debug:\n        msg: x\n\n    - name: Say what answered\n",
        1,
    );
    assert_ne!(broken, text, "the marker task is in check.yml");
    std::fs::write(&check, broken).unwrap();
    let (ok, text) = check_sh(&copy, None);
    assert!(!ok, "check.sh passed a broken check.yml:\n{text}");
    assert!(
        text.contains("FAIL: syntax-check site.yml check.yml -i inventories/dev"),
        "{text}"
    );
}
