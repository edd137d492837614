#!/usr/bin/env bash
# The whole suite, slow tests included (real Ray, real vLLM on CPU, real Redis).
set -uo pipefail
VENV=${VENV:-.venv}
# The slowest tests are listed so a suite creeping toward the CI limit shows where.
"$VENV/bin/pytest" -q --durations=30 "$@"
rc=$?
# pytest's 5 means it collected nothing: that is a failure for CI, not a pass.
[ "$rc" = 5 ] && { echo "no tests ran" >&2; exit 1; }
exit "$rc"
