#!/usr/bin/env bash
# Captures the state of a gridflow instance and its Kafka cluster for a ticket, an incident or
# an acceptance record, into evidence/<UTC timestamp>/ (git-ignored):
#
#   versions.txt            gridflow --version, the client library, the broker's API versions,
#                           the cluster (id, brokers), the OS
#   broker-api-versions.json  the broker's ApiVersions answer and the cluster, as JSON
#   health-ready.json       GET /health/ready (its body; the status is in SUMMARY.md)
#   pipelines.json          GET /admin/pipelines: the loaded pipelines, their state, version
#   metrics.prom            GET /metrics: a snapshot of every metric
#   topics.json, topics.txt every topic with its partition count; the catalog's topics missing
#   consumer-lag.json, consumer-lag.txt
#                           per consumer group of gridflow's Kafka pipelines ([source] group of
#                           the pipeline files): per partition the committed offset, the high
#                           watermark and the lag
#   SUMMARY.md              what was captured, from where, and what failed
#   MANIFEST.sha256         sha256 of every file above (check with `sha256sum -c MANIFEST.sha256`)
#
# Which instance:
#   - GRIDFLOW_ADMIN set (the runbooks' variables): that admin URL, KAFKA_BROKERS, the pipeline
#     files of EVIDENCE_PIPELINES_DIR (default ./pipelines), `gridflow` from GRIDFLOW_BIN or PATH,
#     the catalog EVIDENCE_CATALOG (default ./contracts/topics.toml when present);
#   - otherwise the local stack of 10-local-up.sh (native: its state in local-dev/.state/;
#     docker: the compose services, Kafka on localhost:9092) with the repository's pipelines/
#     and contracts/topics.toml.
# Other settings: EVIDENCE_DIR (default evidence/ of the repository, or of the current
# directory with GRIDFLOW_ADMIN), EVIDENCE_GROUPS (more consumer groups, space-separated),
# GRIDFLOW_ADMIN_TOKEN (sent as a bearer token when set), EVIDENCE_DESCRIBE_GROUPS=0|1 (ask
# the groups' state and members; default 1, 0 on the native stack: tansu 0.6 cannot answer
# DescribeGroups and drops the connection), EVIDENCE_KAFKA_CONFIG (a file of
# librdkafka properties, KEY=VALUE a line, for a secured cluster: security.protocol,
# sasl.mechanism, sasl.username, sasl.password, ssl.ca.location). Topics and lag are read with
# local-dev/scripts/kafka.py (confluent-kafka in a virtualenv, see lib.sh); nothing is
# written to Kafka and no consumer group is joined.
#
# Prints the evidence directory on standard output. Exit 0 when everything was captured,
# 1 when a part failed (what could be captured is kept; SUMMARY.md says what failed).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

failures=()
failed() { # failed WHAT DETAIL
    failures+=("$1: $2")
    say "FAILED $1: $2"
}

# ---- where from --------------------------------------------------------------------------
describe_default=1 # ask the groups' state and members (DescribeGroups)
if [[ -n "${GRIDFLOW_ADMIN:-}" ]]; then
    source_desc="the instance of GRIDFLOW_ADMIN"
    admin_url="${GRIDFLOW_ADMIN%/}"
    brokers="${KAFKA_BROKERS:-}"
    pipelines_dir="${EVIDENCE_PIPELINES_DIR:-$PWD/pipelines}"
    catalog="${EVIDENCE_CATALOG:-}"
    [[ -z "$catalog" && -f "$PWD/contracts/topics.toml" ]] && catalog="$PWD/contracts/topics.toml"
    evidence_root="${EVIDENCE_DIR:-$PWD/evidence}"
    if [[ -n "${GRIDFLOW_BIN:-}" ]]; then
        gridflow_version() { "$GRIDFLOW_BIN" --version; }
    else
        gridflow_version() { gridflow --version; }
    fi
else
    mode="$(local_mode)"
    source_desc="the local stack ($mode)"
    pipelines_dir="${EVIDENCE_PIPELINES_DIR:-$ROOT/pipelines}"
    catalog="${EVIDENCE_CATALOG:-$ROOT/contracts/topics.toml}"
    evidence_root="${EVIDENCE_DIR:-$ROOT/evidence}"
    if [[ "$mode" == docker ]]; then
        admin_url=http://127.0.0.1:9090
        brokers=localhost:9092 # the HOST listener of the compose file's Kafka
        gridflow_version() { compose exec -T gridflow gridflow --version; }
    else
        admin_url="$(cat "$STATE/admin_url" 2>/dev/null)" || die "the native stack is not up (no $STATE/admin_url): run 10-local-up.sh"
        brokers="$(native_brokers)"
        gridflow_version() { "$(cat "$STATE/gridflow_bin")" --version; }
        describe_default=0 # tansu, the native broker, cannot answer DescribeGroups
    fi
fi

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$evidence_root/$stamp"
n=1
while [[ -e "$out" ]]; do # two captures in one second
    n=$((n + 1))
    out="$evidence_root/$stamp-$n"
