# Shared by the local-dev scripts (sourced, not run). Bash.
#
# Settings (environment), all optional:
#   LOCAL_MODE              docker | native (default: docker when `docker info` and
#                           `docker compose version` succeed, else native)
#   LOCAL_STATE_DIR         PID, log, data files of the native stack (default local-dev/.state)
#   LOCAL_KAFKA_PORT        tansu's port, native mode (default 19092)
#   LOCAL_STUB_PORT         the asset registry stub's port, native mode (default 18081)
#   LOCAL_LEGACY_PORT       the legacy work-order system stub's port, native mode (default 18082)
#   LOCAL_HTTP_PORT         gridflow's HTTP ingress, native mode (default 18080)
#   LOCAL_ADMIN_PORT        gridflow's admin listener, native mode (default 19090)
#   KAFKA_BROKERS           an existing broker to use instead of starting tansu (native mode)
#   GRIDFLOW_BIN            the gridflow binary (default target/release/gridflow, then
#                           target/debug/gridflow, else `cargo build --release`)
#   LOCAL_SKIP_TOPICS_APPLY 1: do not run `gridflow topics apply` (the topics exist already)
#   LOCAL_VENV_DIR          virtualenv of kafka.py (default local-dev/.state/venv)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DEV="$ROOT/local-dev"
COMPOSE_FILE="$LOCAL_DEV/docker-compose.yml"
STATE="${LOCAL_STATE_DIR:-$LOCAL_DEV/.state}"
VENV="${LOCAL_VENV_DIR:-$LOCAL_DEV/.state/venv}"
LOCAL_KAFKA_PORT="${LOCAL_KAFKA_PORT:-19092}"
LOCAL_STUB_PORT="${LOCAL_STUB_PORT:-18081}"
LOCAL_LEGACY_PORT="${LOCAL_LEGACY_PORT:-18082}"
LOCAL_HTTP_PORT="${LOCAL_HTTP_PORT:-18080}"
LOCAL_ADMIN_PORT="${LOCAL_ADMIN_PORT:-19090}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

say() { echo "[local-dev] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

docker_usable() {
    command -v docker >/dev/null 2>&1 &&
        docker info >/dev/null 2>&1 &&
        docker compose version >/dev/null 2>&1
}

# The mode of a stack already up (recorded by 10-local-up.sh), else LOCAL_MODE, else detected.
local_mode() {
    if [[ -n "${LOCAL_MODE:-}" ]]; then
        case "$LOCAL_MODE" in
            docker | native) echo "$LOCAL_MODE" ;;
            *) die "LOCAL_MODE must be docker or native, not '$LOCAL_MODE'" ;;
        esac
    elif [[ -f "$STATE/mode" ]]; then
        cat "$STATE/mode"
    elif docker_usable; then
        echo docker
    else
        echo native
    fi
}

compose() { docker compose -f "$COMPOSE_FILE" "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive NAME: the process of $STATE/NAME.pid runs.
pid_alive() {
    local f="$STATE/$1.pid"
    [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

http_status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" 2>/dev/null || true; }

# wait_http URL SECONDS [PID_NAME]: until URL answers 200; stops early when PID_NAME died.
wait_http() {
    local url="$1" deadline=$((SECONDS + $2)) name="${3:-}"
    until [[ "$(http_status "$url")" == 200 ]]; do
        if [[ -n "$name" ]] && ! pid_alive "$name"; then
            return 1
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# The gridflow binary: GRIDFLOW_BIN, else a built one, else built now.
gridflow_bin() {
    if [[ -n "${GRIDFLOW_BIN:-}" ]]; then
        [[ -x "$GRIDFLOW_BIN" ]] || die "GRIDFLOW_BIN=$GRIDFLOW_BIN is not an executable file"
        echo "$GRIDFLOW_BIN"
    elif [[ -x "$ROOT/target/release/gridflow" ]]; then
        echo "$ROOT/target/release/gridflow"
    elif [[ -x "$ROOT/target/debug/gridflow" ]]; then
        echo "$ROOT/target/debug/gridflow"
    else
        say "no gridflow binary: cargo build --release (a few minutes the first time)"
        (cd "$ROOT" && cargo build --release --locked --bin gridflow >&2) || die "cargo build failed"
        echo "$ROOT/target/release/gridflow"
    fi
}

# The brokers of the native stack (written by 10-local-up.sh).
native_brokers() {
    [[ -f "$STATE/brokers" ]] || die "the native stack is not up (no $STATE/brokers): run local-dev/scripts/10-local-up.sh"
    cat "$STATE/brokers"
}

# gridflow topics apply against BROKERS, unless LOCAL_SKIP_TOPICS_APPLY=1.
# Prints create/update/unchanged per topic; returns its exit code, 3 when skipped.
topics_apply() {
    local brokers="$1"
    if [[ "${LOCAL_SKIP_TOPICS_APPLY:-0}" == 1 ]]; then
        say "LOCAL_SKIP_TOPICS_APPLY=1: not applying contracts/topics.toml (the topics must exist)"
        return 3
    fi
    if [[ "$(local_mode)" == docker ]]; then
        compose run --rm --no-deps topics
    else
        (cd "$ROOT" && "$(gridflow_bin)" topics apply --catalog contracts/topics.toml \
            --brokers "$brokers" --replication-factor 1)
    fi
}

# A virtualenv with confluent-kafka for kafka.py.
ensure_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
        return
    fi
    say "installing confluent-kafka (PyPI) into $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check confluent-kafka >&2 ||
        die "pip install confluent-kafka failed"
}
