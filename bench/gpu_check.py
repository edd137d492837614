"""The GPU-only parts that run without vLLM, Ray or a model hub: the loss in bf16 and LoRA steps.

    bash bench/gpu_check.sh                       # on a GPU: full sizes, well under 10 minutes
    bash bench/gpu_check.sh --device cpu          # the same path on CPU at tiny sizes (seconds)

1. Loss (ssb.loss.topk_kl_loss) on a Qwen2.5-sized LM head (V=151936, H=2048, 4096 tokens):
   bf16 against fp32 on the same inputs (the loss, the hidden-state gradient), chunked
   against dense in bf16, and on CUDA the extra peak memory of each (bench/loss_memory.py's
   measurement, max_memory_allocated).
2. Training: a randomly initialised Llama written to a temporary directory, synthetic curated
   examples (ssb.records.CuratedExample) committed to a LogitStore and read back as training
   reads them, then ssb.train.run_local (peft LoRA, DistillStudent, the chunked loss, AdamW)
   in the device's training dtype (bf16 on CUDA). The teacher puts most mass on the next
   token of a fixed cycle over a small alphabet, so a working loop drives the loss down.

Prints `RESULT gpu_check_loss ...` and `RESULT gpu_check_train ...`, then ends with one
summary line (ok=yes|no; `na` for what the device does not measure); exits 1 when ok=no:

    RESULT gpu_check device=… ok=… loss_bf16_fp32_rel_diff=… grad_bf16_fp32_rel_max_diff=… chunked_mb=… dense_mb=… steps_per_s=… tokens_per_s=… loss_decreasing=… seconds=…

Smoke (tests/test_gpu_check.py through gpu_check.sh, tests/test_bench_smoke.py directly):
`--device cpu`, the tiny sizes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

# Nothing here reads the hub; offline, a stray lookup fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Run as a script: the repo root (ssb/) and bench/ (loss_memory) are not both on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loss_memory  # noqa: E402
from ssb.loss import dense_topk_kl_loss, topk_kl_loss  # noqa: E402

# Limits for ok=yes. bf16 rounds the logits' inputs to 8 bits of mantissa; the loss and the
# logits stay float32 inside topk_kl_loss, so the loss moves well under 1%.
LOSS_REL_TOL = 1e-2
GRAD_REL_TOL = 5e-2

SIZES = {
    # Qwen2.5-3B's LM head for the loss; a ~170M-parameter Llama for training.
    "full": dict(loss_tokens=4096, loss_vocab=151_936, loss_hidden=2048, chunk_tokens=1024, k=20,
                 vocab=32_000, hidden=1024, layers=8, heads=16, prompt=64, response=448, batch=8, examples=64,
                 steps=40, lr=1e-3, rank=16),
    "tiny": dict(loss_tokens=256, loss_vocab=4096, loss_hidden=64, chunk_tokens=64, k=8,
                 vocab=512, hidden=64, layers=2, heads=2, prompt=16, response=24, batch=4, examples=16,
                 steps=12, lr=3e-3, rank=8),
}


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.4f}"


# ------------------------------------------------------------------------------ loss

def loss_check(args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    ns = argparse.Namespace(tokens=args.loss_tokens, vocab=args.loss_vocab, hidden=args.loss_hidden, k=args.k,
                            chunk_tokens=args.chunk_tokens, temperature=2.0, ce_weight=0.0,
                            device=str(device), dtype="float32")
    inputs = loss_memory.make_inputs(ns)
    rest = {name: inputs[name] for name in ("topk_ids", "topk_logprobs", "tail_logprob", "target_ids", "mask")}

    def run(fn, dtype: torch.dtype, **kw) -> tuple[float, torch.Tensor]:
        hidden = inputs["hidden"].detach().to(dtype).requires_grad_()
        out = fn(hidden, inputs["weight"].to(dtype), **rest, temperature=2.0, **kw)
        out.loss.backward()
        return out.loss.item(), hidden.grad.float()

    loss32, grad32 = run(topk_kl_loss, torch.float32, chunk_tokens=args.chunk_tokens)
    loss16, grad16 = run(topk_kl_loss, torch.bfloat16, chunk_tokens=args.chunk_tokens)
    dense16, _ = run(dense_topk_kl_loss, torch.bfloat16)
    scale = grad32.abs().max().item()
    out = {"loss_fp32": loss32, "loss_bf16": loss16,
           "loss_rel_diff": abs(loss16 - loss32) / abs(loss32),
           "grad_rel_max_diff": (grad16 - grad32).abs().max().item() / scale,
           "chunked_dense_rel_diff": abs(loss16 - dense16) / abs(loss16)}
    del inputs, rest, grad32, grad16

    ok = (out["loss_rel_diff"] < LOSS_REL_TOL and out["grad_rel_max_diff"] < GRAD_REL_TOL
          and out["chunked_dense_rel_diff"] < LOSS_REL_TOL)
    # Peak memory on CUDA only: a CPU process's peak RSS cannot rank the two at tiny sizes
    # (bench/loss_memory.py measures the CPU case at full size, a fresh process per variant).
    if device.type == "cuda":
        ns.dtype = "bfloat16"
        for variant in ("chunked", "dense"):
            torch.cuda.empty_cache()
            out[f"{variant}_mb"] = loss_memory.peak_mb(variant, ns)
        out["memory_ratio"] = out["chunked_mb"] / out["dense_mb"]
        ok = ok and out["memory_ratio"] < 1
    result = {name: _fmt(value) for name, value in out.items()}
    result.update(tokens=str(args.loss_tokens), vocab=str(args.loss_vocab), hidden=str(args.loss_hidden),
                  ok="yes" if ok else "no")
    return result


# ------------------------------------------------------------------------------ training

def synthetic_examples(args: argparse.Namespace, seed: int = 0) -> list:
    """Curated examples whose teacher is learnable: response token t+1 follows token t in a
    fixed cycle over a small alphabet, and the teacher's top-k are the next k cycle members."""
    from ssb.records import CuratedExample

    gen = torch.Generator().manual_seed(seed)
    alphabet = list(range(3, 3 + max(args.k, min(64, args.vocab - 3))))
    tail = math.log(0.05)
    weights = torch.tensor([-1.0 * j for j in range(args.k)]).softmax(0) * 0.95
    logprobs = weights.log().tolist()
    examples = []
    for i in range(args.examples):
        prompt = torch.randint(3, args.vocab, (args.prompt,), generator=gen).tolist()
        first = int(torch.randint(0, len(alphabet), (1,), generator=gen))
        positions = [(first + t) % len(alphabet) for t in range(args.response)]
        response = [alphabet[p] for p in positions]
        topk = [[alphabet[(p + j) % len(alphabet)] for j in range(args.k)] for p in positions]
        examples.append(CuratedExample(
            problem_id=f"p{i:04d}", question="", answer="", student_prompt_ids=prompt, teacher_prompt_ids=prompt,
            response_ids=response, response_text="", topk_ids=topk, topk_logprobs=[logprobs] * args.response,
            tail_logprob=[tail] * args.response, correct_rollout="", incorrect_rollout="", incorrect_answer=None,
            model="random-llama", tokenizer="none", config_hash="gpu-check", seed=seed))
    return examples


