"""The job runner: a Serve deployment that takes queued jobs from Redis and curates them.

It is a deployment of its own, apart from the API replicas, so killing or restarting an API
replica never touches a running job. A runner holds each job by a lease it renews every
few seconds; if the runner itself dies, the lease runs out, another runner (or this one,
restarted by Serve) puts the job back at the head of the queue, and the job resumes from
its store: no job is lost silently, and none is stored twice.

Backends (`jobs.backend`):
- "engine" (default): batches go to the CurationEngine deployment, which runs `ssb curate`'s
  own stages on its own engine: the job's shards equal `ssb curate`'s for the same problems
  and seed (services/engine_deployment.py says why that takes the same batches).
- "openai": the stages run here and sample through the OpenAI LLMServer deployment
  (services/llm.py) with per-request seeds: reproducible per request, but numerically equal
  to `ssb curate` only where the engine's kernels are batch-invariant.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from typing import Any, Callable

from ssb.config import RunConfig

from pipelines.stages import Row, curation_stages, from_table, run_stages, to_table
from services.job_run import JobCancelled, result_of, run_job
from services.jobs import JobStore, JobStoreUnavailable
from services.settings import ServiceSettings

log = logging.getLogger("ssb.runner")


class CurationRunner:
    def __init__(self, settings_json: str, engine: Any = None):
        """`engine`: the CurationEngine deployment's handle (backend "engine"); else the
        OpenAI LLMServer is looked up by application name (backend "openai")."""
        self.settings = ServiceSettings.model_validate_json(settings_json)
        j = self.settings.jobs
        self.jobs = JobStore(j.redis_url, prefix=j.prefix, job_ttl_s=j.job_ttl_s,
                             idempotency_ttl_s=j.idempotency_ttl_s)
        self.engine = engine
        self.name = f"runner-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._openai: tuple[Any, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def _ensure_started(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def check_health(self) -> None:
        # Serve calls this every few seconds from the replica's loop: it also starts the loop.
        self._ensure_started()
        assert self._task is not None
        if self._task.done():
            raise RuntimeError(f"the runner loop stopped: {self._task.exception()!r}")

    async def status(self) -> dict[str, Any]:
        self._ensure_started()
        return {"runner": self.name}

    async def _loop(self) -> None:
        j = self.settings.jobs
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.jobs.reap, j.max_attempts)
                job_id = await asyncio.to_thread(self.jobs.claim, self.name, j.lease_s)
            except JobStoreUnavailable as exc:
                log.warning("%s; retrying", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:  # never let one bad record stop the loop
                log.exception("runner loop")
                await asyncio.sleep(1.0)
                continue
            if job_id is None:
                await asyncio.sleep(j.poll_s)
                continue
            await asyncio.to_thread(self._run_one, job_id)

    # -- one job ------------------------------------------------------------------------------

    def _processor(self, cfg: RunConfig) -> Callable[[list[Row]], list[Row]]:
        if self.settings.jobs.backend == "engine":
            cfg_json = cfg.model_dump_json()
            return lambda rows: from_table(self.engine.run_batch.remote(cfg_json, to_table(rows)).result())
        from transformers import AutoTokenizer

        from services.llm import llm_server_handle
        from services.served_sampler import ServedSampler
        from ssb.default_model import resolve_model

        if self._openai is None:
            handle = llm_server_handle(self.settings.llm.app_name)
            self._openai = (handle, AutoTokenizer.from_pretrained(resolve_model(cfg.model.name)))
        handle, tokenizer = self._openai
        stages = curation_stages(ServedSampler(handle, self.settings.llm.model_id), tokenizer, cfg)
        return lambda rows: run_stages(stages, rows)

    def _run_one(self, job_id: str) -> None:
        record = self.jobs.get(job_id)
        if record is None:
            return
        done = threading.Event()
        cancelled = threading.Event()
        lease = self.settings.jobs.lease_s

        def keep_lease() -> None:
            while not done.wait(min(2.0, lease / 3)):
                try:
                    self.jobs.renew(job_id, lease)
                    if self.jobs.cancel_requested(job_id):
                        cancelled.set()
                except JobStoreUnavailable:
                    pass  # the lease runs on; the job resumes elsewhere if Redis stays away

        threading.Thread(target=keep_lease, daemon=True, name=f"lease-{job_id[:8]}").start()

        def on_commit(counts: dict[str, int]) -> None:
            try:
                self.jobs.add_progress(job_id, counts)
            except JobStoreUnavailable:
                log.warning("job %s: progress not recorded (Redis unavailable); the store has it", job_id)

        def on_start(problems: int) -> None:
            try:
                self.jobs.set_fields(job_id, {"problems": str(problems)})
            except JobStoreUnavailable:
                pass

        try:
            summary = run_job(self.settings, record["spec"], record["run_dir"], self._processor,
                              on_commit=on_commit, should_stop=cancelled.is_set, on_start=on_start,
                              concurrency=max(1, self.settings.run.engine.replicas))
            status, fields = "succeeded", {"result": result_of(f"{record['run_dir']}/curated", summary),
                                           "kept": summary.store.get("rows", 0)}
        except JobCancelled:
            status, fields = "cancelled", {}
        except JobStoreUnavailable:
            done.set()
            return  # nothing to record it in: the lease runs out and the job is resumed
        except Exception as exc:  # the job fails; the service does not
            log.exception("job %s failed", job_id)
            status, fields = "failed", {"error": f"{type(exc).__name__}: {str(exc)[:500]}", "resumable": "1"}
        finally:
            done.set()
        self._finish(job_id, status, fields)

    def _finish(self, job_id: str, status: str, fields: dict[str, Any]) -> None:
        deadline = time.monotonic() + 600
        while True:
            try:
                self.jobs.finish(job_id, status, fields)
                return
            except JobStoreUnavailable:
                if time.monotonic() > deadline:
                    return  # the lease expires; a rerun finds the store complete and finishes at once
                time.sleep(1.0)
