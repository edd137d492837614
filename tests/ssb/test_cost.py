"""Engine time split by stage, budgets, and the cost object (ssb/cost.py)."""

from __future__ import annotations

import time

import pytest

from ssb.cost import Budget, StageClock, cost_object, stop_message


class FakeTime:
    """A clock the test moves by hand: the split must follow the requests in flight exactly."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_overlapping_stages_share_busy_seconds_by_requests_in_flight_and_add_up_to_busy_time() -> None:
    now = FakeTime()
    clock = StageClock(now)
    clock.start("rollout")          # t=0: one rollout
    now.t = 2.0
    clock.start("rollout")          # t=2: two rollouts
    clock.start("teacher")          # and one teacher
    now.t = 5.0                     # 3 s shared 2:1
    clock.stop("rollout")
    clock.stop("rollout")
    now.t = 6.0                     # 1 s teacher alone
    clock.stop("teacher")
    now.t = 9.0                     # idle: counts for nobody
    got = clock.take()
    assert got == pytest.approx({"rollout": 2.0 + 2.0, "teacher": 1.0 + 1.0})
    assert sum(got.values()) == pytest.approx(6.0)  # the engine's busy time
    assert clock.take() == {}


def test_take_hands_out_each_busy_second_once_even_mid_request() -> None:
    now = FakeTime()
    clock = StageClock(now)
    clock.start("teacher")
    now.t = 1.5
    assert clock.take() == pytest.approx({"teacher": 1.5})
    now.t = 4.0
    clock.stop("teacher")
    assert clock.take() == pytest.approx({"teacher": 2.5})


def test_budget_names_the_first_limit_reached_and_a_server_cap_wins_when_lower() -> None:
    budget = Budget(max_tokens=1000, max_kept=4)
    assert budget.reached(tokens=999, engine_seconds=1e9, wall_seconds=1e9, kept=3) is None
    assert budget.reached(tokens=1000, engine_seconds=0, wall_seconds=0, kept=0) == "max_tokens"
    assert budget.reached(tokens=0, engine_seconds=0, wall_seconds=0, kept=4) == "max_kept"
    capped = Budget(max_kept=10).smallest(Budget(max_kept=4, max_wall_seconds=60))
    assert capped == Budget(max_kept=4, max_wall_seconds=60)
    assert Budget().smallest(Budget()) == Budget()


def test_stop_message_is_one_line_naming_the_setting_and_how_to_go_on() -> None:
    line = stop_message("max_kept", 256, "runs/gsm8k")
    assert "\n" not in line and "curate.budget.max_kept=256" in line and "--run-dir runs/gsm8k" in line


def test_cost_object_adds_stages_up_and_divides_by_kept() -> None:
    cost = cost_object({"rollout_engine_seconds": 30.0, "teacher_engine_seconds": 10.0, "rollout_tokens": 3000,
                        "teacher_tokens": 1000, "kept": 4, "processed": 16, "wall_seconds": 80.0,
                        "verify_seconds": 2.5})
    assert cost["engine_seconds"] == 40.0 and cost["tokens"] == 4000
    assert cost["per_kept"] == {"tokens": 1000.0, "engine_seconds": 10.0, "wall_seconds": 20.0}
    assert cost_object({})["per_kept"]["tokens"] is None  # nothing kept: no per-kept figure, not a division by 0


def test_overlapping_requests_of_one_stage_count_each_busy_second_once_on_the_real_clock():
    clock = StageClock()
    start = time.perf_counter()
    clock.start("eval")
    clock.start("eval")  # a second batch joins the first
    time.sleep(0.05)
    clock.stop("eval")
    first = clock.take()["eval"]
    time.sleep(0.05)
    clock.stop("eval")
    idle_from = time.perf_counter()
    time.sleep(0.05)  # nothing in flight: not busy
    second = clock.take()["eval"]
    assert first >= 0.05 and second >= 0.05
    assert first + second <= idle_from - start + 1e-3
    assert clock.take() == {}
