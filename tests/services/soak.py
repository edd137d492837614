"""A soak of the curation service under random faults, shared by tests/services/test_soak.py
(the session's service, a few minutes) and bench/soak.py (`ssb serve`, as long as asked).

While jobs are submitted continuously over HTTP from several tokens (each with an
Idempotency-Key, retried through outages), a chaos loop waits a random gap (seeded: the same
seed, the same gaps and order of faults), then SIGKILLs one of: the job store's
`redis-server`, the runner replica, the API replica, the engine replica; and waits until the
killed part is replaced and `/readyz` has answered 200 for `settle_s` on end (longer than a
heartbeat and the probe's cache, so a stale "ok" does not count), measuring that recovery.
Jobs that fail for a reason a fault explains (an engine replica killed under a batch, a
runner lost too often) are resumed, as their client would; no other failure is expected.

At the end every accepted job must have succeeded, and its store must hold each of its
problems exactly once, kept or skipped, in the manifest and in the shards it names. Leases
are sampled from Redis throughout: a job claimed again (a new epoch) must have been claimed
after its former holder's lease ran out or the holder finished it, by one runner per epoch.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.services.conftest import tiny_job

FAULTS = ("redis", "runner", "api", "engine")
# Failures a fault explains: the engine replica died under a batch (Ray's error types), or a
# job's runner was lost `max_attempts` times. Each is resumed; anything else is a finding.
EXPECTED_ERRORS = ("ActorDiedError", "RayActorError", "ActorUnavailableError", "the runner was lost")


@dataclass
class Target:
    """A running curation service and what the soak needs to reach, kill and check it."""

    url: str
    tokens: list[str]
    redis_url: str
    jobs_root: Path
    root_pid: int  # its processes (Ray's workers, the redis-server) are this one's descendants
    app: str = "ssb"
    prefix: str = "ssb"


@dataclass
class Fault:
    kind: str
    at: float  # seconds since the soak began
    unready_s: float | None = None  # first /readyz not 200 after the kill (None: it stayed 200)
    recovery_s: float | None = None  # replaced and ready again (None: not within the bound)


@dataclass
class Outcome:
    seed: int
    jobs: int = 0  # accepted
    refused: int = 0  # submissions never accepted (HTTP errors through an outage, 429)
    lost: int = 0
    duplicated: int = 0
    overlaps: int = 0
    reclaimed: int = 0  # jobs claimed more than once (a runner lost, or a resume): what the lease check had to check
    resumed: int = 0
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what went wrong, one line each

    @property
    def max_recovery_s(self) -> float:
        return max((f.recovery_s for f in self.faults if f.recovery_s is not None), default=0.0)

    def result_line(self) -> str:
        return (f"RESULT soak jobs={self.jobs} lost={self.lost} duplicated={self.duplicated} "
                f"overlaps={self.overlaps} reclaimed={self.reclaimed} resumed={self.resumed} faults={len(self.faults)} "
                f"max_recovery_s={self.max_recovery_s:.1f} seed={self.seed} load1={os.getloadavg()[0]:.2f}")


# -- processes --------------------------------------------------------------------------------------

def _title(p: psutil.Process) -> str:
    try:
        return " ".join(a for a in p.cmdline() if a) or p.name()
    except psutil.Error:
        return ""


def _descendants(root: int) -> list[psutil.Process]:
    try:
        return psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return []


def replicas(target: Target, deployment: str) -> list[psutil.Process]:
    """Serve replica workers titled "ray::ServeReplica:<app>:<deployment>[.<method>]"."""
    marker = f"ServeReplica:{target.app}:{deployment}"
    return [p for p in _descendants(target.root_pid) if _title(p).split(" ")[0].split(".")[0].endswith(marker)]


def redis_processes(target: Target) -> list[psutil.Process]:
    port = int(target.redis_url.rsplit(":", 1)[1].split("/")[0])
    found = []
    for p in _descendants(target.root_pid):
        with contextlib.suppress(psutil.Error):
            if p.name() == "redis-server" and any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
                                                  for c in p.net_connections("tcp")):
                found.append(p)
    return found


_DEPLOYMENTS = {"runner": "CurationRunner", "api": "CurationAPI", "engine": "EngineReplica"}


def victims(target: Target, kind: str) -> list[psutil.Process]:
    return redis_processes(target) if kind == "redis" else replicas(target, _DEPLOYMENTS[kind])


# -- the soak -----------------------------------------------------------------------------------------

class Soak:
    def __init__(self, target: Target, *, duration_s: float, seed: int, kinds: tuple[str, ...] = FAULTS,
                 gap_s: tuple[float, float] = (5.0, 20.0), submit_every_s: float = 2.0, max_backlog: int = 6,
                 recovery_bound_s: float = 300.0, settle_s: float = 5.0, drain_s: float = 600.0, lease_s: float = 10.0,
                 log: Any = print):
        self.t, self.duration_s, self.kinds, self.gap_s = target, duration_s, kinds, gap_s
        self.submit_every_s, self.max_backlog = submit_every_s, max_backlog
        self.recovery_bound_s, self.settle_s, self.drain_s, self.lease_s = recovery_bound_s, settle_s, drain_s, lease_s
        self.rng = random.Random(seed)
        # The load's own stream: however its thread and the chaos loop interleave, the faults'
        # gaps and order are the seed's.
        self._load_rng = random.Random(f"{seed}-load")
        self.out = Outcome(seed)
        self.log = log
        self.jobs: dict[str, dict[str, Any]] = {}  # id -> {"token", "problems", "status", "error"}
        self.ready: list[tuple[float, bool]] = []  # (monotonic time, /readyz answered 200)
        self.leases: dict[str, dict[int, dict[str, Any]]] = {}  # id -> epoch -> what was seen of it
        self._lock = threading.Lock()
        self._stop, self._chaos_over = threading.Event(), threading.Event()
        self._t0 = time.monotonic()

    # - the parts that run side by side -

    def run(self) -> Outcome:
        self.log(f"soak: seed {self.out.seed}, {self.duration_s:.0f} s of faults ({', '.join(self.kinds)}), "
                 f"then up to {self.drain_s:.0f} s for the jobs to finish")
        self._t0 = time.monotonic()
        loops = [threading.Thread(target=f, daemon=True, name=f"soak-{f.__name__}")
                 for f in (self._probe, self._submit, self._sample_leases, self._follow_jobs)]
        for loop in loops:
            loop.start()
        try:
            self._chaos()
            self._chaos_over.set()
            self._drain()
        finally:
            self._stop.set()
            for loop in loops:
                loop.join(30)
        self._check_stores()
        self._check_leases()
        return self.out

    def _since(self) -> float:
        return time.monotonic() - self._t0

    def _probe(self) -> None:
        with httpx.Client(base_url=self.t.url, timeout=2) as c:
            while not self._stop.is_set():
                try:
                    ok = c.get("/readyz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self._lock:
                    self.ready.append((time.monotonic(), ok))
                time.sleep(0.25)

    def _submit(self) -> None:
        clients = [httpx.Client(base_url=self.t.url, timeout=30, headers={"Authorization": f"Bearer {tok}"})
                   for tok in self.t.tokens]
        rng, n = self._load_rng, 0
        try:
            while not self._chaos_over.is_set():
                time.sleep(rng.expovariate(1 / self.submit_every_s))
                with self._lock:
                    backlog = sum(j["status"] != "succeeded" for j in self.jobs.values())
                if backlog >= self.max_backlog:
                    continue
                n += 1
                which = rng.randrange(len(clients))
                body = tiny_job()
                for p in body["problems"]:
                    p["id"] = f"soak{n}-{p['id']}"
                job_id = self._post(clients[which], body, key=f"soak-{self.out.seed}-{n}")
                if job_id is None:
                    self.out.refused += 1
                    continue
                with self._lock:
                    self.jobs.setdefault(job_id, {"token": which, "problems": [p["id"] for p in body["problems"]],
                                                  "status": "queued", "error": None})
        finally:
            for c in clients:
                c.close()

    def _post(self, client: httpx.Client, body: dict[str, Any], key: str) -> str | None:
        """The job's id once accepted; the same Idempotency-Key on every retry, so a request whose
        answer was lost in an outage is never a second job."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                r = client.post("/v1/curation-jobs", json=body, headers={"Idempotency-Key": key})
                if r.status_code in (200, 202):
                    return r.json()["id"]
                if r.status_code == 429:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        return None

    def _follow_jobs(self) -> None:
        store = _redis(self.t.redis_url)
        clients = [httpx.Client(base_url=self.t.url, timeout=10, headers={"Authorization": f"Bearer {tok}"})
                   for tok in self.t.tokens]
        try:
            while not self._stop.is_set():
                with self._lock:
                    todo = [(i, j) for i, j in self.jobs.items() if j["status"] != "succeeded"]
                for job_id, job in todo:
                    self._follow(clients[job["token"]], store, job_id, job)
                time.sleep(1.0)
        finally:
            for c in clients:
                c.close()
            store.close()

    def _follow(self, client: httpx.Client, store: Any, job_id: str, job: dict[str, Any]) -> None:
        import redis

        try:
            r = client.get(f"/v1/curation-jobs/{job_id}")
            if r.status_code == 404:
                job["status"] = "missing"
                return
            if r.status_code != 200:
                return
            rec = r.json()
            job["status"], job["error"], job["store"] = rec["status"], rec["error"], (rec["result"] or {}).get("store")
            expected = any(e in (rec["error"] or "") for e in EXPECTED_ERRORS)
            if rec["status"] == "failed" and rec["resumable"] and expected:
                # The failed claim's end, before the resume erases it, for the lease check.
                with contextlib.suppress(redis.RedisError):
                    self._note_leases(store, [job_id])
                if client.post(f"/v1/curation-jobs/{job_id}/resume").status_code == 202:
                    with self._lock:
                        self.out.resumed += 1
                    self.log(f"soak: {self._since():6.1f} s  job {job_id[:8]} resumed after: {rec['error'][:100]}")
        except httpx.HTTPError:
            pass

    def _sample_leases(self) -> None:
        import redis

        client = _redis(self.t.redis_url)
        while not self._stop.is_set():
            with self._lock:
                ids = [i for i, j in self.jobs.items() if j["status"] != "succeeded"]
            with contextlib.suppress(redis.RedisError):
                self._note_leases(client, ids)
            time.sleep(0.3)
        client.close()

    def _note_leases(self, client: Any, ids: list[str]) -> None:
        """What Redis holds now of each job's current claim: its epoch, runner, lease deadline, end."""
        fields = ("status", "runner", "epoch", "lease_until", "finished_at")
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"{self.t.prefix}:job:{job_id}", *fields)
        for job_id, row in zip(ids, pipe.execute()):
            rec = dict(zip(fields, row))
            if rec["status"] is None or not rec["runner"] or rec["epoch"] in (None, "0"):
                continue
            with self._lock:
                seen = self.leases.setdefault(job_id, {}).setdefault(int(rec["epoch"]), {"runners": set()})
                seen["runners"].add(rec["runner"])
                seen.setdefault("first_until", float(rec["lease_until"]))
                seen["last_until"] = float(rec["lease_until"])
                if rec["status"] in ("succeeded", "failed", "cancelled") and rec["finished_at"]:
                    seen.setdefault("finished", datetime.fromisoformat(rec["finished_at"]).timestamp())

    # - faults -

    def _chaos(self) -> None:
        """Faults until `duration_s` is over and each kind has been injected at least once."""
        order: list[str] = []
        left = set(self.kinds)
        while self._since() < self.duration_s or left:
            time.sleep(self.rng.uniform(*self.gap_s))
            if self._since() >= self.duration_s and not left:
                break
            if not order:  # every kind once, in a random order, then again
                order = self.rng.sample(self.kinds, len(self.kinds))
            kind = order.pop()
            left.discard(kind)
            fault = self._inject(kind)
            if fault is not None:
                self.out.faults.append(fault)

    def _inject(self, kind: str) -> Fault | None:
        import redis

        procs = victims(self.t, kind)
        if not procs:
            self.out.problems.append(f"{kind}: no process to kill at {self._since():.0f} s")
            return None
        before = {p.pid for p in procs}
        runners_before: set[str] = set()
        if kind == "runner":
            with contextlib.suppress(redis.RedisError), _redis(self.t.redis_url) as r:
                runners_before = set(r.zrange(f"{self.t.prefix}:runners", 0, -1))
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        fault = Fault(kind, round(killed - self._t0, 1))
        replaced = self._wait_replaced(kind, before, runners_before, killed)
        if replaced is not None:
            fault.recovery_s = self._ready_after(replaced, killed)
        with self._lock:
            fault.unready_s = next((t - killed for t, ok in self.ready if t > killed and not ok), None)
        if fault.recovery_s is None:
            self.out.problems.append(f"{kind} killed at {fault.at:.0f} s: not ready again within "
                                     f"{self.recovery_bound_s:.0f} s")
        self.log(f"soak: {fault.at:6.1f} s  {kind} SIGKILLed (pid {', '.join(map(str, sorted(before)))}); "
                 f"/readyz first not 200 after {_s(fault.unready_s)}, replaced and ready after {_s(fault.recovery_s)}")
        return fault

    def _wait_replaced(self, kind: str, before: set[int], runners_before: set[str], killed: float) -> float | None:
        """When a process of the kind that was not among `before` runs (for a runner: and beats)."""
        import redis

        deadline = killed + self.recovery_bound_s
        while time.monotonic() < deadline:
            if [p for p in victims(self.t, kind) if p.pid not in before]:
                if kind != "runner":
                    return time.monotonic()
                with contextlib.suppress(redis.RedisError), _redis(self.t.redis_url) as r:
                    if set(r.zrange(f"{self.t.prefix}:runners", 0, -1)) - runners_before:
                        return time.monotonic()
            time.sleep(0.25)
        return None

    def _ready_after(self, replaced: float, killed: float) -> float | None:
        """Seconds from the kill until /readyz answered 200 from the replacement on, without a
        break for `settle_s` (a heartbeat from before the kill may say "ok" a moment longer)."""
        deadline = killed + self.recovery_bound_s + self.settle_s
        while time.monotonic() < deadline:
            with self._lock:
                polls = list(self.ready)
            start = None
            for t, ok in polls:
                if not ok:
                    start = None
                elif start is None:
                    start = t
            if start is not None and polls[-1][0] - max(start, replaced) >= self.settle_s:
                return max(start, replaced) - killed
            time.sleep(0.25)
        return None

    # - the end -

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline:
            with self._lock:
                left = [j for j in self.jobs.values() if j["status"] != "succeeded"]
            if not left:
                return
            time.sleep(1.0)
        self.log(f"soak: {len(left)} job(s) not succeeded {self.drain_s:.0f} s after the faults ended")

    def _check_stores(self) -> None:
        from ssb.store import LogitStore

        self.out.jobs = len(self.jobs)
        for job_id, job in sorted(self.jobs.items()):
            if job["status"] != "succeeded":
                self.out.lost += 1
                self.out.problems.append(f"job {job_id}: {job['status']} ({job['error']})")
                continue
            store = LogitStore.open(str(self.t.jobs_root / job["store"]), allow_empty=True)
            store.verify()  # every shard and trace file as its manifest's checksum says
            entries = store.manifest["shards"]
            stored = Counter(pid for e in entries for pid in [*e["problem_ids"], *e["skipped"]])
            rows = Counter(store.read_table().column("problem_id").to_pylist()) if store.kept_ids() else Counter()
            dup = sorted({p for p, n in stored.items() if n > 1} | {p for p, n in rows.items() if n > 1})
            # Rows a manifest does not name, or named rows not in its shards: two writers' commits crossed.
            dup += sorted(set(rows) ^ store.kept_ids())
            missing = sorted(set(job["problems"]) - set(stored))
            self.out.duplicated += len(dup)
            if dup or missing:
                self.out.lost += bool(missing)
                self.out.problems.append(f"job {job_id}: stored twice {dup}, missing {missing}")

    def _check_leases(self) -> None:
        """One runner per epoch; a new epoch claimed only after the former one's lease ran out
        (its last deadline seen) or its holder finished the job."""
        for job_id, epochs in self.leases.items():
            ordered = sorted(epochs.items())
            self.out.reclaimed += len(ordered) > 1
            for epoch, seen in ordered:
                if len(seen["runners"]) > 1:
                    self.out.overlaps += 1
                    self.out.problems.append(f"job {job_id}: epoch {epoch} held by {sorted(seen['runners'])}")
            for (e1, a), (e2, b) in itertools.pairwise(ordered):
                ended = a.get("finished", a["last_until"])
                claimed = b["first_until"] - self.lease_s  # the claim's deadline is its time + lease_s
                if claimed < ended - 0.05:
                    self.out.overlaps += 1
                    self.out.problems.append(f"job {job_id}: epoch {e2} claimed {ended - claimed:.1f} s before "
                                             f"epoch {e1}'s lease ended")


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


