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
#   4. with GRIDFLOW_BIN (a gridflow binary): check.yml against a gridflow started here (an
#      HTTP pipeline, the embedded broker, free ports, no systemd: gridflow_check_service=false)
#      passes, and fails once that gridflow is stopped.
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
    printf 'all:\n  children:\n    gridflow:\n      hosts:\n        localhost:\n          ansible_connection: local\n          ansible_python_interpreter: %s\n' \
        "$(command -v python3)" >"$tmp/$1/hosts.yml"
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
        grep -q '"status": "ready"\|ready: {.*ready' <<<"$out"; then
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
