"""A curation engine replica that Serve stops (scale-down, redeploy and `serve.delete` all stop
replicas the same way) leaves none of the processes it started running: the vLLM engine core
(and its worker process, where the model has one) and the verifier processes.

The curation app is built by services/app.py itself, so the engine replica has the Serve
options it has in `ssb serve`, and gets a Redis of its own (its runner claims no other test's
jobs); one engine start."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
import pytest

from tests.conftest import tiny_curation_overrides
from tests.services.conftest import TOKEN, tiny_job

pytestmark = pytest.mark.slow

APP = "ssb-engine-shutdown"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _title(p: psutil.Process) -> str:
    """vLLM rewrites its processes' argv into a title ("VLLM::EngineCore", "VLLM::Worker")."""
    try:
        return " ".join(a for a in p.cmdline() if a)
    except psutil.Error:
        return ""


def _replica_process() -> psutil.Process:
    """The replica's Ray worker: a descendant of this test process (its Ray is local), titled
    "ray::ServeReplica:<app>:<deployment>[.<method>]"."""
    found = [p for p in psutil.Process(os.getpid()).children(recursive=True)
             if f"ServeReplica:{APP}:CurationEngine" in _title(p)]
    assert len(found) == 1, [_title(p) for p in found]
    return found[0]


def _settings(tmp_path: Any, serve_port: int, redis_url: str) -> Any:
    from services.settings import ServiceSettings, set_dotted, with_tokens
    from ssb.config import load_config

    # Short answers: the batch is there to have used the engine, not to curate anything.
    run = load_config(None, [*tiny_curation_overrides(tmp_path / "defaults", n=2), "curate.rollout.n=2",
                             "curate.rollout.max_tokens=24", "curate.teacher.n=1", "curate.teacher.max_tokens=24"])
    tree: dict[str, Any] = {"run": run.model_dump()}
    for key, value in {"api.port": serve_port, "api.app_name": APP, "jobs.redis_url": redis_url,
                       "jobs.jobs_root": str(tmp_path / "jobs"), "llm.enabled": False}.items():
        set_dotted(tree, key, value)
    return with_tokens(ServiceSettings.model_validate(tree), [TOKEN])


def test_deleting_the_app_stops_its_engine_processes(tmp_path, model_path, serve_port, redis_dir):
    from ray import serve

    from pipelines.engine import runs_in_engine_core
    from services.app import build_curation_app
    from ssb.records import Problem

    settings = _settings(tmp_path, serve_port, redis_dir.url)
    serve.run(build_curation_app(settings, model_path), name=APP, route_prefix=f"/{APP}")
    started: list[psutil.Process] = []
    try:
        # One batch, as the runner sends it: the engine has served before it is stopped.
        problems = [Problem(**p) for p in tiny_job()["problems"]]
        engine = serve.get_deployment_handle("CurationEngine", app_name=APP)
        states = engine.run_batch.remote(settings.run.model_dump_json(), problems).result(timeout_s=600)
        assert [s.problem.id for s in states] == [p.id for p in problems]

        started = _replica_process().children(recursive=True)
        titles = [_title(p)[:60] for p in started]
        assert any(_title(p).startswith("VLLM::EngineCore") for p in started), titles
        # On CPU the model runs inside the engine core (pipelines/engine.py runs_in_engine_core);
        # elsewhere vLLM gives it a worker process of its own, which must go too.
        if not runs_in_engine_core(settings.run.engine):
            assert any(_title(p).startswith("VLLM::Worker") for p in started), titles
    finally:
        serve.delete(APP)

    deadline = time.monotonic() + 30
    while (left := [p for p in started if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [f"{p.pid} {_title(p)[:80]}" for p in left]
