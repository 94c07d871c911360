#!/usr/bin/env bash
# Checks the local stack end to end and prints a pass/fail table; exit 1 on any failure.
#
#   1. the topics of contracts/topics.toml (gridflow topics apply, idempotent)
#   2. gridflow is ready
#   3. HTTP pipeline entsoe-actual-load: the ENTSO-E A65 fixture is accepted (202, 96 messages),
#      counted in gridflow_messages_sent_total, and its 96 events are on energy.load.actual.v1
#      keyed by bidding zone
#   4. the error model: a malformed document gets 400 and its bytes reach energy.load.actual.v1.dlq
#      with gridflow.error.code invalid_xml
#   5. Kafka pipeline meter-readings: a raw reading produced to energy.meter.reading.raw.v1
#      comes out normalised on energy.meter.reading.v1, keyed by meter_id
#   6. the asset registry stub answers a known meter (200) and an unknown one (404)
#   7. Kafka pipeline meter-reading-routing: an overloaded reading produced to
#      energy.meter.reading.v1 comes out enriched with its asset (from the stub) on
#      energy.meter.reading-enriched.v1 and as an overload event on energy.meter.overload.v1
#   8. Kafka pipeline overload-work-orders: that overload event reaches the legacy work-order
#      stub as a SOAP request it accepts (GET /orders); an overload of a meter the legacy system
#      does not know is refused and dead-lettered to energy.meter.overload.v1.dlq with the reason
#   9. HTTP pipeline grid-frequency: the 10 Hz PMU batch gives 20 events on
#      grid.frequency.measurement.v1 keyed by pmu_id; an empty batch 202 with 0 messages; a batch
#      with a 0 Hz sample 422, dead-lettered whole (none of its events written); a batch of
#      1000 samples (100 s of one PMU) 202; one over max_body_bytes (256 KiB) 413
#
# What a topic holds is read with `gridflow replay --dry-run --where ...` (reads, sends and
# commits nothing), selecting this run's records by their correlation id. Records are
# produced with local-dev/scripts/kafka.py (native) or the Kafka container's console
# producer (docker).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

mode="$(local_mode)"
run_id="verify-$(date +%Y%m%d%H%M%S)-$$"
if [[ "$mode" == docker ]]; then
    http_url=http://127.0.0.1:8080
    admin_url=http://127.0.0.1:9090
    stub_url=http://127.0.0.1:18081
    legacy_url=http://127.0.0.1:18082
    brokers=kafka:19092 # as seen from the containers
else
    brokers="$(native_brokers)"
    http_url="$(cat "$STATE/http_url" 2>/dev/null)" || die "the native stack is not up: run 10-local-up.sh"
    admin_url="$(cat "$STATE/admin_url")"
    stub_url="$(cat "$STATE/stub_url")"
    legacy_url="$(cat "$STATE/legacy_url")"
    bin="$(cat "$STATE/gridflow_bin")"
fi

ROWS=()
failures=0
row() { # row PASS|FAIL|SKIP CHECK DETAIL
    ROWS+=("$1|$2|$3")
    [[ "$1" == FAIL ]] && failures=$((failures + 1))
    say "$1 $2: $3"
}

gridflow_cli() { # gridflow_cli ARGS...: gridflow with the stack's configuration and brokers
    if [[ "$mode" == docker ]]; then
        compose exec -T gridflow gridflow "$@"
    else
        (cd "$ROOT" && KAFKA_BROKERS="$brokers" "$bin" "$@")
    fi
}

# matched TOPIC WHERE: how many records of TOPIC the JMESPath condition selects.
matched() {
    local out
    out="$(gridflow_cli replay --config "$( [[ $mode == docker ]] && echo /etc/gridflow/config/dev.toml || echo config/dev.toml)" \
        --brokers "$brokers" --from "$1" --to "$1" --dry-run --log-format json --where "$2" 2>>"$STATE/verify.log")" || {
        echo "error"
        return
    }
    sed -n 's/.*: read [0-9]*, matched \([0-9]*\),.*/\1/p' <<<"$out" | tail -n 1
}

