#!/usr/bin/env bash
# Schema-driven HTTP fuzzing: schemathesis generates requests from `GET /v1/openapi.json` and
# sends them to a real `creditgraph serve` on SQLite (auth off on loopback; the worker API on,
# with its token sent on every request; an LLM base URL that refuses connections, so /v1/solve
# starts real runs that fail). Why: the Rust property tests know the routes from the inside;
# this one knows them only from the published contract, over real sockets, through the binary.
#
# Fails (non-zero exit) on any 5xx, on a request that takes longer than the timeout (a hang),
# when schemathesis cannot be installed (never skipped), and when `creditgraph verify` finds the
# ledger inconsistent afterwards. Seed and example count are fixed, so CI sees the same run.
#
#   scripts/schemathesis.sh        # called by scripts/test.sh after the Rust tests
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }

SEED="${CREDITGRAPH_FUZZ_SEED:-20240601}"
# Examples per operation: 26 operations take about 20 s at 60 (plus about a minute to install).
EXAMPLES_MAX="${CREDITGRAPH_FUZZ_EXAMPLES:-60}"
REQUEST_TIMEOUT_MS=10000
RUN_SECONDS_MAX=240
WORKER_TOKEN="schemathesis-worker-token"

DIR="$(mktemp -d "${TMPDIR:-/tmp}/creditgraph-schemathesis.XXXXXX")"
SERVER_PID=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# scripts/test.sh installs the venv in the background while the Rust tests run and passes it in.
VENV="${CREDITGRAPH_FUZZ_VENV:-}"
if [[ -z "$VENV" || ! -x "$VENV/bin/st" ]]; then
    VENV="$DIR/venv"
    log "installing schemathesis into a venv under $DIR"
    if ! scripts/lib/schemathesis-venv.sh "$VENV"; then
        log "FAILED: pip could not install schemathesis (is PyPI reachable?); the HTTP fuzzing did not run"
        exit 1
    fi
fi

cargo build --quiet --locked --bin creditgraph
# Where cargo put it: CARGO_TARGET_DIR and build.target-dir move it away from ./target.
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BINARY="$TARGET_DIR/debug/creditgraph"
DATABASE="sqlite:$DIR/creditgraph.db"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"

# Port 9 (discard) refuses connections: runs start, their provider calls fail fast.
env -u CREDITGRAPH_TOKENS CREDITGRAPH_LLM_BASE_URL="http://127.0.0.1:9/v1" CREDITGRAPH_LLM_TIMEOUT_SECONDS=5 \
    "$BINARY" serve --listen "127.0.0.1:$PORT" --database "$DATABASE" --worker-token "$WORKER_TOKEN" \
    --workers-in-process 1 --shutdown-grace-seconds 10 >"$DIR/server.log" 2>&1 &
SERVER_PID=$!

ready=""
for _ in $(seq 1 100); do
    if python3 -c "import urllib.request, sys; urllib.request.urlopen('$BASE/readyz', timeout=1)" 2>/dev/null; then
        ready=yes
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [[ -z "$ready" ]]; then
    log "FAILED: the server did not become ready; its log:"
    tail -n 50 "$DIR/server.log" >&2 || true
    exit 1
fi

# Credits on a few accounts, so generated requests also get past "account not found".
for account in alice bob 0; do
    python3 - "$BASE" "$account" <<'EOF'
import json, sys, urllib.request
base, account = sys.argv[1], sys.argv[2]
request = urllib.request.Request(f"{base}/v1/accounts/{account}/grants", method="POST",
    data=json.dumps({"amount": "1000"}).encode(), headers={"content-type": "application/json"})
urllib.request.urlopen(request, timeout=5)
EOF
done

log "fuzzing $BASE (seed $SEED, at most $EXAMPLES_MAX examples per operation)"
set +e
timeout --signal=KILL "$RUN_SECONDS_MAX" "$VENV/bin/st" run "$BASE/v1/openapi.json" \
    --experimental=openapi-3.1 \
    --checks not_a_server_error \
    --hypothesis-seed "$SEED" \
    --hypothesis-max-examples "$EXAMPLES_MAX" \
    --hypothesis-deadline None \
    --hypothesis-suppress-health-check all \
    --request-timeout "$REQUEST_TIMEOUT_MS" \
    --header "Authorization: Bearer $WORKER_TOKEN" \
    --no-color \
    --cassette-path "$DIR/cassette.yaml"
fuzz_status=$?
set -e
if [[ $fuzz_status -eq 137 ]]; then
    log "FAILED: schemathesis did not finish within $RUN_SECONDS_MAX s (a hang?)"
fi

# Stop the server gracefully (runs canceled, holds released), then check the ledger.
kill -TERM "$SERVER_PID"
server_status=0
wait "$SERVER_PID" || server_status=$?
SERVER_PID=""
if [[ $server_status -ne 0 ]]; then
    log "FAILED: the server exited with status $server_status; its log:"
    tail -n 50 "$DIR/server.log" >&2 || true
fi
if grep -q "panicked" "$DIR/server.log"; then
    log "FAILED: the server panicked:"
    grep -A3 "panicked" "$DIR/server.log" | head -n 40 >&2
    server_status=1
fi

verify_status=0
"$BINARY" verify --database "$DATABASE" || verify_status=$?
log "summary: schemathesis exit $fuzz_status, server exit $server_status, verify exit $verify_status"
if [[ $fuzz_status -ne 0 || $server_status -ne 0 || $verify_status -ne 0 ]]; then
    exit 1
fi
