"""Evaluation throughput through the Ray Data pipeline vs bare `vllm.LLM.generate`, in one run.

Both sides generate for the same problems with the same student prompts and the same
SamplingParams (`eval.n` samples at `eval.temperature` plus one greedy answer per problem)
on the same model. `pipeline_tok_s` is every generated token over the evaluation job's wall
time minus the actor's engine start-up (Ray Data scheduling, batching, verification and the
majority vote all count against it); `bare_tok_s` is the same over one `generate` call with
all prompts and nothing else running (engine start-up excluded on both sides).
`ratio = pipeline_tok_s / bare_tok_s`. The pipeline runs first; its engine is gone (the
actor pool shuts down with the job) before the bare engine starts.

    .venv/bin/python bench/eval_throughput.py [--problems 64] [overrides ...]
"""

from __future__ import annotations

import argparse
import tempfile


def bare_generate(cfg, model_path: str, problems) -> tuple[int, float]:
    import vllm
    from transformers import AutoTokenizer
    from vllm.inputs import TokensPrompt

    from pipelines.engine import build_llm, timed_generate
    from ssb.prompts import Prompts, render_ids, student_messages

    ev = cfg.eval
    llm = build_llm(model_path, cfg.model, cfg.engine, max_logprobs=1)
    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = Prompts.from_config(cfg.prompts)
    sample = vllm.SamplingParams(n=ev.n, temperature=ev.temperature, top_p=ev.top_p, max_tokens=ev.max_tokens)
    greedy = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=ev.max_tokens)
    inputs, params = [], []
    for p in problems:
        ids = TokensPrompt(prompt_token_ids=render_ids(tok, student_messages(p.question, prompts)))
        inputs += [ids, ids]
        params += [sample, greedy]
    tokens, seconds = timed_generate(llm, inputs, params)
    del llm
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from pipelines.evaluate import resolve_benchmark, run_evaluation
    from pipelines.ray_setup import init_ray
    from ssb.config import load_config
    from ssb.data import load_problems
    from ssb.default_model import resolve_model

    run_dir = tempfile.mkdtemp(prefix="bench-eval-")
    cfg = load_config("configs/default.yaml", [f"run_dir={run_dir}", "eval.benchmarks=[synthetic-heldout]",
                                               f"eval.limit={args.problems}", *args.overrides])
    model_path = resolve_model(cfg.model.name)
    init_ray(cfg.ray)  # Ray's own start-up is not the pipeline's throughput
    summary = run_evaluation(cfg, {"base": None}, progress=False)
    steady = summary.wall_seconds - summary.engine_load_seconds
    pipeline_tok_s = summary.tokens / steady if steady > 0 else 0.0
    print(summary.table(), flush=True)

    import ray

    ray.shutdown()  # the actor's engine must be gone before the bare one starts
    problems, _ = load_problems(resolve_benchmark("synthetic-heldout", cfg))
    bare_tokens, bare_seconds = bare_generate(cfg, model_path, problems)
    bare_tok_s = bare_tokens / bare_seconds
    print(f"pipeline: {summary.tokens} tokens in {steady:.1f} s after engine start-up "
          f"({summary.engine_load_seconds:.1f} s); engine busy {summary.generate_seconds:.1f} s")
    print(f"bare:     {bare_tokens} tokens in {bare_seconds:.1f} s")
    print(f"RESULT eval_throughput ratio={pipeline_tok_s / bare_tok_s:.3f} pipeline_tok_s={pipeline_tok_s:.1f} "
          f"bare_tok_s={bare_tok_s:.1f}")


if __name__ == "__main__":
    main()
