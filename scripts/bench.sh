#!/usr/bin/env bash
# The benchmark command (issue 6): builds the harness in release mode, starts a throw-away
# PostgreSQL cluster with durable settings (fsync on), runs every workload against creditgraph's
# stores and the baselines, and rewrites BENCHMARKS.md, docs/benchmarks/chart.svg and
# docs/benchmarks/results.json. Takes about 20 minutes on a 2-core machine.
#
#   scripts/bench.sh                       # the full run
#   scripts/bench.sh --smoke               # every path for a few hundred ms (what CI runs)
#   scripts/bench.sh --only in-process --stores sqlite,baseline-pg-for-update
#
# Extra arguments go to `creditgraph-bench run` (see `--help`). Fails when any run breaks a
# ledger invariant; a missed performance target is reported in BENCHMARKS.md, not failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCRIPT_NAME=bench.sh
# Durable, as in production: PostgreSQL's defaults (fsync, synchronous_commit, full_page_writes on).
PG_EXTRA_OPTIONS=""
# shellcheck source=scripts/lib/throwaway-postgres.sh
source scripts/lib/throwaway-postgres.sh

# The harness and the real server (the SSE stream measurement starts `creditgraph serve`).
cargo build --release --locked -p bench -p cli
# Each open-loop arrival and each server connection is a file descriptor.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
target/release/creditgraph-bench run --postgres-url "$THROWAWAY_POSTGRES_URL" --command-line "scripts/bench.sh${*:+ $*}" "$@"