# wait_matched TOPIC WHERE WANT SECONDS: polls until WANT records match; prints the last count.
wait_matched() {
    local deadline=$((SECONDS + $4)) n
    while :; do
        n="$(matched "$1" "$2")"
        [[ "$n" == "$3" ]] && break
        ((SECONDS < deadline)) || break
        sleep 1
    done
    echo "$n"
}

metric() { # metric NAME PIPELINE: the sample's value, 0 when absent
    curl -s --max-time 5 "$admin_url/metrics" |
        awk -v n="$1" -v p="pipeline=\"$2\"" '$1 ~ "^"n"[{]" && index($1, p) {v=$2} END {print v+0}'
}

produce_raw() { # produce_raw TOPIC KEY CORRELATION_ID FILE
    if [[ "$mode" == docker ]]; then
        printf 'gridflow.correlation_id:%s\t%s\t%s\n' "$3" "$2" "$(jq -c . "$4")" |
            compose exec -T kafka /opt/kafka/bin/kafka-console-producer.sh \
                --bootstrap-server kafka:19092 --topic "$1" --producer-property acks=all \
                --property parse.key=true --property parse.headers=true >/dev/null
    else
        ensure_venv
        "$VENV/bin/python" "$LOCAL_DEV/scripts/kafka.py" produce --brokers "$brokers" --topic "$1" \
            --key "$2" --header "gridflow.correlation_id=$3" --file "$4" >/dev/null
    fi
}

mkdir -p "$STATE"
: >"$STATE/verify.log"
say "verifying the $mode stack (run $run_id; gridflow output in $STATE/verify.log)"

# 1. Topics.
rc=0
topics_out="$(topics_apply "$brokers" 2>>"$STATE/verify.log")" || rc=$?
echo "$topics_out" >>"$STATE/verify.log"
case "$rc" in
    0) row PASS "topics apply" "$(grep -c . <<<"$topics_out") line(s): $(grep -oE '\b(create|update|unchanged)\b' <<<"$topics_out" | sort | uniq -c | awk '{printf "%s%s %s", s, $1, $2; s=", "}')" ;;
    3) row SKIP "topics apply" "LOCAL_SKIP_TOPICS_APPLY=1" ;;
    *) row FAIL "topics apply" "exit $rc (see $STATE/verify.log)" ;;
esac

# 2. Ready.
status="$(http_status "$admin_url/health/ready")"
[[ "$status" == 200 ]] && row PASS "gridflow ready" "$admin_url/health/ready 200" ||
    row FAIL "gridflow ready" "$admin_url/health/ready answered $status"

# 3. entsoe-actual-load.
cid="$run_id-load"
sent_before="$(metric gridflow_messages_sent_total entsoe-actual-load)"
body="$(curl -s --max-time 60 -w '\n%{http_code}' -X POST "$http_url/ingest/entsoe/actual-load" \
    -H 'Content-Type: application/xml' -H "X-Correlation-ID: $cid" \
    --data-binary @"$LOCAL_DEV/fixtures/A65-actual-total-load-BE.xml")"
code="$(tail -n 1 <<<"$body")"
messages="$(head -n -1 <<<"$body" | jq -r '.messages // empty' 2>/dev/null)"
[[ "$code" == 202 && "$messages" == 96 ]] && row PASS "entsoe: POST A65" "202, 96 messages" ||
    row FAIL "entsoe: POST A65" "status $code, messages '${messages}' (want 202, 96): $(head -n -1 <<<"$body" | head -c 300)"
sent_after="$(metric gridflow_messages_sent_total entsoe-actual-load)"
delta=$((${sent_after%.*} - ${sent_before%.*}))
((delta >= 96)) && row PASS "entsoe: messages_sent_total" "+$delta" ||
    row FAIL "entsoe: messages_sent_total" "+$delta (want +96)"
