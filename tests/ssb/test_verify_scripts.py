"""`ssb.verify` from the places a library gets called: a script without a main guard, standard
input, a thread. Each runs in a real interpreter of its own, since how that interpreter was
started (its __main__) is exactly what is under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 1.0
SLACK_S = 3.0

# No `if __name__ == "__main__":` on purpose. The top-level side effect shows whether a child
# process re-ran the script.
SCRIPT = f"""
import json, threading, time
from ssb.verify import is_equivalent

with open("ran.txt", "a") as f:
    f.write("ran\\n")
out = {{"main": is_equivalent("\\\\frac{{2}}{{4}}", "0.5")}}

def in_thread():
    start = time.perf_counter()
    out["hang"] = is_equivalent("9^{{9^{{9^{{9}}}}}}", "3", timeout_s={DEADLINE_S})
    out["hang_s"] = time.perf_counter() - start
    out["after"] = is_equivalent("3", "3")

worker = threading.Thread(target=in_thread)
worker.start()
worker.join(timeout=60)
print(json.dumps(out))
"""


def _run(how: str, tmp_path: Path) -> dict:
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if how == "file":
        cmd, stdin = [sys.executable, str(script)], None
    else:
        cmd, stdin = [sys.executable, "-"], SCRIPT
    proc = subprocess.run(cmd, input=stdin, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_works_from_a_script_without_a_main_guard(how, tmp_path):
    out = _run(how, tmp_path)
    assert (out["main"], out["hang"], out["after"]) == (True, False, True)
    assert out["hang_s"] < DEADLINE_S + SLACK_S  # the hard time-out holds off the main thread too
    assert (tmp_path / "ran.txt").read_text() == "ran\n"  # the verifier never re-ran the script
