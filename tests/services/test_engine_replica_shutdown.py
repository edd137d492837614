"""A curation engine replica that Serve stops (scale-down, redeploy and `serve.delete` all stop
replicas the same way) leaves none of the processes it started running: the vLLM engine core
(and its worker process, where the model has one) and the verifier processes.

The app is the session's curation service (built by services/app.py as `ssb serve` builds
it), after every other test of it has run (tests/services/conftest.py orders them): deleting
it here is what frees its engine for the model-endpoint tests, so it costs no engine start."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from tests.services.conftest import tiny_job

pytestmark = pytest.mark.slow


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


def _replicas(app: str) -> list[psutil.Process]:
    """The app's engine replicas: Ray workers descended from this test process (its Ray is
    local), titled "ray::ServeReplica:<app>:EngineReplica[.<method>]"."""
    found = [p for p in psutil.Process(os.getpid()).children(recursive=True)
             if f"ServeReplica:{app}:EngineReplica" in _title(p)]
    assert found, "no engine replica of the app is running"
    return found


def test_deleting_the_app_stops_its_engine_processes(service):
    from ray import serve

    from pipelines.engine import runs_in_engine_core
    from ssb.records import Problem

    app, run = service.settings.api.app_name, service.settings.run
    started: list[psutil.Process] = []
    try:
        # One batch, as the runner sends it: the engine has served just before it is stopped.
        problems = [Problem(**p) for p in tiny_job()["problems"]]
        engine = serve.get_deployment_handle("EngineReplica", app_name=app)
        states = engine.run_batch.remote(run.model_dump_json(), problems).result(timeout_s=600)
        assert [s.problem.id for s in states] == [p.id for p in problems]

        started = [c for r in _replicas(app) for c in r.children(recursive=True)]
        titles = [_title(p)[:60] for p in started]
        assert any(_title(p).startswith("VLLM::EngineCore") for p in started), titles
        # On CPU the model runs inside the engine core (pipelines/engine.py runs_in_engine_core);
        # elsewhere vLLM gives it a worker process of its own, which must go too.
        if not runs_in_engine_core(run.engine):
            assert any(_title(p).startswith("VLLM::Worker") for p in started), titles
    finally:
        serve.delete(app)

    deadline = time.monotonic() + 30
    while (left := [p for p in started if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [f"{p.pid} {_title(p)[:80]}" for p in left]
