#!/usr/bin/env bash
# Starts the local stack and waits until gridflow is ready (GET /health/ready = 200).
#
#   Docker engine available: docker compose up -d --build --wait (Apache Kafka in KRaft mode,
#   Kafka UI, the topics, the asset registry stub, the legacy work-order system stub, gridflow).
#   Ports: gridflow 8080 (HTTP) and 9090 (admin), Kafka localhost:9092, Kafka UI 8081, stub
#   18081, legacy stub 18082.
#
#   Otherwise (or LOCAL_MODE=native), on 127.0.0.1:
#     1. tansu on LOCAL_KAFKA_PORT (19092), sqlite storage in local-dev/.state/tansu/, unless
#        KAFKA_BROKERS names a broker to use instead;
#     2. gridflow topics apply (contracts/topics.toml, replication factor 1), unless
#        LOCAL_SKIP_TOPICS_APPLY=1;
#     3. the asset registry stub on LOCAL_STUB_PORT (18081), the legacy work-order system stub
#        on LOCAL_LEGACY_PORT (18082);
#     4. gridflow run --config config/dev.toml, HTTP on LOCAL_HTTP_PORT (18080), admin on
#        LOCAL_ADMIN_PORT (19090).
#   PIDs and logs: local-dev/.state/{tansu,stub,legacy,gridflow}.{pid,log}. Settings: see lib.sh.
#
# Idempotent: what runs already is kept; with everything up it says so and exits 0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

mode="$(local_mode)"
mkdir -p "$STATE"

if [[ "$mode" == docker ]]; then
    docker_usable || die "LOCAL_MODE=docker, but docker info or docker compose failed (run local-dev/scripts/00-prereqs.sh)"
    if [[ "$(http_status http://127.0.0.1:9090/health/ready)" == 200 ]] &&
        [[ -n "$(compose ps -q gridflow 2>/dev/null)" ]]; then
        echo docker >"$STATE/mode"
        say "local stack already up (docker compose); gridflow ready on http://127.0.0.1:8080, admin http://127.0.0.1:9090"
        exit 0
    fi
    say "docker compose up -d --build --wait (the first build compiles gridflow: several minutes)"
    compose up -d --build --wait
    echo docker >"$STATE/mode"
    wait_http http://127.0.0.1:9090/health/ready 120 || {
        compose logs --tail 50 gridflow >&2 || true
        die "gridflow is not ready on http://127.0.0.1:9090/health/ready"
    }
    say "local stack up (docker compose): gridflow http://127.0.0.1:8080, admin http://127.0.0.1:9090/health/ready, Kafka localhost:9092, Kafka UI http://127.0.0.1:8081, stub http://127.0.0.1:18081"
    exit 0
fi

# ---- native --------------------------------------------------------------------------------
if [[ -f "$STATE/mode" && "$(cat "$STATE/mode")" == docker ]]; then
    die "a docker compose stack is recorded in $STATE/mode: run 90-local-down.sh first"
fi
echo native >"$STATE/mode"
started=0

# 1. The broker.
if pid_alive tansu; then
    brokers="$(cat "$STATE/brokers")"
    say "tansu already running (pid $(cat "$STATE/tansu.pid"), $brokers)"
elif [[ -n "${KAFKA_BROKERS:-}" ]]; then
    brokers="$KAFKA_BROKERS"
    say "using KAFKA_BROKERS=$brokers (no tansu started)"
else
    command -v tansu >/dev/null 2>&1 ||
        die "tansu is not installed: cargo install tansu --version 0.6.0 --locked --features dynostore,libsql (or set KAFKA_BROKERS)"
    port_open "$LOCAL_KAFKA_PORT" &&
        die "127.0.0.1:$LOCAL_KAFKA_PORT is taken by another process: choose LOCAL_KAFKA_PORT, or point KAFKA_BROKERS at that broker"
    mkdir -p "$STATE/tansu"
    url="tcp://127.0.0.1:$LOCAL_KAFKA_PORT"
    say "starting tansu on $url (sqlite storage in $STATE/tansu/tansu.db)"
    # tansu resolves the sqlite path relative to its working directory.
    (cd "$STATE/tansu" && exec tansu broker --listener-url "$url" --advertised-listener-url "$url" \
        --storage-engine "sqlite://tansu.db" </dev/null >>"$STATE/tansu.log" 2>&1) &
    echo $! >"$STATE/tansu.pid"
    deadline=$((SECONDS + 60))
    until port_open "$LOCAL_KAFKA_PORT"; do
        pid_alive tansu && ((SECONDS < deadline)) || {
            tail -n 20 "$STATE/tansu.log" >&2 || true
            die "tansu did not start listening on 127.0.0.1:$LOCAL_KAFKA_PORT (log: $STATE/tansu.log)"
        }
        sleep 0.2
    done
    brokers="127.0.0.1:$LOCAL_KAFKA_PORT"
    started=1
