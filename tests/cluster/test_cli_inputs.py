"""Bad input to the real `ssb` CLI, run as a subprocess: each is refused with exit status 2 and
one line on stderr that names the problem, never a traceback. All of them fail before Ray,
an engine or (but for the all-bad data file) a tokenizer starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DEFAULT_CONFIG = str(REPO / "configs" / "default.yaml")

# (name, arguments after `ssb`, text the error line must hold)
CASES = [
    ("zero rollouts", ["curate", "curate.rollout.n=0"],
     "curate.rollout.n=0: Input should be greater than or equal to 1"),
    ("negative rollouts", ["curate", "curate.rollout.n=-3"], "curate.rollout.n=-3:"),
    ("negative temperature", ["curate", "curate.rollout.temperature=-5"], "curate.rollout.temperature=-5:"),
    ("zero top_k", ["curate", "curate.top_k=0"], "curate.top_k=0:"),
    ("negative limit", ["curate", "data.limit=-1"], "data.limit=-1:"),
    ("zero batch size", ["curate", "engine.batch_size=0"], "engine.batch_size=0:"),
    ("zero top_p", ["eval", "eval.top_p=0"], "eval.top_p=0:"),
    ("non-numeric number", ["curate", "curate.rollout.n=abc"],
     "curate.rollout.n='abc': Input should be a valid integer"),
    ("boolean for a number", ["train", "train.epochs=true"], "train.epochs=True: expected a number, not a boolean"),
    ("two bad numbers", ["curate", "curate.top_k=0", "engine.replicas=0"], "engine.replicas=0: Input should be "
     "greater than or equal to 1; curate.top_k=0:"),
    ("unknown key", ["curate", "curate.rolout.n=2"], "invalid config: unknown setting 'curate.rolout'"),
    ("unknown section", ["run", "evaluate.limit=5"], "unknown setting 'evaluate'"),
    ("missing config file", ["curate", "--config", "nope.yaml"], "config file 'nope.yaml' does not exist"),
    ("config file not YAML", ["curate", "--config", "{broken}"], "not valid YAML at line 3"),
    ("missing data file", ["curate", "--data", "nope.jsonl"], "data source 'nope.jsonl' does not exist"),
    ("unknown model path", ["curate", "--model", "./no/such/model"], "model './no/such/model' does not exist"),
    ("missing adapter", ["eval", "model.adapter=/no/such/adapter"], "model.adapter '/no/such/adapter' does not exist"),
    ("all-bad data file", ["curate", "--data", "{all_bad}"],
     "all_bad.jsonl: no valid problem in 3 records: invalid_json x2 (e.g. line 1:"),
    ("secret env for submit", ["submit", "curate", DEFAULT_CONFIG, "--env", "HF_TOKEN", "run_dir=/shared/r",
                               "--address", "http://127.0.0.1:9"], "--env HF_TOKEN looks like a secret"),
]


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(args, expected, tmp_path):
    (tmp_path / "broken.yaml").write_text("curate:\n  rollout: {n: 2\n")
    (tmp_path / "all_bad.jsonl").write_text('{nope\n{"question": "no answer"}\n{"also": "broken\n')
    args = [a.format(broken=tmp_path / "broken.yaml", all_bad=tmp_path / "all_bad.jsonl") for a in args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_TOKEN": "hf_notarealtoken123"}
    command = args[0]
    args = args if command == "submit" else [*args, f"run_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"ssb {command}: ") and expected in lines[0], lines[0]
    assert "hf_notarealtoken123" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()  # refused before anything was written
