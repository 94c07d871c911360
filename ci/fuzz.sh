#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time: ci/fuzz.sh [SECONDS_PER_TARGET]
# (default 20; `ci/test.sh --long` gives 300). cargo-fuzz (libFuzzer) on the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets it pass its -Z flags; no sanitizer (`-s none`): the targets look for
# panics, which is what hostile input must never cause. A crash fails the script and is kept
# in fuzz/artifacts/<target>/; inputs found interesting are added to fuzz/corpus/<target>/,
# which starts from the committed seeds (the energy samples, pipelines, contracts).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RUSTC_BOOTSTRAP=1

log() { echo "[ci/fuzz.sh] $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz 0.13.2 (cargo install)"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

log "building the fuzz targets"
cargo fuzz build -s none -O

for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    log "fuzzing $target for ${seconds}s"
    out="$(mktemp)"
    if ! cargo fuzz run -s none -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
        >"$out" 2>&1; then
        grep -E -A5 'panicked|ERROR|SUMMARY' "$out" | head -n 40 >&2 || tail -n 40 "$out" >&2
        log "$target found a crash; the input is in fuzz/artifacts/$target/"
        rm -f "$out"
        exit 1
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$out" >&2 || true
    rm -f "$out"
done
log "no target found a crash"
