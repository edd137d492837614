"""An AsyncLLM engine's start-up and speed, three ways side by side in one run:
`worker`: vLLM's default on CPU, the model in a worker process of its own beside the engine core;
`spawned`: the model in vLLM's engine-core process ("uni" executor), spawned as vLLM does;
`forked`: the same, the engine core forked from a fork server started before this process
imports vLLM (what the pipelines do: pipelines/engine.py prestart_engine_core).

Each start runs in a fresh process (vLLM sets process-wide state), the kinds alternating,
with OMP_NUM_THREADS=1 as Ray gives an engine actor of one CPU.
`start_s` is from before `import vllm` to a ready engine (the import is what the fork server
overlaps); `tok_s` is one batch of 32 prompts × 128 tokens (ignore_eos) over its wall time.
The medians are printed.

    .venv/bin/python bench/engine_start.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import asyncio, json, sys, time

def main(mode):
    from ssb.config import load_config
    from ssb.default_model import ensure_default_model
    import pipelines.engine as E
    if mode == "worker":
        E.runs_in_engine_core = lambda engine: False
    cfg = load_config(None, ["engine.cpu_kvcache_gb=1"])
    path = str(ensure_default_model())
    E.configure_engine_env(cfg.engine)  # read when vLLM is imported
    t0 = time.perf_counter()
    if mode == "forked":
        E.prestart_engine_core(cfg.engine)
    import vllm
    llm = E.build_async_llm(path, cfg.model, cfg.engine)
    start = time.perf_counter() - t0
    sp = vllm.SamplingParams(n=1, temperature=0.8, max_tokens=128, ignore_eos=True, seed=1)

    async def run():
        outs = await asyncio.gather(*[E.generate_one(llm, f"Problem {i}: what is {i} + 3? Think step by step.",
                                                     sp, f"r{i}") for i in range(32)])
        return sum(len(o.outputs[0].token_ids) for o in outs)

    t1 = time.perf_counter()
    tokens = asyncio.run(run())
    seconds = time.perf_counter() - t1
    llm.shutdown()
    print("BENCH " + json.dumps({"start_s": start, "tok_s": tokens / seconds}), flush=True)

if __name__ == "__main__":
    main(sys.argv[1])
"""


def one(mode: str) -> dict[str, float]:
    # OMP_NUM_THREADS as Ray sets it for an engine actor of one CPU, where the engines run.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=600, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"{mode} engine failed:\n{out.stderr[-3000:]}")
    return json.loads(line[6:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"worker": [], "spawned": [], "forked": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(one(mode))
            print(mode, runs[mode][-1], flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("start_s", "tok_s")} for m, rs in runs.items()}
    print("RESULT engine_start " + " ".join(f"{m}_start_s={med[m]['start_s']:.1f}" for m in runs)
          + f" forked_saved_s={med['spawned']['start_s'] - med['forked']['start_s']:.1f} "
          + " ".join(f"{m}_tok_s={med[m]['tok_s']:.0f}" for m in runs)
          + f" forked_tok_s_ratio={med['forked']['tok_s'] / med['spawned']['tok_s']:.3f} repeats={args.repeats}")


if __name__ == "__main__":
    main()
