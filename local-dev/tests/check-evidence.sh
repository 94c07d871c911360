#!/usr/bin/env bash
# Checks an evidence directory written by local-dev/scripts/30-generate-evidence.sh against
# the local stack that 20-verify.sh exercised (run by no-docker.sh after it):
#
#   versions   gridflow's version is the binary's; the broker's API versions list Produce,
#              Fetch and Metadata; the OS is named
#   pipelines  every pipeline of pipelines/*.toml (its `name`) is loaded and running
#   metrics    a Prometheus text snapshot with gridflow_messages_sent_total of
#              entsoe-actual-load at 96 or more (20-verify sent 96)
#   topics     every topic of contracts/topics.toml and its dead-letter topic, with the
#              catalog's partition count (read here from the catalog, not from kafka.py)
#   lag        the group of meter-readings over the 12 partitions of its input topic, each
#              partition's lag = high watermark - committed offset, the total their sum, and the
#              record 20-verify produced counted in a high watermark; and a group that never
#              committed (from a pipeline file of its own) has every record of
#              energy.load.actual.v1.<env> (the 96 of 20-verify at least) behind
#   summary    SUMMARY.md says everything was captured; MANIFEST.sha256 verifies, and fails
#              once a file is altered
# and that a capture against an admin URL that answers nothing exits 1 and says what failed.
#
#   check-evidence.sh EVIDENCE_DIR      (environment: the one no-docker.sh sets)
# Prints PASS/FAIL lines; exit 1 on any failure.
set -uo pipefail
source "$(dirname "$0")/../scripts/lib.sh"

dir="$1"
failures=0
check() { # check NAME DETAIL CONDITION...: PASS when the command succeeds
    local name="$1" detail="$2"
    shift 2
    if "$@" >/dev/null 2>&1; then
        say "PASS evidence: $name ($detail)"
    else
        say "FAIL evidence: $name ($detail)"
        failures=$((failures + 1))
    fi
}

for f in versions.txt broker-api-versions.json health-ready.json pipelines.json metrics.prom \
    topics.json topics.txt consumer-lag.json consumer-lag.txt SUMMARY.md MANIFEST.sha256; do
    check "file $f" "present, not empty" test -s "$dir/$f"
done

# Versions.
want="$("$(cat "$STATE/gridflow_bin")" --version | head -n 1)"
check "gridflow version" "$want" grep -qxF "gridflow: $want" "$dir/versions.txt"
for api in Produce Fetch Metadata; do
    check "broker API $api" "in versions.txt" grep -qE "^  [0-9]+ $api v[0-9]+-v[0-9]+$" "$dir/versions.txt"
done
check "OS" "uname" grep -qF "os: $(uname -s)" "$dir/versions.txt"

