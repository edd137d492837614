"""bench/gpu_check.sh, the check a GPU machine runs, run here on CPU at its tiny sizes: the same
script, loss comparison and training loop, so it is known to work before a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def _result(stdout: str, name: str) -> dict[str, str]:
    line = next(line for line in stdout.splitlines() if line.startswith(f"RESULT {name} "))
    return dict(field.split("=", 1) for field in line.split()[2:])


def test_gpu_check_runs_on_cpu_and_its_training_loss_falls():
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu"], cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("RESULT gpu_check "), "the summary line comes last"
    summary, loss, train = (_result(proc.stdout, n) for n in ("gpu_check", "gpu_check_loss", "gpu_check_train"))
    assert summary["device"] == "cpu" and summary["ok"] == "yes"
    # bf16 inputs, float32 loss inside: the two agree closely; chunking changes nothing.
    assert float(loss["loss_rel_diff"]) < 1e-2 and float(loss["grad_rel_max_diff"]) < 5e-2
    assert float(loss["chunked_dense_rel_diff"]) < 1e-2
    assert summary["chunked_mb"] == "na"  # peak memory is measured on CUDA only
    assert train["dtype"] == "float32" and int(train["steps"]) >= 3  # CPU training stays fp32 (ssb.train)
    assert float(train["loss_last"]) < float(train["loss_first"]) and summary["loss_decreasing"] == "yes"
    assert float(summary["steps_per_s"]) > 0 and float(summary["tokens_per_s"]) > 0