def train_check(args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, str]:
    try:
        from ssb.config import LoraConfig, TrainConfig  # pydantic: bench/gpu_check.sh brings it as wheels
    except ImportError as exc:
        return {"ok": "no", "skipped": f"{exc.name}_missing"}
    from transformers import LlamaConfig, LlamaForCausalLM

    from ssb.batching import TRAIN_COLUMNS
    from ssb.store import LogitStore
    from ssb.train import model_dtype, run_local

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=2 * (args.prompt + args.response),
                         tie_word_embeddings=False)
    model_dir = workdir / "model"
    base = LlamaForCausalLM(config)
    params = sum(p.numel() for p in base.parameters())
    base.save_pretrained(model_dir)
    del base

    store_dir = str(workdir / "store")
    store = LogitStore.create_or_resume(store_dir, config_hash="gpu-check", model="random-llama", tokenizer="none",
                                        top_k=args.k)
    store.append(synthetic_examples(args))
    rows = LogitStore.open(store_dir).read_table().select(TRAIN_COLUMNS).to_pylist()

    cfg = TrainConfig(lr=args.lr, batch_size=args.batch, epochs=1_000_000, max_steps=args.steps, log_every=1,
                      lora=LoraConfig(r=args.rank, alpha=2 * args.rank), use_gpu=device.type == "cuda",
                      chunk_tokens=args.chunk_tokens, seed=0)
    steps: dict[int, tuple[float, dict]] = {}  # an epoch end reports its last step again

    def on_report(metrics: dict, state, checkpoint: bool) -> None:
        steps.setdefault(int(metrics["step"]), (time.perf_counter(), dict(metrics)))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    student, _ = run_local(str(model_dir), rows, cfg, pad_id=0, device=device, on_report=on_report)
    # What the frozen base really holds: an older transformers ignores from_pretrained(dtype=).
    dtype = str(student.get_base_model().get_output_embeddings().weight.dtype).removeprefix("torch.")
    ordered = [steps[s] for s in sorted(steps)]
    losses = [m["loss"] for _, m in ordered]
    # From the end of step 1 on: the first step pays for kernel selection and allocator growth.
    span = ordered[-1][0] - ordered[0][0]
    timed = ordered[1:]
    window = max(1, len(losses) // 4)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    result = {"steps": str(len(ordered)), "steps_per_s": _fmt(len(timed) / span),
              "tokens_per_s": f"{sum(m['input_tokens'] for _, m in timed) / span:.0f}",
              "loss_first": _fmt(first), "loss_last": _fmt(last), "loss_decreasing": "yes" if last < first else "no",
              "dtype": dtype, "params_m": f"{params / 1e6:.1f}",
              "seq": str(args.prompt + args.response), "batch": str(args.batch)}
    if device.type == "cuda":
        result["peak_mb"] = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}"
    result["ok"] = "yes" if last < first and dtype == str(model_dtype(device)).removeprefix("torch.") else "no"
    return result


