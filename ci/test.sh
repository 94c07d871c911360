#!/usr/bin/env bash
# The project's single test command: ensures tansu (a Kafka-protocol broker) is installed,
# starts one on a free loopback port unless KAFKA_BROKERS is set, then checks ops/ (promtool:
# alert rules and their unit tests), the supply chain (ci/deny.sh: cargo-deny), runs the
# workspace tests and the fuzz targets (20 s each).
#
#   ci/test.sh            the whole suite (what CI runs)
#   ci/test.sh --long     the long variants too: the crash suite with 100,000 records and
#                         five SIGKILLs (on an embedded broker in a process that is not
#                         killed, or on KAFKA_BROKERS when set), 300 s of fuzzing per target
#   ci/test.sh ARGS...    other arguments go to `cargo test` (no fuzzing then), e.g.
#                         ci/test.sh --test replay
set -euo pipefail

cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { echo "[ci/test.sh] $*" >&2; }

tansu_version() {
    command -v tansu >/dev/null 2>&1 || return 0
    tansu --version 2>/dev/null | awk '{print $2}' || true
}

ensure_tansu() {
    if [[ "$(tansu_version)" == "$TANSU_VERSION" ]]; then
        return
    fi
    log "installing tansu $TANSU_VERSION (cargo install; this takes ~15 minutes the first time)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES"
    hash -r
    if [[ "$(tansu_version)" != "$TANSU_VERSION" ]]; then
        log "tansu $TANSU_VERSION is not on PATH after installation (found: '$(tansu_version)')"
        exit 1
    fi
}

BROKER_PID=""
BROKER_DIR=""
cleanup() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    if [[ -n "$BROKER_DIR" ]]; then
        rm -rf "$BROKER_DIR"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_broker() {
    BROKER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gridflow-tansu.XXXXXX")"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local port url
    port="$(free_port)"
    url="tcp://127.0.0.1:$port"
    log "starting tansu on 127.0.0.1:$port (sqlite storage in $BROKER_DIR)"
    # tansu resolves the sqlite path relative to its working directory.
    (
        cd "$BROKER_DIR"
        exec tansu broker \
            --listener-url "$url" \
            --advertised-listener-url "$url" \
            --storage-engine "sqlite://tansu.db" \
            </dev/null >"$BROKER_DIR/tansu.log" 2>&1
    ) &
    BROKER_PID=$!
    local deadline=$((SECONDS + 60))
    until port_open "$port"; do
        if ! kill -0 "$BROKER_PID" 2>/dev/null || ((SECONDS >= deadline)); then
            log "tansu did not start listening on 127.0.0.1:$port; log tail:"
            tail -n 50 "$BROKER_DIR/tansu.log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    export KAFKA_BROKERS="127.0.0.1:$port"
    log "broker ready: KAFKA_BROKERS=$KAFKA_BROKERS (log: $BROKER_DIR/tansu.log)"
}

# The OpenAPI document is checked by an independent validator (PyPI: openapi-spec-validator).
if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
    log "installing openapi-spec-validator (pip)"
    python3 -m pip install --quiet --disable-pip-version-check openapi-spec-validator
fi

# promtool (Debian package prometheus) checks the alert rules and their unit tests
# (ops/check.sh) and a live /metrics scrape (runtime/tests/runbooks.rs).
if ! command -v promtool >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing promtool (apt-get install prometheus)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        log "promtool is missing: install the Debian package prometheus (or put promtool on PATH)"
        exit 1
    fi
fi

# ip and tc (Debian package iproute2) build the network namespaces, the veth link and its
# throttle of runtime/tests/hostile_network.rs (a partition between gridflow and the broker).
if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ip and tc (apt-get install iproute2)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
    else
        log "ip/tc are missing: install the Debian package iproute2 (runtime/tests/hostile_network.rs needs them, as root)"
        exit 1
    fi
fi

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ=1
if [[ "${1:-}" == "--long" ]]; then
    shift
    export GRIDFLOW_CRASH_RECORDS="${GRIDFLOW_CRASH_RECORDS:-100000}"
    export GRIDFLOW_CRASH_KILLS="${GRIDFLOW_CRASH_KILLS:-5}"
    # The crash suite's broker: the embedded mock cluster of a gridflow process that is not
    # killed, unless KAFKA_BROKERS names a real cluster (tansu cannot take this volume).
    if [[ -z "${KAFKA_BROKERS:-}" ]]; then
        export GRIDFLOW_CRASH_BROKER="${GRIDFLOW_CRASH_BROKER:-embedded}"
    fi
    FUZZ_SECONDS=300
fi
if (($# > 0)); then
    FUZZ=0
fi

# tansu is needed even with KAFKA_BROKERS set: the SASL test starts its own, authenticating.
ensure_tansu
if [[ -n "${KAFKA_BROKERS:-}" ]]; then
    log "using existing broker KAFKA_BROKERS=$KAFKA_BROKERS"
else
    start_broker
fi

status=0
if (($# == 0)); then
    log "checking ops/ (alert rules and their tests, dashboard, runbook links)"
    ops/check.sh || status=$?
    log "checking the delivery kit (ci/templates, local-dev compose, ops/deploy)"
    ci/check-templates.sh || status=$?
    log "checking the supply chain (cargo-deny: advisories, licences, bans, sources)"
    ci/deny.sh || status=$?
    log "building the benchmarks (criterion; run with cargo bench, see BENCHMARKS.md)"
    cargo build --workspace --locked --benches || status=$?
fi
((status == 0)) && { cargo test --workspace --locked "$@" || status=$?; }
if ((status != 0)) && [[ -n "$BROKER_DIR" ]]; then
    log "tests failed (status $status); broker log tail:"
    tail -n 30 "$BROKER_DIR/tansu.log" >&2 || true
fi
if ((status == 0 && FUZZ == 1)); then
    ci/fuzz.sh "$FUZZ_SECONDS" || status=$?
fi
exit "$status"
