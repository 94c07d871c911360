#!/usr/bin/env bash
# Checks the observability files of ops/:
#
#   1. promtool check rules   ops/prometheus/recording-rules.yml ops/prometheus/alerts.yml
#   2. promtool check config  ops/prometheus/prometheus.yml
#   3. promtool test rules    ops/prometheus/tests/*.yml
#   4. every alert has a severity (page or ticket), a summary, a description and a runbook_url,
#      has a unit test, and its runbook_url names a file of the repository
#   5. ops/grafana/*.json parse (jq), and every dashboard expression parses as PromQL
#   6. every metric name used by the rules and dashboards (gridflow_[a-z_]+, without the
#      histogram suffixes _bucket/_count/_sum) is listed in ops/metrics.txt, the metric
#      contract the test suite compares with a live scrape
#   7. every runbook in ops/runbooks/ is listed in its README.md and has at least one
#      ```sh runbook-test block, and every such block is valid bash (runtime/tests/runbooks.rs
#      runs them against a live gridflow)
#
# Needs bash, grep, jq and promtool (Debian/Ubuntu package `prometheus`; installed here when
# missing and run as root). Run from anywhere: ops/check.sh
set -euo pipefail

cd "$(dirname "$0")/.."

PROM=ops/prometheus
RULE_FILES=("$PROM/recording-rules.yml" "$PROM/alerts.yml")
failures=0

log() { echo "[ops/check.sh] $*" >&2; }
fail() {
    log "FAIL: $*"
    failures=$((failures + 1))
}

# --- tools ----------------------------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "promtool missing: installing the Debian package prometheus"
        DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus >/dev/null ||
            { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus >/dev/null; }
    else
        log "promtool is missing. Install it with \`sudo apt-get install -y prometheus\` (Debian/Ubuntu),"
        log "or put promtool from https://prometheus.io/download/ (prometheus-2.*.tar.gz) on PATH."
        exit 1
    fi
fi
for tool in jq grep; do
    command -v "$tool" >/dev/null 2>&1 || {
        log "$tool is missing (apt-get install -y $tool)"
        exit 1
    }
