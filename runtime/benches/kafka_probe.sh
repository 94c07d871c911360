#!/usr/bin/env bash
# One Kafka-sourced pipeline on the embedded broker, varied one setting at a time: the probe
# behind the Kafka → Kafka diagnosis in docs/benchmarks-history.md (phase b of e2e.sh measures the same
# pipeline for the table). Prints one line from e2e.sh's measure (`<sent> <seconds> <msg/s>
# <peak RSS kB> <msg per CPU-second>`), after an optional bare-loop run on the same broker.
#
#   PROBE_RECORDS=240000 PROBE_PARTITIONS=64 runtime/benches/kafka_probe.sh
#
# PROBE_RECORDS (80000), PROBE_PARTITIONS (24): records fed to the input topic and partitions
#   of each topic (the embedded broker keeps 5 MiB per partition: stay below 4,000 records per
#   partition);
# PROBE_SINK (kafka): `kafka` (to m.out.v1, keyed by meter_id) or `blackhole`;
# PROBE_NO_MAP=1: no map step; PROBE_SOURCE: more lines of [source] (`concurrency = 4`);
# PROBE_CONFIG: more lines of gridflow.toml after [kafka] (`request_linger_ms = 5`);
# PROBE_PROPERTIES: more lines of [kafka.properties] (`"queued.max.messages.kbytes" = "4096"`);
# PROBE_EXTRA_TOPICS: more topics, each with an idle HTTP → map → Kafka pipeline (`x1.v1 x2.v1`);
# PROBE_BARE=1: the bare loop (runtime/examples/bare_loop.rs) first, with its CPU time;
# PROBE_PERF=1: `perf record ${PROBE_PERF_ARGS:--g}` of gridflow for 9 s from the pipeline's start (perf.data in
#   the work directory, which is printed and kept).
# Builds nothing: run `cargo build --release -p gridflow --bin gridflow --example bare_loop`.
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO="$PWD"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
GF="$TARGET/release/gridflow"
BARE="$TARGET/release/examples/bare_loop"
FIXTURE="$REPO/runtime/benches/fixtures/meter-reading-1k.json"
RECORDS="${PROBE_RECORDS:-80000}"
PARTITIONS="${PROBE_PARTITIONS:-24}"
SINK="${PROBE_SINK:-kafka}"
W="$(mktemp -d "${TMPDIR:-/tmp}/gridflow-probe.XXXXXX")"
echo "work: $W" >&2

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
MAP="$(python3 -c 'import tomllib; print(tomllib.load(open("pipelines/meter-readings.toml","rb"))["steps"][0]["expression"])')"
map_step() {
    [[ -n "${PROBE_NO_MAP:-}" ]] || printf "[[steps]]\nkind = \"map\"\nexpression = '''%s'''\n" "$MAP"
}
mkdir -p "$W/pipelines"
# The embedded broker creates the topics of the pipelines it starts with.
for t in m.in.v1 m.bare.v1 m.out.v1 ${PROBE_EXTRA_TOPICS:-}; do
    { printf '[source]\nkind = "http"\npath = "/%s"\n\n' "$t"; map_step
      printf '\n[sink]\nkind = "kafka"\ntopic = "%s"\nkey = "meter_id"\n' "$t"; } >"$W/pipelines/topic-$t.toml"
done
HTTP_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
cat >"$W/gridflow.toml" <<EOF
[kafka.properties]
"client.id" = "gridflow-probe"
${PROBE_PROPERTIES:-}
[paths]
pipelines = "pipelines"
contracts = "$REPO/contracts"
dead_letters = "dead-letters"
[kafka]
embedded_partitions = $PARTITIONS
${PROBE_CONFIG:-}
EOF
(cd "$W" && exec "$GF" run --config gridflow.toml --brokers "" --http-addr "127.0.0.1:$HTTP_PORT" \
    --admin-addr "127.0.0.1:$ADMIN_PORT" </dev/null >/dev/null 2>"$W/gridflow.log") &
GF_PID="$!"
trap 'kill "$GF_PID" 2>/dev/null || true' EXIT
deadline=$((SECONDS + 60))
until curl -fs "http://127.0.0.1:$ADMIN_PORT/health/ready" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "gridflow did not get ready" >&2; tail "$W/gridflow.log" >&2; exit 1; }
    sleep 0.2
done
MOCK="$(grep -m1 'embedded mock broker' "$W/gridflow.log" | grep -o '127\.0\.0\.1:[0-9]*' | head -n1)"
KAFKA_BROKERS="$MOCK" "$BARE" produce m.in.v1 "$RECORDS" "$FIXTURE" >&2
if [[ -n "${PROBE_BARE:-}" ]]; then
    ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
    before="$(ticks "$GF_PID")"
    KAFKA_BROKERS="$MOCK" /usr/bin/time -f "bare loop CPU: user %U s, system %S s" \
        timeout 200 "$BARE" loop m.in.v1 m.bare.v1 "$RECORDS" 180
    echo "the mock broker's CPU during the bare loop: $(($(ticks "$GF_PID") - before)) ticks of 1/$(getconf CLK_TCK) s"
fi
sed -n "/^cat >\"\$WORK\/measure.py\" <<'EOF'$/,/^EOF$/p" runtime/benches/e2e.sh | sed '1d;$d' >"$W/measure.py"
{ printf '[source]\nkind = "kafka"\ntopics = ["m.in.v1"]\ngroup = "gridflow-probe"\n%s\n\n' "${PROBE_SOURCE:-}"; map_step
  printf '\n[sink]\nkind = "%s"\n' "$SINK"
  [[ "$SINK" != kafka ]] || printf 'topic = "m.out.v1"\nkey = "meter_id"\n\n[on_error]\ndead_letter_topic = "m.out.v1.dlq"\n'
} >"$W/probe.toml"
mv "$W/probe.toml" "$W/pipelines/"
if [[ -n "${PROBE_PERF:-}" ]]; then
    perf record -F 1999 ${PROBE_PERF_ARGS:--g} -p "$GF_PID" -o "$W/perf.data" -- sleep 9 >/dev/null 2>&1 &
    PERF_PID="$!"
fi
python3 "$W/measure.py" rate "$ADMIN_PORT" probe "$RECORDS" 300 "$GF_PID"
# Only perf: gridflow is a background job of this shell too.
wait_perf() { [[ -z "${PROBE_PERF:-}" ]] || wait "$PERF_PID"; }
wait_perf
