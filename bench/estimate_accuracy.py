"""How well `ssb estimate` predicts a curation from a pilot of it, on one machine.

A pilot curates the first `--pilot` problems of configs/default.yaml's data (plus overrides)
into a run directory of its own; the full run curates all `--problems` of them into another,
from scratch, on a fresh engine. The estimate (ssb/estimate.py, what `ssb estimate` prints)
is projected from the pilot to the full run's problem count and set against what the full run
measured:

- `engine_seconds_error`: |estimated − measured| / measured engine-busy seconds of the full run;
- `kept_error`: the same for the kept count, and `kept_in_interval` whether the measured count
  lies in the estimate's own 95% interval (`kept_low`..`kept_high`);
- `tokens_error`: the same for rollout + teacher tokens; `load`: the 1-minute load average at
  the end (figures count only from a quiet machine, below 2). Ends with:

    RESULT estimate_accuracy engine_seconds_error=… kept_error=… kept_in_interval=… kept=… kept_low=… kept_high=… tokens_error=… pilot=… problems=… load=…

Full size (the issue's check: a 32-problem pilot of the default data, a 112-problem run):

    .venv/bin/python bench/estimate_accuracy.py [--pilot 32] [--problems 112] [overrides ...]

Smoke (tests/test_bench_smoke.py): `--smoke` is a 2-problem pilot and a 4-problem run, 2
rollouts of at most 16 tokens, one teacher answer of at most 16 tokens.
"""

from __future__ import annotations

import argparse
import tempfile

from _sides import load1

SMOKE_OVERRIDES = ["curate.rollout.n=2", "curate.rollout.max_tokens=16", "curate.teacher.n=1",
                   "curate.teacher.max_tokens=16", "engine.batch_size=2", "engine.cpu_kvcache_gb=1"]


def curate(run_dir: str, limit: int, overrides: list[str]):
    from pipelines.curate import run_curation
    from ssb.config import load_config

    cfg = load_config("configs/default.yaml", [f"run_dir={run_dir}", f"data.limit={limit}", *overrides])
    return run_curation(cfg, progress=False)


def error(estimated: float, measured: float) -> float:
    return abs(estimated - measured) / measured if measured else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot", type=int, default=None, help="pilot problems (default 32; 2 with --smoke)")
    parser.add_argument("--problems", type=int, default=None, help="full run's problems (default 112; 4 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    pilot_n = args.pilot or (2 if args.smoke else 32)
    full_n = args.problems or (4 if args.smoke else 112)
    overrides = [*(SMOKE_OVERRIDES if args.smoke else []), *args.overrides]

    from ssb.estimate import estimate, load_pilot

    with tempfile.TemporaryDirectory(prefix="ssb-estimate-") as root:
        curate(f"{root}/pilot", pilot_n, overrides)
        projected = estimate(load_pilot(f"{root}/pilot"), full_n)
        full = curate(f"{root}/full", full_n, overrides)
    print(f"pilot {pilot_n} problems → projected {full_n}: {projected.engine_seconds:.1f} engine-s, "
          f"{projected.kept:.1f} kept [{projected.kept_low}, {projected.kept_high}], {projected.tokens} tokens; "
          f"measured {full.engine_seconds:.1f} engine-s, {full.kept} kept, {full.generated_tokens} tokens")
    stages = full.cost["stages"]
    print(f"full run's cost: rollouts {stages['rollout']['tokens']} tokens in {stages['rollout']['engine_seconds']:.1f} "
          f"engine-s, teacher {stages['teacher']['tokens']} tokens in {stages['teacher']['engine_seconds']:.1f} "
          f"engine-s, verifier {full.cost['verify_seconds']:.1f} s, start-up {full.cost['startup_seconds']:.1f} s, "
          f"wall {full.cost['wall_seconds']:.1f} s; per kept example {full.cost['per_kept']}")
    print(f"RESULT estimate_accuracy engine_seconds_error={error(projected.engine_seconds, full.engine_seconds):.3f} "
          f"kept_error={error(projected.kept, full.kept):.3f} "
          f"kept_in_interval={str(projected.kept_low <= full.kept <= projected.kept_high).lower()} "
          f"kept={full.kept} kept_low={projected.kept_low} kept_high={projected.kept_high} "
          f"tokens_error={error(projected.tokens, full.generated_tokens):.3f} pilot={pilot_n} problems={full_n} "
          f"load={load1()}")


if __name__ == "__main__":
    main()
