"""Shared by the benchmarks that compare two sides measured in the same run (curation and
evaluation against bare vLLM, Ray Train against the plain loop): each side runs `--repeats`
times, interleaved A B A B ..., never both at once; each repetition's ratio is A over the B
measured right after it, so a machine that gets slower or faster between repetitions moves
both alike; the RESULT line carries the median of those ratios and their range:

    ratio=<median> ratio_min=<min> ratio_max=<max> repeats=<N>

Not a benchmark itself (no RESULT line of its own): tests/test_bench_smoke.py skips `_*.py`.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence


def add_repeats_arg(parser) -> None:
    parser.add_argument("--repeats", type=int, default=None,
                        help="repetitions of each side, interleaved A B A B ... (default 3; 1 with --smoke)")


def repeats(args) -> int:
    n = args.repeats if args.repeats is not None else 1 if getattr(args, "smoke", False) else 3
    if n < 1:
        raise SystemExit("--repeats: at least 1")
    return n


def ratio_fields(ratios: Sequence[float]) -> str:
    """The RESULT line's ratio fields, the same keys in every side-by-side benchmark."""
    if not ratios:
        raise ValueError("no repetitions")
    return (f"ratio={statistics.median(ratios):.3f} ratio_min={min(ratios):.3f} ratio_max={max(ratios):.3f} "
            f"repeats={len(ratios)}")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def close_llm(llm) -> None:
    """Stops a bare `vllm.LLM`'s engine-core process now, not whenever the garbage collector
    gets to it: the next repetition's engine must not share the cores with it."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def load1() -> str:
    """The 1-minute load average when the figures were taken (they count only below 2 on 2 cores)."""
    return f"{os.getloadavg()[0]:.2f}"
