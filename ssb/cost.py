"""What curation costs: engine time split by stage, budgets, and the `cost` object of a summary.

An engine works on rollout and teacher requests of different problems in one running batch, so
"the teacher's engine seconds" is a share, not a stopwatch: `StageClock` splits every moment
the engine is busy over the stages in flight, in proportion to their requests. The stages'
seconds therefore add up to exactly the engine's busy time, which is what a GPU-hour costs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

STAGES = ("rollout", "teacher")


class StageClock:
    """Busy seconds of one engine per stage; used from one event loop (no lock)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self._now = now
        self._inflight: Counter[str] = Counter()
        self._since = 0.0
        self._busy: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()

    def _advance(self) -> None:
        now = self._now()
        total = sum(self._inflight.values())
        if total:
            elapsed = now - self._since
            for stage, n in self._inflight.items():
                self._busy[stage] += elapsed * n / total
        self._since = now

    def start(self, stage: str) -> None:
        self._advance()
        self._inflight[stage] += 1

    def stop(self, stage: str) -> None:
        self._advance()
        self._inflight[stage] -= 1
        if self._inflight[stage] <= 0:
            del self._inflight[stage]

    def take(self) -> dict[str, float]:
        """Busy seconds per stage since the last call (stages with none left out)."""
        self._advance()
        out = {stage: self._busy[stage] - self._reported[stage] for stage in self._busy}
        self._reported = Counter(self._busy)
        return {stage: seconds for stage, seconds in out.items() if seconds > 0}


@dataclass(frozen=True)
class Budget:
    """Limits on one curation; None: no limit. Tokens, engine seconds and kept examples count
    the whole store (a resumed run continues the same budget); wall seconds count this run."""

    max_tokens: int | None = None
    max_engine_seconds: float | None = None
    max_wall_seconds: float | None = None
    max_kept: int | None = None

    def reached(self, *, tokens: int, engine_seconds: float, wall_seconds: float, kept: int) -> str | None:
        """The name of the first budget reached, or None."""
        spent = {"max_tokens": tokens, "max_engine_seconds": engine_seconds, "max_wall_seconds": wall_seconds,
                 "max_kept": kept}
        for name, value in spent.items():
            limit = getattr(self, name)
            if limit is not None and value >= limit:
                return name
        return None

    def smallest(self, other: Budget) -> Budget:
        """Each limit the smaller of the two (a server's cap over a request's budget)."""
        def low(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else min(a, b)
        return Budget(*(low(getattr(self, f), getattr(other, f)) for f in
                        ("max_tokens", "max_engine_seconds", "max_wall_seconds", "max_kept")))


def stop_message(budget: str, limit: float, run_dir: str) -> str:
    """The one line a command prints when a budget stopped it, with how to go on."""
    setting = f"curate.budget.{budget}"
    return (f"stopped by {setting}={limit:g}: every finished problem is committed; rerun the same command "
            f"with a larger {setting} (or {setting}=null) and --run-dir {run_dir} to continue")


def cost_object(totals: Mapping[str, Any]) -> dict[str, Any]:
    """The `cost` object of a curation summary from its counters: per stage, in all, per kept example."""
    kept = int(totals.get("kept", 0))
    stages = {stage: {"engine_seconds": round(float(totals.get(f"{stage}_engine_seconds", 0.0)), 3),
                      "tokens": int(totals.get(f"{stage}_tokens", 0))} for stage in STAGES}
    engine = sum(s["engine_seconds"] for s in stages.values())
    tokens = sum(s["tokens"] for s in stages.values())
    wall = float(totals.get("wall_seconds", 0.0))

    def per_kept(value: float) -> float | None:
        return round(value / kept, 3) if kept else None

    return {
        "stages": stages,
        "engine_seconds": round(engine, 3),
        "tokens": tokens,
        "verify_seconds": round(float(totals.get("verify_seconds", 0.0)), 3),
        "startup_seconds": round(float(totals.get("startup_seconds", 0.0)), 3),
        "engine_load_seconds": round(float(totals.get("engine_load_seconds", 0.0)), 3),
        "wall_seconds": round(wall, 3),
        "processed": int(totals.get("processed", 0)),
        "kept": kept,
        "per_kept": {"tokens": per_kept(tokens), "engine_seconds": per_kept(engine), "wall_seconds": per_kept(wall)},
        "stopped_by": totals.get("stopped_by"),
    }
