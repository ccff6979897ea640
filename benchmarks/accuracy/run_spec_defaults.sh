#!/bin/sh
# The SPEC-default accuracy runs, in priority order (resumable: rerun after any stop).
# Output: benchmarks/accuracy/logs/spec-defaults.log
set -e
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
for t in core early 6 8 2 4 3 7 5; do
  $PY -m benchmarks.accuracy "$t"
done
