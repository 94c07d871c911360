#!/usr/bin/env bash
# The no-Docker path of local-dev/, end to end, for the test suite:
#   00-prereqs, 10-local-up, 20-verify, 30-generate-evidence (its files checked by
#   check-evidence.sh), 90-local-down (90 also when a step fails),
# native mode, on free loopback ports, with a state directory of its own (the developer's
# local-dev/.state/ is not touched, except the shared kafka.py virtualenv
# local-dev/.state/venv, kept between runs).
#
# Needs: KAFKA_BROKERS (a running broker, e.g. the suite's tansu; no tansu is started) and
# GRIDFLOW_BIN (the binary under test). Exit 0 when every step passed, else the first
# failing step's code.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
scripts="$here/../scripts"

[[ -n "${KAFKA_BROKERS:-}" ]] || { echo "no-docker.sh: KAFKA_BROKERS must name a running broker" >&2; exit 2; }
[[ -n "${GRIDFLOW_BIN:-}" && -x "${GRIDFLOW_BIN:-}" ]] || { echo "no-docker.sh: GRIDFLOW_BIN must name the gridflow binary" >&2; exit 2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

export LOCAL_MODE=native
export LOCAL_STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/gridflow-local-dev.XXXXXX")"
export LOCAL_HTTP_PORT="$(free_port)" LOCAL_ADMIN_PORT="$(free_port)" LOCAL_STUB_PORT="$(free_port)"
export LOCAL_LEGACY_PORT="$(free_port)"
export LOCAL_KAFKA_PORT="$(free_port)" # unused with KAFKA_BROKERS; set so nothing defaults to 19092

status=0
step() {
    echo "no-docker.sh: $*" >&2
    "$@"
    local rc=$?
    if ((rc != 0)); then
        echo "no-docker.sh: FAILED (exit $rc): $*" >&2
        ((status == 0)) && status=$rc
    fi
    return $rc
}

cleanup() {
    step "$scripts/90-local-down.sh"
    if ((status != 0)); then
        for f in "$LOCAL_STATE_DIR"/*.log; do
            [[ -f "$f" ]] || continue
            echo "--- tail of $f" >&2
            tail -n 30 "$f" >&2
        done
    fi
    rm -rf "$LOCAL_STATE_DIR"
}
trap cleanup EXIT

# Evidence of the stack 20-verify exercised, into the state directory; then its files checked.
# tansu 0.6 cannot answer DescribeGroups: the groups' state is not asked.
evidence() {
    local out
    out="$(EVIDENCE_DIR="$LOCAL_STATE_DIR/evidence" EVIDENCE_DESCRIBE_GROUPS=0 "$scripts/30-generate-evidence.sh")" &&
        "$here/check-evidence.sh" "$out"
}

step "$scripts/00-prereqs.sh" &&
    step "$scripts/10-local-up.sh" &&
    step "$scripts/20-verify.sh" &&
    step evidence &&
    step "$scripts/10-local-up.sh" # a second run with everything up: exit 0, nothing restarted
trap - EXIT
cleanup
exit "$status"