done
mkdir -p "$out" || die "cannot create $out"
log="$out/capture.log"
: >"$log"
say "capturing evidence of $source_desc into $out"

# fetch PATH FILE: GET admin_url/PATH into FILE; prints the HTTP status ("no answer": none).
# The admin token, when set, goes to curl on its standard input (not on its command line,
# which other users of the host can read).
fetch() {
    local code
    code="$(curl -s --max-time 15 -K - -o "$2" -w '%{http_code}' "$admin_url$1" 2>>"$log" <<<"${GRIDFLOW_ADMIN_TOKEN:+header = \"Authorization: Bearer $GRIDFLOW_ADMIN_TOKEN\"}")"
    [[ -n "$code" && "$code" != 000 ]] && echo "$code" || echo "no answer"
}

kafka_config=()
[[ -n "${EVIDENCE_KAFKA_CONFIG:-}" ]] && kafka_config=(--config-file "$EVIDENCE_KAFKA_CONFIG")
kafka_py() { # kafka_py COMMAND ARGS...: kafka.py in its virtualenv; stderr to the capture log
    local command="$1"
    shift
    "$VENV/bin/python" "$LOCAL_DEV/scripts/kafka.py" "$command" "${kafka_config[@]}" "$@" 2>>"$log"
}

# ---- versions ----------------------------------------------------------------------------
gridflow_v="$(gridflow_version 2>>"$log" | head -n 1)"
[[ -n "$gridflow_v" ]] || { gridflow_v="unknown"; failed versions "gridflow --version gave nothing (see capture.log)"; }

kafka_ok=0
if [[ -z "$brokers" ]]; then
    failed kafka "no brokers (set KAFKA_BROKERS): no broker versions, topics or lag"
elif (ensure_venv) 2>>"$log"; then
    kafka_ok=1
else
    failed kafka "no virtualenv with confluent-kafka (see capture.log): no broker versions, topics or lag"
fi

if ((kafka_ok)); then
    kafka_py api-versions --brokers "$brokers" >"$out/broker-api-versions.json" ||
        failed "broker versions" "kafka.py api-versions failed (see capture.log)"
fi
{
    echo "captured_at: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "captured_from: $source_desc"
    echo "admin_url: $admin_url"
    echo "brokers: ${brokers:-unset}"
    echo "gridflow: $gridflow_v"
    if [[ -s "$out/broker-api-versions.json" ]]; then
        jq -r '"kafka_client: confluent-kafka \(.client.confluent_kafka), librdkafka \(.client.librdkafka)",
            "cluster_id: \(.cluster.cluster_id // "unknown")",
            "cluster_brokers: \([.cluster.brokers[]? | "\(.id)@\(.host):\(.port)"] | join(", "))",
            (if .api_versions then "broker_api_versions (\(.api_versions_of), ApiVersions v0):",
                (.api_versions[] | "  \(.api_key) \(.name) v\(.min_version)-v\(.max_version)")
             else "broker_api_versions: not available (\(.api_versions_error // "no answer"))" end)' \
            "$out/broker-api-versions.json"
    fi
    echo "os: $(uname -srvm)"
    if [[ -r /etc/os-release ]]; then
        echo "os_release: $(. /etc/os-release && echo "${PRETTY_NAME:-$NAME}")"
    elif command -v sw_vers >/dev/null 2>&1; then
        echo "os_release: $(sw_vers -productName) $(sw_vers -productVersion)"
    fi
    echo "hostname: $(hostname 2>/dev/null || uname -n)"
    echo "tools: $(curl --version | head -n 1 | cut -d' ' -f1-2), $(jq --version), $(python3 --version 2>&1)"
} >"$out/versions.txt"

# ---- gridflow: health, pipelines, metrics ------------------------------------------------
status="$(fetch /health/ready "$out/health-ready.json")"
echo "$status" >"$out/health-ready.status"
[[ "$status" =~ ^(200|503)$ ]] || failed "health" "GET $admin_url/health/ready answered '$status'"

status="$(fetch /admin/pipelines "$out/pipelines.json")"
if [[ "$status" != 200 ]] || ! jq -e '.pipelines | type == "array"' "$out/pipelines.json" >/dev/null 2>&1; then
    failed pipelines "GET $admin_url/admin/pipelines answered '$status'"
fi

status="$(fetch /metrics "$out/metrics.prom")"
if [[ "$status" != 200 ]] || ! grep -q '^# TYPE gridflow_' "$out/metrics.prom"; then
    failed metrics "GET $admin_url/metrics answered '$status' without gridflow metrics"
fi

