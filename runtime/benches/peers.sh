#!/usr/bin/env bash
# gridflow side by side with Vector, its peer, on the same machine and in one run, pair by pair,
# printed as one Markdown table on stdout (progress on stderr):
#
#   1. file → map → blackhole       gridflow: file source (NDJSON) → map → blackhole
#                                   Vector:   stdin → remap → blackhole
#   2. HTTP → Kafka                 wrk, PEERS_CONNECTIONS connections, one reading a request,
#                                   answered after the broker's acknowledgement
#                                   gridflow: http source → kafka sink
#                                   Vector:   http_server (acknowledgements) → kafka sink
#   3. Kafka → map → Kafka          PEERS_KAFKA_RECORDS records already on the input topic; the
#                                   process is started, and the time runs from its start to the
#                                   last record on the output topic (start, metadata, group join
#                                   and first fetch included)
#   4. file → map → file            gridflow: file source → map → file sink (each line on disk
#                                   before it is acknowledged); Vector: stdin → remap → file
#                                   (no sync)
#   5. XML → one event per point    an ENTSO-E A65 document (96 points) posted over HTTP (wrk,
#                                   PEERS_XML_CONNECTIONS connections)
#                                   gridflow: http source → the entsoe-actual-load steps (xml_to_json
#                                   … timeseries, map) → blackhole
#                                   Vector:   http_server → remap (parse_xml, one event per point
#                                   with its start) → blackhole
#                                   the limit: quick-xml's tokenizer alone on one core
#                                   (runtime/examples/xml_loop.rs)
#
# The map is the same 4-field projection on both sides (meter_id, measured_at, value as a
# number, unit) of the 1.2 KB reading runtime/benches/fixtures/meter-reading-1k.json. Kafka is
# the embedded broker (librdkafka's mock cluster) of a separate gridflow process that hosts it
# and is never restarted; both peers are its clients. Rates of pairs 1, 3 and 4 count the
# process's start: each run starts the process with its input waiting and stops the clock when
# the last message is out (gridflow: its gridflow_messages_sent_total; Vector: its exit at the
# end of stdin, or the output topic's watermarks).
#
#   VECTOR=/path/to/vector runtime/benches/peers.sh > peers.md
#
# VECTOR: Vector's binary, built from its sources (0.58 was measured) with at least the sources
#   file, stdin, http_server and kafka, the remap transform and the blackhole, file and kafka
#   sinks (`cargo build --release --no-default-features --features ...`; LTO off, about 40
#   minutes on two cores). Without it, only gridflow's column is measured.
# PEERS_LINES (200000): lines of pairs 1 and 4; PEERS_KAFKA_RECORDS (100000);
# PEERS_PARTITIONS (32): partitions of each topic (the embedded broker keeps 5 MiB a partition);
# PEERS_HTTP_SECONDS (10), PEERS_CONNECTIONS (32); PEERS_XML_SECONDS (10),
# PEERS_XML_CONNECTIONS (8); PEERS_ONLY: a space-separated list of the pairs to run (`3 5`);
# PEERS_PROPERTIES: lines of gridflow's [kafka.properties] (`"debug" = "cgrp,fetch"`);
# PEERS_KEEP=1 keeps the work directory (configs, logs).
# Needs: cargo, python3, curl, wrk. Builds gridflow --release (CARGO_TARGET_DIR is honoured).
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO="$PWD"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
LINES="${PEERS_LINES:-200000}"
KAFKA_RECORDS="${PEERS_KAFKA_RECORDS:-100000}"
PARTITIONS="${PEERS_PARTITIONS:-32}"
HTTP_SECONDS="${PEERS_HTTP_SECONDS:-10}"
CONNECTIONS="${PEERS_CONNECTIONS:-32}"
XML_SECONDS="${PEERS_XML_SECONDS:-10}"
XML_CONNECTIONS="${PEERS_XML_CONNECTIONS:-8}"
ONLY="${PEERS_ONLY:-1 2 3 4 5}"
VECTOR="${VECTOR:-}"
FIXTURE="$REPO/runtime/benches/fixtures/meter-reading-1k.json"
A65="$REPO/runtime/benches/fixtures/A65-actual-total-load-BE.xml"

