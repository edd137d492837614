"""Liveness and readiness (services/health.py): /livez answers while the process does;
/readyz answers 503 naming what cannot serve (the job store, the runner's heartbeat, the
engine as the runner sees it) and 200 again once it can, with no token and nothing in the body
but fixed phrases. The running service's checks kill the Redis it uses (supervised, it comes
back by itself), with a job submitted before the kill and one after, and its engine replica
(Serve starts another)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.health import Readiness, RunnerHeartbeat
from services.settings import JobsConfig
from tests.services.conftest import tiny_job


def _jobs(url: str) -> JobsConfig:
    return JobsConfig(redis_url=url, prefix="health")


def _leaks(text: str) -> list[str]:
    return [s for s in ("/tmp", "/home", "127.0.0.1", socket.gethostname(), "redis://") if s in text]


# -- without Ray: the checks against a real Redis -------------------------------------------------

def test_readiness_names_each_failing_check_and_recovers(redis_dir):
    jobs = _jobs(redis_dir.url)
    ready = Readiness(jobs, stale_after_s=1.0)
    # An API deployed alone checks its job store only.
    assert ready.check(with_runner=False) == (True, {"redis": "ok"})
    assert ready.check(with_runner=True) == (False, {"redis": "ok", "runner": "no runner has reported",
                                                     "engine": "not checked: no runner reports it"})
    beat = RunnerHeartbeat(jobs, "runner-a")
    beat.beat("ok")
    assert ready.check(with_runner=True) == (True, {"redis": "ok", "runner": "ok", "engine": "ok"})
    beat.beat("no running replica (deployment unhealthy)")
    assert ready.check(with_runner=True) == (False, {"redis": "ok", "runner": "ok",
                                                     "engine": "no running replica (deployment unhealthy)"})
    time.sleep(1.6)
    ok, checks = ready.check(with_runner=True)
    assert not ok and re.fullmatch(r"no heartbeat for \d+ s", checks["runner"]), checks

    redis_dir.stop(kill=True)
    try:
        started = time.monotonic()
        ok, checks = ready.check(with_runner=True)
        assert time.monotonic() - started < 3  # a probe's time-out, not redis-py's retries
        assert not ok and checks == {"redis": "unavailable (ConnectionError)",
                                     "runner": "not checked: the job store is unavailable",
                                     "engine": "not checked: the job store is unavailable"}
    finally:
        redis_dir.start()
    beat.beat("ok")  # the same objects, over new connections
    assert ready.check(with_runner=True) == (True, {"redis": "ok", "runner": "ok", "engine": "ok"})


def test_the_heartbeat_stops_with_the_runner_loop_and_reports_engine_errors_in_brief(redis_dir):
    jobs = _jobs(redis_dir.url)

    def engine_state() -> str:
        raise RuntimeError("/secret/path on some-host")  # only its type may show

    alive, stop = threading.Event(), threading.Event()
    alive.set()
    beat = RunnerHeartbeat(jobs, "runner-b", engine_state, every_s=0.1)
    loop = threading.Thread(target=asyncio.run, args=(beat.run(alive.is_set, stop),), daemon=True)
    loop.start()
    ready = Readiness(jobs, stale_after_s=0.5)
    try:
        deadline = time.monotonic() + 10
        while (result := ready.check(with_runner=True))[1].get("runner") != "ok":
            assert time.monotonic() < deadline, result
            time.sleep(0.05)
        assert result == (False, {"redis": "ok", "runner": "ok", "engine": "not checked: RuntimeError"})
        alive.clear()  # the runner's loop ended: no more beats
        time.sleep(1.0)
        assert re.fullmatch(r"no heartbeat for \d+ s", ready.check(with_runner=True)[1]["runner"])
    finally:
        stop.set()
        loop.join(5)


# -- the running apps ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_probes_answer_without_a_token_and_show_nothing_else(api_only):
    with api_only.client(token=None) as c:
        live = c.get("/livez")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        ready = c.get("/readyz")
        # Deployed without a runner: the job store is all it checks.
        assert ready.status_code == 200 and ready.json() == {"status": "ok", "checks": {"redis": "ok"}}
        assert ready.headers["cache-control"] == "no-store" and not _leaks(ready.text)
        assert c.post("/livez").status_code == 401  # only GET is open
        assert c.get("/livez/x").status_code == 401


def _readyz_until(probe, status: int, since: float, within_s: float, every_s: float = 0.2):
    """The first /readyz answer with `status`, polled every `every_s`; fails `within_s` after `since`."""
    while (r := probe.get("/readyz")).status_code != status:
        assert time.monotonic() - since < within_s, r.text
        time.sleep(every_s)
    return r


@pytest.mark.slow
def test_readiness_follows_a_redis_crash_and_jobs_run_through_it(service):
    """SIGKILL of the service's Redis (the session's, supervised): /readyz says 503 naming
    Redis, then 200 again by itself; a job submitted before the kill and one after finish."""
    server = service.redis
    with service.client(token=None) as probe, service.client() as c:
        # the runner's first heartbeat follows its first health check
        r = _readyz_until(probe, 200, time.monotonic(), within_s=60)
        assert r.json() == {"status": "ok", "checks": {"redis": "ok", "runner": "ok", "engine": "ok"}}
        before = c.post("/v1/curation-jobs", json=tiny_job())
        assert before.status_code == 202

        old = server.proc
        # The supervisor restarts after 0.5 s, quicker than a probe may look: 2 s here, to see the outage.
        server.first_delay_s = 2.0
        try:
            os.kill(old.pid, signal.SIGKILL)
            killed = time.monotonic()
            r = _readyz_until(probe, 503, killed, within_s=10, every_s=0.1)
            unready = time.monotonic() - killed
            body = r.json()
            assert body["status"] == "unavailable" and body["checks"]["redis"].startswith("unavailable"), body
            assert not _leaks(r.text)
            r = _readyz_until(probe, 200, killed, within_s=30, every_s=0.1)
            recovered = time.monotonic() - killed
        finally:
            server.first_delay_s = 0.5
            deadline = time.monotonic() + 30
            while server.proc is old:  # the session's other tests need it back, whatever happened here
                assert time.monotonic() < deadline, "the supervisor did not restart Redis"
                time.sleep(0.1)
        assert not Path(f"/proc/{old.pid}").exists(), "the killed redis-server was not reaped"
        after = c.post("/v1/curation-jobs", json=tiny_job())
        assert after.status_code == 202
    for job in (before.json(), after.json()):
        assert service.wait(job["id"], timeout=300)["status"] == "succeeded"
    print(f"\n/readyz: 503 {unready:.1f} s after the SIGKILL, 200 again after {recovered:.1f} s "
          f"(restart delay 2 s)")
    assert recovered < 15, recovered
    assert "was killed by SIGKILL" in server.supervisor_log.read_text()
    with httpx.Client(timeout=10) as plain:  # the older route, unchanged
        assert plain.get(f"{service.url}/healthz").json() == {"status": "ok"}


def _engine_replicas(app: str) -> list[psutil.Process]:
    """The app's engine replica workers (this process's Ray is local: they are its descendants),
    titled "ray::ServeReplica:<app>:EngineReplica[.<method>]"; vLLM's own processes are not."""
    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.cmdline()[:1] and f"ServeReplica:{app}:EngineReplica" in p.cmdline()[0]:
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_readiness_fails_while_the_engine_replica_is_dead_and_passes_once_serve_replaced_it(service):
    """SIGKILL of the curation engine's replica: /readyz answers 503 naming the engine within
    seconds (Serve's controller notices at its next health check, the runner's next heartbeat
    reports it), and 200 again once Serve has started a replica in its place, with no action
    of anyone's; a job submitted then succeeds."""
    app = service.settings.api.app_name
    with service.client(token=None) as probe:
        _readyz_until(probe, 200, time.monotonic(), within_s=120)
        old = _engine_replicas(app)
        assert len(old) == 1, [p.cmdline()[:1] for p in old]
        old[0].kill()
        killed = time.monotonic()
        r = _readyz_until(probe, 503, killed, within_s=30)
        unready = time.monotonic() - killed
        body = r.json()
        assert body["status"] == "unavailable" and body["checks"]["redis"] == "ok" \
            and body["checks"]["runner"] == "ok", body
        assert body["checks"]["engine"].startswith("no running replica"), body
        assert not _leaks(r.text)
        # An engine starts in 25 s on a quiet 2-core box; several times that under load.
        r = _readyz_until(probe, 200, killed, within_s=400, every_s=0.5)
        recovered = time.monotonic() - killed
    assert r.json() == {"status": "ok", "checks": {"redis": "ok", "runner": "ok", "engine": "ok"}}
    new = _engine_replicas(app)
    assert new and not {p.pid for p in new} & {old[0].pid}
    print(f"\nengine replica SIGKILLed: /readyz 503 after {unready:.1f} s, 200 again after {recovered:.1f} s")
    with service.client() as c:
        job = c.post("/v1/curation-jobs", json=tiny_job())
    assert job.status_code == 202
    assert service.wait(job.json()["id"], timeout=300)["status"] == "succeeded"


@pytest.mark.slow
def test_the_engine_state_names_an_application_that_is_not_running(serve_port):
    """The engine of the "openai" backend lives in an application of its own, which may be deleted."""
    from services.health import serve_engine_state

    assert serve_engine_state("no-such-app", lambda name: True) == "its application is not running"
