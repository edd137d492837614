"""Curation throughput of the Ray Data pipeline vs bare `vllm.LLM.generate` on the same requests.

The pipeline curates `--problems` problems with configs/default.yaml (plus overrides). Then,
with the pipeline's engine gone, a bare engine in this process generates the same requests
in two plain `generate` calls: every problem's rollout prompt with the rollout sampling, and
the teacher prompt of every problem that reached the teacher (kept or not) with the teacher
sampling and its top-k log-probs. Its tokens per second are the baseline.

- `ratio`: every token the pipeline generated (rollouts and teacher) per second its engine
  had a request in flight, over the baseline: how fast the engine generates inside the
  pipeline (Ray, the verifier and the driver beside it on the same cores).
- `wall_ratio`: the same tokens over the pipeline's wall time after its engine was up, over
  the baseline: also counts every moment the engine waited for work.

    .venv/bin/python bench/curation_throughput.py [--problems 64] [overrides ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile


def bare_generate(cfg, model_path: str, problems, teacher_prompts: list[list[int]]) -> tuple[int, float]:
    import vllm
    from transformers import AutoTokenizer
    from vllm.inputs import TokensPrompt

    from pipelines.engine import build_llm, sampling_params, timed_generate
    from ssb.prompts import Prompts, render_ids, rollout_messages

    llm = build_llm(model_path, cfg.model, cfg.engine, max_logprobs=cfg.curate.top_k)
    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = Prompts.from_config(cfg.prompts)
    rollout_inputs = [TokensPrompt(prompt_token_ids=render_ids(tok, rollout_messages(p.question, prompts)))
                      for p in problems]
    tokens, seconds = timed_generate(llm, rollout_inputs, sampling_params(vllm, cfg.curate.rollout))
    if teacher_prompts:
        t_tokens, t_seconds = timed_generate(llm, [TokensPrompt(prompt_token_ids=ids) for ids in teacher_prompts],
                                             sampling_params(vllm, cfg.curate.teacher, logprobs=cfg.curate.top_k))
        tokens, seconds = tokens + t_tokens, seconds + t_seconds
    del llm
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from pipelines.curate import run_curation
    from ssb.config import load_config
    from ssb.data import load_problems
    from ssb.default_model import resolve_model

    run_dir = tempfile.mkdtemp(prefix="bench-curation-")
    cfg = load_config("configs/default.yaml", [f"run_dir={run_dir}", f"data.synthetic.n={args.problems}",
                                               *args.overrides])
    model_path = resolve_model(cfg.model.name)
    teacher_prompts: list[list[int]] = []
    summary = run_curation(cfg, progress=False, on_commit=lambda states: teacher_prompts.extend(
        s.teacher_prompt_ids for s in states if s.teacher_prompt_ids is not None))
    import ray

    ray.shutdown()  # the pipeline's engine actor is gone; the bare engine gets the cores alone
    problems, _ = load_problems(cfg.data)
    bare_tokens, bare_seconds = bare_generate(cfg, model_path, problems, teacher_prompts)

    tokens = summary.generated_tokens
    bare_rate = bare_tokens / bare_seconds
    busy_rate = tokens / summary.engine_seconds
    after_startup = summary.wall_seconds - summary.startup_seconds
    wall_rate = tokens / after_startup
    print(f"pipeline: {summary.rollout_tokens} rollout + {summary.teacher_tokens} teacher tokens; engine busy "
          f"{summary.engine_seconds:.1f} s; wall {summary.wall_seconds:.1f} s of which {summary.startup_seconds:.1f} s "
          f"until the engine was up; kept {summary.kept}/{summary.processed}")
    print(f"bare:     {bare_tokens} tokens in {bare_seconds:.1f} s ({len(problems)} rollout + "
          f"{len(teacher_prompts)} teacher requests)")
    print(f"RESULT curation_throughput ratio={busy_rate / bare_rate:.3f} wall_ratio={wall_rate / bare_rate:.3f} "
          f"pipeline_busy_tok_s={busy_rate:.1f} pipeline_wall_tok_s={wall_rate:.1f} bare_tok_s={bare_rate:.1f} "
          f"problems={args.problems} kept_share={summary.kept_share:.3f} "
          f"seconds_per_kept={after_startup / max(summary.kept, 1):.2f} load={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
