"""A real multi-node Ray cluster on loopback: a head and workers, each its own `ray start`.

Every node is a separate `ray start --block` process group with its own resources, ports
and (for the head) temp dir, and token auth on with a token of its own, so it neither
joins nor disturbs any other Ray on the machine. `stop()` ends only the process groups it
started: `ray stop` would kill every Ray process on the machine, other people's included.

Used by tests/cluster and bench/scale_out.py:

    with LoopbackCluster(nodes=[{"num_cpus": 3}, {"num_cpus": 3, "env": {"X": "1"}}]) as c:
        c.dashboard_url, c.env  # pass env to `ssb submit` (it carries the token path)

A node's "env" is the environment of its `ray start`, which its workers inherit.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VENV", REPO / ".venv")).resolve() / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NodeExited(RuntimeError):
    pass


class LoopbackCluster:
    def __init__(self, nodes: list[dict[str, Any]], *, object_store_memory: int = 300_000_000,
                 start_timeout_s: float = 180.0):
        self.nodes = nodes
        self.object_store_memory = object_store_memory
        self.start_timeout_s = start_timeout_s
        # Short: Ray's unix socket paths under the temp dir must stay under ~107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="ssbc-", dir="/tmp"))
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.node_ids: list[str] = []

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for processes of this cluster and its clients: token auth with our
        own token file, and nothing pointing at another cluster."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                   PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
                   PYTHONPATH=str(REPO))
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def _start(self, index: int, spec: dict[str, Any]) -> None:
        head = index == 0
        ports = {"--node-manager-port": free_port(), "--object-manager-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port()}
        cmd = [str(VENV_BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--num-cpus={spec.get('num_cpus', 2)}", "--num-gpus=0",
               f"--object-store-memory={self.object_store_memory}",
               f"--resources={json.dumps(spec.get('resources', {}))}", f"--temp-dir={self.root / 'ray'}"]
        cmd += [f"{flag}={port}" for flag, port in ports.items()]
        if head:
            cmd += ["--head", f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address={self.gcs_address}"]
        log = open(self.root / f"node-{index}.log", "wb")
        self.procs.append(subprocess.Popen(cmd, env={**self.env, **spec.get("env", {})}, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root))

    def start(self) -> "LoopbackCluster":
        try:
            for i, spec in enumerate(self.nodes):
                self._start_with_retries(i, spec)
        except BaseException:
            self.stop()
            raise
        self.node_ids = [n["node_id"] for n in self.list_state("nodes") if n["state"] == "ALIVE"]
        return self

    def _start_with_retries(self, index: int, spec: dict[str, Any], attempts: int = 3) -> None:
        """`ray start` gives a raylet 30 s (fixed) to register; on a loaded 2-core box that is
        sometimes too short, and the node is simply started again."""
        for attempt in range(attempts):
            if index == 0 and attempt:
                self.gcs_port, self.dashboard_port = free_port(), free_port()
            self._start(index, spec)
            try:
                self._wait(lambda: self._alive_nodes() >= index + 1, f"node {index}")
                return
            except _NodeExited:
                if attempt == attempts - 1:
                    raise
                self._kill(self.procs.pop())

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise _NodeExited(f"ray start (node {i}) exited with {p.returncode}:\n{self.node_log(i)}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"loopback cluster: no {what} after {self.start_timeout_s:.0f} s\n{self.node_log(0)}")

    def node_log(self, index: int) -> str:
        path = self.root / f"node-{index}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def get(self, path: str) -> Any:
        """GET on the head's dashboard (state API, jobs API), authenticated with our token."""
        req = urllib.request.Request(self.dashboard_url + path,
                                     headers={"Authorization": "Bearer " + self.token_path.read_text().strip()})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def list_state(self, kind: str, limit: int = 10_000) -> list[dict[str, Any]]:
        """Ray's state API (`/api/v0/actors`, `/api/v0/nodes`, ...), dead entries included."""
        data = self.get(f"/api/v0/{kind}?limit={limit}&detail=1")
        return data["data"]["result"]["result"]

    def _alive_nodes(self) -> int:
        return sum(1 for n in self.list_state("nodes") if n["state"] == "ALIVE")

    def stop(self) -> None:
        # Workers first: a head going away first makes the workers' raylets retry for a while.
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # whatever is left of each group we started (engines, workers)
            self._kill(p)
        self.procs.clear()
        if not os.environ.get("SSB_LOOPBACK_KEEP"):  # set it to read the nodes' logs afterwards
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _kill(p: subprocess.Popen) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def __enter__(self) -> "LoopbackCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
