#!/usr/bin/env bash
# Instructions per message of each case of benches/instr.rs, counted by callgrind: each case
# runs twice, N1 and N2 times, and the difference of the two totals divided by N2 - N1 is the
# cost of one message without the set-up. Instruction counts do not depend on the machine's
# load, unlike times.
#
#   cargo bench --no-run --bench instr        # prints the path of the instr binary
#   runtime/benches/instr.sh <that path> [case ...]
#
# Variables: N1 (default 200), N2 (default 2200). Needs valgrind.
set -euo pipefail
bin=${1:?usage: instr.sh <instr bench binary> [case ...]}
shift
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(map_1k_bytes passthrough_bytes http_contract set_one_field entsoe_a65 map_interpreted_bytes)
n1=${N1:-200}
n2=${N2:-2200}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
total() {
    valgrind --tool=callgrind --callgrind-out-file="$work/out" "$bin" "$1" "$2" >/dev/null 2>&1
    awk '/^(summary|totals):/ { print $2; exit }' "$work/out"
}
printf '%-20s %12s\n' case instr/op
for case in "${cases[@]}"; do
    a=$(total "$case" "$n1")
    b=$(total "$case" "$n2")
    printf '%-20s %12d\n' "$case" $(((b - a) / (n2 - n1)))
done
