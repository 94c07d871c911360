#!/bin/sh
# Entrypoint of the gridflow image: picks the runtime configuration of the environment named
# by GRIDFLOW_ENV, then runs gridflow.
#
#   GRIDFLOW_ENV      dev (default) | recette | prod: runs with
#                     $GRIDFLOW_CONFIG_DIR/$GRIDFLOW_ENV.toml (default dir /etc/gridflow/config)
#   GRIDFLOW_CONFIG   a configuration file to use instead (e.g. a mounted
#                     /etc/gridflow/gridflow.toml); GRIDFLOW_ENV is then not checked
#
#   (no arguments), run [FLAGS]   gridflow run --config <file> [FLAGS]
#   -- or flags only, e.g. --log-format pretty: the same
#   replay ARGS, validate ARGS    gridflow replay|validate --config <file> ARGS
#   anything else                 gridflow ARGS, unchanged (contracts check, --version, ...)
#
# A --config among the arguments wins over GRIDFLOW_ENV and GRIDFLOW_CONFIG.
#
#   GRIDFLOW_ADMIN_TOKEN_FILE   the admin token (POST /admin/reload needs it as
#                     `Authorization: Bearer`); recette and prod read
#                     /run/secrets/gridflow-admin/token by default, dev only when it is set;
#                     GRIDFLOW_ADMIN_TOKEN instead holds the token itself (docs/operations/security.md)
set -eu

die() {
    echo "gridflow entrypoint: $*" >&2
    exit 64
}

env_name="${GRIDFLOW_ENV:-dev}"
if [ -n "${GRIDFLOW_CONFIG:-}" ]; then
    config="$GRIDFLOW_CONFIG"
else
    case "$env_name" in
        dev | recette | prod) ;;
        *) die "unknown GRIDFLOW_ENV '$env_name': expected dev, recette or prod (or set GRIDFLOW_CONFIG to a configuration file)" ;;
    esac
    config="${GRIDFLOW_CONFIG_DIR:-/etc/gridflow/config}/$env_name.toml"
fi

has_config() {
    for arg in "$@"; do
        case "$arg" in
            --config | --config=*) return 0 ;;
        esac
    done
    return 1
}

with_config() {
    # $1: subcommand; the rest: its arguments.
    sub="$1"
    shift
    if has_config "$@"; then
        exec gridflow "$sub" "$@"
    fi
    [ -r "$config" ] || die "configuration file $config is not readable (GRIDFLOW_ENV=$env_name${GRIDFLOW_CONFIG:+, GRIDFLOW_CONFIG=$GRIDFLOW_CONFIG})"
    if [ "$sub" = run ] && [ -n "${GRIDFLOW_ADMIN_TOKEN_FILE:-}" ] && [ ! -r "$GRIDFLOW_ADMIN_TOKEN_FILE" ]; then
        die "admin token file $GRIDFLOW_ADMIN_TOKEN_FILE (GRIDFLOW_ADMIN_TOKEN_FILE) is not readable: mount the Secret gridflow-admin (ops/deploy/README.md)"
    fi
    echo "gridflow entrypoint: GRIDFLOW_ENV=$env_name, configuration $config" >&2
    exec gridflow "$sub" --config "$config" "$@"
}

case "${1:-}" in
    "" | -*) with_config run "$@" ;;
    run | replay | validate)
        sub="$1"
        shift
        with_config "$sub" "$@"
        ;;
    *) exec gridflow "$@" ;;
esac
