"""Curation rollout throughput inside the Ray Data pipeline vs bare `vllm.LLM.generate`.

Both sides sample the same rollout prompts with the same SamplingParams on the same model.
`ratio` compares rollout tokens per second of engine time: inside the pipeline (batches of
`engine.batch_size` problems, verification and Ray beside the engine on the same cores) and
bare (all prompts in one generate call, nothing else running). `pipeline_tok_s` is every
token the pipeline generated (rollouts and teacher) over its whole wall time, engine start
included, for context.

    .venv/bin/python bench/curation_throughput.py [--problems 64] [overrides ...]
"""

from __future__ import annotations

import argparse
import tempfile


def bare_generate(cfg, model_path: str, problems) -> tuple[int, float]:
    from transformers import AutoTokenizer
    from vllm.inputs import TokensPrompt

    from pipelines.engine import build_llm, timed_generate
    from ssb.prompts import Prompts, render_ids, rollout_messages
    from pipelines.stages import sampling_params
    import vllm

    llm = build_llm(model_path, cfg.model, cfg.engine, max_logprobs=cfg.curate.top_k)
    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = Prompts.from_config(cfg.prompts)
    inputs = [TokensPrompt(prompt_token_ids=render_ids(tok, rollout_messages(p.question, prompts))) for p in problems]
    params = sampling_params(vllm, cfg.curate.rollout)
    tokens, seconds = timed_generate(llm, inputs, params)
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
    summary = run_curation(cfg, progress=False)
    import ray

    ray.shutdown()  # the pipeline's engine actor is gone; the bare engine gets the cores alone
    problems, _ = load_problems(cfg.data)
    bare_tokens, bare_seconds = bare_generate(cfg, model_path, problems)

    pipe_rate = summary.rollout_tokens / summary.rollout_engine_seconds
    bare_rate = bare_tokens / bare_seconds
    pipeline_tok_s = (summary.rollout_tokens + summary.teacher_tokens) / summary.wall_seconds
    print(f"pipeline: {summary.rollout_tokens} rollout tokens in {summary.rollout_engine_seconds:.1f} s of engine time; "
          f"{summary.wall_seconds:.1f} s wall; kept {summary.kept}/{summary.processed}")
    print(f"bare:     {bare_tokens} tokens in {bare_seconds:.1f} s")
    print(f"RESULT curation_throughput ratio={pipe_rate / bare_rate:.3f} pipeline_rollout_tok_s={pipe_rate:.1f} "
          f"bare_tok_s={bare_rate:.1f} pipeline_tok_s={pipeline_tok_s:.1f} problems={args.problems} "
          f"kept_share={summary.kept_share:.3f}")


if __name__ == "__main__":
    main()
