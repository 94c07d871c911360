#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): advisories (RustSec), licences, bans and
# sources of every crate in Cargo.lock. Called by ci/test.sh; runs alone as `ci/deny.sh`.
#
# The advisory database is fetched when the machine can reach it. Where it cannot (this
# project's CI machines reach package registries only), the snapshot vendored in
# ci/advisory-db/ is used instead, as a git repository laid out where cargo-deny looks for its
# database, dated by the snapshot so that cargo-deny's staleness check sees its real age.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

DENY_VERSION=0.20.2
SNAPSHOT_DATE=2026-08-21T08:28:40+02:00 # commit date of the vendored snapshot (ci/advisory-db/PROVENANCE.md)
# cargo-deny's folder name for the default database (its URL's last segment and hash).
DB_DIR=advisory-db-3157b0e258782691

log() { echo "[ci/deny.sh] $*" >&2; }

if [[ "$(cargo deny --version 2>/dev/null | awk '{print $2}')" != "$DENY_VERSION" ]]; then
    log "installing cargo-deny $DENY_VERSION (cargo install)"
    cargo install cargo-deny --version "$DENY_VERSION" --locked
fi

root="$(mktemp -d "${TMPDIR:-/tmp}/gridflow-advisory-db.XXXXXX")"
trap 'rm -rf "$root"' EXIT
export GRIDFLOW_ADVISORY_DB_ROOT="$root"

if timeout 120 cargo deny fetch db >"$root/fetch.log" 2>&1; then
    log "advisory database: fetched now"
    offline=()
else
    age_days=$((($(date +%s) - $(date -d "$SNAPSHOT_DATE" +%s)) / 86400))
    log "advisory database: cannot be fetched here ($(grep -m1 -o 'ERROR.*' "$root/fetch.log" | cut -c1-120));"
    log "  using the vendored snapshot of ${SNAPSHOT_DATE%%T*} ($age_days days old, ci/advisory-db/)"
    db="$root/$DB_DIR"
    mkdir -p "$db"
    cp -r ci/advisory-db/crates "$db/"
    (
        cd "$db"
        git init -q
        git add crates
        GIT_AUTHOR_DATE="$SNAPSHOT_DATE" GIT_COMMITTER_DATE="$SNAPSHOT_DATE" \
            git -c user.name=gridflow-ci -c user.email=ci@gridflow.invalid \
            commit -q -m "RustSec advisory database snapshot"
        # cargo-deny takes the newer of HEAD's commit date and the HEAD file's time.
        touch -d "$SNAPSHOT_DATE" .git/HEAD
    )
    offline=(--offline)
fi

log "cargo deny check (advisories, licenses, bans, sources)"
cargo deny "${offline[@]}" --locked check advisories licenses bans sources
