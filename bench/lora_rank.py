"""LoRA generation on one engine sized for the configured max rank (64) vs sized to the
adapter (`pipelines/engine.py fitting_lora_rank`), side by side in one run.

A random rank-8 adapter on the default model (q/v projections); each engine starts in a fresh
process, the two kinds alternating. `tok_s` is a batch of 16 prompts × 64 tokens (ignore_eos,
greedy) through the adapter, after one warm-up batch; the medians are printed.

    .venv/bin/python bench/lora_rank.py [--repeats 2]
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

def main(rank, adapter):
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
    sp = vllm.SamplingParams(n=1, temperature=0, max_tokens=64, ignore_eos=True)
    lora = LoRARequest("ssb", 1, adapter)

    async def batch(tag):
        outs = await asyncio.gather(*[E.generate_one(llm, f"Problem {i}: what is {i} + 3? Think step by step.",
                                                     sp, f"{tag}{i}", lora_request=lora) for i in range(16)])
        return sum(len(o.outputs[0].token_ids) for o in outs)

    async def run():
        await batch("warm")
        t = time.perf_counter()
        return await batch("timed"), time.perf_counter() - t

    tokens, seconds = asyncio.run(run())
    llm.shutdown()
    print("BENCH " + json.dumps({"tok_s": tokens / seconds}), flush=True)

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
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


def one(rank: str, adapter: str) -> float:
    # OMP_NUM_THREADS as Ray sets it for an engine actor of one CPU, where the engines run.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", CHILD, rank, adapter], capture_output=True, text=True,
                         timeout=900, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"rank {rank} engine failed:\n{out.stderr[-3000:]}")
    return json.loads(line[6:])["tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        adapter = make_adapter(root)
        runs: dict[str, list[float]] = {"64": [], "fit": []}
        for _ in range(args.repeats):
            for rank in runs:
                runs[rank].append(one(rank, adapter))
                print(rank, round(runs[rank][-1], 1), flush=True)
    med = {rank: statistics.median(v) for rank, v in runs.items()}
    print(f"RESULT lora_rank adapter_rank=8 rank64_tok_s={med['64']:.0f} fitted_tok_s={med['fit']:.0f} "
          f"speedup={med['fit'] / med['64']:.2f} repeats={args.repeats}")


if __name__ == "__main__":
    main()
