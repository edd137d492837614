"""Evaluation throughput through the Ray Data pipeline vs bare `vllm.LLM.generate`, in one run.

Both sides generate for the same problems (synthetic-heldout, `--problems` of them) with the
same student prompts and the same requests the evaluation worker sends
(pipelines/eval_worker.py): `eval.n` samples at `eval.temperature` when `eval.n` > 0, and one
greedy answer when `eval.greedy` (configs/default.yaml: greedy only, `eval.n: 0`), on the same
model. `pipeline_tok_s` is every generated token over the evaluation job's wall time minus the
actor's engine start-up (Ray Data scheduling, batching, verification and the majority vote all
count against it); `bare_tok_s` is the same over one `generate` call with all prompts and
nothing else running (engine start-up excluded on both sides).

The two sides run `--repeats` times, interleaved (pipeline, bare, pipeline, bare, ...), each
repetition with a fresh engine on both sides: the pipeline's lives in its actor and goes with
the job (and Ray is shut down) before the bare one starts in this process, and the bare one is
shut down before the next pipeline run. `ratio` is the median over repetitions of
pipeline_tok_s / bare_tok_s of the same repetition, `ratio_min`/`ratio_max` their range
(bench/_sides.py); `pipeline_tok_s` and `bare_tok_s` are each side's median; `load` the
1-minute load average at the end (figures count only from a quiet machine, below 2). Ends with:

    RESULT eval_throughput ratio=… ratio_min=… ratio_max=… repeats=… pipeline_tok_s=… bare_tok_s=… problems=… load=…

Full size (configs/default.yaml's evaluation settings, 64 problems, 3 repetitions of each side):

    .venv/bin/python bench/eval_throughput.py [--problems 64] [--repeats 3] [overrides ...]

Smoke (tests/test_bench_smoke.py): `--smoke` is 2 problems, 1 repetition, eval.max_tokens=16,
engine.cpu_kvcache_gb=1 (overrides given on the command line still win).
"""

from __future__ import annotations

import argparse
import gc
import tempfile

from _sides import add_repeats_arg, close_llm, load1, median, ratio_fields, repeats

SMOKE_OVERRIDES = ["eval.max_tokens=16", "engine.cpu_kvcache_gb=1"]


def bare_generate(cfg, model_path: str, problems) -> tuple[int, float]:
    import vllm
    from transformers import AutoTokenizer
    from vllm.inputs import TokensPrompt

    from pipelines.engine import build_llm, timed_generate
    from ssb.prompts import Prompts, render_ids, student_messages

    ev = cfg.eval
    # What the evaluation worker sends per problem (pipelines/eval_worker.py): samples only
    # when eval.n > 0, a greedy answer only with eval.greedy.
    per_problem = []
    if ev.n > 0:
        per_problem.append(vllm.SamplingParams(n=ev.n, temperature=ev.temperature, top_p=ev.top_p,
                                               max_tokens=ev.max_tokens))
    if ev.greedy:
        per_problem.append(vllm.SamplingParams(n=1, temperature=0.0, max_tokens=ev.max_tokens))
    if not per_problem:
        raise SystemExit("eval.n=0 and eval.greedy=false: the evaluation generates nothing to compare")
    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = Prompts.from_config(cfg.prompts)
    inputs, params = [], []
    for p in problems:
        ids = TokensPrompt(prompt_token_ids=render_ids(tok, student_messages(p.question, prompts)))
        inputs += [ids] * len(per_problem)
        params += per_problem
    llm = build_llm(model_path, cfg.model, cfg.engine, max_logprobs=1)
    try:
        tokens, seconds = timed_generate(llm, inputs, params)
    finally:
        close_llm(llm)
        del llm
        gc.collect()
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=None, help="default 64 (2 with --smoke)")
    add_repeats_arg(parser)
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    problems_n = args.problems or (2 if args.smoke else 64)
    reps = repeats(args)

    import ray

    from pipelines.evaluate import resolve_benchmark, run_evaluation
    from pipelines.ray_setup import init_ray
    from ssb.config import load_config
    from ssb.data import load_problems
    from ssb.default_model import resolve_model

    root = tempfile.mkdtemp(prefix="bench-eval-")

    def config(rep: int):
        return load_config("configs/default.yaml", [
            f"run_dir={root}/rep-{rep}", "eval.benchmarks=[synthetic-heldout]", f"eval.limit={problems_n}",
            *(SMOKE_OVERRIDES if args.smoke else []), *args.overrides])

    cfg = config(0)
    model_path = resolve_model(cfg.model.name)
    problems, _ = load_problems(resolve_benchmark("synthetic-heldout", cfg))
    pipeline_rates, bare_rates, ratios = [], [], []
    for rep in range(reps):
        cfg = config(rep)  # a run directory of its own: nothing of an earlier repetition is reused
        init_ray(cfg.ray)  # Ray's own start-up is not the pipeline's throughput
        summary = run_evaluation(cfg, {"base": None}, progress=False)
        ray.shutdown()  # the actor's engine must be gone before the bare one starts
        steady = summary.wall_seconds - summary.engine_load_seconds
        pipeline_tok_s = summary.tokens / steady if steady > 0 else 0.0
        if rep == 0:
            print(summary.table(), flush=True)
        bare_tokens, bare_seconds = bare_generate(cfg, model_path, problems)
        bare_tok_s = bare_tokens / bare_seconds
        pipeline_rates.append(pipeline_tok_s)
        bare_rates.append(bare_tok_s)
        ratios.append(pipeline_tok_s / bare_tok_s)
        print(f"repetition {rep + 1}/{reps}: pipeline {summary.tokens} tokens in {steady:.1f} s after engine "
              f"start-up ({summary.engine_load_seconds:.1f} s; engine busy {summary.generate_seconds:.1f} s) = "
              f"{pipeline_tok_s:.1f} tok/s; bare {bare_tokens} tokens in {bare_seconds:.1f} s = {bare_tok_s:.1f} tok/s; "
              f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"RESULT eval_throughput {ratio_fields(ratios)} pipeline_tok_s={median(pipeline_rates):.1f} "
          f"bare_tok_s={median(bare_rates):.1f} problems={len(problems)} load={load1()}")


if __name__ == "__main__":
    main()
