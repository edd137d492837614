"""`ssb run` end to end once per session: its test checks the run, the inspector's browser
test reads the same run directory (two rounds, a trained student, evaluations)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def two_round_run(tmp_path_factory, model_path):
    """(run directory, the finished `ssb run --rounds 2` process) at toy size, as a user runs it."""
    from tests.pipelines.test_run import tiny_run_overrides

    run_dir = tmp_path_factory.mktemp("two-rounds") / "run"
    cmd = [sys.executable, "-m", "cluster.cli", "run", "--rounds", "2", *tiny_run_overrides(run_dir)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True,
                          timeout=2400)
    return run_dir, done
