"""Projections of a full curation from a pilot (ssb/estimate.py)."""

from __future__ import annotations

import math
import random

import pytest

from ssb.estimate import Pilot, PilotProblem, estimate, kept_interval, render


def _pilot(n: int = 32, kept_every: int = 4) -> Pilot:
    return Pilot([PilotProblem(tokens=200, engine_seconds=0.5, kept=i % kept_every == 0) for i in range(n)],
                 startup_seconds=30.0, stored_tokens_per_kept=120.0, store_bytes_per_token=40.0,
                 trace_bytes_per_problem=400.0, seconds_per_train_step=2.0)


def test_totals_scale_with_the_pilots_per_problem_means() -> None:
    e = estimate(_pilot(), 7473, engines=4, epochs=3, examples_per_step=4)
    assert e.tokens == 200 * 7473
    assert e.engine_seconds == pytest.approx(0.5 * 7473, rel=1e-6)
    assert e.wall_hours == pytest.approx((0.5 * 7473 / 4 + 30) / 3600, abs=1e-4)
    assert e.kept == pytest.approx(7473 / 4, abs=0.1)
    assert e.kept_low < e.kept < e.kept_high
    assert e.train_steps == math.ceil(7473 / 4 * 3 / 4)
    assert e.store_bytes == int(7473 / 4 * 120 * 40 + 7473 * 400)


def test_a_target_engine_rate_replaces_the_pilots_and_prices_the_hours() -> None:
    e = estimate(_pilot(), 1000, engine_tokens_per_second=4000, price_per_engine_hour=2.5)
    assert e.engine_seconds == pytest.approx(200 * 1000 / 4000)
    assert e.cost == pytest.approx(e.engine_hours * 2.5, abs=0.01)
    assert "cost" in render(e, 2.5)


def test_the_kept_interval_covers_about_95_percent_of_simulated_full_runs() -> None:
    rng = random.Random(0)
    rate, pilot_n, full_n, covered, trials = 0.25, 32, 112, 0, 400
    for _ in range(trials):
        pilot_kept = sum(rng.random() < rate for _ in range(pilot_n))
        low, high = kept_interval(pilot_kept, pilot_n, full_n)
        full_kept = sum(rng.random() < rate for _ in range(full_n))
        covered += low <= full_kept <= high
    assert 0.90 <= covered / trials <= 0.995


def test_an_empty_pilot_or_no_engine_time_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no curated problem"):
        estimate(Pilot([]), 10)
    with pytest.raises(ValueError, match="engine-tokens-per-second"):
        estimate(Pilot([PilotProblem(10, 0.0, True)]), 10)
