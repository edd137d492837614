"""`ssb serve` end to end: its own Ray, its own redis-server (append-only file in the run dir),
the API on a chosen port, a job accepted and picked up; that redis-server SIGKILLed and back by
itself, reaped, the service ready again and taking jobs; and on SIGTERM a clean exit, quiet on
the console, that leaves none of the processes it started running: Ray's, Redis, and the vLLM
engines of both the curation engine and the OpenAI endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import psutil
import pytest

from tests.background import BACKGROUND
from tests.conftest import REPO, tiny_curation_overrides
from tests.services.conftest import tiny_job

SERVE_TOKEN = "serve-cmd-token-1b7f03"
# Other tests (and their engines) may run beside this one: the command's processes are told
# apart by this variable in their environment.
MARKER = "SSB_SERVE_TEST_RUN"


def alive(p: psutil.Process) -> bool:
    """Running and not a zombie: an orphan the init process has not reaped yet is gone all the same."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def title(p: psutil.Process) -> str:
    """vLLM and redis-server rewrite their argv into a title ("VLLM::EngineCore",
    "/usr/bin/redis-server 127.0.0.1:PORT"); the kernel's name is cut at 15 characters."""
    try:
        return " ".join(a for a in p.cmdline() if a) or p.name()
    except psutil.Error:
        return ""


def is_engine(p: psutil.Process) -> bool:
    return title(p).startswith("VLLM::")


def ours(p: psutil.Process, marker: str) -> bool:
    """Started, directly or not, by the `ssb serve` under test: Ray's processes, its workers and
    the engines those spawn all inherit its environment, orphaned or not."""
    try:
        return p.environ().get(MARKER) == marker
    except psutil.Error:
        return False