n="$(wait_matched energy.load.actual.v1 "correlation_id == '$cid' && key == body.area && body.area == '10YBE----------2' && body.unit == 'MAW' && body.position != null" 96 20)"
[[ "$n" == 96 ]] && row PASS "entsoe: energy.load.actual.v1" "96 events keyed by area 10YBE----------2" ||
    row FAIL "entsoe: energy.load.actual.v1" "$n matching event(s) (want 96)"

# 4. Dead letter.
cid="$run_id-bad"
code="$(curl -s -o /dev/null --max-time 60 -w '%{http_code}' -X POST "$http_url/ingest/entsoe/actual-load" \
    -H 'Content-Type: application/xml' -H "X-Correlation-ID: $cid" \
    --data-binary '<GL_MarketDocument><mRID>broken</GL_MarketDocument>')"
[[ "$code" == 400 ]] && row PASS "entsoe: malformed XML" "400" || row FAIL "entsoe: malformed XML" "status $code (want 400)"
n="$(wait_matched energy.load.actual.v1.dlq "correlation_id == '$cid' && error.code == 'invalid_xml' && pipeline == 'entsoe-actual-load'" 1 20)"
[[ "$n" == 1 ]] && row PASS "entsoe: dead letter" "1 on energy.load.actual.v1.dlq, code invalid_xml" ||
    row FAIL "entsoe: dead letter" "$n matching dead letter(s) (want 1)"

