#!/usr/bin/env bash
# The Python client's checks (clients/python): installed into the tests' venv, `mypy --strict`
# on its source, its pytest suite against the workspace's `creditgraph` binary on SQLite and on
# the PostgreSQL cluster of CREDITGRAPH_TEST_POSTGRES_URL, and its API reference built from the
# docstrings. scripts/test.sh runs it after the Rust tests; any failure fails it.
#
#   CREDITGRAPH_TEST_PYTHON=<venv python> CREDITGRAPH_TEST_POSTGRES_URL=<admin URL> scripts/python-client.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${CREDITGRAPH_TEST_PYTHON:?the python of the tests venv (scripts/lib/test-venv.sh)}"
: "${CREDITGRAPH_TEST_POSTGRES_URL:?a PostgreSQL admin URL (scripts/test.sh sets it)}"
binary="${CREDITGRAPH_BIN:-$PWD/target/debug/creditgraph}"
[[ -x "$binary" ]] || cargo build -p cli --bin creditgraph
export CREDITGRAPH_BIN="$binary"

log() { echo "python-client.sh: $*" >&2; }

# Its dependencies are pinned in the venv already; only the package itself is installed here.
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e clients/python

status=0
log "mypy --strict"
(cd clients/python && "$python" -m mypy --strict src) || status=$?
log "pytest (the real binary, SQLite and PostgreSQL)"
(cd clients/python && "$python" -m pytest -q -p no:cacheprovider tests) || status=$?
log "the API reference from the docstrings (pdoc)"
docs="$(mktemp -d "${TMPDIR:-/tmp}/creditgraph-pydoc.XXXXXX")"
"$python" -m pdoc --no-search creditgraph creditgraph.errors creditgraph.models creditgraph.langgraph creditgraph.fastapi \
    creditgraph.testing -o "$docs" || status=$?
rm -rf "$docs"
log "exit $status"
exit "$status"