def redis_port(p: psutil.Process) -> int | None:
    try:
        if p.name() != "redis-server":
            return None
        ports = {c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        return None
    return ports.pop() if len(ports) == 1 else None


def wait_ready(url: str, timeout: float = 120) -> dict:
    """/readyz's body once it answers 200 (the runner's first heartbeat follows its first health check)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.2)


def test_stop_sweeps_descendants_whose_parents_are_gone():
    """The last resort of `ssb serve`'s stop: a process recorded as a descendant is stopped
    after its parent died and it was reparented to init, and SIGKILLed if it ignores SIGTERM."""
    from cluster.serve_cmd import Descendants, terminate

    grandchild = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", ("import subprocess, sys, time; subprocess.Popen("
                                                     f"[sys.executable, '-c', {grandchild!r}]); time.sleep(300)")])
    started = Descendants(child.pid)
    try:
        deadline = time.monotonic() + 30
        while not (orphans := [p for p in started.running() if ignores_sigterm(p)]):
            assert time.monotonic() < deadline, started.seen
            time.sleep(0.1)
            started.record()
        orphan, name = orphans[0], orphans[0].name()
        child.kill()
        child.wait()
        assert orphan not in psutil.Process().children(recursive=True) and alive(orphan)

        assert terminate(started.running(), grace_s=1) == [f"{orphan.pid} {name}"]
        assert not alive(orphan)
    finally:
        child.kill()
        for p in started.running():
            with contextlib.suppress(psutil.Error):
                p.kill()


def ignores_sigterm(p: psutil.Process) -> bool:
    try:
        with open(f"/proc/{p.pid}/status") as f:
            ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    except OSError:
        return False
    return bool(ignored & (1 << (signal.SIGTERM - 1)))


@pytest.mark.slow
@pytest.mark.background("ssb-serve")
def test_ssb_serve_starts_everything_locally():
    print(BACKGROUND.result("ssb-serve"))


@BACKGROUND.job("ssb-serve")
def _serve_end_to_end() -> str:
    """The body of the test above: the command's own processes (told apart by MARKER), so it
    runs beside other tests."""
    from services.redis_server import free_port

    tmp_path = BACKGROUND.tmp_path("ssb-serve")
    port = free_port()
    marker = uuid.uuid4().hex
    env = {**os.environ, "SSB_API_TOKEN": SERVE_TOKEN, "RAY_ADDRESS": "", MARKER: marker}
    cmd = [sys.executable, "-m", "cluster.cli", "serve", "--port", str(port),
           "--data-root", str(tmp_path), *tiny_curation_overrides(tmp_path / "run", n=2), "ray.num_cpus=8",
           "ray.object_store_memory=300000000"]
    log = tmp_path / "serve.log"
    with log.open("w") as out:  # a file, not a pipe nobody reads until the end: a full pipe blocks the command
        proc = BACKGROUND.popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)

    def tail() -> str:
        return log.read_text()[-3000:]

    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {SERVE_TOKEN}"}
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 480
        while True:
            assert proc.poll() is None, tail()
            try:
                # Serve's proxy answers a plain-text 404 until the app's route is registered.
                r = httpx.get(f"{url}/healthz", headers=headers, timeout=2)
                # The URLs are printed once every app is running (the model endpoint starts
                # beside the curation app and may come up after it).
                if r.status_code == 200 and r.json() == {"status": "ok", "redis": "ok"} and \
                        "curation API: " in log.read_text():
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ssb serve did not come up"
            time.sleep(1)
        assert httpx.get(f"{url}/v1/curation-jobs/x", timeout=10).status_code == 401
        job = httpx.post(f"{url}/v1/curation-jobs", json=tiny_job(), headers=headers, timeout=30)
        assert job.status_code == 202
        deadline = time.monotonic() + 300
        while (done := httpx.get(f"{url}/v1/curation-jobs/{job.json()['id']}", headers=headers,
                                 timeout=10).json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(1)
        assert done["status"] == "succeeded"
        assert done["result"]["store"] == f"{done['id']}/curated" and str(tmp_path) not in json.dumps(done)
        assert (tmp_path / "run" / "redis" / "appendonlydir").is_dir()
        assert wait_ready(url) == {"status": "ok", "checks": {"redis": "ok", "runner": "ok", "engine": "ok"}}

        # The OOM killer takes the embedded Redis: its supervisor reaps it and starts it again
        # on the same port, and the service is ready again with no one's help.
        old = next(p for p in psutil.Process(proc.pid).children() if redis_port(p) is not None)
        port_before = redis_port(old)
        old.kill()
        killed = time.monotonic()
        assert httpx.get(f"{url}/livez", timeout=10).json() == {"status": "ok"}
        while not [p for p in psutil.Process(proc.pid).children() if p.pid != old.pid and redis_port(p) == port_before]:
            assert time.monotonic() - killed < 30, "the embedded Redis was not restarted on its port"
            time.sleep(0.1)
        back = time.monotonic() - killed
        wait_ready(url, timeout=30)
        timing = (f"\nembedded Redis SIGKILLed: listening again after {back:.1f} s, "
                  f"/readyz 200 after {time.monotonic() - killed:.1f} s")
        assert not os.path.exists(f"/proc/{old.pid}"), "the killed redis-server was not reaped"
        assert "was killed by SIGKILL" in (tmp_path / "run" / "redis" / "supervisor.log").read_text()
        again = httpx.post(f"{url}/v1/curation-jobs", json=tiny_job(), headers=headers, timeout=30)
        assert again.status_code == 202
        deadline = time.monotonic() + 300
        while (done := httpx.get(f"{url}/v1/curation-jobs/{again.json()['id']}", headers=headers,
                                 timeout=10).json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(1)
        assert done["status"] == "succeeded"

        # Everything the command started, recorded now: once a parent is gone its children are
        # reparented to init and no longer show up as descendants.
        started = psutil.Process(proc.pid).children(recursive=True)
        titles = sorted(title(p)[:60] for p in started)
        redis_ports = {rp for p in started if (rp := redis_port(p)) is not None}
        assert len(redis_ports) == 1, titles
        engines = [p for p in started if is_engine(p)]
        # One engine core under the curation engine's replica, one under the OpenAI endpoint's.
        assert sum(title(p).startswith("VLLM::EngineCore") for p in engines) == 2, titles
        assert all(ours(p, marker) for p in engines)
        assert any(title(p).split(" ")[0].endswith("/raylet") for p in started), titles

        console_at_stop = len(log.read_text())
        proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ssb serve still running 120 s after SIGTERM:\n{tail()}")
        assert rc == 0, tail()
        # Serve's controller kills itself at the end of its shutdown; Ray's report of the calls
        # that were waiting on it belongs in the run's logs, not on the console.
        # Nor does anything else read as a failure: no traceback, no ERROR line.
        after_stop = log.read_text()[console_at_stop:]
        assert not [line for line in after_stop.splitlines() if any(
            s in line for s in ("Task ServeController", "raylet", "Traceback", "ERROR"))], after_stop

        deadline = stopping + 60
        while True:
            left = [p for p in started if alive(p)]
            # Processes of this command that were not among its descendants when recorded
            # (started later, or already orphaned) are caught by their environment.
            strays = [p for p in psutil.process_iter() if alive(p) and ours(p, marker)]
            redis_left = [p for p in psutil.process_iter() if alive(p) and redis_port(p) in redis_ports]
            if not (left or strays or redis_left) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not left, [f"{p.pid} {title(p)[:80]}" for p in left]
        assert not [p for p in strays if is_engine(p)], [f"{p.pid} {title(p)[:80]}" for p in strays]
        assert not strays, [f"{p.pid} {title(p)[:80]}" for p in strays]
        assert not redis_left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # A failed run must not leave GiBs of engine behind for the next test.
        for p in [*started, *(p for p in psutil.process_iter() if ours(p, marker))]:
            if alive(p):
                with contextlib.suppress(psutil.Error):
                    p.kill()
    return timing
