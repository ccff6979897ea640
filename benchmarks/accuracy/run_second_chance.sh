#!/usr/bin/env bash
# The second-chance table (issue 19) on one pinned core, resumable: every second-pass loss is
# cached as it is measured, so rerunning this script continues where a stopped run ended.
# Rows run in the order of tables.TABLES["second"] (the rows a failed inversion broke first).
#   nohup benchmarks/accuracy/run_second_chance.sh > benchmarks/accuracy/second-chance.log 2>&1 &
# Score what is measured so far at any time, inverting nothing:
#   python -m benchmarks.accuracy second --partial
set -u
cd "$(dirname "$0")/../.."
CORE="${RONAN_CORE:-1}"
exec taskset -c "$CORE" python -m benchmarks.accuracy second --belonging-first "$@"
