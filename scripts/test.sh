#!/usr/bin/env bash
# The project's test command: starts a throw-away PostgreSQL cluster (initdb + pg_ctl in a
# temporary folder, on a free loopback port), runs every test of the workspace against it, and
# removes the cluster afterwards, whatever happened.
#
#   scripts/test.sh                      # every test
#   scripts/test.sh -p store-postgres    # extra arguments go to cargo nextest (or cargo test)
#
# With the whole workspace in scope, scripts/schemathesis.sh (HTTP fuzzing of the real binary)
# runs afterwards; either failing fails the script.
#
# PostgreSQL tests never skip: they read CREDITGRAPH_TEST_POSTGRES_URL (and the failover test
# CREDITGRAPH_TEST_PG_BIN, PostgreSQL's bin folder), which this script sets.
# When no PostgreSQL server binaries are found, they are installed with apt-get (CI runs as root
# on a fresh machine). initdb refuses to run as root, so the cluster runs as the `postgres` user.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCRIPT_NAME=test.sh
# Durability is not under test here: fsync and friends off make the suite fast.
PG_EXTRA_OPTIONS="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
# shellcheck source=scripts/lib/throwaway-postgres.sh
source scripts/lib/throwaway-postgres.sh
export CREDITGRAPH_TEST_POSTGRES_URL="$THROWAWAY_POSTGRES_URL"
# The failover test (crates/faults/tests/failover.rs) starts its own primary and standby from
# these binaries; it fails without them.
export CREDITGRAPH_TEST_PG_BIN="$PG_BIN"

# The whole workspace, unless the arguments pick packages themselves (cargo lets --workspace win).
scope=(--workspace)
for argument in "$@"; do
    case "$argument" in
        -p | -p* | --package | --package=*) scope=() ;;
    esac
done

# The fuzzer's venv is installed in the background while the Rust tests build and run.
fuzz_install_pid=""
if [[ ${#scope[@]} -gt 0 ]]; then
    FUZZ_DIR="$(mktemp -d "${TMPDIR:-/tmp}/creditgraph-fuzz-venv.XXXXXX")"
    THROWAWAY_EXTRA_DIRS+=("$FUZZ_DIR")
    scripts/lib/schemathesis-venv.sh "$FUZZ_DIR/venv" >"$FUZZ_DIR/install.log" 2>&1 &
    fuzz_install_pid=$!
fi

set +e
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run "${scope[@]}" --no-fail-fast "$@"
else
    log "cargo-nextest not found; using cargo test"
    # `--profile NAME` names a nextest profile (as .ci/run passes); for cargo it would be a build profile.
    cargo_args=()
    skip_next=""
    for argument in "$@"; do
        if [[ -n "$skip_next" ]]; then
            skip_next=""
            continue
        fi
        case "$argument" in
            --profile) skip_next=yes ;;
            --profile=*) ;;
            *) cargo_args+=("$argument") ;;
        esac
    done
    cargo test "${scope[@]}" --no-fail-fast "${cargo_args[@]}"
fi
status=$?
set -e

# The schema-driven HTTP fuzzer (schemathesis) against the real binary, after the Rust tests and
# whatever they answered; it runs when the whole workspace is tested, not for a chosen package.
if [[ ${#scope[@]} -gt 0 ]]; then
    log "running the schema-driven HTTP fuzzer (scripts/schemathesis.sh)"
    fuzz_status=0
    if wait "$fuzz_install_pid"; then
        export CREDITGRAPH_FUZZ_VENV="$FUZZ_DIR/venv"
    else
        # schemathesis.sh tries the install once more itself, and fails loudly if it cannot.
        log "the background install of schemathesis failed; its log:"
        cat "$FUZZ_DIR/install.log" >&2 || true
    fi
    scripts/schemathesis.sh || fuzz_status=$?
    log "summary: Rust tests exit $status, HTTP fuzzer exit $fuzz_status"
    if [[ $status -eq 0 && $fuzz_status -ne 0 ]]; then
        status=$fuzz_status
    fi
fi
exit "$status"
