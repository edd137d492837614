#!/usr/bin/env bash
# The GPU check: the loss in bf16 and a few LoRA distillation steps on a random small Llama,
# without vLLM, Ray, Redis, a model hub or a network (bench/gpu_check.py says what it runs).
# Ends with `RESULT gpu_check device=... ok=yes|no ...`; exit status 1 when ok=no.
#
#   bash bench/gpu_check.sh                  # a GPU: full sizes, 35 s on one H200 (bench/RESULTS.md)
#   bash bench/gpu_check.sh --device cpu     # CPU, tiny sizes, seconds (tests/test_gpu_check.py)
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --steps 100
#
# Needs python >= 3.10 with torch, transformers, peft, numpy, pyarrow and pyyaml. ssb.train
# also imports pydantic (ssb.config); a machine without it and without a network gets it as
# wheels from .whl/ (or $SSB_WHEELS), fetched beforehand on a machine that has PyPI, for the
# target's Python (here 3.12) and platform; pip resolves pydantic-core's exact pin:
#
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl pydantic pyyaml
#
# They are unpacked (a wheel is a zip; no pip needed) into a temporary directory put first on
# PYTHONPATH, used only when `import pydantic` fails. .whl/ is git-ignored: a tool that copies
# the working tree must be told to carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${SSB_WHEELS:-.whl}

if ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    if ((${#wheels[@]})); then
        target=$(mktemp -d "${TMPDIR:-/tmp}/ssb-gpu-check-site.XXXXXX")
        trap 'rm -rf "$target"' EXIT
        for wheel in "${wheels[@]}"; do
            "$PYTHON" -m zipfile -e "$wheel" "$target"
        done
        export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
        "$PYTHON" -c "import pydantic" || { echo "gpu_check: the wheels in $WHEELS do not give a working pydantic" >&2; exit 2; }
        echo "gpu_check: pydantic from ${#wheels[@]} wheels in $WHEELS"
    else
        echo "gpu_check: no pydantic and no wheels in $WHEELS: the training part will be skipped (see this script's header)" >&2
    fi
fi

# Under the 10 minutes a device run gets, so the RESULT lines come back even when it hangs.
status=0
timeout "${GPU_CHECK_TIMEOUT:-570}" "$PYTHON" bench/gpu_check.py "$@" || status=$?
exit "$status"
