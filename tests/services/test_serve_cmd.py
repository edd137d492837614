"""`ssb serve` end to end: its own Ray, its own redis-server (append-only file in the run dir),
the API on a chosen port, a job accepted and picked up, a clean stop on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO, tiny_curation_overrides
from tests.services.conftest import tiny_job

pytestmark = pytest.mark.slow

SERVE_TOKEN = "serve-cmd-token-1b7f03"


def test_ssb_serve_starts_everything_locally(tmp_path, model_path):
    from services.redis_server import free_port

    port = free_port()
    env = {**os.environ, "SSB_API_TOKEN": SERVE_TOKEN, "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "cluster.cli", "serve", "--no-openai", "--port", str(port),
           "--data-root", str(tmp_path), *tiny_curation_overrides(tmp_path / "run", n=2), "ray.num_cpus=8",
           "ray.object_store_memory=300000000"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {SERVE_TOKEN}"}
    try:
        deadline = time.monotonic() + 480
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                # Serve's proxy answers a plain-text 404 until the app's route is registered.
                r = httpx.get(f"{url}/healthz", headers=headers, timeout=2)
                if r.status_code == 200 and r.json() == {"status": "ok", "redis": "ok"}:
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
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
