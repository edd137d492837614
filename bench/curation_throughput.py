"""Curation throughput of the Ray Data pipeline vs bare `vllm.LLM.generate` on the same requests.

The pipeline curates `--problems` problems with configs/default.yaml (plus overrides) into a
store of its own. Then, with the pipeline's engine gone (Ray shut down), a bare engine in this
process generates the same requests in two plain `generate` calls: every problem's rollout
prompt with the rollout sampling, and the teacher prompt of every problem that reached the
teacher in that pipeline run (kept or not) with the teacher sampling and its top-k log-probs.
Its tokens per second are the baseline.

The two sides run `--repeats` times, interleaved (pipeline, bare, pipeline, bare, ...), each
repetition with a fresh engine on both sides and the pipeline in a fresh run directory (a
curation run resumes a store it finds: nothing of an earlier repetition is reused); the bare
engine is shut down before the next pipeline run, so the two never share the cores.

- `ratio`: every token the pipeline generated (rollouts and teacher) per second its engine
  had a request in flight, over the baseline of the same repetition: how fast the engine
  generates inside the pipeline (Ray, the verifier and the driver beside it on the same
  cores); the median over repetitions, `ratio_min`/`ratio_max` their range (bench/_sides.py).
- `wall_ratio`: the same tokens over the pipeline's wall time after its engine was up, over
  the baseline: also counts every moment the engine waited for work (median).
- `pipeline_busy_tok_s`, `pipeline_wall_tok_s`, `bare_tok_s`, `kept_share`, `seconds_per_kept`:
  each the median over repetitions; `load`: the 1-minute load average at the end (figures
  count only from a quiet machine, below 2). Ends with:

    RESULT curation_throughput ratio=… ratio_min=… ratio_max=… repeats=… wall_ratio=… pipeline_busy_tok_s=… pipeline_wall_tok_s=… bare_tok_s=… problems=… kept_share=… seconds_per_kept=… load=…

Full size (configs/default.yaml's curation settings, 64 problems, 3 repetitions of each side):

    .venv/bin/python bench/curation_throughput.py [--problems 64] [--repeats 3] [overrides ...]

Smoke (tests/test_bench_smoke.py): `--smoke` is 2 problems, 1 repetition, 2 rollouts of at
most 16 tokens, one teacher answer of at most 16 tokens, engine.batch_size=2,
engine.cpu_kvcache_gb=1 (overrides given on the command line still win).
"""

from __future__ import annotations

import argparse
import gc
import tempfile

from _sides import add_repeats_arg, close_llm, load1, median, ratio_fields, repeats

SMOKE_OVERRIDES = ["curate.rollout.n=2", "curate.rollout.max_tokens=16", "curate.teacher.n=1",
                   "curate.teacher.max_tokens=16", "engine.batch_size=2", "engine.cpu_kvcache_gb=1"]


def bare_generate(cfg, model_path: str, problems, teacher_prompts: list[list[int]]) -> tuple[int, float]:
    import vllm
    from transformers import AutoTokenizer
    from vllm.inputs import TokensPrompt

    from pipelines.engine import build_llm, sampling_params, timed_generate
    from ssb.prompts import Prompts, render_ids, rollout_messages

    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = Prompts.from_config(cfg.prompts)
    rollout_inputs = [TokensPrompt(prompt_token_ids=render_ids(tok, rollout_messages(p.question, prompts)))
                      for p in problems]
    llm = build_llm(model_path, cfg.model, cfg.engine, max_logprobs=cfg.curate.top_k)
    try:
        tokens, seconds = timed_generate(llm, rollout_inputs, sampling_params(vllm, cfg.curate.rollout))
        if teacher_prompts:
            t_tokens, t_seconds = timed_generate(
                llm, [TokensPrompt(prompt_token_ids=ids) for ids in teacher_prompts],
                sampling_params(vllm, cfg.curate.teacher, logprobs=cfg.curate.top_k))
            tokens, seconds = tokens + t_tokens, seconds + t_seconds
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

    from pipelines.curate import run_curation
    from ssb.config import load_config
    from ssb.data import load_problems
    from ssb.default_model import resolve_model

    root = tempfile.mkdtemp(prefix="bench-curation-")

    def config(rep: int):
        return load_config("configs/default.yaml", [f"run_dir={root}/rep-{rep}", f"data.synthetic.n={problems_n}",
                                                    *(SMOKE_OVERRIDES if args.smoke else []), *args.overrides])

    cfg = config(0)
    model_path = resolve_model(cfg.model.name)
    problems, _ = load_problems(cfg.data)
    busy, wall, bare, kept_share, per_kept, ratios, wall_ratios = [], [], [], [], [], [], []
    for rep in range(reps):
        cfg = config(rep)
        teacher_prompts: list[list[int]] = []
        summary = run_curation(cfg, progress=False, on_commit=lambda states, into=teacher_prompts: into.extend(
            s.teacher_prompt_ids for s in states if s.teacher_prompt_ids is not None))
        ray.shutdown()  # the pipeline's engine actor is gone; the bare engine gets the cores alone
        bare_tokens, bare_seconds = bare_generate(cfg, model_path, problems, teacher_prompts)

        tokens = summary.generated_tokens
        bare_rate = bare_tokens / bare_seconds
        after_startup = summary.wall_seconds - summary.startup_seconds
        busy.append(tokens / summary.engine_seconds)
        wall.append(tokens / after_startup)
        bare.append(bare_rate)
        kept_share.append(summary.kept_share)
        per_kept.append(after_startup / max(summary.kept, 1))
        ratios.append(busy[-1] / bare_rate)
        wall_ratios.append(wall[-1] / bare_rate)
        print(f"repetition {rep + 1}/{reps}: pipeline {summary.rollout_tokens} rollout + {summary.teacher_tokens} "
              f"teacher tokens; engine busy {summary.engine_seconds:.1f} s; wall {summary.wall_seconds:.1f} s of "
              f"which {summary.startup_seconds:.1f} s until the engine was up; kept {summary.kept}/"
              f"{summary.processed}; bare {bare_tokens} tokens in {bare_seconds:.1f} s ({len(problems)} rollout + "
              f"{len(teacher_prompts)} teacher requests); ratio {ratios[-1]:.3f} wall_ratio {wall_ratios[-1]:.3f}",
              flush=True)
    print(f"RESULT curation_throughput {ratio_fields(ratios)} wall_ratio={median(wall_ratios):.3f} "
          f"pipeline_busy_tok_s={median(busy):.1f} pipeline_wall_tok_s={median(wall):.1f} "
          f"bare_tok_s={median(bare):.1f} problems={problems_n} kept_share={median(kept_share):.3f} "
          f"seconds_per_kept={median(per_kept):.2f} load={load1()}")


if __name__ == "__main__":
    main()
