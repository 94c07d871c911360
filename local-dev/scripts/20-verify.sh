#!/usr/bin/env bash
# Checks the local stack end to end and prints a pass/fail table; exit 1 on any failure.
#
#   1. the topics of contracts/topics.toml (gridflow topics apply, idempotent)
#   2. gridflow is ready
#   3. HTTP pipeline entsoe-actual-load: the ENTSO-E A65 fixture is accepted (202, 96 messages),
#      counted in gridflow_messages_sent_total, and its 96 events are on energy.load.actual.v1.<env>
#      in the kit's envelope, keyed by bidding zone
#   4. the error model: a malformed document gets 400 and its bytes reach energy.load.actual.v1.<env>.dlq
#      with gridflow.error.code invalid_xml
#   5. Kafka pipeline meter-readings: a raw reading produced to energy.meter.reading.raw.v1
#      comes out normalised on energy.meter.reading.v1, keyed by meter_id
#   6. the asset registry stub answers a known meter (200) and an unknown one (404)
#   7. ENTSO-E time series (the timeseries step): the A65 events carry their UTC start and end;
#      HTTP pipeline entsoe-day-ahead-prices: the A44 fixture (curve type A03, position 7
#      absent) gives 24 events on energy.price.dayahead.v1.<env>, position 7 filled; an A01 gap is
#      refused (422) and dead-lettered with invalid_time_series; HTTP pipeline
#      entsoe-generation-per-type: the A75 fixture gives 72 events (3 production types x 24) on
#      energy.generation.actual.v1.<env>

#   8. SOAP pipeline generation-forecast-soap: its WSDL on GET ?wsdl; the A67 forecast in a SOAP
#      1.1 and a SOAP 1.2 envelope is acknowledged (96 messages each) and its 192 events are on
#      energy.generation.forecast.v1.<env> keyed by resource; another document type gets a SOAP fault
#      and a dead letter (contract_violation) on energy.generation.forecast.v1.<env>.dlq, a malformed SOAP 1.2
#      envelope a soap:Sender fault (400) and a dead letter (invalid_xml)
#   9. HTTP pipeline entsoe-unavailability: an active A80 notice and a cancelled A78 notice are
#      accepted (202, 1 message each) and are on energy.unavailability.notice.v1.<env> keyed by mRID, the
#      cancelled one with status A09; a document with two time series gets 422 and a dead letter
#  10. HTTP pipeline meter-readings-head-end: an IEC 61968-9 MeterReadings document from a head-end
#      is accepted (202, 24 messages) and its 24 interval readings are on energy.meter.reading.v1,
#      normalised (kWh, quality A) and keyed by meter_id
#  11. the kit's tier-1 API: POST /v1/meter-readings and POST /v1/incidents (one without details)
#      get 202 and land on grid.*.v1.<env> keyed by partitionKey; an unknown severity gets 422
#      and reaches grid.incident.created.v1.<env>.dlq with code contract_violation
#  12. OCPP 1.6: the MeterValues sample (in the bridge's body) gives 5 enveloped events on
#      emobility.meter.values.v1.<env> keyed by the charge point; the StatusNotification sample
#      one on emobility.charger.status.v1.<env>; a CALLRESULT posted as MeterValues gets 422
#  13. Kafka pipeline meter-reading-routing: an overloaded reading produced to
#      energy.meter.reading.v1 comes out enriched with its asset (from the stub) on
#      energy.meter.reading-enriched.v1 and as an overload event on energy.meter.overload.v1
#  14. Kafka pipeline overload-work-orders: that overload event reaches the legacy work-order
#      stub as a SOAP request it accepts (GET /orders); an overload of a meter the legacy system
#      does not know is refused and dead-lettered to energy.meter.overload.v1.dlq with the reason
#  15. HTTP pipeline grid-frequency: the 10 Hz PMU batch gives 20 events on
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
# The environment of the kit's topics (<...>.v1.<env>): the compose stack runs dev.
kit_env=dev
[[ "$mode" == docker ]] || kit_env="${GRIDFLOW_ENV:-dev}"
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

