#!/usr/bin/env bash
# Checks the Ansible skeleton of ansible/ without a virtual machine (CI runs it):
#
#   1. ansible-core (PyPI, pinned below) in a cached virtualenv;
#   2. ansible-playbook --syntax-check of site.yml and check.yml with each inventory
#      (dev, recette, prod);
#   3. site.yml --check --diff against localhost (connection local) with the dev inventory's
#      variables: every task evaluates (templates render, files exist on the controller) and
#      nothing is changed. Needs root or password-less sudo (the role becomes root); skipped
#      with a note otherwise;
#   3b. as root, site.yml applied for real into a temporary root (every path of the role moved
#      there, an existing account, no service): the installed files are the repository's; a
#      second run removes a retired pipeline and changes nothing else;
#   4. with GRIDFLOW_BIN (a gridflow binary): check.yml against a gridflow started here (an
#      HTTP pipeline, the embedded broker, free ports, no systemd: gridflow_check_service=false)
#      passes (ready, the pipeline running), and fails once that gridflow is stopped.
#
# Settings: ANSIBLE_VENV (default ~/.cache/gridflow/ansible-core-<version>), GRIDFLOW_BIN.
# Exit 0 when every step that ran passed, 1 otherwise. A few seconds once the venv exists.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

ANSIBLE_CORE_VERSION="2.19.*"
venv="${ANSIBLE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gridflow/ansible-core-${ANSIBLE_CORE_VERSION//[*]/x}}"
export ANSIBLE_CONFIG="$here/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export PYTHONWARNINGS=ignore::DeprecationWarning

failures=0
log() { echo "[ansible/check.sh] $*" >&2; }
fail() {
    log "FAIL: $*"
    failures=$((failures + 1))
}