# 5. meter-readings.
cid="$run_id-meter"
meter=FR-PRM-09182736450011
sent_before="$(metric gridflow_messages_sent_total meter-readings)"
if produce_raw energy.meter.reading.raw.v1 "$meter" "$cid" "$LOCAL_DEV/fixtures/meter-reading-raw.json" 2>>"$STATE/verify.log"; then
    row PASS "meter: produce raw" "1 record to energy.meter.reading.raw.v1, key $meter"
    n="$(wait_matched energy.meter.reading.v1 "correlation_id == '$cid' && key == '$meter' && body.meter_id == '$meter' && body.value == \`0.412\` && body.unit == 'kWh' && body.substation == 'SS-118'" 1 60)"
    [[ "$n" == 1 ]] && row PASS "meter: energy.meter.reading.v1" "1 normalised reading, key $meter, value 0.412 kWh" ||
        row FAIL "meter: energy.meter.reading.v1" "$n matching reading(s) (want 1)"
    sent_after="$(metric gridflow_messages_sent_total meter-readings)"
    delta=$((${sent_after%.*} - ${sent_before%.*}))
    ((delta >= 1)) && row PASS "meter: messages_sent_total" "+$delta" || row FAIL "meter: messages_sent_total" "+$delta (want +1)"
else
    row FAIL "meter: produce raw" "not produced (see $STATE/verify.log)"
fi

# 6. Stub.
auth="Authorization: Bearer ${ASSET_REGISTRY_TOKEN:-local-dev-token}"
known="$(curl -s --max-time 5 -H "$auth" "$stub_url/meters/$meter" | jq -r '.max_interval_kwh // empty' 2>/dev/null)"
unknown="$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' -H "$auth" "$stub_url/meters/FR-PRM-00000000000000")"
[[ -n "$known" && "$unknown" == 404 ]] && row PASS "stub: asset registry" "known meter 200 (max_interval_kwh $known), unknown 404" ||
    row FAIL "stub: asset registry" "known meter: '$known', unknown meter: $unknown (want a record, 404)"

# 7. meter-reading-routing (input: a normalised reading, as meter-readings writes it).
cid="$run_id-routing"
if produce_raw energy.meter.reading.v1 "$meter" "$cid" "$LOCAL_DEV/fixtures/meter-reading-overload.json" 2>>"$STATE/verify.log"; then
    row PASS "routing: produce reading" "1 record to energy.meter.reading.v1, key $meter, 2.61 kWh"
    n="$(wait_matched energy.meter.reading-enriched.v1 "correlation_id == '$cid' && key == '$meter' && body.asset.max_interval_kwh == \`2.25\` && body.value == \`2.61\`" 1 60)"
    [[ "$n" == 1 ]] && row PASS "routing: reading-enriched.v1" "1 reading with its asset (max_interval_kwh 2.25)" ||
        row FAIL "routing: reading-enriched.v1" "$n matching reading(s) (want 1)"
    n="$(wait_matched energy.meter.overload.v1 "correlation_id == '$cid' && key == '$meter' && body.value_kwh == \`2.61\` && body.max_interval_kwh == \`2.25\` && body.correlation_id == '$cid'" 1 60)"
    [[ "$n" == 1 ]] && row PASS "routing: overload.v1" "1 overload event, key $meter" ||
        row FAIL "routing: overload.v1" "$n matching overload event(s) (want 1)"
else
    row FAIL "routing: produce reading" "not produced (see $STATE/verify.log)"
fi

# 8. overload-work-orders: the overload event of 7 reaches the legacy stub and is accepted.
orders=0
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    orders="$(curl -s --max-time 5 "$legacy_url/orders?correlation_id=$cid" | jq 'length' 2>/dev/null)"
    [[ "$orders" == 1 ]] && break
    sleep 1
done
[[ "$orders" == 1 ]] && row PASS "legacy: order accepted" "1 SOAP SubmitOverload accepted by the stub ($legacy_url/orders)" ||
    row FAIL "legacy: order accepted" "'$orders' accepted order(s) for $cid (want 1)"
cid="$run_id-refused"
unknown_meter=FR-PRM-77777777777777
if produce_raw energy.meter.overload.v1 "$unknown_meter" "$cid" "$LOCAL_DEV/fixtures/meter-overload-unknown-meter.json" 2>>"$STATE/verify.log"; then
    n="$(wait_matched energy.meter.overload.v1.dlq "correlation_id == '$cid' && pipeline == 'overload-work-orders' && error.code == 'sink_rejected' && contains(error.message, 'unknown meter $unknown_meter')" 1 60)"
    [[ "$n" == 1 ]] && row PASS "legacy: refusal dead-lettered" "1 on energy.meter.overload.v1.dlq, sink_rejected with the reason" ||
        row FAIL "legacy: refusal dead-lettered" "$n matching dead letter(s) (want 1)"
else
    row FAIL "legacy: refusal dead-lettered" "not produced (see $STATE/verify.log)"
fi

# 9. grid-frequency.
cid="$run_id-freq"
body="$(curl -s --max-time 60 -w '\n%{http_code}' -X POST "$http_url/ingest/grid/frequency" \
    -H 'Content-Type: application/json' -H "X-Correlation-ID: $cid" \
    --data-binary @"$LOCAL_DEV/fixtures/grid-frequency-10Hz.json")"
code="$(tail -n 1 <<<"$body")"
messages="$(head -n -1 <<<"$body" | jq -r '.messages // empty' 2>/dev/null)"
[[ "$code" == 202 && "$messages" == 20 ]] && row PASS "frequency: POST batch" "202, 20 messages" ||
    row FAIL "frequency: POST batch" "status $code, messages '${messages}' (want 202, 20): $(head -n -1 <<<"$body" | head -c 300)"
n="$(wait_matched grid.frequency.measurement.v1 "correlation_id == '$cid' && key == 'pmu-lyon-ouest-01' && body.pmu_id == key && body.frequency_hz > \`49.9\` && body.frequency_hz < \`50.1\`" 20 30)"
[[ "$n" == 20 ]] && row PASS "frequency: measurement.v1" "20 events keyed by pmu-lyon-ouest-01" ||
    row FAIL "frequency: measurement.v1" "$n matching event(s) (want 20)"
body="$(curl -s --max-time 30 -w '\n%{http_code}' -X POST "$http_url/ingest/grid/frequency" \
    -H 'Content-Type: application/json' -H "X-Correlation-ID: $run_id-freq-empty" \
    --data-binary '{"source": "pmu-lyon-ouest-01", "unit": "Hz", "samples": []}')"
code="$(tail -n 1 <<<"$body")"
messages="$(head -n -1 <<<"$body" | jq -r '.messages' 2>/dev/null)"
[[ "$code" == 202 && "$messages" == 0 ]] && row PASS "frequency: empty batch" "202, 0 messages" ||
    row FAIL "frequency: empty batch" "status $code, messages '$messages' (want 202, 0)"
cid="$run_id-freq-bad"
code="$(curl -s -o /dev/null --max-time 30 -w '%{http_code}' -X POST "$http_url/ingest/grid/frequency" \
    -H 'Content-Type: application/json' -H "X-Correlation-ID: $cid" \
    --data-binary '{"source": "pmu-lyon-ouest-01", "unit": "Hz", "samples": [{"t": "2026-01-14T10:00:00.000Z", "f": 49.99}, {"t": "2026-01-14T10:00:00.100Z", "f": 0}]}')"
n="$(wait_matched grid.frequency.measurement.v1.dlq "correlation_id == '$cid' && error.code == 'contract_violation' && pipeline == 'grid-frequency'" 1 20)"
written="$(matched grid.frequency.measurement.v1 "correlation_id == '$cid'")"
[[ "$code" == 422 && "$n" == 1 && "$written" == 0 ]] && row PASS "frequency: 0 Hz sample" "422, the batch on grid.frequency.measurement.v1.dlq, none of it written" ||
    row FAIL "frequency: 0 Hz sample" "status $code (want 422), $n dead letter(s) (want 1), $written event(s) written (want 0)"
large="$STATE/grid-frequency-large.json"
python3 -c 'import json; print(json.dumps({"source": "pmu-lyon-ouest-01", "unit": "Hz", "samples": [{"t": "2026-01-14T10:00:00.000Z", "f": 50.0}] * 1000}))' >"$large"
body="$(curl -s --max-time 120 -w '\n%{http_code}' -X POST "$http_url/ingest/grid/frequency" \
    -H 'Content-Type: application/json' -H "X-Correlation-ID: $run_id-freq-large" --data-binary @"$large")"
code="$(tail -n 1 <<<"$body")"
messages="$(head -n -1 <<<"$body" | jq -r '.messages // empty' 2>/dev/null)"
[[ "$code" == 202 && "$messages" == 1000 ]] && row PASS "frequency: large batch" "202, 1000 messages ($(wc -c <"$large") bytes)" ||
    row FAIL "frequency: large batch" "status $code, messages '$messages' (want 202, 1000)"
huge="$STATE/grid-frequency-huge.json"
python3 -c 'import json; print(json.dumps({"source": "pmu-lyon-ouest-01", "unit": "Hz", "samples": [{"t": "2026-01-14T10:00:00.000Z", "f": 50.0}] * 7000}))' >"$huge"
code="$(curl -s -o /dev/null --max-time 30 -w '%{http_code}' -X POST "$http_url/ingest/grid/frequency" \
    -H 'Content-Type: application/json' --data-binary @"$huge")"
[[ "$code" == 413 ]] && row PASS "frequency: batch over 256 KiB" "413 ($(wc -c <"$huge") bytes)" ||
    row FAIL "frequency: batch over 256 KiB" "status $code (want 413)"

echo
printf '%-6s %-32s %s\n' RESULT CHECK DETAIL
printf '%-6s %-32s %s\n' ------ -------------------------------- ------
for r in "${ROWS[@]}"; do
    IFS='|' read -r result check detail <<<"$r"
    printf '%-6s %-32s %s\n' "$result" "$check" "$detail"
done
echo
if ((failures)); then
    echo "$failures check(s) failed."
    exit 1
fi
echo "All checks passed."
