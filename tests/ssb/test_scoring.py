"""Scoring on known answers: pass@1 / maj@k / greedy arithmetic and the 95% intervals."""

from __future__ import annotations

import math

import pytest

from ssb.scoring import BenchmarkResult, ProblemOutcome, majority_vote, mean_ci, score, wilson


def test_wilson_matches_the_textbook_value():
    lo, hi = wilson(8, 10)  # 0.8 with n=10: Wilson (0.4902, 0.9433)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)


def test_wilson_stays_inside_0_1_and_is_never_a_point_at_the_edges():
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2
    lo, hi = wilson(20, 20)
    assert 0.8 < lo < 0.9 and hi == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_holds_the_proportion_for_every_count():
    """At 0% the bound once came out as 5.6e-17 for n=6, and the report's plot refused it."""
    for n in range(1, 65):
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
        assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0


def test_mean_ci_is_the_normal_interval_over_problem_means():
    values = [0.0, 0.5, 1.0, 0.5]
    mean = 0.5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    lo, hi = mean_ci(values)
    assert lo == pytest.approx(mean - 1.959964 * sd / 2, abs=1e-5)
    assert hi == pytest.approx(mean + 1.959964 * sd / 2, abs=1e-5)


def test_mean_ci_falls_back_to_wilson_when_every_problem_scores_the_same():
    assert mean_ci([0.0] * 10) == wilson(0, 10)
    assert mean_ci([1.0] * 10) == wilson(10, 10)


def test_majority_vote_groups_equivalent_answers_and_breaks_ties_by_first_seen():
    assert majority_vote(["3", "4", "4", "3"]) == 0  # 2-2 tie: "3" came first
    assert majority_vote(["3", "4", "4"]) == 1
    assert majority_vote([None, "  7 ", "7", "5"]) == 1  # None does not vote; whitespace ignored
    assert majority_vote([None, None]) is None
    halves = {("0.5", "1/2"), ("1/2", "0.5")}
    assert majority_vote(["2", "0.5", "1/2"], same=lambda a, b: (a, b) in halves) == 1


def test_score_arithmetic_on_known_outcomes():
    outcomes = [
        ProblemOutcome(samples=[True, True, False, False], greedy=True, majority=True, answered=5),
        ProblemOutcome(samples=[False, False, False, False], greedy=False, majority=False, answered=3),
        ProblemOutcome(samples=[True, True, True, True], greedy=True, majority=True, answered=5),
        ProblemOutcome(samples=[True, False, False, False], greedy=False, majority=False, answered=5),
    ]
    r = score("toy", "base", outcomes, tokens=100, seconds=2.0)
    assert r.n == 4 and r.samples_per_problem == 4
    assert r.pass1 == pytest.approx((0.5 + 0 + 1 + 0.25) / 4)
    assert r.greedy == pytest.approx(0.5)
    assert r.maj == pytest.approx(0.5)
    assert r.metric == "greedy" and r.accuracy == r.greedy and r.ci95 == wilson(2, 4)
    assert r.pass1_ci95 == mean_ci([0.5, 0.0, 1.0, 0.25])
    assert r.answered_share == pytest.approx(18 / 20)


def test_accuracy_is_pass1_without_greedy_samples():
    r = score("toy", "ssb", [ProblemOutcome(samples=[True, False]), ProblemOutcome(samples=[False, False])])
    assert r.metric == "pass@1" and r.accuracy == pytest.approx(0.25) and r.greedy is None and r.maj is None


def test_result_round_trips_through_a_dict():
    r = score("toy", "ssb", [ProblemOutcome(samples=[True], greedy=True, majority=True, answered=2)])
    d = r.to_dict()
    assert isinstance(d["ci95"], list) and d["accuracy"] == 1.0
    assert BenchmarkResult.from_dict(d) == r
    assert "greedy" in r.line()
