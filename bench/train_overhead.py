"""Training tokens/s through Ray Train (one worker) vs the same loop in this process.

Both sides run ssb.train's loop on the embedded default model (SmolLM2-135M, fp32 on CPU,
LoRA r=32) over the same store with the same TrainConfig and the same number of torch
threads. Throughput is input tokens (non-padding) per second of step wall time, waiting for
data included: the median over every step but the first (warm-up); Ray's start-up and the
model load are not steps and are reported apart.

The two sides run `--repeats` times, interleaved (plain, Ray, plain, Ray, ...), one after the
other so they never share the cores, each repetition a fresh trainer on both sides (the plain
loop builds its model anew; Ray Train starts a fresh worker in a run directory of its own).
Ray itself is started once, before the first repetition, so its idle daemons are there for
every run of both sides alike. `ratio` is the median over repetitions of ray_tok_s / plain_tok_s
of the same repetition, `ratio_min`/`ratio_max` their range (bench/_sides.py); `ray_tok_s` and
`plain_tok_s` are each side's median; `steps` the fewest timed steps of any run; `load` the
1-minute load average at the end (figures count only from a quiet machine, below 2).

When the store has no rows, a small one is curated first (`ssb curate`); if that holds fewer
than 4 batches (a 135M model fails most of its own problems), a stand-in store is written
from the model's own greedy answers and top-k log-probs: the bench measures throughput, not
what is learnt. Ends with one line:

    RESULT train_overhead ratio=… ratio_min=… ratio_max=… repeats=… ray_tok_s=… plain_tok_s=… steps=… load=…

Full size (12 steps of batch 4 on each side, 3 repetitions of each side):

    .venv/bin/python bench/train_overhead.py                       # store: /tmp/ssb-dev/curated
    .venv/bin/python bench/train_overhead.py --store runs/demo/curated --steps 12 --repeats 3

Smoke (tests/test_bench_smoke.py): `--smoke` is 3 steps of batch 1, 1 repetition, on a
stand-in store of 4 examples of 8 tokens written straight away (no curation; --store is
ignored).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _sides import add_repeats_arg, load1, median, ratio_fields, repeats

from ssb.config import RunConfig, load_config  # noqa: E402
from ssb.layout import RunLayout  # noqa: E402
from ssb.store import LogitStore, StoreError  # noqa: E402


def steady_tok_s(metrics: list[dict]) -> tuple[float, int]:
    """Median of the per-step input tokens/s over every step but the first; and the steps
    measured. The median, not the total: a step slowed by another job on a shared box
    moves it little."""
    steps = {m["step"]: m for m in metrics if "tokens_per_s" in m and "event" not in m}
    timed = [steps[s]["tokens_per_s"] for s in sorted(steps)][1:]
    return statistics.median(timed), len(timed)


def measure_plain(model_path: str, rows: list[dict], cfg: RunConfig, pad_id: int) -> tuple[float, int]:
    from ssb.train import run_local

    metrics: list[dict] = []
    run_local(model_path, rows, cfg.train, pad_id, on_report=lambda m, s, ckpt: metrics.append(dict(m)))
    return steady_tok_s(metrics)


def row_count(store: str) -> int:
    try:
        return LogitStore.open(store).summary()["rows"]
    except StoreError:
        return 0


def curate_small(workdir: Path) -> str:
    from pipelines.curate import run_curation

    cfg = load_config(None, [f"run_dir={workdir / 'curate'}", "data.synthetic.n=48", "curate.rollout.n=4",
                             "curate.rollout.max_tokens=128", "curate.teacher.max_tokens=160",
                             "engine.batch_size=16", "engine.cpu_kvcache_gb=1"])
    summary = run_curation(cfg, progress=False)
    print(f"curated {summary.kept} of {summary.processed} problems into {cfg.store_dir}")
    return cfg.store_dir


def stand_in_store(workdir: Path, n: int = 16, max_new_tokens: int = 80, k: int = 20) -> str:
    """The model's own greedy answers to the student prompt, with its own top-k log-probs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.curate import model_identity
    from ssb.data import load_problems
    from ssb.default_model import resolve_model
    from ssb.prompts import render_ids, student_messages, tokenizer_fingerprint
    from ssb.records import CuratedExample

    cfg = RunConfig()
    cfg.data.synthetic.n = n
    path = resolve_model("default")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    store_dir = RunLayout(workdir / "stand-in").curated
    store = LogitStore.create_or_resume(store_dir, config_hash="stand-in", model=model_identity("default"),
                                        tokenizer=tokenizer_fingerprint(tok), top_k=k)
    problems, _ = load_problems(cfg.data)
    examples = []
    for p in problems:
        prompt = render_ids(tok, student_messages(p.question))
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            response = out[0, len(prompt):].tolist()
            logp = model(out).logits[0, len(prompt) - 1: len(prompt) - 1 + len(response)].log_softmax(-1)
        top = logp.topk(k, -1)
        tail = torch.log1p(-top.values.exp().sum(-1).clamp(max=1 - 1e-6))
        text = tok.decode(response)
        examples.append(CuratedExample(
            problem_id=p.id, question=p.question, answer=p.answer, student_prompt_ids=prompt,
            teacher_prompt_ids=prompt, response_ids=response, response_text=text,
            topk_ids=top.indices.tolist(), topk_logprobs=top.values.tolist(), tail_logprob=tail.tolist(),
            correct_rollout=text, incorrect_rollout="", incorrect_answer=None, model=model_identity("default"),
            tokenizer=tokenizer_fingerprint(tok), config_hash="stand-in", seed=0))
    store.append(examples)
    print(f"wrote a stand-in store of {len(examples)} self-generated examples to {store_dir}")
    return store_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="/tmp/ssb-dev/curated")
    parser.add_argument("--steps", type=int, default=None, help="default 12 (3 with --smoke)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 4 (1 with --smoke)")
    add_repeats_arg(parser)
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    # 1 thread by default: OpenMP threads that share busy cores spin at their barriers and
    # turn any figure into noise (a step took 10-20x longer with 2 threads on a loaded box).
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (= Ray worker CPUs)")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.smoke else 12)
    args.batch_size = args.batch_size or (1 if args.smoke else 4)
    if args.steps < 3:
        parser.error("--steps: at least 3 (the first is not timed; the median needs two more)")
    reps = repeats(args)

    import torch
    from transformers import AutoTokenizer

    from pipelines.distill import read_metrics, run_distillation
    from pipelines.ray_setup import init_ray
    from ssb.batching import TRAIN_COLUMNS
    from ssb.default_model import resolve_model

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ssb-train-overhead-"))
    store = args.store
    # At least 4 batches an epoch: with fewer, every step starts an epoch and the figure
    # says more about a one-row store than about training.
    need = 4 * args.batch_size
    if args.smoke:
        store = stand_in_store(workdir, n=need, max_new_tokens=8)
    if row_count(store) == 0:
        print(f"{store}: no rows; curating a small store")
        store = curate_small(workdir)
    if row_count(store) < need:
        print(f"{store}: {row_count(store)} rows, fewer than {need}")
        store = stand_in_store(workdir, n=need)
    overrides = [f"train.store={store}", f"train.max_steps={args.steps}",
                 f"train.batch_size={args.batch_size}", "train.epochs=100", "train.num_workers=1",
                 f"train.cpus_per_worker={args.threads}", "train.log_every=1",
                 "train.checkpoint_every=1000000"]  # no checkpoint but the final one, as in the plain run
    cfg = load_config(None, overrides)
    model_path = resolve_model(cfg.model.name)
    tok = AutoTokenizer.from_pretrained(model_path)
    rows = LogitStore.open(store).read_table().select(TRAIN_COLUMNS).to_pylist()
    print(f"store {store}: {len(rows)} rows; {args.steps} steps of batch {args.batch_size} on each side, "
          f"{reps} times each")

    # Plain, Ray, plain, Ray, ...: one after the other (never sharing the cores), each Ray
    # figure compared with the plain one just before it, so a machine that gets busier or
    # quieter meanwhile (shared CI boxes) moves both sides of a ratio alike.
    torch.set_num_threads(args.threads)
    init_ray(cfg.ray)  # up for every run of both sides; its start-up is no step
    plain_rates, ray_rates, ratios, measured = [], [], [], []
    for rep in range(reps):
        plain_tok_s, plain_measured = measure_plain(model_path, rows, cfg, tok.pad_token_id)
        run_dir = workdir / f"ray-{rep}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        run_distillation(load_config(None, [f"run_dir={run_dir}", *overrides]))
        ray_wall = time.perf_counter() - t0
        ray_metrics = read_metrics(run_dir)
        ray_tok_s, ray_measured = steady_tok_s(ray_metrics)
        steps_wall = sum(m["input_tokens"] / m["tokens_per_s"] for m in ray_metrics if "tokens_per_s" in m)
        plain_rates.append(plain_tok_s)
        ray_rates.append(ray_tok_s)
        ratios.append(ray_tok_s / plain_tok_s)
        measured += [plain_measured, ray_measured]
        print(f"repetition {rep + 1}/{reps}: plain {plain_tok_s:.1f} tok/s over {plain_measured} steps; "
              f"ray {ray_tok_s:.1f} tok/s over {ray_measured} steps ({ray_wall:.1f} s in all, "
              f"~{ray_wall - steps_wall:.1f} s of it start-up, data set-up and saving); ratio {ratios[-1]:.3f}",
              flush=True)
    print(f"RESULT train_overhead {ratio_fields(ratios)} ray_tok_s={median(ray_rates):.1f} "
          f"plain_tok_s={median(plain_rates):.1f} steps={min(measured)} load={load1()}")


if __name__ == "__main__":
    main()
