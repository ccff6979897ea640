#!/bin/sh
# The paper-default accuracy runs, in priority order (resumable: rerun after any stop).
# Each step first fills the loss cache on WORKERS processes pinned to one core each, then
# scores its tables from the cache (cached steps take seconds). Table 7 measures the ends and
# middle of its range first; Table 2's photo rows run after it (they cost most).
# Output: benchmarks/accuracy/logs/spec-defaults.log; after an early stop,
# `python -m benchmarks.accuracy 2 3 4 5 7 --partial` writes whatever rows are measured.
# Last, Table 5 at other learning rates (diagnosis) and the trimmed-profile rescoring.
set -e
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
W=${WORKERS:-$(nproc)}
run() { $PY -m benchmarks.accuracy "$@" --workers "$W"; }
run core early 6 8
run 3 4
run 2 --rows dcgan-mnist vae-mnist
run 7 --rows "50 %" "70 %" "90 %"
run 7
run 2
run 5
run 5lr
$PY -m benchmarks.accuracy trim