done
log "$(promtool --version 2>&1 | head -n 1)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gridflow-ops-check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# --- 1-3: promtool ----------------------------------------------------------------------------
promtool check rules "${RULE_FILES[@]}" || fail "promtool check rules"
promtool check config "$PROM/prometheus.yml" || fail "promtool check config $PROM/prometheus.yml"
shopt -s nullglob
tests=("$PROM"/tests/*.yml)
dashboards=(ops/grafana/*.json)
shopt -u nullglob
if ((${#tests[@]} == 0)); then
    fail "no unit tests in $PROM/tests/"
else
    promtool test rules "${tests[@]}" || fail "promtool test rules"
fi

# --- 4: alerts: labels, annotations, tests, runbooks --------------------------------------------
# alerts.yml is written with one `- alert:` per rule and its labels/annotations below it; awk
# splits it at each `- alert:` line.
mapfile -t alerts < <(grep -E '^\s*- alert:' "$PROM/alerts.yml" | sed -E 's/^\s*- alert:\s*//')
if ((${#alerts[@]} == 0)); then
    fail "no alerts in $PROM/alerts.yml"
fi
for alert in "${alerts[@]}"; do
    block="$(awk -v name="$alert" '
        /^[[:space:]]*- (alert|record):/ { inside = ($0 ~ ("- alert:[[:space:]]*" name "[[:space:]]*$")) }
        inside { print }' "$PROM/alerts.yml")"
    grep -Eq '^\s+severity:\s*(page|ticket)\s*$' <<<"$block" ||
        fail "$alert: label severity must be page or ticket"
    for annotation in summary description runbook_url; do
        grep -Eq "^\s+$annotation:" <<<"$block" || fail "$alert: annotation $annotation missing"
    done
    runbook="$(grep -E '^\s+runbook_url:' <<<"$block" | head -n 1 | sed -E 's/^\s+runbook_url:\s*//; s/^"//; s/"$//')"
    if [[ -n "$runbook" ]]; then
        [[ "$runbook" != /* && "$runbook" != *://* ]] ||
            fail "$alert: runbook_url must be relative to the repository root: $runbook"
        [[ -f "$runbook" ]] || fail "$alert: runbook_url names no file: $runbook"
    fi
    ((${#tests[@]} > 0)) && grep -Eq "alertname:\s*$alert\s*$" "${tests[@]}" ||
        fail "$alert: no unit test in $PROM/tests/"
done
# One runbook_url per alert: none hidden where the split above does not look.
urls="$(grep -cE '^\s+runbook_url:' "$PROM/alerts.yml" || true)"
((urls == ${#alerts[@]})) || fail "$PROM/alerts.yml: ${#alerts[@]} alerts but $urls runbook_url annotations"
log "${#alerts[@]} alerts checked: severity, summary, description, runbook_url, unit test"

# --- 5: dashboards ------------------------------------------------------------------------------
if ((${#dashboards[@]} == 0)); then
    fail "no dashboards in ops/grafana/"
fi
exprs="$tmp/dashboard-exprs.yml"
{
    echo "groups:"
    echo "  - name: dashboard-expressions"
    echo "    rules:"
} >"$exprs"
n=0
for dashboard in "${dashboards[@]}"; do
    if ! jq -e . "$dashboard" >/dev/null; then
        fail "$dashboard is not valid JSON"
        continue
    fi
    jq -e '.schemaVersion and (.panels | length > 0)' "$dashboard" >/dev/null ||
        fail "$dashboard: no schemaVersion or no panels"
    # Every PromQL expression of the dashboard (panel targets, annotations), with Grafana's
    # variables replaced, becomes a recording rule: promtool check rules parses them.
    while IFS= read -r expr; do
        n=$((n + 1))
        expr="${expr//\$__rate_interval/5m}"
        expr="${expr//\$__interval/1m}"
        expr="${expr//\$__range/1h}"
        expr="${expr//\$pipeline/.*}"
        {
            echo "      - record: dashboard_expression_$n"
            echo "        expr: |"
            echo "          $expr"
        } >>"$exprs"
    done < <(jq -r '[.. | objects | select(has("expr")) | .expr | strings] | .[]' "$dashboard")
done
if ((n > 0)); then
    if promtool check rules "$exprs" >/dev/null 2>"$tmp/exprs.err"; then
        log "$n dashboard expressions parse"
    else
        cat "$tmp/exprs.err" >&2
        while read -r rule; do
            fail "dashboard expression $rule is not valid PromQL:$(grep -A2 "record: dashboard_expression_$rule\$" "$exprs" | tail -n 1)"
        done < <(grep -oE 'dashboard_expression_[0-9]+' "$tmp/exprs.err" | sed 's/.*_//' | sort -un)
    fi
fi

# --- 6: metric names against the contract ------------------------------------------------------
[[ -f ops/metrics.txt ]] || { fail "ops/metrics.txt missing"; exit 1; }
grep -Evq '^gridflow_[a-z_]+$' ops/metrics.txt && fail "ops/metrics.txt: every line must be one metric name (gridflow_[a-z_]+)"
sort -u ops/metrics.txt >"$tmp/known"
sources=("${RULE_FILES[@]}" "${dashboards[@]}")
grep -ohE 'gridflow_[a-z_]+' "${sources[@]}" |
    sed -E 's/_(bucket|count|sum)$//' | sort -u >"$tmp/used"
while read -r name; do
    fail "metric $name is used in $(grep -lE "${name}(_bucket|_count|_sum)?([^a-z_]|$)" "${sources[@]}" | tr '\n' ' ')but not in ops/metrics.txt"
done < <(comm -23 "$tmp/used" "$tmp/known")
log "$(wc -l <"$tmp/used") metric names used by rules and dashboards, checked against ops/metrics.txt ($(wc -l <"$tmp/known") names)"

# --- 7: runbooks -------------------------------------------------------------------------------
# Each runbook has at least one ```sh runbook-test block (run against a live gridflow by
# runtime/tests/runbooks.rs), every such block is valid bash, and the index lists each runbook.
shopt -s nullglob
runbooks=(ops/runbooks/*.md)
shopt -u nullglob
blocks=0
for runbook in "${runbooks[@]}"; do
    [[ "$(basename "$runbook")" == README.md ]] && continue
    grep -qF "$(basename "$runbook")" ops/runbooks/README.md 2>/dev/null ||
        fail "$runbook is not listed in ops/runbooks/README.md"
    rm -f "$tmp"/block.*
    # Fences may be indented (inside a list item).
    awk -v dir="$tmp" '
        inside && /^[[:space:]]*```[[:space:]]*$/ { inside = 0; close(file); next }
        !inside && /^[[:space:]]*```sh runbook-test[[:space:]]*$/ { inside = 1; n++; file = dir "/block." n; printf "" > file; next }
        inside { print > file }' "$runbook"
    shopt -s nullglob
    found=("$tmp"/block.*)
    shopt -u nullglob
    ((${#found[@]} > 0)) || fail "$runbook has no \`\`\`sh runbook-test block"
    for block in "${found[@]}"; do
        blocks=$((blocks + 1))
        bash -n "$block" 2>"$tmp/bash.err" || {
            cat "$tmp/bash.err" >&2
            fail "$runbook: runbook-test block ${block##*.} is not valid bash"
        }
    done
done
log "$blocks runbook-test blocks in ${#runbooks[@]} files parse as bash"

if ((failures > 0)); then
    log "$failures check(s) failed"
    exit 1
fi
log "all checks passed"