# post_accepted CHECK PATH CONTENT_TYPE CORRELATION_ID DATA WANT: POSTs DATA (curl's
# --data-binary: @file or the text itself) to PATH of gridflow's HTTP listener; the row passes
# on 202 with WANT messages.
post_accepted() {
    local body code messages
    body="$(curl -s --max-time 60 -w '\n%{http_code}' -X POST "$http_url$2" \
        -H "Content-Type: $3" -H "X-Correlation-ID: $4" --data-binary "$5")"
    code="$(tail -n 1 <<<"$body")"
    messages="$(head -n -1 <<<"$body" | jq -r '.messages // empty' 2>/dev/null)"
    if [[ "$code" == 202 && "$messages" == "$6" ]]; then
        row PASS "$1" "202, $6 message(s)"
    else
        row FAIL "$1" "status $code, messages '${messages}' (want 202, $6): $(head -n -1 <<<"$body" | head -c 300)"
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

# 3. entsoe-actual-load (like every ENTSO-E flow, in the kit's envelope on the environment's topic).
cid="$run_id-load"
sent_before="$(metric gridflow_messages_sent_total entsoe-actual-load)"
post_accepted "entsoe: POST A65" /ingest/entsoe/actual-load "application/xml" "$cid" @"$LOCAL_DEV/fixtures/A65-actual-total-load-BE.xml" 96
sent_after="$(metric gridflow_messages_sent_total entsoe-actual-load)"
delta=$((${sent_after%.*} - ${sent_before%.*}))
((delta >= 96)) && row PASS "entsoe: messages_sent_total" "+$delta" ||
    row FAIL "entsoe: messages_sent_total" "+$delta (want +96)"
n="$(wait_matched "energy.load.actual.v1.$kit_env" "correlation_id == '$cid' && body.eventType == 'energy.load.actual' && key == body.partitionKey && key == body.payload.area && body.payload.area == '10YBE----------2' && body.payload.unit == 'MAW' && body.payload.position != null" 96 20)"
[[ "$n" == 96 ]] && row PASS "entsoe: energy.load.actual.v1.$kit_env" "96 events keyed by area 10YBE----------2" ||
    row FAIL "entsoe: energy.load.actual.v1.$kit_env" "$n matching event(s) (want 96)"

# 4. Dead letter.
cid="$run_id-bad"
code="$(curl -s -o /dev/null --max-time 60 -w '%{http_code}' -X POST "$http_url/ingest/entsoe/actual-load" \
    -H 'Content-Type: application/xml' -H "X-Correlation-ID: $cid" \
    --data-binary '<GL_MarketDocument><mRID>broken</GL_MarketDocument>')"
[[ "$code" == 400 ]] && row PASS "entsoe: malformed XML" "400" || row FAIL "entsoe: malformed XML" "status $code (want 400)"
n="$(wait_matched "energy.load.actual.v1.$kit_env.dlq" "correlation_id == '$cid' && error.code == 'invalid_xml' && pipeline == 'entsoe-actual-load'" 1 20)"
[[ "$n" == 1 ]] && row PASS "entsoe: dead letter" "1 on energy.load.actual.v1.$kit_env.dlq, code invalid_xml" ||
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

# 7. ENTSO-E time series: per-point start and end, A44 day-ahead prices, A75 generation per type.
cid="$run_id-load"   # the A65 document of section 3: its points carry their own UTC interval
n="$(wait_matched "energy.load.actual.v1.$kit_env" "correlation_id == '$cid' && body.payload.position == \`1\` && body.payload.start == '2026-01-13T23:00:00Z' && body.payload.end == '2026-01-13T23:15:00Z'" 1 20)"
[[ "$n" == 1 ]] && row PASS "entsoe: A65 start/end" "position 1 from 2026-01-13T23:00:00Z to 23:15:00Z" ||
    row FAIL "entsoe: A65 start/end" "$n matching event(s) (want 1)"
cid="$run_id-prices"
post_accepted "prices: POST A44" /ingest/entsoe/day-ahead-prices "application/xml" "$cid" @"$LOCAL_DEV/fixtures/A44-day-ahead-prices-FR.xml" 24
n="$(wait_matched "energy.price.dayahead.v1.$kit_env" "correlation_id == '$cid' && body.eventType == 'energy.price.dayahead' && key == body.partitionKey && key == body.payload.area && body.payload.area == '10YFR-RTE------C' && body.payload.start != null && body.payload.end != null" 24 20)"
[[ "$n" == 24 ]] && row PASS "prices: energy.price.dayahead.v1.$kit_env" "24 events keyed by area 10YFR-RTE------C" ||
    row FAIL "prices: energy.price.dayahead.v1.$kit_env" "$n matching event(s) (want 24)"
n="$(wait_matched "energy.price.dayahead.v1.$kit_env" "correlation_id == '$cid' && body.payload.position == \`7\` && body.payload.price == \`87.05\` && body.payload.start == '2026-01-14T05:00:00Z' && body.payload.end == '2026-01-14T06:00:00Z'" 1 20)"
[[ "$n" == 1 ]] && row PASS "prices: A03 gap filled" "position 7 repeats 87.05, 05:00Z-06:00Z" ||
    row FAIL "prices: A03 gap filled" "$n matching event(s) (want 1)"
cid="$run_id-prices-gap"
code="$(curl -s -o /dev/null --max-time 60 -w '%{http_code}' -X POST "$http_url/ingest/entsoe/day-ahead-prices" \
    -H 'Content-Type: application/xml' -H "X-Correlation-ID: $cid" \
    --data-binary '<Publication_MarketDocument><mRID>gap</mRID><revisionNumber>1</revisionNumber><type>A44</type><createdDateTime>2026-01-13T12:58:02Z</createdDateTime><TimeSeries><in_Domain.mRID>10YFR-RTE------C</in_Domain.mRID><currency_Unit.name>EUR</currency_Unit.name><price_Measure_Unit.name>MWH</price_Measure_Unit.name><curveType>A01</curveType><Period><timeInterval><start>2026-01-13T23:00Z</start><end>2026-01-14T01:00Z</end></timeInterval><resolution>PT60M</resolution><Point><position>2</position><price.amount>1</price.amount></Point></Period></TimeSeries></Publication_MarketDocument>')"
n="$(wait_matched "energy.price.dayahead.v1.$kit_env.dlq" "correlation_id == '$cid' && error.code == 'invalid_time_series' && pipeline == 'entsoe-day-ahead-prices'" 1 20)"
[[ "$code" == 422 && "$n" == 1 ]] && row PASS "prices: A01 gap dead letter" "422, 1 on energy.price.dayahead.v1.$kit_env.dlq, code invalid_time_series" ||
    row FAIL "prices: A01 gap dead letter" "status $code (want 422), $n matching dead letter(s) (want 1)"
cid="$run_id-generation"
post_accepted "gen: POST A75" /ingest/entsoe/generation-per-type "application/xml" "$cid" @"$LOCAL_DEV/fixtures/A75-generation-per-type-NL.xml" 72
n="$(wait_matched "energy.generation.actual.v1.$kit_env" "correlation_id == '$cid' && body.eventType == 'energy.generation.actual' && key == body.partitionKey && key == body.payload.area && body.payload.area == '10YNL----------L' && contains(['B14', 'B16', 'B19'], body.payload.psr_type) && body.payload.start != null" 72 20)"
[[ "$n" == 72 ]] && row PASS "gen: energy.generation.actual.v1.$kit_env" "72 events (B14, B16, B19 x 24) keyed by 10YNL----------L" ||
    row FAIL "gen: energy.generation.actual.v1.$kit_env" "$n matching event(s) (want 72)"

# 8. generation-forecast-soap (SOAP 1.1 and 1.2, A67).
soap_url="$http_url/soap/generation-forecast"
soap_action=urn:gridflow:generation-forecast:1:SubmitGenerationForecast
wsdl="$(curl -s --max-time 10 "$soap_url?wsdl")"
grep -q "soapAction=\"$soap_action\"" <<<"$wsdl" && grep -q '<wsdl:definitions' <<<"$wsdl" &&
    row PASS "forecast: GET ?wsdl" "the WSDL, operation $soap_action" ||
    row FAIL "forecast: GET ?wsdl" "no WSDL naming $soap_action: $(head -c 200 <<<"$wsdl")"
cid="$run_id-forecast"
body11="$(curl -s --max-time 60 -w '\n%{http_code}' -X POST "$soap_url" \
    -H 'Content-Type: text/xml; charset=utf-8' -H "SOAPAction: \"$soap_action\"" -H "X-Correlation-ID: $cid-11" \
    --data-binary @"$LOCAL_DEV/fixtures/generation-forecast-A67-soap11.xml")"
body12="$(curl -s --max-time 60 -w '\n%{http_code}' -X POST "$soap_url" \
    -H "Content-Type: application/soap+xml; charset=utf-8; action=\"$soap_action\"" -H "X-Correlation-ID: $cid-12" \
    --data-binary @"$LOCAL_DEV/fixtures/generation-forecast-A67-soap12.xml")"
for v in 11 12; do
    b="body$v"
    code="$(tail -n 1 <<<"${!b}")"
    [[ "$code" == 200 ]] && grep -q '<gf:messages>96</gf:messages>' <<<"${!b}" &&
        row PASS "forecast: SOAP 1.${v#1} A67" "200, acknowledged, 96 messages" ||
        row FAIL "forecast: SOAP 1.${v#1} A67" "status $code (want 200 and 96 messages): $(head -n -1 <<<"${!b}" | head -c 300)"
done
n="$(wait_matched "energy.generation.forecast.v1.$kit_env" "starts_with(correlation_id, '$cid-1') && body.eventType == 'energy.generation.forecast' && key == body.partitionKey && key == body.payload.resource_id && body.payload.resource_id == '871242300000100001' && body.payload.document_type == 'A67' && body.payload.position != null && body.payload.start != null && body.payload.end != null" 192 20)"
[[ "$n" == 192 ]] && row PASS "forecast: events on the topic" "192 events (96 per SOAP version) keyed by resource" ||
    row FAIL "forecast: events on the topic" "$n matching event(s) (want 192)"
code="$(curl -s -o "$STATE/verify-fault.xml" --max-time 60 -w '%{http_code}' -X POST "$soap_url" \
    -H 'Content-Type: text/xml' -H "SOAPAction: $soap_action" -H "X-Correlation-ID: $cid-wrong" \
    --data-binary '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><GL_MarketDocument><mRID>x</mRID><revisionNumber>1</revisionNumber><type>A65</type><sender_MarketParticipant.mRID>8712423000001</sender_MarketParticipant.mRID><createdDateTime>2026-01-14T06:00:00Z</createdDateTime><TimeSeries><businessType>A01</businessType><registeredResource.mRID>871242300000100001</registeredResource.mRID><quantity_Measure_Unit.name>MAW</quantity_Measure_Unit.name><Period><timeInterval><start>2026-01-14T23:00Z</start><end>2026-01-15T00:00Z</end></timeInterval><resolution>PT60M</resolution><Point><position>1</position><quantity>1</quantity></Point></Period></TimeSeries></GL_MarketDocument></soapenv:Body></soapenv:Envelope>')"
[[ "$code" == 500 ]] && grep -q '<faultcode>soap:Client</faultcode>' "$STATE/verify-fault.xml" &&
    row PASS "forecast: wrong document type" "500, soap:Client fault" ||
    row FAIL "forecast: wrong document type" "status $code (want 500, soap:Client): $(head -c 300 "$STATE/verify-fault.xml")"
n="$(wait_matched "energy.generation.forecast.v1.$kit_env.dlq" "correlation_id == '$cid-wrong' && error.code == 'contract_violation' && pipeline == 'generation-forecast-soap'" 1 20)"
[[ "$n" == 1 ]] && row PASS "forecast: dead letter" "1 on energy.generation.forecast.v1.$kit_env.dlq, code contract_violation" ||
    row FAIL "forecast: dead letter" "$n matching dead letter(s) (want 1)"
code="$(curl -s -o "$STATE/verify-fault.xml" --max-time 60 -w '%{http_code}' -X POST "$soap_url" \
    -H "Content-Type: application/soap+xml; action=\"$soap_action\"" -H "X-Correlation-ID: $cid-broken" \
    --data-binary '<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><GL_MarketDocument></env:Body></env:Envelope>')"
n="$(wait_matched "energy.generation.forecast.v1.$kit_env.dlq" "correlation_id == '$cid-broken' && error.code == 'invalid_xml' && pipeline == 'generation-forecast-soap'" 1 20)"
[[ "$code" == 400 && "$n" == 1 ]] && grep -q '<soap:Value>soap:Sender</soap:Value>' "$STATE/verify-fault.xml" &&
    row PASS "forecast: malformed envelope" "400, soap:Sender fault, 1 dead letter (invalid_xml)" ||
    row FAIL "forecast: malformed envelope" "status $code (want 400, soap:Sender), $n dead letter(s) (want 1): $(head -c 300 "$STATE/verify-fault.xml")"

# 9. entsoe-unavailability (A77/A78/A80).
cid="$run_id-unavail"
for f in A80-unavailability-generation-FR A78-unavailability-transmission-DE-AT-cancelled; do
    post_accepted "unavailability: POST ${f%%-*}" /ingest/entsoe/unavailability "application/xml" "$cid-${f%%-*}" @"$LOCAL_DEV/fixtures/$f.xml" 1
done
n="$(wait_matched "energy.unavailability.notice.v1.$kit_env" "correlation_id == '$cid-A80' && body.eventType == 'energy.unavailability.notice' && body.occurredAt == body.payload.created_at && key == body.partitionKey && key == body.payload.mrid && body.payload.mrid == '2a6c1e8f4b0d4a9c8e2f6b1d3a5c7e90' && body.payload.status == 'A05' && body.payload.asset_id == '17W100P100P0344D' && body.payload.available_capacity == \`0\`" 1 20)"
[[ "$n" == 1 ]] && row PASS "unavailability: active A80" "1 notice keyed by mRID, status A05" ||
    row FAIL "unavailability: active A80" "$n matching notice(s) (want 1)"
n="$(wait_matched "energy.unavailability.notice.v1.$kit_env" "correlation_id == '$cid-A78' && key == body.payload.mrid && body.payload.status == 'A09' && body.payload.revision == \`2\` && body.payload.asset_id == '10T-AT-DE-000061'" 1 20)"
[[ "$n" == 1 ]] && row PASS "unavailability: cancelled A78" "1 notice, status A09 (cancelled), revision 2" ||
    row FAIL "unavailability: cancelled A78" "$n matching notice(s) (want 1)"
code="$(curl -s -o /dev/null --max-time 60 -w '%{http_code}' -X POST "$http_url/ingest/entsoe/unavailability" \
    -H 'Content-Type: application/xml' -H "X-Correlation-ID: $cid-two" \
    --data-binary '<Unavailability_MarketDocument><mRID>two</mRID><revisionNumber>1</revisionNumber><type>A80</type><TimeSeries/><TimeSeries/></Unavailability_MarketDocument>')"
n="$(wait_matched "energy.unavailability.notice.v1.$kit_env.dlq" "correlation_id == '$cid-two' && error.code == 'unexpected_shape' && pipeline == 'entsoe-unavailability'" 1 20)"
[[ "$code" == 422 && "$n" == 1 ]] && row PASS "unavailability: dead letter" "422, 1 on energy.unavailability.notice.v1.$kit_env.dlq" ||
    row FAIL "unavailability: dead letter" "status $code (want 422), $n matching dead letter(s) (want 1)"

# 10. meter-readings-head-end (IEC 61968-9 MeterReadings over HTTP).
cid="$run_id-head-end"
post_accepted "head-end: POST MeterReadings" /ingest/head-end/meter-readings "application/xml" "$cid" @"$LOCAL_DEV/fixtures/MeterReadings-head-end.xml" 24
n="$(wait_matched energy.meter.reading.v1 "correlation_id == '$cid' && key == body.meter_id && starts_with(body.meter_id, 'FR-PRM-0918273645001') && body.unit == 'kWh' && body.quality == 'A' && body.value != null" 24 20)"
[[ "$n" == 24 ]] && row PASS "head-end: energy.meter.reading.v1" "24 readings of 3 meters, keyed by meter_id" ||
    row FAIL "head-end: energy.meter.reading.v1" "$n matching reading(s) (want 24)"

# 11. The kit's tier-1 API (kit-meter-readings, kit-incidents): the environment's topics.
kit_post() { # kit_post PATH CORRELATION_ID BODY: the status
    curl -s -o /dev/null --max-time 60 -w '%{http_code}' -X POST "$http_url$1" \
        -H 'Content-Type: application/json' -H "X-Correlation-ID: $2" --data-binary "$3"
}
cid="$run_id-kit-reading"
code="$(kit_post /v1/meter-readings "$cid" @"$ROOT/pipelines/tests/fixtures/kit-meter-reading.json")"
[[ "$code" == 202 ]] && row PASS "kit: POST /v1/meter-readings" "202" ||
    row FAIL "kit: POST /v1/meter-readings" "status $code (want 202)"
n="$(wait_matched "grid.meter.reading.v1.$kit_env" "correlation_id == '$cid' && key == body.partitionKey && key == 'FR-PRM-09182736450011' && body.eventType == 'grid.meter.reading' && body.payload.value == \`0.412\`" 1 30)"
[[ "$n" == 1 ]] && row PASS "kit: reading topic" "1 event on grid.meter.reading.v1.$kit_env keyed by partitionKey" ||
    row FAIL "kit: reading topic" "$n matching event(s) (want 1)"
cid="$run_id-kit-incident"
incident="$(jq -c 'del(.payload.details)' "$ROOT/pipelines/tests/fixtures/kit-incident.json")"
code="$(kit_post /v1/incidents "$cid" "$incident")"
[[ "$code" == 202 ]] && row PASS "kit: POST /v1/incidents" "202 (an incident without details)" ||
    row FAIL "kit: POST /v1/incidents" "status $code (want 202)"
n="$(wait_matched "grid.incident.created.v1.$kit_env" "correlation_id == '$cid' && key == 'SITE-LYON-07' && body.payload.severity == 'CRITICAL' && body.payload.details == null" 1 30)"
[[ "$n" == 1 ]] && row PASS "kit: incident topic" "1 event on grid.incident.created.v1.$kit_env keyed by partitionKey" ||
    row FAIL "kit: incident topic" "$n matching event(s) (want 1)"
cid="$run_id-kit-bad"
code="$(kit_post /v1/incidents "$cid" "$(jq -c '.payload.severity = "SEVERE"' <<<"$incident")")"
[[ "$code" == 422 ]] && row PASS "kit: unknown severity" "422" || row FAIL "kit: unknown severity" "status $code (want 422)"
n="$(wait_matched "grid.incident.created.v1.$kit_env.dlq" "correlation_id == '$cid' && error.code == 'contract_violation' && pipeline == 'kit-incidents'" 1 30)"
[[ "$n" == 1 ]] && row PASS "kit: dead letter" "1 on grid.incident.created.v1.$kit_env.dlq, code contract_violation" ||
    row FAIL "kit: dead letter" "$n matching dead letter(s) (want 1)"

# 12. OCPP 1.6 (ocpp-meter-values, ocpp-status-notification): enveloped events on the kit's topics.
cp=CP-LYON-PARTDIEU-0042
ocpp_post() { # ocpp_post PATH CORRELATION_ID BODY: the status
    curl -s -o /dev/null --max-time 60 -w '%{http_code}' -X POST "$http_url$1" \
        -H 'Content-Type: application/json' -H "X-Correlation-ID: $2" --data-binary "$3"
}
cid="$run_id-ocpp-values"
code="$(ocpp_post /ocpp/1.6/meter-values "$cid" @"$ROOT/pipelines/tests/fixtures/ocpp-meter-values-request.json")"
[[ "$code" == 202 ]] && row PASS "ocpp: POST MeterValues" "202" || row FAIL "ocpp: POST MeterValues" "status $code (want 202)"
n="$(wait_matched "emobility.meter.values.v1.$kit_env" "correlation_id == '$cid' && key == '$cp' && body.partitionKey == '$cp' && body.eventType == 'emobility.meter.values' && body.occurredAt == '2026-01-14T10:15:00Z' && body.payload.transaction_id == \`170045\`" 5 30)"
[[ "$n" == 5 ]] && row PASS "ocpp: meter values topic" "5 enveloped events on emobility.meter.values.v1.$kit_env keyed by $cp" ||
    row FAIL "ocpp: meter values topic" "$n matching event(s) (want 5)"
cid="$run_id-ocpp-status"
code="$(ocpp_post /ocpp/1.6/status-notification "$cid" @"$ROOT/pipelines/tests/fixtures/ocpp-status-notification-request.json")"
[[ "$code" == 202 ]] && row PASS "ocpp: POST StatusNotification" "202" || row FAIL "ocpp: POST StatusNotification" "status $code (want 202)"
n="$(wait_matched "emobility.charger.status.v1.$kit_env" "correlation_id == '$cid' && key == '$cp' && body.payload.status == 'Faulted' && body.payload.error_code == 'GroundFailure'" 1 30)"
[[ "$n" == 1 ]] && row PASS "ocpp: charger status topic" "1 enveloped event on emobility.charger.status.v1.$kit_env keyed by $cp" ||
    row FAIL "ocpp: charger status topic" "$n matching event(s) (want 1)"
cid="$run_id-ocpp-bad"
code="$(ocpp_post /ocpp/1.6/meter-values "$cid" "{\"chargePointId\": \"$cp\", \"frame\": [3, \"19223201\", {}]}")"
[[ "$code" == 422 ]] && row PASS "ocpp: CALLRESULT refused" "422" || row FAIL "ocpp: CALLRESULT refused" "status $code (want 422)"
n="$(wait_matched "emobility.meter.values.v1.$kit_env.dlq" "correlation_id == '$cid' && error.code == 'contract_violation' && pipeline == 'ocpp-meter-values'" 1 30)"
[[ "$n" == 1 ]] && row PASS "ocpp: dead letter" "1 on emobility.meter.values.v1.$kit_env.dlq" ||
    row FAIL "ocpp: dead letter" "$n matching dead letter(s) (want 1)"
# 13. meter-reading-routing (input: a normalised reading, as meter-readings writes it).
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

# 14. overload-work-orders: the overload event of 13 reaches the legacy stub and is accepted.
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

# 15. grid-frequency.
cid="$run_id-freq"
post_accepted "frequency: POST batch" /ingest/grid/frequency "application/json" "$cid" @"$LOCAL_DEV/fixtures/grid-frequency-10Hz.json" 20
n="$(wait_matched grid.frequency.measurement.v1 "correlation_id == '$cid' && key == 'pmu-lyon-ouest-01' && body.pmu_id == key && body.frequency_hz > \`49.9\` && body.frequency_hz < \`50.1\`" 20 30)"
[[ "$n" == 20 ]] && row PASS "frequency: measurement.v1" "20 events keyed by pmu-lyon-ouest-01" ||
    row FAIL "frequency: measurement.v1" "$n matching event(s) (want 20)"
post_accepted "frequency: empty batch" /ingest/grid/frequency "application/json" "$run_id-freq-empty" '{"source": "pmu-lyon-ouest-01", "unit": "Hz", "samples": []}' 0
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