# -- `ssb serve` for the benchmark ---------------------------------------------------------------------

class ServeProcess:
    """`ssb serve` in a subprocess of its own session, its console in `log`; `target` once it is ready."""

    def __init__(self, run_dir: Path, port: int, tokens: list[str], overrides: list[str]):
        self.run_dir, self.port, self.tokens = run_dir, port, tokens
        self.log = run_dir.parent / f"{run_dir.name}-serve.log"
        env = {**os.environ, "SSB_API_TOKEN": ",".join(tokens), "RAY_ADDRESS": ""}
        cmd = [sys.executable, "-m", "cluster.cli", "serve", "--port", str(port), "--no-openai",
               *serve_overrides(run_dir), *overrides]
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def target(self, timeout_s: float = 600) -> Target:
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ssb serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                up = "curation API: " in self.log.read_text()
                if up and httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ssb serve not ready after {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(1)
        redis_url = next(line.split()[1] for line in self.log.read_text().splitlines() if line.startswith("redis: "))
        return Target(url, self.tokens, redis_url, self.run_dir / "jobs", self.proc.pid)

    def stop(self, timeout_s: float = 120) -> int:
        """SIGTERM, as a user stops it; SIGKILL to its whole session if it is still running after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()


def serve_overrides(run_dir: Path) -> list[str]:
    """The suite's tiny model settings, a short lease (a killed runner's job comes back in 10 s)
    and enough attempts that the faults rarely use them up."""
    from tests.conftest import tiny_curation_overrides

    return [*tiny_curation_overrides(run_dir, n=2), "ray.num_cpus=8", "ray.object_store_memory=300000000",
            "serve.jobs.lease_s=10", "serve.jobs.max_attempts=10", "serve.api.max_concurrent_jobs_per_token=50"]


def new_tokens(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]
