#!/usr/bin/env bash
# The whole suite, slow tests included (real Ray, real vLLM on CPU, real Redis).
set -uo pipefail
VENV=${VENV:-.venv}
"$VENV/bin/pytest" -q "$@"
rc=$?
# pytest's 5 means it collected nothing: that is a failure for CI, not a pass.
[ "$rc" = 5 ] && { echo "no tests ran" >&2; exit 1; }
exit "$rc"
