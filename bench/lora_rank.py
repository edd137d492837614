"""LoRA generation on one engine sized for the configured max rank (64) vs sized to the
adapter (`pipelines/engine.py fitting_lora_rank`), side by side in one run.

A random rank-8 adapter on the default model (q/v projections); each engine starts in a fresh
process, the two kinds alternating. `tok_s` is a batch of `--prompts` prompts × `--max-tokens`
tokens (ignore_eos, greedy) through the adapter, after one warm-up batch; the medians over
`--repeats` starts of each kind are printed, and `speedup` = fitted / rank 64 (`na` for a kind
left out with `--ranks`):

    RESULT lora_rank adapter_rank=… rank64_tok_s=… fitted_tok_s=… speedup=… repeats=…

Full size (16 prompts × 64 tokens, 2 starts of each kind):

    .venv/bin/python bench/lora_rank.py [--repeats 2] [--prompts 16] [--max-tokens 64]

Smoke (tests/test_bench_smoke.py): `--smoke` is 1 start of the fitted engine only (`--ranks fit`),
2 prompts × 8 tokens (rank64_tok_s and speedup print as na): the fitted engine is the one that
reads the adapter to size itself (`fitting_lora_rank`); the rank-64 one differs only by being
given no adapter up front, and each engine start costs the suite 15-25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import asyncio, json, sys, time

def main(rank, adapter, prompts=16, max_tokens=64):
    from ssb.config import load_config
    from ssb.default_model import ensure_default_model
    import pipelines.engine as E
    cfg = load_config(None, ["engine.cpu_kvcache_gb=1", "engine.max_lora_rank=64"])
    path = str(ensure_default_model())
    E.configure_engine_env(cfg.engine)
    import vllm
    from vllm.lora.request import LoRARequest
    llm = E.build_async_llm(path, cfg.model, cfg.engine, enable_lora=True,
                            lora_adapters=[adapter] if rank == "fit" else [])
    sp = vllm.SamplingParams(n=1, temperature=0, max_tokens=max_tokens, ignore_eos=True)
    lora = LoRARequest("ssb", 1, adapter)

    async def batch(tag):
        outs = await asyncio.gather(*[E.generate_one(llm, f"Problem {i}: what is {i} + 3? Think step by step.",
                                                     sp, f"{tag}{i}", lora_request=lora) for i in range(prompts)])
        return sum(len(o.outputs[0].token_ids) for o in outs)

    async def run():
        await batch("warm")
        t = time.perf_counter()
        return await batch("timed"), time.perf_counter() - t

    tokens, seconds = asyncio.run(run())
    llm.shutdown()
    del llm  # its __del__ would shut it down again at exit, with the modules half gone
    print("BENCH " + json.dumps({"tok_s": tokens / seconds}), flush=True)

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
"""


def make_adapter(root: str) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ssb.default_model import ensure_default_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(ensure_default_model()), dtype=torch.float32)
    path = os.path.join(root, "r8")
    get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                    init_lora_weights=False)).save_pretrained(path)
    return path


def one(rank: str, adapter: str, prompts: int = 16, max_tokens: int = 64) -> float:
    # OMP_NUM_THREADS as Ray sets it for an engine actor of one CPU, where the engines run.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", CHILD, rank, adapter, str(prompts), str(max_tokens)],
                         capture_output=True, text=True, timeout=900, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"rank {rank} engine failed:\n{out.stderr[-3000:]}")
    return json.loads(line[6:])["tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None, help="starts of each kind (default 2; 1 with --smoke)")
    ap.add_argument("--prompts", type=int, default=None, help="default 16 (2 with --smoke)")
    ap.add_argument("--max-tokens", type=int, default=None, help="default 64 (8 with --smoke)")
    ap.add_argument("--ranks", default=None, help="comma-separated kinds: 64,fit (default both; fit with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    args = ap.parse_args()
    kinds = (args.ranks or ("fit" if args.smoke else "64,fit")).split(",")
    if unknown := set(kinds) - {"64", "fit"}:
        ap.error(f"--ranks: unknown {sorted(unknown)}; choose from 64, fit")
    args.repeats = args.repeats or (1 if args.smoke else 2)
    args.prompts = args.prompts or (2 if args.smoke else 16)
    args.max_tokens = args.max_tokens or (8 if args.smoke else 64)
    with tempfile.TemporaryDirectory() as root:
        adapter = make_adapter(root)
        runs: dict[str, list[float]] = {rank: [] for rank in ("64", "fit") if rank in kinds}
        for _ in range(args.repeats):
            for rank in runs:
                runs[rank].append(one(rank, adapter, args.prompts, args.max_tokens))
                print(rank, round(runs[rank][-1], 1), flush=True)
    med = {rank: statistics.median(v) for rank, v in runs.items()}
    rank64, fitted = (f"{med[k]:.0f}" if k in med else "na" for k in ("64", "fit"))
    speedup = f"{med['fit'] / med['64']:.2f}" if len(med) == 2 else "na"
    print(f"RESULT lora_rank adapter_rank=8 rank64_tok_s={rank64} fitted_tok_s={fitted} speedup={speedup} "
          f"repeats={args.repeats}")


if __name__ == "__main__":
    main()
