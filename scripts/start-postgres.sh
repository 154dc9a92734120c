#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for bastion's registry tests.
#
# Idempotent: installs Debian's `postgresql` package if missing, initialises a cluster under
# $BASTION_SERVICES_DIR/postgres (default /tmp/bastion-services/postgres) once, starts it on a
# free loopback port if it is not already running, creates the database `bastion_test`, and
# prints the line
#     export BASTION_TEST_POSTGRES_URL=postgresql+psycopg://bastion@127.0.0.1:PORT/bastion_test
# Use it as:   eval "$(scripts/start-postgres.sh)"
# Stop with:   scripts/start-postgres.sh --stop
# Everything but the final export line goes to stderr.
set -euo pipefail

BASE="${BASTION_SERVICES_DIR:-/tmp/bastion-services}/postgres"
DATA="$BASE/data"
LOG="$BASE/server.log"
PORT_FILE="$BASE/port"
DB=bastion_test
ROLE=bastion

log() { echo "start-postgres: $*" >&2; }

find_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x "$dir/pg_ctl" ]]; then echo "$dir"; return 0; fi
    done
    if command -v pg_ctl >/dev/null 2>&1; then dirname "$(command -v pg_ctl)"; return 0; fi
    return 1
}

BIN="$(find_bin || true)"
if [[ -z "$BIN" ]]; then
    log "installing the postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BIN="$(find_bin)"
fi

# PostgreSQL refuses to run as root: run its tools as the `postgres` user then.
as_pg() {
    if [[ "$(id -u)" == "0" ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [[ "${1:-}" == "--stop" ]]; then
    if [[ -f "$DATA/postmaster.pid" ]]; then
        as_pg "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true
    fi
    exit 0
fi

mkdir -p "$BASE"
if [[ "$(id -u)" == "0" ]]; then chown postgres: "$BASE"; fi

if [[ ! -f "$DATA/PG_VERSION" ]]; then
    log "initialising a cluster in $DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-instructions >&2
fi

running() { as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

if running && [[ -f "$PORT_FILE" ]]; then
    PORT="$(cat "$PORT_FILE")"
    log "already running on port $PORT"
else
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "$PORT" > "$PORT_FILE"
    log "starting on 127.0.0.1:$PORT"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-h 127.0.0.1 -p $PORT -k $BASE -c fsync=off -c max_connections=200" start >&2
fi

psql_admin() { as_pg psql -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

if [[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$ROLE'")" != "1" ]]; then
    psql_admin -c "CREATE ROLE $ROLE LOGIN CREATEDB" >&2
fi
if [[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB'")" != "1" ]]; then
    psql_admin -c "CREATE DATABASE $DB OWNER $ROLE" >&2
fi

echo "export BASTION_TEST_POSTGRES_URL=postgresql+psycopg://$ROLE@127.0.0.1:$PORT/$DB"