# ---- Kafka: topics and consumer-group lag ------------------------------------------------
if ((kafka_ok)); then
    catalog_args=()
    [[ -n "$catalog" && -f "$catalog" ]] && catalog_args=(--catalog "$catalog")
    if kafka_py topics --brokers "$brokers" "${catalog_args[@]}" >"$out/topics.json"; then
        jq -r '"# \(.topics | length) topics on \(.brokers) (cluster \(.cluster.cluster_id // "unknown"))",
            "# PARTITIONS  TOPIC",
            (.topics[] | "\(.partitions | tostring | (" " * (12 - length)) + .)  \(.name)\(if .internal then "  (internal)" else "" end)\(if .error then "  ERROR \(.error)" else "" end)"),
            (if .catalog then "# catalog \(.catalog): \(.catalog_topics) topics, missing: \(if (.catalog_missing | length) == 0 then "none" else (.catalog_missing | join(", ")) end)" else empty end)' \
            "$out/topics.json" >"$out/topics.txt"
    else
        failed topics "kafka.py topics failed (see capture.log)"
    fi

    group_args=()
    [[ -d "$pipelines_dir" ]] && group_args=(--pipelines "$pipelines_dir")
    for g in ${EVIDENCE_GROUPS:-}; do group_args+=(--group "$g"); done
    [[ "${EVIDENCE_DESCRIBE_GROUPS:-$describe_default}" == 1 ]] && group_args+=(--describe)
    if kafka_py lag --brokers "$brokers" "${group_args[@]}" >"$out/consumer-lag.json"; then
        jq -r '"# \(.groups | length) consumer group(s) of gridflow on \(.brokers)",
            (.groups[] |
                "group \(.group): lag \(.lag), state \(.state)\(if .members != null then ", \(.members) member(s)" else "" end), pipelines \(.pipelines | join(", ") | if . == "" then "-" else . end), topics \(.topics | join(", "))\(if .partitions_without_commit > 0 then ", \(.partitions_without_commit) partition(s) without a commit" else "" end)\(if .missing_topics then ", MISSING topics \(.missing_topics | join(", "))" else "" end)\(if .error then ", ERROR \(.error)" else "" end)",
                "  TOPIC/PARTITION  COMMITTED  HIGH  LAG",
                (.partitions[] | "  \(.topic)/\(.partition)  \(.committed // "-")  \(.high_watermark)  \(.lag)"))' \
            "$out/consumer-lag.json" >"$out/consumer-lag.txt"
    else
        failed "consumer lag" "kafka.py lag failed (see capture.log)"
    fi
fi

# ---- summary and manifest ----------------------------------------------------------------
{
    echo "# gridflow evidence $stamp"
    echo
    echo "Captured $(date -u +%Y-%m-%dT%H:%M:%SZ) from $source_desc: admin $admin_url, brokers ${brokers:-unset}."
    echo
    echo "| what | file | in short |"
    echo "| --- | --- | --- |"
    echo "| versions | versions.txt | $gridflow_v; $(grep -m1 '^kafka_client:' "$out/versions.txt" | cut -d' ' -f2- || true) |"
    if [[ -s "$out/health-ready.json" ]]; then
        echo "| readiness | health-ready.json | HTTP $(cat "$out/health-ready.status"): $(jq -c . "$out/health-ready.json" 2>/dev/null | head -c 200) |"
    fi
    if jq -e '.pipelines' "$out/pipelines.json" >/dev/null 2>&1; then
        echo "| pipelines | pipelines.json | $(jq -r '[.pipelines[] | "\(.name) (\(.state))"] | join(", ")' "$out/pipelines.json") |"
    fi
    if [[ -s "$out/metrics.prom" ]]; then
        echo "| metrics | metrics.prom | $(grep -c '^# TYPE ' "$out/metrics.prom") metric families, $(grep -vc '^#' "$out/metrics.prom") samples |"
    fi
    if [[ -s "$out/topics.json" ]]; then
        echo "| topics | topics.txt, topics.json | $(jq -r '"\(.topics | length) topics\(if .catalog then ", catalog topics missing: \(if (.catalog_missing | length) == 0 then "none" else (.catalog_missing | join(", ")) end)" else "" end)"' "$out/topics.json") |"
    fi
    if [[ -s "$out/consumer-lag.json" ]]; then
        echo "| consumer lag | consumer-lag.txt, consumer-lag.json | $(jq -r 'if (.groups | length) == 0 then "no Kafka-sourced pipeline" else ([.groups[] | "\(.group): \(.lag)"] | join(", ")) end' "$out/consumer-lag.json") |"
    fi
    echo
    if ((${#failures[@]})); then
        echo "## Not captured"
        echo
        for f in "${failures[@]}"; do echo "- $f"; done
    else
        echo "Everything was captured."
    fi
    echo
    echo "Check the files with \`sha256sum -c MANIFEST.sha256\` in this directory."
} >"$out/SUMMARY.md"

rm -f "$out/health-ready.status"
sha256() { if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }
(cd "$out" && find . -type f ! -name MANIFEST.sha256 | sed 's#^\./##' | LC_ALL=C sort |
    while IFS= read -r f; do sha256 "$f"; done >MANIFEST.sha256)

echo "$out"
if ((${#failures[@]})); then
    say "evidence in $out, ${#failures[@]} part(s) not captured (see SUMMARY.md)"
    exit 1
fi
say "evidence in $out"
