"""The job runner: a Serve deployment that takes queued jobs from Redis and curates them.

It is a deployment of its own, apart from the API replicas, so killing or restarting an API
replica never touches a running job. A runner holds each job by a lease it renews every
few seconds; if the runner itself dies, the lease runs out, another runner (or this one,
restarted by Serve) puts the job back at the head of the queue, and the job resumes from
its store: no job is lost silently, and none is stored twice.

Backends (`jobs.backend`):
- "engine" (default): batches go to the EngineReplica deployment, which curates them on
  `ssb curate`'s own engine: the job's shards equal `ssb curate`'s for the same problems and
  seed (services/engine_deployment.py says how far "the same" goes).
- "openai": a Curator runs here and samples through the OpenAI LLMServer deployment
  (services/llm.py) with per-request seeds: reproducible per request, but numerically equal
  to `ssb curate` only where the engine's kernels are batch-invariant.

Fencing: a lease carries the claim's epoch, and Redis refuses renewals, progress and the
final status from a runner that no longer holds it (services/jobs.py). The runner also keeps
a local deadline (the last renewal sent + `lease_s`): once it has less than a third of the
lease left without a renewal, it stops writing (checked before every shard commit) and
abandons the job, so a runner cut off from Redis has stopped before another can claim the
job. This assumes runners' clocks agree to well within `lease_s / 3`, and that one commit
takes less than that. Engine calls get a deadline (`batch_timeout_s`).

Every `prune_every_s` the runner also removes old job run directories (job_run.prune_run_dirs).
Beside its loop each replica writes a heartbeat to Redis, with the state of the engine its
backend needs, which the API's readiness route reads (services/health.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable

from ray.exceptions import RayActorError

from ssb.config import RunConfig
from ssb.layout import RunLayout

from ssb.records import Problem, ProblemState
from services.health import RunnerHeartbeat, serve_engine_state
from services.job_record import JobStatus
from services.job_run import JobCancelled, Processor, result_of, run_job, prune_run_dirs
from services.job_spec import JobSpec
from services.jobs import JobStore, JobStoreUnavailable, Lease, LeaseLost
from services.settings import ServiceSettings

log = logging.getLogger("ssb.runner")


class CurationRunner:
    def __init__(self, settings_json: str, engine: Any = None,
                 processor: Callable[[RunConfig], Processor] | None = None):
        """`engine`: the EngineReplica deployment's handle (backend "engine"); else the
        OpenAI LLMServer is looked up by application name (backend "openai"). `processor`
        replaces both: cfg -> the function that curates one batch of problems."""
        self.settings = ServiceSettings.model_validate_json(settings_json)
        self.jobs = JobStore.from_config(self.settings.jobs)
        self.engine = engine
        self.name = f"runner-{uuid.uuid4().hex[:12]}"
        self.stats: Counter[str] = Counter()  # finished, lease_lost, swept
        self._stop = threading.Event()
        self._openai: tuple[Any, Any] | None = None
        self._custom = processor
        self._task: asyncio.Task[None] | None = None
        self._beats: asyncio.Task[None] | None = None
        self._next_prune = 0.0

    def _ensure_started(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            task = self._task = loop.create_task(self._loop())
            # Beats stop with the loop: a runner that no longer claims jobs is not ready.
            beat = RunnerHeartbeat(self.settings.jobs, self.name, self._engine_state())
            self._beats = loop.create_task(beat.run(lambda: not task.done(), self._stop))

    def _engine_state(self) -> Callable[[], str] | None:
        """What readiness needs of the engine this runner's jobs go to (None: a custom
        processor, no engine)."""
        if self._custom is not None:
            return None
        if self.settings.jobs.backend == "engine":
            engine = self.engine
            if engine is None:
                return lambda: "no engine deployment bound to the runner"
            return lambda: serve_engine_state(engine.app_name, lambda name: name == engine.deployment_name)
        return lambda: serve_engine_state(self.settings.llm.app_name, lambda name: "LLMServer" in name)

    async def check_health(self) -> None:
        # Serve calls this every few seconds from the replica's loop: it also starts the loop.
        self._ensure_started()
        assert self._task is not None
        if self._task.done():
            raise RuntimeError(f"the runner loop stopped: {self._task.exception()!r}")

    async def status(self) -> dict[str, Any]:
        self._ensure_started()
        return {"runner": self.name, **self.stats}

    async def _loop(self) -> None:
        j = self.settings.jobs
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self._prune)
                await asyncio.to_thread(self.jobs.reap, j.max_attempts)
                lease = await asyncio.to_thread(self.jobs.claim, self.name, j.lease_s)
            except JobStoreUnavailable as exc:
                log.warning("%s; retrying", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:  # never let one bad record stop the loop
                log.exception("runner loop")
                await asyncio.sleep(1.0)
                continue
            if lease is None:
                await asyncio.sleep(j.poll_s)
                continue
            await asyncio.to_thread(self._run_one, lease)

    def _prune(self) -> None:
        j = self.settings.jobs
        if j.run_dir_retention_s <= 0 or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + j.prune_every_s
        removed = prune_run_dirs(j.jobs_root, self.jobs.get, j.run_dir_retention_s)
        self.stats["swept"] += len(removed)
        if removed:
            log.info("removed %d old job run directories", len(removed))

    # -- one job ------------------------------------------------------------------------------

    def _processor(self, cfg: RunConfig) -> Processor:
        if self._custom is not None:
            return self._custom(cfg)
        if self.settings.jobs.backend == "engine":
            cfg_json = cfg.model_dump_json()
            timeout = self.settings.jobs.batch_timeout_s

            def on_engine(problems: list[Problem]) -> list[ProblemState]:
                response = self.engine.run_batch.remote(cfg_json, problems)
                try:
                    return response.result(timeout_s=timeout)
                except TimeoutError:
                    response.cancel()
                    raise

            return on_engine
        from transformers import AutoTokenizer

        from services.llm import llm_server_handle
        from services.served_sampler import ServedSampler
        from ssb.curator import Curator
        from ssb.default_model import resolve_model
        from ssb.verify import VerifierPool

        if self._openai is None:
            sampler = ServedSampler(llm_server_handle(self.settings.llm.app_name), self.settings.llm.model_id)
            self._openai = (sampler, AutoTokenizer.from_pretrained(resolve_model(cfg.model.name)))
        sampler, tokenizer = self._openai
        v = cfg.verify
        curator = Curator(cfg, tokenizer, sampler, VerifierPool(v.workers, timeout_s=v.timeout_s,
                                                                fallbacks=v.fallbacks))
        # Each batch runs in a thread of its own (job_run._batches): its own event loop.
        return lambda problems: asyncio.run(curator.curate_many(problems))

    def _concurrency(self) -> int:
        """Batches a job keeps in flight: enough for every engine replica's concurrent batches."""
        e = self.settings.run.engine
        return max(1, e.replicas) * e.max_concurrent_batches

    def _run_one(self, lease: Lease) -> None:
        job_id = lease.job_id
        record = self.jobs.get(job_id)
        if record is None:
            return
        done = threading.Event()
        cancelled = threading.Event()
        lost = threading.Event()
        lease_s = self.settings.jobs.lease_s
        margin = lease_s / 3

        def keep_lease() -> None:
            while not done.wait(min(2.0, margin)):
                if lease.remaining() <= margin:
                    break  # too late to renew safely: another runner may claim it soon
                try:
                    self.jobs.renew(lease, lease_s)
                    if self.jobs.cancel_requested(job_id):
                        cancelled.set()
                except JobStoreUnavailable:
                    continue  # the local deadline decides
                except LeaseLost:
                    break
            if not done.is_set():
                lost.set()

        threading.Thread(target=keep_lease, daemon=True, name=f"lease-{job_id[:8]}").start()

        def fence() -> None:
            if lost.is_set() or lease.remaining() <= margin:
                lost.set()
                raise LeaseLost(f"job {job_id}: lease not renewed in time; {self.name} stops writing")

        def should_stop() -> bool:
            fence()
            return cancelled.is_set()

        def on_commit(counts: dict[str, int]) -> None:
            try:
                self.jobs.add_progress(lease, counts)
            except JobStoreUnavailable:
                log.warning("job %s: progress not recorded (Redis unavailable); the store has it", job_id)

        def on_start(problems: int, load_report: str) -> None:
            try:
                self.jobs.set_fields(lease, {"problems": str(problems), "load_report": load_report})
            except JobStoreUnavailable:
                pass

        try:
            # A spec this code cannot read fails the job (resumable), like any other error.
            summary = run_job(self.settings, JobSpec.model_validate(record.spec), record.run_dir, self._processor,
                              on_commit=on_commit, should_stop=should_stop, on_start=on_start, fence=fence,
                              concurrency=self._concurrency())
            status, fields = JobStatus.SUCCEEDED, {"result": result_of(RunLayout(record.run_dir).curated, summary),
                                                   "kept": summary.store.get("rows", 0)}
        except JobCancelled:
            status, fields = JobStatus.CANCELLED, {}
        except (JobStoreUnavailable, LeaseLost, RayActorError) as exc:
            # An engine replica that died under a batch is the service's fault, not the job's: Serve
            # replaces it, and the job is claimed again (an attempt, up to max_attempts) once its lease
            # runs out, resuming from its store.
            done.set()
            self.stats["lease_lost"] += isinstance(exc, LeaseLost)
            log.warning("job %s abandoned: %s", job_id, exc)
            return  # the lease runs out (or already did) and the job resumes from its store
        except Exception as exc:  # the job fails; the service does not
            log.exception("job %s failed", job_id)
            status, fields = JobStatus.FAILED, {"error": f"{type(exc).__name__}: {str(exc)[:500]}", "resumable": "1"}
        finally:
            done.set()
        self._finish(lease, status, fields)

    def _finish(self, lease: Lease, status: JobStatus, fields: dict[str, Any]) -> None:
        deadline = time.monotonic() + 600
        while True:
            try:
                self.jobs.finish(lease, status, fields)
                self.stats["finished"] += 1
                return
            except LeaseLost as exc:
                self.stats["lease_lost"] += 1
                log.warning("%s; its new holder finishes it", exc)
                return
            except JobStoreUnavailable:
                if time.monotonic() > deadline:
                    return  # the lease expires; a rerun finds the store complete and finishes at once
                time.sleep(1.0)