fi
echo "$brokers" >"$STATE/brokers"

# 2. The topics, before gridflow: it does not start a pipeline whose topics are missing.
if ! pid_alive gridflow; then
    rc=0
    topics_apply "$brokers" || rc=$?
    case "$rc" in
        0 | 3) ;;
        *) die "gridflow topics apply failed (exit $rc)" ;;
    esac
fi

# start_stub NAME WHAT SCRIPT PORT PORT_VARIABLE: starts local-dev/stub/SCRIPT on 127.0.0.1:PORT
# unless it runs already; its pid, log and URL in $STATE/NAME.pid, NAME.log, NAME_url.
start_stub() {
    local name="$1" what="$2" script="$3" port="$4" variable="$5"
    if pid_alive "$name"; then
        say "$what already running (pid $(cat "$STATE/$name.pid"))"
    else
        port_open "$port" && die "127.0.0.1:$port is taken: choose $variable"
        say "starting the $what on 127.0.0.1:$port"
        python3 "$LOCAL_DEV/stub/$script" --host 127.0.0.1 --port "$port" \
            </dev/null >>"$STATE/$name.log" 2>&1 &
        echo $! >"$STATE/$name.pid"
        wait_http "http://127.0.0.1:$port/health" 20 "$name" ||
            die "the $what did not answer on 127.0.0.1:$port (log: $STATE/$name.log)"
        started=1
    fi
    echo "http://127.0.0.1:$port" >"$STATE/${name}_url"
}

# 3. The asset registry stub, and the legacy work-order system stub
#    (pipelines/overload-work-orders.toml calls it).
export ASSET_REGISTRY_TOKEN="${ASSET_REGISTRY_TOKEN:-local-dev-token}"
start_stub stub "asset registry stub" asset_registry.py "$LOCAL_STUB_PORT" LOCAL_STUB_PORT
start_stub legacy "legacy work-order system stub" legacy_workorders.py "$LOCAL_LEGACY_PORT" LOCAL_LEGACY_PORT

# 4. gridflow.
admin="http://127.0.0.1:$LOCAL_ADMIN_PORT"
if pid_alive gridflow; then
    admin="$(cat "$STATE/admin_url")"
    say "gridflow already running (pid $(cat "$STATE/gridflow.pid"))"
else
    bin="$(gridflow_bin)"
    for p in "$LOCAL_HTTP_PORT" "$LOCAL_ADMIN_PORT"; do
        port_open "$p" && die "127.0.0.1:$p is taken: choose LOCAL_HTTP_PORT / LOCAL_ADMIN_PORT"
    done
    mkdir -p "$STATE/dead-letters"
    say "starting gridflow ($bin) with config/dev.toml: HTTP 127.0.0.1:$LOCAL_HTTP_PORT, admin 127.0.0.1:$LOCAL_ADMIN_PORT"
    (
        cd "$ROOT"
        export KAFKA_BROKERS="$brokers"
        export ASSET_REGISTRY_URL="http://127.0.0.1:$LOCAL_STUB_PORT"
        export LEGACY_WORKORDERS_URL="http://127.0.0.1:$LOCAL_LEGACY_PORT"
        export GRIDFLOW_DEAD_LETTERS_DIR="$STATE/dead-letters"
        exec "$bin" run --config config/dev.toml --http-addr "127.0.0.1:$LOCAL_HTTP_PORT" \
            --admin-addr "127.0.0.1:$LOCAL_ADMIN_PORT" --log-format json </dev/null >>"$STATE/gridflow.log" 2>&1
    ) &
    echo $! >"$STATE/gridflow.pid"
    echo "$bin" >"$STATE/gridflow_bin"
    echo "http://127.0.0.1:$LOCAL_HTTP_PORT" >"$STATE/http_url"
    echo "$admin" >"$STATE/admin_url"
    started=1
fi

if ! wait_http "$admin/health/ready" 90 gridflow; then
    curl -s --max-time 5 "$admin/health/ready" >&2 || true
    tail -n 20 "$STATE/gridflow.log" >&2 || true
    die "gridflow is not ready on $admin/health/ready (log: $STATE/gridflow.log)"
fi
if ((started)); then
    say "local stack up (native): gridflow $(cat "$STATE/http_url"), admin $admin, Kafka $brokers, stub $(cat "$STATE/stub_url"); logs in $STATE/"
else
    say "local stack already up (native): gridflow $(cat "$STATE/http_url"), admin $admin, Kafka $brokers"
fi
