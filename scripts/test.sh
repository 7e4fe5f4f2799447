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
#
# The code_execute sandbox's tests run the real sandbox: bubblewrap (`bwrap`; CI machines lack
# it) and Debian's /usr/bin/python3 are installed with apt-get when missing, in the background
# while the Rust tests build, and waited for before they run. (prlimit and setpriv come from
# util-linux, on every Debian machine.)
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

# The sandbox's packages, and Debian's Chromium for the console's browser test (driven by
# Playwright from the test venv, which never downloads a browser of its own); started after
# PostgreSQL's install (one apt-get at a time: dpkg's lock).
sandbox_packages=()
command -v bwrap >/dev/null 2>&1 || sandbox_packages+=(bubblewrap)
[[ -x /usr/bin/python3 ]] || sandbox_packages+=(python3)
[[ -x /usr/bin/chromium ]] || sandbox_packages+=(chromium)
sandbox_install_pid=""
if [[ ${#sandbox_packages[@]} -gt 0 ]]; then
    if [[ "$(id -u)" -ne 0 ]]; then
        log "the code_execute sandbox tests need ${sandbox_packages[*]} (apt-get install ${sandbox_packages[*]} as root); they will fail without"
    else
        log "installing ${sandbox_packages[*]} with apt-get in the background"
        SANDBOX_INSTALL_DIR="$(mktemp -d "${TMPDIR:-/tmp}/creditgraph-sandbox-install.XXXXXX")"
        THROWAWAY_EXTRA_DIRS+=("$SANDBOX_INSTALL_DIR")
        (
            export DEBIAN_FRONTEND=noninteractive
            # Package lists are needed first; stale ones (a 404 on install) are refreshed once.
            if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
                apt-get update
            fi
            apt-get install -y "${sandbox_packages[@]}" || { apt-get update && apt-get install -y "${sandbox_packages[@]}"; }
        ) >"$SANDBOX_INSTALL_DIR/install.log" 2>&1 &
        sandbox_install_pid=$!
    fi
fi

# Waits for the background install (if any); stops the script when it failed.
wait_for_sandbox_install() {
    [[ -n "$sandbox_install_pid" ]] || return 0
    if ! wait "$sandbox_install_pid"; then
        log "installing ${sandbox_packages[*]} failed; its log:"
        cat "$SANDBOX_INSTALL_DIR/install.log" >&2 || true
        exit 1
    fi
    sandbox_install_pid=""
    if ! command -v bwrap >/dev/null 2>&1 || [[ ! -x /usr/bin/python3 ]] || [[ ! -x /usr/bin/chromium ]]; then
        log "${sandbox_packages[*]} installed, but bwrap, /usr/bin/python3 or /usr/bin/chromium is still missing"
        exit 1
    fi
    log "installed ${sandbox_packages[*]}"
}

# The whole workspace, unless the arguments pick packages themselves (cargo lets --workspace win).
scope=(--workspace)
for argument in "$@"; do
    case "$argument" in
        -p | -p* | --package | --package=*) scope=() ;;
    esac
done

# The Python packages the Rust tests drive (scripts/lib/test-venv.sh), installed in the
# background while the tests build and waited for before they run.
TEST_VENV_DIR="$(mktemp -d "${TMPDIR:-/tmp}/creditgraph-test-venv.XXXXXX")"
THROWAWAY_EXTRA_DIRS+=("$TEST_VENV_DIR")
scripts/lib/test-venv.sh "$TEST_VENV_DIR/venv" >"$TEST_VENV_DIR/install.log" 2>&1 &
test_venv_pid=$!

# Waits for the test venv; stops the script when it failed.
wait_for_test_venv() {
    [[ -n "$test_venv_pid" ]] || return 0
    if ! wait "$test_venv_pid"; then
        log "installing the tests' Python packages failed (is PyPI reachable?); its log:"
        cat "$TEST_VENV_DIR/install.log" >&2 || true
        exit 1
    fi
    test_venv_pid=""
    export CREDITGRAPH_TEST_PYTHON="$TEST_VENV_DIR/venv/bin/python"
    log "the tests' Python packages are installed"
}

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
    if [[ -n "$sandbox_install_pid" ]]; then
        # Build while apt-get works; a build error shows again in the run below.
        cargo nextest run "${scope[@]}" --no-run "$@"
    fi
    wait_for_sandbox_install
    wait_for_test_venv
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
    if [[ -n "$sandbox_install_pid" ]]; then
        # Build while apt-get works; a build error shows again in the run below.
        cargo test "${scope[@]}" --no-run "${cargo_args[@]}"
    fi
    wait_for_sandbox_install
    wait_for_test_venv
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
    # The Python client against the same binary (clients/python): mypy, pytest on both stores,
    # its docs build.
    log "running the Python client's checks (scripts/python-client.sh)"
    python_status=0
    scripts/python-client.sh || python_status=$?
    log "summary: Rust tests exit $status, HTTP fuzzer exit $fuzz_status, Python client exit $python_status"
    for other in "$fuzz_status" "$python_status"; do
        if [[ $status -eq 0 && $other -ne 0 ]]; then
            status=$other
        fi
    done
fi
exit "$status"
