"""`ssb run` end to end once per session: its test checks the run, the inspector's browser
test reads the same run directory (two rounds, a trained student, evaluations)."""

from __future__ import annotations

from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.background import BACKGROUND
from tests.conftest import run_ssb


@BACKGROUND.job("two_round_run")
def _two_round_run() -> tuple[Path, CompletedProcess[str]]:
    """A process of its own (its own Ray, the default model), so it runs beside other tests."""
    from tests.pipelines.test_run import tiny_run_overrides

    run_dir = BACKGROUND.tmp_path("two-rounds") / "run"
    return run_dir, run_ssb("run", "--rounds", "2", *tiny_run_overrides(run_dir), timeout=2400)


@pytest.fixture(scope="session")
def two_round_run() -> tuple[Path, CompletedProcess[str]]:
    """(run directory, the finished `ssb run --rounds 2` process) at toy size, as a user runs it."""
    return BACKGROUND.result("two_round_run")
