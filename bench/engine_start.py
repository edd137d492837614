"""An AsyncLLM engine's start-up and speed, three ways side by side in one run:
`worker`: vLLM's default on CPU, the model in a worker process of its own beside the engine core;
`spawned`: the model in vLLM's engine-core process ("uni" executor), spawned as vLLM does;
`forked`: the same, the engine core forked from a fork server started before this process
imports vLLM (what the pipelines do with engine.fast_start: pipelines/fast_start.py).

Each start runs in a fresh process (vLLM sets process-wide state), the kinds alternating,
with OMP_NUM_THREADS=1 as Ray gives an engine actor of one CPU.
`start_s` is from before `import vllm` to a ready engine (the import is what the fork server
overlaps); `tok_s` is one batch of `--prompts` prompts × `--max-tokens` tokens (ignore_eos)
over its wall time. The medians over `--repeats` starts of each kind are printed (`na` for a
kind left out with `--modes`):

    RESULT engine_start worker_start_s=… spawned_start_s=… forked_start_s=… forked_saved_s=… worker_tok_s=… spawned_tok_s=… forked_tok_s=… forked_tok_s_ratio=… repeats=…

Full size (32 prompts × 128 tokens, 2 starts of each kind):

    .venv/bin/python bench/engine_start.py [--repeats 2] [--prompts 32] [--max-tokens 128]

Smoke (tests/test_bench_smoke.py): `--smoke` is 1 start of `forked` only, 2 prompts × 8 tokens
(the other kinds' figures and the comparisons print as na): `forked` makes every call the
other two make (they differ only in pipelines/engine.py's executor choice), and each start
costs the suite 15-25 s.
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

def main(mode, prompts=32, max_tokens=128):
    from ssb.config import load_config
    from ssb.default_model import ensure_default_model
    import pipelines.engine as E
    # worker: the libraries' own start-up (engine.fast_start off); the other modes run in-core
    cfg = load_config(None, ["engine.cpu_kvcache_gb=1", "engine.fast_start=" + ("false" if mode == "worker" else "true")])
    path = str(ensure_default_model())
    E.configure_engine_env(cfg.engine)  # read when vLLM is imported
    t0 = time.perf_counter()
    if mode == "forked":
        E.prestart_engine_core(cfg.engine)
    import vllm
    llm = E.build_async_llm(path, cfg.model, cfg.engine)
    start = time.perf_counter() - t0
    sp = vllm.SamplingParams(n=1, temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=1)

    async def run():
        outs = await asyncio.gather(*[E.generate_one(llm, f"Problem {i}: what is {i} + 3? Think step by step.",
                                                     sp, f"r{i}") for i in range(prompts)])
        return sum(len(o.outputs[0].token_ids) for o in outs)

    t1 = time.perf_counter()
    tokens = asyncio.run(run())
    seconds = time.perf_counter() - t1
    llm.shutdown()
    del llm  # its __del__ would shut it down again at exit, with the modules half gone
    print("BENCH " + json.dumps({"start_s": start, "tok_s": tokens / seconds}), flush=True)

if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
"""


MODES = ("worker", "spawned", "forked")


def one(mode: str, prompts: int = 32, max_tokens: int = 128) -> dict[str, float]:
    # OMP_NUM_THREADS as Ray sets it for an engine actor of one CPU, where the engines run.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(prompts), str(max_tokens)], capture_output=True,
                         text=True, timeout=600, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"{mode} engine failed:\n{out.stderr[-3000:]}")
    return json.loads(line[6:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None, help="starts of each kind (default 2; 1 with --smoke)")
    ap.add_argument("--prompts", type=int, default=None, help="default 32 (2 with --smoke)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 128 (8 with --smoke)")
    ap.add_argument("--modes", default=None, help="comma-separated kinds to start (default all three; "
                                                  "forked with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.smoke else 2)
    args.prompts = args.prompts or (2 if args.smoke else 32)
    args.max_tokens = args.max_tokens or (8 if args.smoke else 128)
    args.modes = (args.modes or ("forked" if args.smoke else ",".join(MODES))).split(",")
    if unknown := set(args.modes) - set(MODES):
        ap.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES if mode in args.modes}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(one(mode, args.prompts, args.max_tokens))
            print(mode, runs[mode][-1], flush=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("start_s", "tok_s")} for m, rs in runs.items()}

    def fig(mode: str, key: str, fmt: str) -> str:
        return format(med[mode][key], fmt) if mode in med else "na"

    both = "spawned" in med and "forked" in med
    saved = f"{med['spawned']['start_s'] - med['forked']['start_s']:.1f}" if both else "na"
    ratio = f"{med['forked']['tok_s'] / med['spawned']['tok_s']:.3f}" if both else "na"
    print("RESULT engine_start " + " ".join(f"{m}_start_s={fig(m, 'start_s', '.1f')}" for m in MODES)
          + f" forked_saved_s={saved} "
          + " ".join(f"{m}_tok_s={fig(m, 'tok_s', '.0f')}" for m in MODES)
          + f" forked_tok_s_ratio={ratio} repeats={args.repeats}")


if __name__ == "__main__":
    main()
