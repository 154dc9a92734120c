#!/usr/bin/env bash
# Start a throw-away S3-compatible server (moto's standalone `moto_server`) on 127.0.0.1.
#
# Idempotent: installs `moto[server]` from PyPI into its own virtual environment under
# $BASTION_SERVICES_DIR/s3 (default /tmp/bastion-services/s3) if no `moto_server` is found,
# starts it on a free loopback port unless it already runs, creates the bucket
# `bastion-test`, and prints
#     export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
#     export BASTION_TEST_S3_URL='s3://bastion-test/ci?endpoint_url=http://127.0.0.1:PORT'
# Use it as:   eval "$(scripts/start-s3.sh)"
# Stop with:   scripts/start-s3.sh --stop
# Everything but the export lines goes to stderr.
set -euo pipefail

BASE="${BASTION_SERVICES_DIR:-/tmp/bastion-services}/s3"
PID_FILE="$BASE/pid"
PORT_FILE="$BASE/port"
LOG="$BASE/server.log"
BUCKET=bastion-test

log() { echo "start-s3: $*" >&2; }
mkdir -p "$BASE"

alive() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

if [[ "${1:-}" == "--stop" ]]; then
    if alive; then kill "$(cat "$PID_FILE")"; fi
    rm -f "$PID_FILE"
    exit 0
fi

MOTO="${MOTO_SERVER:-}"
if [[ -z "$MOTO" ]]; then
    if [[ -x "$BASE/venv/bin/moto_server" ]]; then
        MOTO="$BASE/venv/bin/moto_server"
    elif command -v moto_server >/dev/null 2>&1; then
        MOTO="$(command -v moto_server)"
    else
        log "installing moto[server] into $BASE/venv"
        python3 -m venv "$BASE/venv" >&2
        "$BASE/venv/bin/pip" install -q "moto[server]>=5" >&2
        MOTO="$BASE/venv/bin/moto_server"
    fi
fi

if alive && [[ -f "$PORT_FILE" ]]; then
    PORT="$(cat "$PORT_FILE")"
    log "already running on port $PORT"
else
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    echo "$PORT" > "$PORT_FILE"
    log "starting $MOTO on 127.0.0.1:$PORT"
    nohup "$MOTO" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
    echo $! > "$PID_FILE"
    for _ in $(seq 1 100); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/moto-api/', timeout=1)" 2>/dev/null; then
            break
        fi
        sleep 0.2
    done
fi

# create the bucket (an unsigned-looking PUT is accepted by moto; ignore "already exists")
python3 - "$PORT" "$BUCKET" >&2 <<'EOF'
import sys, urllib.request, urllib.error
port, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"http://127.0.0.1:{port}/{bucket}", method="PUT")
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as exc:
    if exc.code != 409:
        raise
EOF

echo "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
echo "export BASTION_TEST_S3_URL='s3://$BUCKET/ci?endpoint_url=http://127.0.0.1:$PORT'"
