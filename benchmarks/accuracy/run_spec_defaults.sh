#!/bin/sh
# The SPEC-default accuracy runs, in priority order (resumable: rerun after any stop).
# Each step first fills the loss cache on WORKERS processes pinned to one core each, then
# scores its tables from the cache. Table 2's photo rows run after Table 7 (they cost most).
# Output: benchmarks/accuracy/logs/spec-defaults.log; finish with `... all --partial` to
# write whatever is measured when stopped early.
set -e
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
W=${WORKERS:-$(nproc)}
for step in "core early 6 8" "3 4" "2 --rows dcgan-mnist vae-mnist" "7" "2" "5"; do
  # shellcheck disable=SC2086
  $PY -m benchmarks.accuracy $step --workers "$W"
done
