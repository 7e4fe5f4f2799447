#!/usr/bin/env bash
# Creates a Python venv at $1 with schemathesis installed (the versions scripts/schemathesis.sh
# runs). A script of its own so scripts/test.sh can install it in the background while the Rust
# tests build and run (about 40 s of pip saved from the critical path), and schemathesis.sh can
# still install it itself when run alone.
set -euo pipefail

# Python 3.11 wheels exist for this version; pinned so a new release cannot change CI's inputs.
SCHEMATHESIS_VERSION="3.39.16"
# Newer hypothesis releases changed internals this schemathesis uses ("'many' object has no
# attribute 'more'"): pinned to one of its time.
HYPOTHESIS_VERSION="6.123.2"

venv="${1:?usage: schemathesis-venv.sh <venv directory>}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
    "hypothesis==$HYPOTHESIS_VERSION"
test -x "$venv/bin/st"
