"""Every benchmark in bench/ runs at its smoke size, so a change elsewhere cannot break one unseen.

Each runs as a user runs it (`python bench/NAME.py <smoke args>` from the repo root, in a
subprocess) and must exit 0 with a last `RESULT NAME ...` line whose keys are exactly the ones
its module docstring documents on its own `RESULT NAME key=… ...` line: the docstring is the
one source of truth, so the documentation and the output cannot drift apart. The docstring
also names the full-size command and the smoke arguments (checked below).

The smoke sizes are the benchmarks' own (`--smoke`, documented in each docstring): 1-4
problems, a few tokens, one repetition, a 1 GB KV cache; what is left is mostly engine and
Ray start-up (15-25 s an engine here). So that the suite pays for few engine starts, the
benchmarks that compare several kinds of engine start run only the kind that makes every call
the others make, and print `na` for the rest: bench/engine_start.py `forked`,
bench/engine_contention.py one passive engine alone, bench/lora_rank.py the fitted engine,
bench/scale_out.py the 2-replica round (both nodes). The side-by-side benchmarks
(curation_throughput, eval_throughput, train_overhead) run both of their sides once.
bench/store_size.py measures the session's curated store (the `curated_run` fixture, shared
with the tests that read it) instead of curating one of its own.

Each smoke is a background job (tests/background.py): started when collection ends, in the
order of these tests, it runs on a thread beside the rest of the suite. A smoke is mostly one
process importing, starting Ray and loading an engine, about one core's work, and on a 2-core
box the other tests leave a core idle much of the time. Each test waits for and checks its own
benchmark.

bench/inspector.py is left to its own test (tests/services/test_inspector.py runs `--smoke`
and matches its whole RESULT line); only its docstring is checked here. bench/gpu_check.py has
its own test too (tests/test_gpu_check.py: gpu_check.sh on CPU, its figures), and runs here
as well, a few seconds, for its documented keys. Helper modules (`bench/_*.py`) are not
benchmarks.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.background import BACKGROUND
from tests.conftest import REPO

BENCH = REPO / "bench"

# name → (arguments of its smoke run, starts engines or Ray, time-out in seconds). Generous
# time-outs: a loaded 2-core box runs these 2-3x slower than a quiet one.
SMOKES: dict[str, tuple[list[str], bool, int]] = {
    "api_load": (["--smoke"], True, 300),
    "curation_throughput": (["--smoke"], True, 600),
    "engine_contention": (["--smoke"], True, 600),
    "engine_start": (["--smoke"], True, 600),
    "estimate_accuracy": (["--smoke"], True, 600),
    "eval_throughput": (["--smoke"], True, 600),
    "gpu_check": (["--device", "cpu"], False, 300),
    "inspector": (["--smoke"], False, 120),  # run by tests/services/test_inspector.py
    "lora_rank": (["--smoke"], True, 600),
    "loss_memory": (["--smoke"], False, 300),
    "scale_out": (["--smoke"], True, 600),
    "soak": (["--smoke"], True, 600),
    "store_size": (["--smoke", "--store", "<the session's curated store>"], True, 300),
    "train_overhead": (["--smoke"], True, 600),
}

# Smoke-run by another test (see the module doc), or below with a fixture.
RUN_ELSEWHERE = {"inspector", "store_size"}

_RESULT_LINE = re.compile(r"^\s*RESULT (\S+)((?:\s+\w+=\S*)+)\s*$")


def benchmarks() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def docstring(name: str) -> str:
    return ast.get_docstring(ast.parse((BENCH / f"{name}.py").read_text())) or ""


def documented_keys(name: str) -> list[str]:
    """The keys of the `RESULT NAME ...` line of the benchmark's module docstring."""
    lines = [m for line in docstring(name).splitlines() if (m := _RESULT_LINE.match(line)) and m[1] == name]
    assert len(lines) == 1, f"bench/{name}.py: its docstring needs one line `RESULT {name} key=… ...`"
    return re.findall(r"(\w+)=", lines[0][2])


def result_keys(stdout: str, name: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line.startswith(f"RESULT {name} ")]
    assert lines, f"no `RESULT {name}` line in its output:\n{stdout[-3000:]}"
    fields = lines[-1].split()[2:]
    assert all("=" in f and f.split("=", 1)[1] for f in fields), lines[-1]
    return [f.split("=", 1)[0] for f in fields]


class Smoke:
    """One benchmark's smoke run in a subprocess of its own (RAY_ADDRESS empty: a benchmark
    starts its own Ray, never joins the session's)."""

    def __init__(self, name: str, args: list[str], timeout: int):
        self.name, self.args, self.timeout = name, args, timeout

    def run(self) -> tuple[subprocess.CompletedProcess[str], float, float]:
        env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
        began = time.perf_counter()
        done = BACKGROUND.run([sys.executable, f"bench/{self.name}.py", *self.args], timeout=self.timeout,
                              cwd=REPO, env=env)
        return done, time.perf_counter() - began, os.getloadavg()[0]


def check_smoke(smoke: Smoke, outcome: tuple[subprocess.CompletedProcess[str], float, float]) -> None:
    done, seconds, load = outcome
    name = smoke.name
    print(f"bench/{name}.py {' '.join(smoke.args)}: {seconds:.1f} s, load average {load:.2f}")
    assert done.returncode == 0, (f"bench/{name}.py exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
                                  f"\n--- stderr\n{done.stderr[-5000:]}")
    assert result_keys(done.stdout, name) == documented_keys(name), (
        f"bench/{name}.py: its RESULT line's keys differ from its docstring's")


def run_smoke(name: str, args: list[str], timeout: int) -> None:
    smoke = Smoke(name, args, timeout)
    check_smoke(smoke, smoke.run())


def _smoke_job(name: str) -> str:
    """Registers the smoke run of bench/NAME.py as the background job `smoke:NAME`."""
    args, _, timeout = SMOKES[name]
    smoke = Smoke(name, args, timeout)
    BACKGROUND.job(f"smoke:{name}")(lambda: (smoke, smoke.run()))
    return f"smoke:{name}"


BACKGROUND_SMOKES = {name: _smoke_job(name) for name in SMOKES if name not in RUN_ELSEWHERE}


def test_every_benchmark_has_a_smoke_run_and_documents_it():
    assert benchmarks() == sorted(SMOKES), "a benchmark without a smoke run here (or one here that is gone)"
    for name, (args, _, _) in SMOKES.items():
        doc = docstring(name)
        documented_keys(name)
        assert f"bench/{name}" in doc, f"bench/{name}.py: its docstring shows no full-size command"
        assert "Smoke" in doc and args[0] in doc, f"bench/{name}.py: its docstring does not describe {args[0]}"


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.background(job), *([pytest.mark.slow] if SMOKES[name][1] else [])])
    for name, job in BACKGROUND_SMOKES.items()])
def test_benchmark_runs_at_its_smoke_size(name):
    check_smoke(*BACKGROUND.result(BACKGROUND_SMOKES[name]))


@pytest.mark.slow
def test_store_size_runs_on_the_sessions_curated_store(curated_run):
    cfg, summary = curated_run
    if not summary.kept:
        pytest.skip("the session's curation kept no example")
    args, _, timeout = SMOKES["store_size"]
    run_smoke("store_size", [*args[:-1], str(Path(cfg.store_dir))], timeout)