# ------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    parser.add_argument("--size", choices=["auto", *SIZES], default="auto", help="auto: full on CUDA, tiny on CPU")
    for name, value in SIZES["full"].items():  # any one size can be set on its own
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 3:
        parser.error("--steps: at least 3 (the first is not timed; two more give a rate)")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    size = SIZES[args.size if args.size != "auto" else "full" if device.type == "cuda" else "tiny"]
    for name, value in size.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    name = name.replace(" ", "_")
    import peft
    import transformers

    print(f"gpu_check on {name}: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}", flush=True)

    began = time.perf_counter()
    loss = loss_check(args, device)
    print("RESULT gpu_check_loss " + " ".join(f"{k}={v}" for k, v in loss.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="ssb-gpu-check-") as tmp:
        train = train_check(args, device, Path(tmp))
    print("RESULT gpu_check_train " + " ".join(f"{k}={v}" for k, v in train.items()), flush=True)

    ok = loss["ok"] == "yes" and train["ok"] == "yes"
    summary = {"device": name, "ok": "yes" if ok else "no",
               "loss_bf16_fp32_rel_diff": loss["loss_rel_diff"], "grad_bf16_fp32_rel_max_diff": loss["grad_rel_max_diff"],
               "chunked_mb": loss.get("chunked_mb", "na"), "dense_mb": loss.get("dense_mb", "na"),
               "steps_per_s": train.get("steps_per_s", "na"), "tokens_per_s": train.get("tokens_per_s", "na"),
               "loss_decreasing": train.get("loss_decreasing", train.get("skipped", "na")),
               "seconds": f"{time.perf_counter() - began:.0f}"}
    print("RESULT gpu_check " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
