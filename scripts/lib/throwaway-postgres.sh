# Sourced by scripts/test.sh and scripts/bench.sh: starts a throw-away PostgreSQL cluster
# (initdb + pg_ctl in a temporary folder, on a free loopback port) and removes it when the
# sourcing script exits, whatever happened. Installs PostgreSQL with apt-get when no server
# binaries are found (CI runs as root on a fresh machine); initdb refuses to run as root, so the
# cluster runs as the `postgres` user.
#
# In:  SCRIPT_NAME (for log lines), PG_EXTRA_OPTIONS (server -c options, e.g. fsync=off).
# Out: THROWAWAY_POSTGRES_URL, an admin URL such as postgres://postgres@127.0.0.1:54321/postgres.

log() { printf '%s: %s\n' "${SCRIPT_NAME:-postgres}" "$*" >&2; }

# The highest-versioned directory holding initdb: Debian's /usr/lib/postgresql/*/bin first, then PATH.
find_pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            echo "$dir"
            return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    return 1
}

if ! PG_BIN="$(find_pg_bin)"; then
    log "no PostgreSQL server found; installing it with apt-get"
    if [[ "$(id -u)" -ne 0 ]]; then
        log "installing PostgreSQL needs root (or install the 'postgresql' package yourself)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y postgresql
    PG_BIN="$(find_pg_bin)" || { log "PostgreSQL was installed but initdb is still missing"; exit 1; }
fi
log "using PostgreSQL from $PG_BIN ($("$PG_BIN/initdb" --version))"

# Who runs the cluster: ourselves when not root, else the postgres user (created if missing).
if [[ "$(id -u)" -eq 0 ]]; then
    if ! id -u postgres >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    RUNUSER="$(command -v runuser || echo /usr/sbin/runuser)"
    as_pg() { "$RUNUSER" -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

# Under /tmp (not $TMPDIR, which may be private to root): the postgres user must reach it, and
# the socket path must stay short.
PG_DIR="$(mktemp -d /tmp/creditgraph-pg.XXXXXX)"
chmod 755 "$PG_DIR"
if [[ "$(id -u)" -eq 0 ]]; then
    chown postgres: "$PG_DIR"
fi
PG_DATA="$PG_DIR/data"
PG_SOCKET_DIR="$PG_DIR/socket"
PG_LOG="$PG_DIR/server.log"
as_pg mkdir -p "$PG_SOCKET_DIR"

THROWAWAY_EXTRA_DIRS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -f "$PG_DATA/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_DIR"
    # Folders the sourcing script made for the same lifetime (e.g. test.sh's fuzzer venv).
    for extra in "${THROWAWAY_EXTRA_DIRS[@]}"; do
        rm -rf "$extra"
    done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback port: bound by the kernel, released, then taken by the server.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null

PG_OPTIONS="-c listen_addresses=127.0.0.1 -k $PG_SOCKET_DIR -c max_connections=300 ${PG_EXTRA_OPTIONS:-}"

started=""
for attempt in 1 2 3 4 5; do
    PORT="$(free_port)"
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start -o "$PG_OPTIONS -p $PORT" >/dev/null; then
        started=yes
        break
    fi
    log "server did not start on port $PORT (attempt $attempt); see below"
    tail -n 20 "$PG_LOG" >&2 || true
done
if [[ -z "$started" ]]; then
    log "could not start PostgreSQL"
    exit 1
fi

pg_ready() {
    if [[ -x "$PG_BIN/pg_isready" ]]; then
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres
    else
        psql -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1
    fi
}
ready=""
for _ in $(seq 1 100); do
    if pg_ready; then
        ready=yes
        break
    fi
    sleep 0.1
done
if [[ -z "$ready" ]]; then
    log "PostgreSQL on port $PORT is not ready after 10 s"
    tail -n 50 "$PG_LOG" >&2 || true
    exit 1
fi

THROWAWAY_POSTGRES_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
log "PostgreSQL ready at $THROWAWAY_POSTGRES_URL (data in $PG_DIR, removed on exit)"