# Pipelines: the shipped ones, by the names their files give.
for file in "$ROOT"/pipelines/*.toml; do
    name="$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$file" | head -n 1)"
    check "pipeline $name" "running in pipelines.json" \
        jq -e --arg n "$name" 'any(.pipelines[]; .name == $n and .state == "running")' "$dir/pipelines.json"
done

# Metrics.
sent="$(awk '$1 ~ /^gridflow_messages_sent_total[{]/ && index($1, "pipeline=\"entsoe-actual-load\"") {v += $2} END {print v + 0}' "$dir/metrics.prom")"
check "metric gridflow_messages_sent_total" "entsoe-actual-load: $sent" test "${sent%.*}" -ge 96
check "metric types" "# TYPE lines" grep -q '^# TYPE gridflow_messages_sent_total counter' "$dir/metrics.prom"

# Topics: the catalog read here, independently of kafka.py.
while IFS=$'\t' read -r topic partitions; do
    check "topic $topic" "$partitions partitions" \
        jq -e --arg t "$topic" --argjson p "$partitions" 'any(.topics[]; .name == $t and .partitions == $p)' "$dir/topics.json"
    check "topics.txt $topic" "listed" grep -qE "^ +$partitions  $(sed 's/\./\\./g' <<<"$topic")$" "$dir/topics.txt"
done < <(python3 - "$ROOT/contracts/topics.toml" <<'PY'
import os, re, sys, tomllib
def expand(text):  # ${NAME} and ${NAME:-default}, as gridflow interpolates the catalog
    def sub(m):
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            return m.group(3) or ""
        return value
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, text)
for t in tomllib.load(open(sys.argv[1], "rb"))["topic"]:
    print(f"{expand(t['name'])}\t{t['partitions']}")
    if t.get("dead_letter"):
        print(f"{expand(t['dead_letter'])}\t{t['partitions']}")
PY
)
check "catalog" "no topic missing" jq -e '.catalog_missing == []' "$dir/topics.json"

# Consumer lag of meter-readings.
group="$(sed -n 's/^group *= *"\(.*\)"/\1/p' "$ROOT/pipelines/meter-readings.toml" | head -n 1)"
check "lag group $group" "meter-readings, 12 partitions of energy.meter.reading.raw.v1" jq -e --arg g "$group" '
    any(.groups[]; .group == $g and (.pipelines | index("meter-readings")) != null
        and ([.partitions[] | select(.topic == "energy.meter.reading.raw.v1")] | length) == 12)' \
    "$dir/consumer-lag.json"
check "lag arithmetic" "lag = high - committed per partition, total = sum" jq -e --arg g "$group" '
    .groups[] | select(.group == $g)
    | (all(.partitions[]; .lag >= 0 and (.committed == null or .lag == .high_watermark - .committed)))
      and .lag == ([.partitions[].lag] | add)' "$dir/consumer-lag.json"
check "lag high watermarks" "the record 20-verify produced" jq -e --arg g "$group" '
    .groups[] | select(.group == $g) | ([.partitions[].high_watermark] | add) >= 1' "$dir/consumer-lag.json"
check "consumer-lag.txt" "names the group and its lag" grep -qE "^group $group: lag [0-9]+" "$dir/consumer-lag.txt"

# The lag of a group that never committed, on the topic 20-verify filled: kafka.py reads the
# group from a pipeline file (with an interpolated ${VAR:-default}), counts every record of the
# topic as behind (high - low watermark) and every partition as without a commit.
idle="$(mktemp -d)"
idle_group="gridflow-evidence-idle-$$-$RANDOM"
load_topic="energy.load.actual.v1.${GRIDFLOW_ENV:-dev}"
printf 'name = "idle"\n[source]\nkind = "kafka"\ntopics = ["energy.load.${EVIDENCE_IDLE_KIND:-actual}.v1.${GRIDFLOW_ENV:-dev}"]\ngroup = "${EVIDENCE_IDLE_GROUP:-%s}"\n[sink]\nkind = "blackhole"\n' \
    "$idle_group" >"$idle/idle.toml"
ensure_venv 2>/dev/null
"$VENV/bin/python" "$LOCAL_DEV/scripts/kafka.py" lag --brokers "$(native_brokers)" --pipelines "$idle" \
    >"$idle/lag.json" 2>/dev/null
check "lag of an idle group" "$idle_group: every record of $load_topic behind" jq -e --arg g "$idle_group" --arg t "$load_topic" '
    .groups | length == 1 and (.[0] | .group == $g and .topics == [$t]
        and .partitions_without_commit == 6 and (.partitions | length) == 6
        and .lag == ([.partitions[] | .high_watermark - .low_watermark] | add) and .lag >= 96)' "$idle/lag.json"
rm -rf "$idle"

# Summary and manifest.
check "SUMMARY.md" "everything captured" grep -qx 'Everything was captured.' "$dir/SUMMARY.md"
check "MANIFEST.sha256" "sha256sum -c" bash -c "cd '$dir' && sha256sum -c --quiet MANIFEST.sha256"
tampered="$(mktemp -d)"
cp -a "$dir/." "$tampered/"
echo "# altered" >>"$tampered/metrics.prom"
check "MANIFEST.sha256" "an altered file fails sha256sum -c" bash -c "cd '$tampered' && ! sha256sum -c --quiet MANIFEST.sha256"
rm -rf "$tampered"

# A capture of an instance that answers nothing: exit 1, and it says what it could not capture.
closed="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
broken_root="$(mktemp -d)"
rc=0
out="$(GRIDFLOW_ADMIN="http://127.0.0.1:$closed" GRIDFLOW_BIN="$(cat "$STATE/gridflow_bin")" KAFKA_BROKERS="$(native_brokers)" \
    EVIDENCE_DIR="$broken_root" EVIDENCE_PIPELINES_DIR="$ROOT/pipelines" EVIDENCE_DESCRIBE_GROUPS=0 \
    "$LOCAL_DEV/scripts/30-generate-evidence.sh" 2>/dev/null)" || rc=$?
check "capture of a dead instance" "exit 1 (got $rc)" test "$rc" == 1
check "capture of a dead instance" "SUMMARY.md names pipelines and metrics" \
    bash -c "grep -q '^- pipelines: ' '$out/SUMMARY.md' && grep -q '^- metrics: ' '$out/SUMMARY.md' && sha256sum --version >/dev/null && cd '$out' && sha256sum -c --quiet MANIFEST.sha256"
rm -rf "$broken_root"

if ((failures)); then
    say "evidence: $failures check(s) failed (in $dir)"
    exit 1
fi
say "evidence: all checks passed ($dir)"