# 1. ansible-core.
if ! "$venv/bin/ansible-playbook" --version >/dev/null 2>&1; then
    log "installing ansible-core $ANSIBLE_CORE_VERSION (PyPI) into $venv"
    python3 -m venv "$venv" || { log "python3 -m venv failed (Debian: apt-get install python3-venv)"; exit 1; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION" >&2 ||
        { log "pip install ansible-core failed"; exit 1; }
fi
playbook="$venv/bin/ansible-playbook"
log "$("$playbook" --version 2>/dev/null | sed -n 1p)"

# 2. Syntax.
for inventory in inventories/dev inventories/recette inventories/prod; do
    if out="$("$playbook" -i "$inventory" --syntax-check site.yml check.yml 2>&1)"; then
        log "syntax-check site.yml check.yml -i $inventory: ok"
    else
        fail "syntax-check site.yml check.yml -i $inventory:"$'\n'"$out"
    fi
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gridflow-ansible.XXXXXX")"
gridflow_pid=""
cleanup() {
    if [[ -n "$gridflow_pid" ]] && kill -0 "$gridflow_pid" 2>/dev/null; then
        kill "$gridflow_pid" 2>/dev/null
        wait "$gridflow_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# localhost as the only host of the group gridflow, with an inventory's group variables.
local_inventory() { # local_inventory ENV
    mkdir -p "$tmp/$1/group_vars"
    printf 'all:\n  children:\n    gridflow:\n      hosts:\n        localhost:\n          ansible_connection: local\n          ansible_python_interpreter: "{{ ansible_playbook_python }}"\n' \
        >"$tmp/$1/hosts.yml"
    cp "inventories/$1/group_vars/gridflow.yml" "$tmp/$1/group_vars/gridflow.yml"
    echo "$tmp/$1"
}

# 3. site.yml --check against localhost.
if [[ "$(id -u)" == 0 ]] || sudo -n true 2>/dev/null; then
    binary="${GRIDFLOW_BIN:-}"
    if [[ -z "$binary" ]]; then
        binary="$tmp/gridflow-stand-in"
        printf '#!/bin/sh\necho "gridflow stand-in"\n' >"$binary"
        chmod +x "$binary"
    fi
    inventory="$(local_inventory dev)"
    service=()
    if [[ ! -d /run/systemd/system ]]; then
        # A container or CI runner: no systemd to ask about the service in --check.
        log "systemd is not PID 1 here: site.yml --check with gridflow_manage_service=false"
        service=(-e gridflow_manage_service=false)
    fi
    if out="$("$playbook" -i "$inventory" site.yml --check --diff -e gridflow_binary_src="$binary" "${service[@]}" 2>&1)"; then
        recap="$(grep -E '^localhost +:' <<<"$out" | tr -s ' ')"
        log "site.yml --check against localhost: ok ($recap)"
        grep -q 'failed=0' <<<"$recap" || fail "site.yml --check: a task failed:"$'\n'"$out"
        # The unit as rendered, hardened.
        for want in 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ReadWritePaths=/var/lib/gridflow/dead-letters' \
            'Restart=on-failure' 'User=gridflow'; do
            grep -qF -- "+$want" <<<"$out" || fail "site.yml --check --diff: the unit has no $want"
        done
    else
        fail "site.yml --check against localhost:"$'\n'"$out"
    fi
else
    log "neither root nor password-less sudo: site.yml --check against localhost skipped"
fi

# 3b. site.yml applied for real, into a temporary root (every path of the role moved there, an
# existing account, no service): the files as installed, idempotence (a second run changes
# nothing), and a pipeline no longer in the repository removed.
if [[ "$(id -u)" == 0 ]]; then
    r="$tmp/root"
    account="$(id -un nobody 2>/dev/null || echo root)"
    args=(-i "$(local_inventory dev)" site.yml -e gridflow_binary_src="${GRIDFLOW_BIN:-$binary}"
        -e gridflow_config_dir="$r/etc/gridflow" -e gridflow_state_dir="$r/var/lib/gridflow"
        -e gridflow_binary_path="$r/usr/local/bin/gridflow" -e gridflow_unit_dir="$r/etc/systemd/system"
        -e gridflow_user="$account" -e gridflow_group="$(id -gn "$account")"
        -e gridflow_create_user=false -e gridflow_manage_service=false)
    mkdir -p "$r/usr/local/bin" "$r/etc/systemd/system"
    recap() { grep -E '^localhost +:' <<<"$1" | tr -s ' '; }
    if out="$("$playbook" "${args[@]}" 2>&1)" && grep -q 'failed=0' <<<"$(recap "$out")"; then
        log "site.yml into a temporary root: ok ($(recap "$out"))"
        cmp -s ../config/dev.toml "$r/etc/gridflow/gridflow.toml" || fail "gridflow.toml is not config/dev.toml"
        want="$(cd ../pipelines && find . -type f ! -path './tests/*' ! -name README.md | sort)"
        got="$(cd "$r/etc/gridflow/pipelines" && find . -type f | sort)"
        [[ "$want" == "$got" ]] || fail "installed pipelines [$got], want [$want]"
        want="$(cd .. && ls -1 contracts/*/*/schema.json contracts/topics.toml | sort)"
        got="$(cd "$r/etc/gridflow" && find contracts -type f | sort)"
        [[ "$want" == "$got" ]] || fail "installed contracts [$got], want [$want]"
        for f in $want; do
            cmp -s "../$f" "$r/etc/gridflow/$f" || fail "installed $f differs from the repository's"
        done
        grep -qx "ReadWritePaths=$r/var/lib/gridflow/dead-letters" "$r/etc/systemd/system/gridflow.service" ||
            fail "the unit's ReadWritePaths is not the dead-letter directory"
        grep -qx "GRIDFLOW_DEAD_LETTERS_DIR=\"$r/var/lib/gridflow/dead-letters\"" "$r/etc/gridflow/gridflow.env" ||
            fail "gridflow.env does not name the dead-letter directory"
        grep -qx 'GRIDFLOW_ENV="dev"' "$r/etc/gridflow/gridflow.env" || fail "gridflow.env: no GRIDFLOW_ENV=\"dev\""
        [[ "$(stat -c %a "$r/etc/gridflow/gridflow.toml")" == 640 ]] || fail "gridflow.toml is not mode 0640"
        touch "$r/etc/gridflow/pipelines/retired.toml"
        # Idempotent: the second run changes one thing only, the retired pipeline's removal.
        if out="$("$playbook" "${args[@]}" 2>&1)" && grep -q 'changed=1 .*failed=0' <<<"$(recap "$out")"; then
            [[ ! -e "$r/etc/gridflow/pipelines/retired.toml" ]] || fail "a retired pipeline was not removed"
            log "site.yml again: idempotent, only the retired pipeline removed ($(recap "$out"))"
        else
            fail "site.yml again (want changed=1: the retired pipeline, nothing else):"$'\n'"$out"
        fi
    else
        fail "site.yml into a temporary root:"$'\n'"$out"
    fi
else
    log "not root: site.yml not applied into a temporary root"
fi

# 4. check.yml against a live gridflow, then a stopped one.
if [[ -n "${GRIDFLOW_BIN:-}" ]]; then
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    http_port="$(free_port)" admin_port="$(free_port)"
    mkdir -p "$tmp/gridflow/pipelines"
    printf "name = 'ansible-check'\n[source]\nkind = 'http'\npath = '/ingest/ansible-check'\n[sink]\nkind = 'blackhole'\n" \
        >"$tmp/gridflow/pipelines/ansible-check.toml"
    printf "[kafka]\nbrokers = ''\n" >"$tmp/gridflow/gridflow.toml"
    (cd "$tmp/gridflow" && exec env -u KAFKA_BROKERS "$GRIDFLOW_BIN" run --config gridflow.toml \
        --http-addr "127.0.0.1:$http_port" --admin-addr "127.0.0.1:$admin_port" \
        </dev/null >"$tmp/gridflow.log" 2>&1) &
    gridflow_pid=$!
    inventory="$(local_inventory dev)"
    args=(-i "$inventory" check.yml -e gridflow_check_service=false
        -e "gridflow_admin_url=http://127.0.0.1:$admin_port" -e gridflow_ready_delay=1)
    if out="$("$playbook" "${args[@]}" -e gridflow_ready_retries=30 2>&1)" &&
        grep -q '"status": "ready"\|ready: {.*ready' <<<"$out" && grep -q 'running: ansible-check' <<<"$out"; then
        log "check.yml against a running gridflow: ok"
    else
        fail "check.yml against a running gridflow:"$'\n'"$out"$'\n'"--- gridflow log:"$'\n'"$(tail -n 20 "$tmp/gridflow.log")"
    fi
    kill "$gridflow_pid" 2>/dev/null
    wait "$gridflow_pid" 2>/dev/null
    gridflow_pid=""
    if out="$("$playbook" "${args[@]}" -e gridflow_ready_retries=1 2>&1)"; then
        fail "check.yml passed against a stopped gridflow:"$'\n'"$out"
    else
        log "check.yml against a stopped gridflow: fails, as it should"
    fi
else
    log "no GRIDFLOW_BIN: check.yml not run against a live gridflow"
fi

if ((failures)); then
    log "$failures failure(s)"
    exit 1
fi
log "all checks passed"
