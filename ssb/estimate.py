"""Project a full curation from a pilot: tokens, engine-hours, wall-hours, kept examples, bytes.

The pilot is any curated store (finished or partial): its traces give every problem's tokens,
engine seconds and outcome, over every run that wrote the store. Each problem of the full set is
taken as one more draw from the pilot's problems, so totals scale with the per-problem means,
and the kept count's 95% interval is the beta-binomial predictive interval (Jeffreys prior on
the pilot's kept rate), which covers both what the pilot does not know of the rate and the luck
of the full run's own draws.

A pilot often runs elsewhere than the target cluster: `engine_tokens_per_second`, measured on the
target, replaces the pilot's own rate for the engine part; verification and start-up are
assumed to scale as on the pilot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PilotProblem:
    tokens: int
    engine_seconds: float
    kept: bool


@dataclass(frozen=True)
class Pilot:
    problems: Sequence[PilotProblem]
    startup_seconds: float = 0.0  # one engine's start-up, paid once per engine
    stored_tokens_per_kept: float = 0.0  # the teacher answer's tokens, as stored
    store_bytes_per_token: float | None = None
    trace_bytes_per_problem: float | None = None
    seconds_per_train_step: float | None = None


@dataclass(frozen=True)
class Estimate:
    problems: int
    engines: int
    tokens: int
    engine_seconds: float
    engine_hours: float
    wall_hours: float
    kept: float
    kept_low: int
    kept_high: int
    kept_rate: float
    store_bytes: int | None
    train_steps: int
    train_seconds: float | None
    cost: float | None
    pilot_problems: int
    pilot_kept: int
    engine_tokens_per_second: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def kept_interval(kept: int, pilot: int, n: int, level: float = 0.95) -> tuple[int, int]:
    """The central `level` interval of how many of n new problems are kept, given kept of pilot."""
    if n <= 0:
        return 0, 0
    a, b = kept + 0.5, pilot - kept + 0.5
    log_pmf = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
               + _log_beta(j + a, n - j + b) - _log_beta(a, b) for j in range(n + 1)]
    pmf = [math.exp(v) for v in log_pmf]
    tail = (1.0 - level) / 2
    low = high = 0
    running = 0.0
    for j, p in enumerate(pmf):
        running += p
        if running <= tail:
            low = j + 1
        if running < 1.0 - tail:
            high = j + 1
    return low, min(high, n)


def examples_per_step(train: Any) -> int:
    """Examples one optimizer step of `train` (ssb.config.TrainConfig) consumes, over all workers."""
    return train.batch_size * train.grad_accum * max(1, train.num_workers)


def estimate(pilot: Pilot, problems: int, *, engines: int = 1, engine_tokens_per_second: float | None = None,
             price_per_engine_hour: float | None = None, epochs: int = 3, examples_per_step: int = 4) -> Estimate:
    """A full run over `problems` problems on `engines` engines, projected from `pilot`."""
    done = list(pilot.problems)
    if not done:
        raise ValueError("the pilot has no curated problem to project from")
    if problems < 1 or engines < 1:
        raise ValueError("problems and engines must be at least 1")
    n = len(done)
    kept = sum(p.kept for p in done)
    tokens_per_problem = sum(p.tokens for p in done) / n
    pilot_seconds = sum(p.engine_seconds for p in done)
    pilot_rate = sum(p.tokens for p in done) / pilot_seconds if pilot_seconds > 0 else 0.0
    rate = engine_tokens_per_second or pilot_rate
    if rate <= 0:
        raise ValueError("the pilot recorded no engine time: give --engine-tokens-per-second")
    tokens = tokens_per_problem * problems
    engine_seconds = tokens / rate
    kept_mean = kept / n * problems
    low, high = kept_interval(kept, n, problems)
    store = None
    if pilot.store_bytes_per_token is not None:
        store = int(kept_mean * pilot.stored_tokens_per_kept * pilot.store_bytes_per_token
                    + problems * (pilot.trace_bytes_per_problem or 0.0))
    steps = math.ceil(kept_mean * epochs / examples_per_step) if kept_mean else 0
    train_seconds = steps * pilot.seconds_per_train_step if pilot.seconds_per_train_step is not None else None
    wall = engine_seconds / engines + pilot.startup_seconds
    engine_hours = (engine_seconds + engines * pilot.startup_seconds) / 3600
    return Estimate(
        problems=problems, engines=engines, tokens=round(tokens), engine_seconds=round(engine_seconds, 1),
        engine_hours=round(engine_hours, 4), wall_hours=round(wall / 3600, 4), kept=round(kept_mean, 1),
        kept_low=low, kept_high=high, kept_rate=round(kept / n, 4), store_bytes=store, train_steps=steps,
        train_seconds=None if train_seconds is None else round(train_seconds, 1),
        cost=None if price_per_engine_hour is None else round(engine_hours * price_per_engine_hour, 2),
        pilot_problems=n, pilot_kept=kept, engine_tokens_per_second=round(rate, 1))


def render(e: Estimate, price_per_engine_hour: float | None = None) -> str:
    """The estimate as a few lines for a terminal or a report."""
    lines = [
        f"projected from a pilot of {e.pilot_problems} problems ({e.pilot_kept} kept) to {e.problems} problems "
        f"on {e.engines} engine(s) at {e.engine_tokens_per_second:.0f} tok/s per engine",
        f"tokens            {e.tokens:,}",
        f"engine time       {e.engine_hours:.2f} engine-hours (start-up included)",
        f"wall time         {e.wall_hours:.2f} h",
        f"kept examples     {e.kept:.0f} (95% interval {e.kept_low}–{e.kept_high}; kept rate {100 * e.kept_rate:.1f}%)",
    ]
    if e.store_bytes is not None:
        lines.append(f"store             {e.store_bytes / 1e6:.1f} MB")
    train = f"{e.train_steps} steps" + (f", about {e.train_seconds / 3600:.2f} h" if e.train_seconds else "")
    lines.append(f"training          {train}")
    if e.cost is not None and price_per_engine_hour is not None:
        lines.append(f"cost              {e.cost:,.2f} at {price_per_engine_hour:g} per engine-hour")
    return "\n".join(lines)


def load_pilot(run_dir: str) -> Pilot:
    """The pilot a run directory holds: its store's traces (every run that wrote it), its
    curation summary's start-up and its training's seconds per step, when there are any."""
    import json
    from pathlib import Path

    from ssb.layout import RunLayout
    from ssb.store import LogitStore
    from ssb.trace import KEPT, spent_per_problem

    layout = RunLayout(run_dir)
    store = LogitStore.open(layout.curated, allow_empty=True)
    spent = spent_per_problem(store)
    if not spent:
        raise ValueError(f"{layout.curated}: no traced problem to project from (a store made before traces, or "
                         "an empty one): curate a pilot first, e.g. ssb curate data.limit=32")
    summary = store.summary()

    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text()) if path.is_file() else {}

    curation, train = read(Path(layout.curation_summary)), read(Path(layout.train_summary))
    steps = train.get("steps") or 0
    return Pilot(
        problems=[PilotProblem(tokens, seconds, outcome == KEPT) for outcome, tokens, seconds in spent],
        startup_seconds=float(curation.get("startup_seconds") or 0.0),
        stored_tokens_per_kept=summary["tokens"] / summary["rows"] if summary["rows"] else 0.0,
        store_bytes_per_token=summary["bytes_per_token"], trace_bytes_per_problem=summary["trace_bytes_per_problem"],
        seconds_per_train_step=train["wall_seconds"] / steps if steps and train.get("wall_seconds") else None)
