#!/usr/bin/env bash
# Checks the tools of the two ways to run the local stack and says what is missing:
#   Docker path:    docker with a running engine, and the compose plugin (`docker compose`)
#   no-Docker path: curl, jq, python3 (with venv), tansu 0.6.0 (unless KAFKA_BROKERS names a
#                   broker), and a gridflow binary or cargo to build one
# Exit 0 when at least one path works (it says which one 10-local-up.sh will take), 1 when
# neither does.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

ok() { printf '  %-8s %-22s %s\n' ok "$1" "$2"; }
missing() { printf '  %-8s %-22s %s\n' MISSING "$1" "$2"; }

docker_ok=1
echo "Docker path (docker compose up):"
if command -v docker >/dev/null 2>&1; then
    ok docker "$(docker --version 2>/dev/null)"
    if docker compose version >/dev/null 2>&1; then
        ok "docker compose" "$(docker compose version --short 2>/dev/null)"
    else
        missing "docker compose" "the compose plugin: Debian/Ubuntu apt-get install docker-compose-plugin (Docker's repository), or Docker Desktop"
        docker_ok=0
    fi
    if docker info >/dev/null 2>&1; then
        ok "docker engine" "running"
    else
        missing "docker engine" "not reachable (docker info failed): start Docker (systemctl start docker, or Docker Desktop), or check your user is in the docker group"
        docker_ok=0
    fi
else
    missing docker "https://docs.docker.com/engine/install/ (or take the no-Docker path below)"
    docker_ok=0
fi

native_ok=1
echo "no-Docker path (tansu + native gridflow):"
for tool in curl jq python3; do
    if command -v "$tool" >/dev/null 2>&1; then
        ok "$tool" "$(command -v "$tool")"
    else
        missing "$tool" "Debian/Ubuntu: apt-get install $tool; macOS: brew install $tool"
        native_ok=0
    fi
done
if command -v python3 >/dev/null 2>&1; then
    if python3 -c 'import venv, ensurepip' 2>/dev/null; then
        ok "python3 venv" "for kafka.py (confluent-kafka from PyPI, installed on first use)"
    else
        missing "python3 venv" "Debian/Ubuntu: apt-get install python3-venv"
        native_ok=0
    fi
fi
if [[ -n "${KAFKA_BROKERS:-}" ]]; then
    ok broker "KAFKA_BROKERS=$KAFKA_BROKERS (tansu not needed)"
elif command -v tansu >/dev/null 2>&1; then
    version="$(tansu --version 2>/dev/null | awk '{print $2}')"
    if [[ "$version" == 0.6.0 ]]; then
        ok tansu "$version"
    else
        ok tansu "$version (tested with 0.6.0: cargo install tansu --version 0.6.0 --locked --features dynostore,libsql)"
    fi
else
    missing tansu "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql (~15 min), or set KAFKA_BROKERS"
    native_ok=0
fi
if [[ -n "${GRIDFLOW_BIN:-}" ]]; then
    if [[ -x "$GRIDFLOW_BIN" ]]; then ok gridflow "GRIDFLOW_BIN=$GRIDFLOW_BIN"; else missing gridflow "GRIDFLOW_BIN=$GRIDFLOW_BIN is not executable"; native_ok=0; fi
elif [[ -x "$ROOT/target/release/gridflow" || -x "$ROOT/target/debug/gridflow" ]]; then
    ok gridflow "built in target/"
elif command -v cargo >/dev/null 2>&1; then
    ok cargo "$(cargo --version) (10-local-up.sh builds gridflow: cargo build --release)"
else
    missing cargo "https://rustup.rs (or set GRIDFLOW_BIN to a gridflow binary)"
    native_ok=0
fi

echo
if [[ -n "${LOCAL_MODE:-}" ]]; then
    want="$LOCAL_MODE"
elif ((docker_ok)); then
    want=docker
else
    want=native
fi
if [[ "$want" == docker ]] && ((docker_ok)); then
    echo "10-local-up.sh will use Docker (docker compose)."
elif [[ "$want" == native ]] && ((native_ok)); then
    echo "10-local-up.sh will use the no-Docker path (tansu + native gridflow)."
elif ((docker_ok || native_ok)); then
    echo "LOCAL_MODE=$want cannot work here (see MISSING above); unset LOCAL_MODE to use the other path."
    exit 1
else
    echo "Neither path can work: install what is MISSING above for one of them."
    exit 1
fi
