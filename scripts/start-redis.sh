#!/usr/bin/env bash
# Start a throw-away Redis server on 127.0.0.1 for bastion's shared-state tests.
#
# Idempotent: installs Debian's `redis-server` package if no `redis-server` is found, starts
# one on a free loopback port under $BASTION_SERVICES_DIR/redis (default
# /tmp/bastion-services/redis) unless it already runs, and prints the line
#     export BASTION_TEST_REDIS_URL=redis://127.0.0.1:PORT/0
# Use it as:   eval "$(scripts/start-redis.sh)"
# Stop with:   scripts/start-redis.sh --stop
# Everything but the final export line goes to stderr. The server keeps nothing on disk
# (no RDB snapshots, no AOF) and listens on loopback only, with protected mode on.
set -euo pipefail

BASE="${BASTION_SERVICES_DIR:-/tmp/bastion-services}/redis"
PID_FILE="$BASE/pid"
PORT_FILE="$BASE/port"
LOG="$BASE/server.log"

log() { echo "start-redis: $*" >&2; }
mkdir -p "$BASE"

alive() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

if [[ "${1:-}" == "--stop" ]]; then
    if alive; then kill "$(cat "$PID_FILE")"; fi
    rm -f "$PID_FILE"
    exit 0
fi

SERVER="${REDIS_SERVER:-}"
if [[ -z "$SERVER" ]]; then
    if command -v redis-server >/dev/null 2>&1; then
        SERVER="$(command -v redis-server)"
    elif [[ -x /usr/bin/redis-server ]]; then
        SERVER=/usr/bin/redis-server
    else
        log "installing the redis-server package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends redis-server >&2
        SERVER=/usr/bin/redis-server
    fi
fi

ping() {
    python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(64).startswith(b"+PONG") else 1)
PY
}

if alive && [[ -f "$PORT_FILE" ]] && ping "$(cat "$PORT_FILE")"; then
    PORT="$(cat "$PORT_FILE")"
    log "already running on port $PORT"
else
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "$PORT" > "$PORT_FILE"
    log "starting $SERVER on 127.0.0.1:$PORT"
    nohup "$SERVER" --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
        --save "" --appendonly no --dir "$BASE" --daemonize no >"$LOG" 2>&1 &
    echo $! > "$PID_FILE"
    for _ in $(seq 1 100); do
        if ping "$PORT"; then break; fi
        sleep 0.1
    done
    if ! ping "$PORT"; then
        log "redis-server did not answer on port $PORT; see $LOG"
        exit 1
    fi
fi

echo "export BASTION_TEST_REDIS_URL=redis://127.0.0.1:$PORT/0"
