#!/usr/bin/env bash
# Stops what 10-local-up.sh started: docker compose down, or the native processes by their
# PIDs in local-dev/.state/ (gridflow first, with SIGTERM and time to drain; then the stubs and
# tansu). tansu's data (local-dev/.state/tansu/) is kept; LOCAL_DOWN_PURGE=1 deletes it too
# (docker: the volumes). Idempotent: with nothing running it says so and exits 0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

mode="$(local_mode)"
if [[ "$mode" == docker ]]; then
    docker_usable || die "docker is not usable: cannot run docker compose down"
    if [[ "${LOCAL_DOWN_PURGE:-0}" == 1 ]]; then compose down --volumes; else compose down; fi
    rm -f "$STATE/mode"
    say "local stack down (docker compose)"
    exit 0
fi

# stop NAME SECONDS: SIGTERM, wait, then SIGKILL; removes the PID file.
stop() {
    local name="$1" f="$STATE/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + $2))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop within $2 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

stopped=0
# gridflow drains for up to [engine] drain_timeout_ms (5 s in config/dev.toml), twice, + 10 s.
stop gridflow 30 && stopped=1
stop stub 5 && stopped=1
stop legacy 5 && stopped=1
stop tansu 10 && stopped=1
rm -f "$STATE/mode" "$STATE/brokers" "$STATE/http_url" "$STATE/admin_url" "$STATE/stub_url" "$STATE/legacy_url" "$STATE/gridflow_bin"
if [[ "${LOCAL_DOWN_PURGE:-0}" == 1 ]]; then
    rm -rf "$STATE/tansu" "$STATE/dead-letters"
fi
if ((stopped)); then
    say "local stack down (native)"
else
    say "nothing to stop (native): the local stack was not up"
fi
