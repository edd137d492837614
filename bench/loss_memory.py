"""Peak memory and time of the chunked top-k KL loss vs. the dense (full-logits) loss.

Forward + backward with the LM head frozen (the LoRA case) and hidden requiring grad.
Peak memory is what the loss adds on top of its inputs: on CUDA max_memory_allocated
(reset between variants); on CPU each variant runs in a fresh spawned process and reports
its peak RSS (ru_maxrss) minus the peak after the inputs were made, so the two numbers are
comparable. Time is the median of --repeats full runs after a small warm-up, the two
variants' runs interleaved in one process (fair under load from others on the machine).
Ends with one line:

    RESULT loss_memory memory_ratio=… time_ratio=… chunked_mb=… dense_mb=… chunked_s=… dense_s=… device=… dtype=… tokens=… vocab=…

Full size (a Qwen2.5-sized head: V=151936, H=2048, 4096 tokens, 3 repeats):

    .venv/bin/python bench/loss_memory.py
    .venv/bin/python bench/loss_memory.py --tokens 512    # quick, while developing

Smoke (tests/test_bench_smoke.py): `--smoke` is 256 tokens, V=4096, H=64, chunks of 64,
k=8, 1 repeat (explicit size options still win).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

# Run as a script from the repo root: the root (where `ssb/` lives) is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssb.loss import dense_topk_kl_loss, topk_kl_loss  # noqa: E402

VARIANTS = {"chunked": topk_kl_loss, "dense": dense_topk_kl_loss}


def make_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random inputs, made without transients larger than themselves (the CPU baseline is a
    high-water mark)."""
    torch.manual_seed(0)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    n, k, v = args.tokens, args.k, args.vocab
    weight = torch.randn(v, args.hidden, dtype=dtype, device=device).mul_(0.02)
    hidden = torch.randn(n, args.hidden, dtype=dtype, device=device).requires_grad_()
    # k distinct ids per token: a random start plus k evenly spaced offsets (mod V).
    start = torch.randint(0, v, (n, 1), device=device)
    topk_ids = (start + torch.arange(k, device=device) * (v // k)) % v
    buckets = (torch.randn(n, k + 1, device=device) * 2).log_softmax(-1)
    topk_logprobs = buckets[:, :k].sort(-1, descending=True).values
    return dict(hidden=hidden, weight=weight, topk_ids=topk_ids, topk_logprobs=topk_logprobs,
                tail_logprob=buckets[:, k].contiguous(), target_ids=topk_ids[:, 0].clone(),
                mask=torch.ones(n, dtype=torch.bool, device=device))


def run_once(variant: str, inputs: dict[str, torch.Tensor], args: argparse.Namespace,
             tokens: int | None = None) -> float:
    batch = {name: t[:tokens] if t.dim() and name != "weight" else t for name, t in inputs.items()}
    if tokens is not None:
        batch["hidden"] = batch["hidden"].detach().requires_grad_()
    kw = dict(temperature=args.temperature, ce_weight=args.ce_weight)
    if variant == "chunked":
        kw["chunk_tokens"] = args.chunk_tokens
    inputs["hidden"].grad = None
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    began = time.perf_counter()
    VARIANTS[variant](**batch, **kw).loss.backward()
    sync()
    return time.perf_counter() - began


def peak_mb(variant: str, args: argparse.Namespace) -> float:
    """Extra peak memory (MB) of one forward + backward; on CPU call it in a fresh process."""
    cuda = args.device.startswith("cuda")
    inputs = make_inputs(args)
    run_once(variant, inputs, args, tokens=min(args.tokens, 64))  # warm-up: kernels, allocator
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_once(variant, inputs, args)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    run_once(variant, inputs, args)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**10


def median_seconds(args: argparse.Namespace) -> dict[str, float]:
    """Median time of each variant, their repeats interleaved so that load from other
    processes on a shared machine falls on both alike."""
    inputs = make_inputs(args)
    for variant in VARIANTS:
        run_once(variant, inputs, args, tokens=min(args.tokens, 64))
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for repeat in range(args.repeats):
        for variant in list(VARIANTS)[:: 1 if repeat % 2 == 0 else -1]:  # ABBA order
            times[variant].append(run_once(variant, inputs, args))
    print("times (s): " + "  ".join(f"{v} {[round(x, 3) for x in ts]}" for v, ts in times.items()))
    return {variant: statistics.median(ts) for variant, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--chunk-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--ce-weight", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    args = parser.parse_args()
    if args.smoke:
        tiny = {"tokens": 256, "vocab": 4096, "hidden": 64, "k": 8, "chunk_tokens": 64, "repeats": 1}
        for name, value in tiny.items():  # a size given on the command line wins
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")

    memory = {}
    for variant in VARIANTS:
        if cuda:
            memory[variant] = peak_mb(variant, args)
            torch.cuda.empty_cache()
        else:  # a fresh process each, so one variant's high-water mark cannot hide the other's
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                memory[variant] = pool.submit(peak_mb, variant, args).result()
        print(f"{variant:8s} peak +{memory[variant]:9.1f} MB", flush=True)
    seconds = median_seconds(args)

    chunked_mb, dense_mb = memory["chunked"], memory["dense"]
    chunked_s, dense_s = seconds["chunked"], seconds["dense"]
    device = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    print(f"RESULT loss_memory memory_ratio={chunked_mb / dense_mb:.3f} "
          f"time_ratio={chunked_s / dense_s:.3f} chunked_mb={chunked_mb:.1f} "
          f"dense_mb={dense_mb:.1f} chunked_s={chunked_s:.3f} dense_s={dense_s:.3f} "
          f"device={device.replace(' ', '_')} dtype={args.dtype} tokens={args.tokens} "
          f"vocab={args.vocab}")


if __name__ == "__main__":
    main()