log() { echo "[peers] $*" >&2; }
runs() { [[ " $ONLY " == *" $1 "* ]]; }
for tool in python3 curl wrk; do
    command -v "$tool" >/dev/null || { log "$tool is missing"; exit 1; }
done
if [[ -n "$VECTOR" ]]; then
    [[ -x "$VECTOR" ]] || { log "VECTOR=$VECTOR is not an executable"; exit 1; }
    log "peer: $("$VECTOR" --version)"
else
    log "VECTOR is not set: gridflow's column only"
fi

log "building gridflow and the bench clients (--release)"
cargo build --release --locked -p gridflow --bin gridflow --example bare_loop --example xml_loop >&2
GF="$TARGET/release/gridflow"
BARE="$TARGET/release/examples/bare_loop"
XML_LOOP="$TARGET/release/examples/xml_loop"

W="$(mktemp -d "${TMPDIR:-/tmp}/gridflow-peers.XXXXXX")"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${PEERS_KEEP:-}" ]]; then log "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now_ms() { date +%s%3N; }
cpu_ms() { # cpu_ms PID: user + system CPU time of the process so far, in ms
    awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$1/stat" 2>/dev/null || echo 0
}
seconds() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1000:.2f} s')" "$1"; }
wait_http() { # wait_http URL SECONDS
    local deadline=$((SECONDS + $2))
    until curl -fs -o /dev/null "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}
sent() { # sent ADMIN_PORT PIPELINE: gridflow_messages_sent_total of the pipeline
    curl -fs "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v p="gridflow_messages_sent_total{pipeline=\"$2\"}" '$1 == p {print int($2)}' | head -n1
}
# wait_sent ADMIN_PORT PIPELINE COUNT SECONDS: polls every 20 ms; prints the time it saw COUNT.
wait_sent() {
    local deadline=$((SECONDS + $4)) n
    while ((SECONDS < deadline)); do
        n="$(sent "$1" "$2")"
        if [[ -n "$n" ]] && ((n >= $3)); then now_ms; return 0; fi
        sleep 0.02
    done
    log "$2: ${n:-0} of $3 messages after $4 s"
    return 1
}
stop() { # stop PID: SIGTERM, then SIGKILL after 10 s
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}
rate() { python3 -c "import sys; n, ms = float(sys.argv[1]), float(sys.argv[2]); print(f'{n / (ms / 1000):.0f}' if ms > 0 else '0')" "$1" "$2"; }
ratio() { python3 -c "import sys; a, b = float(sys.argv[1] or 0), float(sys.argv[2] or 0); print(f'{a / b:.2f}×' if a > 0 and b > 0 else '—')" "${1:-0}" "${2:-0}"; }
kfmt() { python3 -c "import sys; v = float(sys.argv[1] or 0); print(f'{v / 1000:.1f} k' if v > 0 else '—')" "${1:-0}"; }

# The 4-field projection, in JMESPath and in VRL.
MAP_JMES='{meter_id: meter_id, measured_at: ts, value: to_number(reading.value), unit: reading.unit}'
MAP_VRL='. = parse_json!(string!(.message))
. = {"meter_id": .meter_id, "measured_at": .ts, "value": to_float!(.reading.value), "unit": .reading.unit}'

# gridflow_config DIR [BROKERS]: a gridflow.toml for a run in DIR (pipelines in DIR/pipelines).
gridflow_config() {
    mkdir -p "$1/pipelines"
    {
        printf '[paths]\npipelines = "pipelines"\ncontracts = "%s/contracts"\ndead_letters = "dead-letters"\n' "$REPO"
        printf '[kafka]\nembedded_partitions = %s\n' "$PARTITIONS"
        printf '[kafka.properties]\n%s\n' "${PEERS_PROPERTIES:-}"
    } >"$1/gridflow.toml"
}
# start_gridflow DIR BROKERS: starts gridflow in DIR; sets GF_PID, GF_HTTP, GF_ADMIN and
# GF_STARTED, the time it was started (after the ports were chosen, which takes python's start).
start_gridflow() {
    GF_HTTP="$(free_port)" GF_ADMIN="$(free_port)"
    GF_STARTED="$(now_ms)"
    (cd "$1" && exec "$GF" run --config gridflow.toml --brokers "$2" \
        --http-addr "127.0.0.1:$GF_HTTP" --admin-addr "127.0.0.1:$GF_ADMIN" \
        </dev/null >/dev/null 2>"$1/gridflow.log") &
    GF_PID="$!"
    PIDS+=("$GF_PID")
}

# start_vector DIR: starts Vector on DIR/vector.toml in the background; sets VPID.
start_vector() {
    "$VECTOR" --quiet --config "$1/vector.toml" >/dev/null 2>"$1/vector.log" &
    VPID="$!"
    PIDS+=("$VPID")
}

# --- the broker host: the embedded broker, its topics made by the pipelines it starts with ---
BROKER_DIR="$W/broker"
gridflow_config "$BROKER_DIR"
for t in peers.http.gridflow peers.http.vector peers.k.in peers.k.gridflow peers.k.vector; do
    printf '[source]\nkind = "http"\npath = "/%s"\n[sink]\nkind = "kafka"\ntopic = "%s"\n' "$t" "$t" \
        >"$BROKER_DIR/pipelines/$t.toml"
done
start_gridflow "$BROKER_DIR" ""
BROKER_PID="$GF_PID"
wait_http "http://127.0.0.1:$GF_ADMIN/health/ready" 60 || { log "the broker host did not start"; tail "$BROKER_DIR/gridflow.log" >&2; exit 1; }
MOCK="$(grep -m1 'embedded mock broker' "$BROKER_DIR/gridflow.log" | grep -o '127\.0\.0\.1:[0-9]*' | head -n1)"
log "embedded broker at $MOCK (pid $BROKER_PID), $PARTITIONS partitions a topic"

python3 - "$FIXTURE" "$LINES" "$W/in.ndjson" <<'EOF'
import sys
line = open(sys.argv[1]).readline().strip()
with open(sys.argv[3], "w") as f:
    for _ in range(int(sys.argv[2])):
        f.write(line + "\n")
EOF
SIZE="$(head -n1 "$W/in.ndjson" | wc -c)"

declare -A G V NOTE
# --- 1 and 4: file → map → blackhole | file ---
file_pair() { # file_pair N SINK
    local n="$1" sink="$2" d="$W/p$1-gridflow" start done
    gridflow_config "$d"
    mkdir -p "$d/inbox"
    {
        printf '[source]\nkind = "file"\ndir = "inbox"\npoll_interval_ms = 20\n'
        printf "[[steps]]\nkind = \"map\"\nexpression = '%s'\n" "$MAP_JMES"
        if [[ "$sink" == file ]]; then printf '[sink]\nkind = "file"\npath = "out/readings.ndjson"\n'
        else printf '[sink]\nkind = "blackhole"\n'; fi
    } >"$d/pipelines/flow.toml"
    cp "$W/in.ndjson" "$d/inbox/in.ndjson"          # waiting, as Vector's stdin is
    start_gridflow "$d" "$MOCK"
    start="$GF_STARTED"
    if done="$(wait_sent "$GF_ADMIN" flow "$LINES" 600)"; then
        G[$n]="$(rate "$LINES" $((done - start)))"
    fi
    stop "$GF_PID"
    if [[ -n "$VECTOR" ]]; then
        local v="$W/p$1-vector"
        mkdir -p "$v/data"
        {
            printf 'data_dir = "%s/data"\n' "$v"
            printf '[sources.in]\ntype = "stdin"\n'
            printf "[transforms.map]\ntype = \"remap\"\ninputs = [\"in\"]\nsource = '''\n%s\n'''\n" "$MAP_VRL"
            if [[ "$sink" == file ]]; then
                printf '[sinks.out]\ntype = "file"\ninputs = ["map"]\npath = "%s/out/readings.ndjson"\nencoding.codec = "json"\n' "$v"
            else
                printf '[sinks.out]\ntype = "blackhole"\ninputs = ["map"]\nprint_interval_secs = 0\n'
            fi
        } >"$v/vector.toml"
        start="$(now_ms)"
        "$VECTOR" --quiet --config "$v/vector.toml" <"$W/in.ndjson" >/dev/null 2>"$v/vector.log" ||
            log "vector failed (pair $n): $(tail -n 3 "$v/vector.log")"
        done="$(now_ms)"
        if [[ "$sink" == file ]]; then
            local out; out="$(cat "$v"/out/readings.ndjson 2>/dev/null | wc -l)"
            [[ "$out" == "$LINES" ]] || log "vector wrote $out lines of $LINES (pair $n)"
        fi
        V[$n]="$(rate "$LINES" $((done - start)))"
    fi
}
if runs 1; then log "1. file → map → blackhole, $LINES lines"; file_pair 1 blackhole; fi
if runs 4; then log "4. file → map → file, $LINES lines"; file_pair 4 file; fi

# --- 2: HTTP → Kafka under wrk ---
cat >"$W/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$FIXTURE", "r"); wrk.body = f:read("*l"); f:close()
EOF
wrk_run() { # wrk_run URL LUA CONNECTIONS SECONDS: prints "<req/s> <p99 ms> <non-2xx>"
    local out
    out="$(wrk -t2 -c"$3" -d"$4"s --latency -s "$2" "$1" 2>&1)"
    python3 - "$out" <<'EOF'
import re, sys
out = sys.argv[1]
rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\b", out, re.M)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
ms = 0.0
if p99:
    ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
print(f"{float(rps.group(1)) if rps else 0:.0f} {ms:.2f} {bad.group(1) if bad else 0}")
EOF
}
if runs 2; then
    log "2. HTTP → Kafka, wrk $CONNECTIONS connections, ${HTTP_SECONDS}s"
    d="$W/p2-gridflow"; gridflow_config "$d"
    printf '[source]\nkind = "http"\npath = "/in"\n[sink]\nkind = "kafka"\ntopic = "peers.http.gridflow"\n' >"$d/pipelines/flow.toml"
    start_gridflow "$d" "$MOCK"
    wait_http "http://127.0.0.1:$GF_ADMIN/health/ready" 60
    read -r rps p99 bad < <(wrk_run "http://127.0.0.1:$GF_HTTP/in" "$W/post.lua" "$CONNECTIONS" "$HTTP_SECONDS")
    G[2]="$rps"; NOTE[g2]="p99 ${p99} ms"; [[ "$bad" == 0 ]] || NOTE[g2]+=", $bad non-2xx"
    stop "$GF_PID"
    if [[ -n "$VECTOR" ]]; then
        v="$W/p2-vector"; mkdir -p "$v/data"; port="$(free_port)"
        cat >"$v/vector.toml" <<EOF
data_dir = "$v/data"
[sources.in]
type = "http_server"
address = "127.0.0.1:$port"
path = "/in"
decoding.codec = "json"
[sinks.out]
type = "kafka"
inputs = ["in"]
bootstrap_servers = "$MOCK"
topic = "peers.http.vector"
encoding.codec = "json"
acknowledgements.enabled = true
librdkafka_options."acks" = "all"
librdkafka_options."enable.idempotence" = "true"
librdkafka_options."linger.ms" = "5"
EOF
        start_vector "$v"
        deadline=$((SECONDS + 60))
        until curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{}' "http://127.0.0.1:$port/in"; do
            ((SECONDS < deadline)) || break; sleep 0.1
        done
        read -r rps p99 bad < <(wrk_run "http://127.0.0.1:$port/in" "$W/post.lua" "$CONNECTIONS" "$HTTP_SECONDS")
        V[2]="$rps"; NOTE[v2]="p99 ${p99} ms"; [[ "$bad" == 0 ]] || NOTE[v2]+=", $bad non-2xx"
        stop "$VPID"
    fi
fi

# --- 3: Kafka → map → Kafka, process start included ---
if runs 3; then
    log "3. Kafka → map → Kafka, $KAFKA_RECORDS records"
    KAFKA_BROKERS="$MOCK" "$BARE" produce peers.k.in "$KAFKA_RECORDS" "$FIXTURE" >&2
    d="$W/p3-gridflow"; gridflow_config "$d"
    {
        printf '[source]\nkind = "kafka"\ntopics = ["peers.k.in"]\ngroup = "peers-gridflow"\n'
        printf "[[steps]]\nkind = \"map\"\nexpression = '%s'\n" "$MAP_JMES"
        printf '[sink]\nkind = "kafka"\ntopic = "peers.k.gridflow"\nkey = "meter_id"\n'
    } >"$d/pipelines/flow.toml"
    broker_cpu="$(cpu_ms "$BROKER_PID")"
    start_gridflow "$d" "$MOCK"
    start="$GF_STARTED"
    echo "$start" >"$d/started_unix_ms"     # to read gridflow.log's timeline against
    if line="$(KAFKA_BROKERS="$MOCK" "$BARE" wait peers.k.gridflow "$KAFKA_RECORDS" 600)"; then
        done="${line##*at_unix_ms=}"
        G[3]="$(rate "$KAFKA_RECORDS" $((done - start)))"
        first="${line##*first_unix_ms=}"; first="${first%% *}"
        NOTE[g3]="$(seconds $((done - start))), first record out at $(seconds $((first - start))), CPU $(seconds "$(cpu_ms "$GF_PID")") + broker $(seconds $(($(cpu_ms "$BROKER_PID") - broker_cpu)))"
    fi
    stop "$GF_PID"
    if [[ -n "$VECTOR" ]]; then
        v="$W/p3-vector"; mkdir -p "$v/data"
        cat >"$v/vector.toml" <<EOF
data_dir = "$v/data"
[sources.in]
type = "kafka"
bootstrap_servers = "$MOCK"
group_id = "peers-vector"
topics = ["peers.k.in"]
auto_offset_reset = "earliest"
[transforms.map]
type = "remap"
inputs = ["in"]
source = '''
$MAP_VRL
'''
[sinks.out]
type = "kafka"
inputs = ["map"]
bootstrap_servers = "$MOCK"
topic = "peers.k.vector"
key_field = "meter_id"
encoding.codec = "json"
acknowledgements.enabled = true
librdkafka_options."acks" = "all"
librdkafka_options."enable.idempotence" = "true"
EOF
        broker_cpu="$(cpu_ms "$BROKER_PID")"
        start="$(now_ms)"
        start_vector "$v"
        if line="$(KAFKA_BROKERS="$MOCK" "$BARE" wait peers.k.vector "$KAFKA_RECORDS" 600)"; then
            done="${line##*at_unix_ms=}"
            V[3]="$(rate "$KAFKA_RECORDS" $((done - start)))"
            first="${line##*first_unix_ms=}"; first="${first%% *}"
            NOTE[v3]="$(seconds $((done - start))), first record out at $(seconds $((first - start))), CPU $(seconds "$(cpu_ms "$VPID")") + broker $(seconds $(($(cpu_ms "$BROKER_PID") - broker_cpu)))"
        fi
        stop "$VPID"
    fi
fi

# --- 5: XML, one event per point ---
if runs 5; then
    log "5. XML (A65, 96 points) over HTTP, wrk $XML_CONNECTIONS connections, ${XML_SECONDS}s"
    cat >"$W/xml.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/xml"
local f = io.open("$A65", "r"); wrk.body = f:read("*a"); f:close()
EOF
    d="$W/p5-gridflow"; gridflow_config "$d"
    # The shipped flow's steps up to the event (no validate, no envelope), into the blackhole.
    python3 - "$REPO/pipelines/entsoe-actual-load.toml" >"$d/pipelines/flow.toml" <<'EOF'
import sys, tomllib
flow = tomllib.load(open(sys.argv[1], "rb"))
steps = [s for s in flow["steps"] if s["kind"] not in ("validate", "envelope")]
def value(v):
    if isinstance(v, str):
        return "'''" + v + "'''" if "\n" in v or "'" not in v else '"' + v.replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return str(v)
print('[source]\nkind = "http"\npath = "/in"')
for s in steps:
    print("[[steps]]")
    for k, v in s.items():
        print(f"{k} = {value(v)}")
print('[sink]\nkind = "blackhole"')
EOF
    start_gridflow "$d" "$MOCK"
    wait_http "http://127.0.0.1:$GF_ADMIN/health/ready" 60
    code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/xml' --data-binary @"$A65" "http://127.0.0.1:$GF_HTTP/in")"
    [[ "$code" == 202 ]] || log "gridflow answered $code to the A65 document"
    before="$(sent "$GF_ADMIN" flow)"
    read -r rps p99 bad < <(wrk_run "http://127.0.0.1:$GF_HTTP/in" "$W/xml.lua" "$XML_CONNECTIONS" "$XML_SECONDS")
    after="$(sent "$GF_ADMIN" flow)"
    G[5]="$rps"; NOTE[g5]="$(( (after - before) / (XML_SECONDS > 0 ? XML_SECONDS : 1) )) events/s"
    [[ "$bad" == 0 ]] || NOTE[g5]+=", $bad non-2xx"
    stop "$GF_PID"
    if [[ -n "$VECTOR" ]]; then
        v="$W/p5-vector"; mkdir -p "$v/data"; port="$(free_port)"
        cat >"$v/vector.toml" <<EOF
data_dir = "$v/data"
[sources.in]
type = "http_server"
address = "127.0.0.1:$port"
path = "/in"
decoding.codec = "bytes"
framing.method = "bytes"
[transforms.points]
type = "remap"
inputs = ["in"]
source = '''
doc = object!(object!(parse_xml!(string!(.message))).GL_MarketDocument)
series = doc.TimeSeries
if !is_array(series) { series = [series] }
steps = {"PT15M": 900, "PT30M": 1800, "PT60M": 3600}
events = []
for_each(array!(series)) -> |_i, s| {
  periods = s.Period
  if !is_array(periods) { periods = [periods] }
  area = s."outBiddingZone_Domain.mRID".text
  for_each(array!(periods)) -> |_j, p| {
    first = to_unix_timestamp(parse_timestamp!(string!(p.timeInterval.start), "%Y-%m-%dT%H:%MZ"))
    step = int!(get!(steps, [string!(p.resolution)]))
    points = p.Point
    if !is_array(points) { points = [points] }
    for_each(array!(points)) -> |_k, pt| {
      position = int!(pt.position)
      at = first + (position - 1) * step
      events = push(events, {
        "document_id": doc.mRID, "area": area, "resolution": p.resolution, "position": position,
        "start": format_timestamp!(from_unix_timestamp!(at), "%Y-%m-%dT%H:%M:%SZ"),
        "end": format_timestamp!(from_unix_timestamp!(at + step), "%Y-%m-%dT%H:%M:%SZ"),
        "quantity": to_float!(pt.quantity)
      })
    }
  }
}
. = events
'''
[sinks.out]
type = "blackhole"
inputs = ["points"]
print_interval_secs = 0
EOF
        start_vector "$v"
        deadline=$((SECONDS + 60))
        until code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/xml' --data-binary @"$A65" "http://127.0.0.1:$port/in")" && [[ "$code" == 200 ]]; do
            ((SECONDS < deadline)) || { log "vector answered $code to the A65 document: $(tail -n 3 "$v/vector.log")"; break; }
            sleep 0.1
        done
        read -r rps p99 bad < <(wrk_run "http://127.0.0.1:$port/in" "$W/xml.lua" "$XML_CONNECTIONS" "$XML_SECONDS")
        V[5]="$rps"; [[ "$bad" == 0 ]] || NOTE[v5]="$bad non-2xx"
        stop "$VPID"
    fi
    read -r limit < <("$XML_LOOP" "$A65" 5 | sed -n 's/.* per_second=\([0-9]*\).*/\1/p')
    NOTE[x5]="quick-xml's tokenizer alone: $(kfmt "$limit") documents/s on one core"
fi

# --- the table ---
target() { case "$1" in 1|4) echo "≥ 1×" ;; 2) echo "—" ;; 3) echo "≥ 2×" ;; 5) echo "≥ 3×" ;; esac; }
name() {
    case "$1" in
        1) echo "file → map → blackhole (Vector: stdin → remap → blackhole), msg/s" ;;
        2) echo "HTTP → Kafka, answer after the broker's ack (wrk, $CONNECTIONS connections), req/s" ;;
        3) echo "Kafka → map → Kafka, $KAFKA_RECORDS records, process start included, msg/s" ;;
        4) echo "file → map → file (Vector: stdin → remap → file, no sync), msg/s" ;;
        5) echo "A65 XML over HTTP → one event per point → blackhole (wrk, $XML_CONNECTIONS connections), documents/s" ;;
    esac
}
verdict() {
    local r; r="$(python3 -c "import sys; a, b = float(sys.argv[1] or 0), float(sys.argv[2] or 0); print(a / b if a > 0 and b > 0 else -1)" "${G[$1]:-0}" "${V[$1]:-0}")"
    case "$1" in 1|4) python3 -c "import sys; r=float(sys.argv[1]); print('—' if r < 0 else ('met' if r >= 1 else 'not met'))" "$r" ;;
                 3) python3 -c "import sys; r=float(sys.argv[1]); print('—' if r < 0 else ('met' if r >= 2 else 'not met'))" "$r" ;;
                 5) python3 -c "import sys; r=float(sys.argv[1]); print('—' if r < 0 else ('met' if r >= 3 else 'not met'))" "$r" ;;
                 *) echo "—" ;; esac
}
peer="none"; [[ -z "$VECTOR" ]] || peer="$("$VECTOR" --version | head -n1)"
echo "Measured $(date -u +'%Y-%m-%d %H:%M') UTC at $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $SIZE-byte readings; peer: $peer"
echo
echo "| path | gridflow | Vector | ratio | target | verdict |"
echo "| --- | ---: | ---: | ---: | --- | --- |"
for n in 1 2 3 4 5; do
    runs "$n" || continue
    g="$(kfmt "${G[$n]:-0}")"; [[ -z "${NOTE[g$n]:-}" ]] || g+=" (${NOTE[g$n]})"
    v="$(kfmt "${V[$n]:-0}")"; [[ -z "${NOTE[v$n]:-}" ]] || v+=" (${NOTE[v$n]})"
    echo "| $(name "$n") | $g | $v | $(ratio "${G[$n]:-0}" "${V[$n]:-0}") | $(target "$n") | $(verdict "$n") |"
done
if runs 5 && [[ -n "${NOTE[x5]:-}" ]]; then echo; echo "XML limit: ${NOTE[x5]}."; fi
