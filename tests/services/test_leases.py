"""Fenced leases: a runner that lost its job (Redis away past the lease) can neither store a
problem twice nor end the job twice. Real redis-server, real JobStore, real CurationRunner and
store; only the engine is replaced by a cheap processor that returns states the way a Curator does."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from services.jobs import JobStore, LeaseLost
from services.redis_server import RedisServer
from services.runner import CurationRunner
from services.settings import ServiceSettings
from ssb.config import set_dotted
from ssb.logits import TopK
from ssb.records import Problem, ProblemState, Rollout, Selection, TeacherAnswer, Verdict
from ssb.store import LogitStore

LEASE_S = 3.0
SPEC = {"source": {"kind": "synthetic", "n": 8}, "rollout": None, "teacher": None, "seed": None}


def settings_json(server: RedisServer, tmp: Path, **jobs: Any) -> str:
    tree: dict[str, Any] = {}
    for key, value in {"jobs.redis_url": server.url, "jobs.prefix": "t", "jobs.jobs_root": str(tmp / "jobs"),
                       "jobs.lease_s": LEASE_S, "jobs.poll_s": 0.1, "jobs.max_attempts": 5,
                       "api.allowed_data_roots": [str(tmp)], "llm.enabled": False,
                       "run.engine.batch_size": 2, "run.curate.shard_rows": 2,
                       "run.engine.max_concurrent_batches": 1,  # one batch at a time: "the third" is well defined
                       **{f"jobs.{k}": v for k, v in jobs.items()}}.items():
        set_dotted(tree, key, value)
    return ServiceSettings.model_validate(tree).model_dump_json()


def fake_stages(tag: str, before: Callable[[list[Problem]], None] = lambda problems: None) -> Callable[[Any], Any]:
    """cfg -> a processor that keeps every problem with a 2-token answer; `tag` is its response text."""
    def for_config(cfg: Any) -> Callable[[list[Problem]], list[ProblemState]]:
        k = cfg.curate.top_k

        def process(problems: list[Problem]) -> list[ProblemState]:
            before(problems)
            states = []
            for p in problems:
                right, wrong = Rollout(p.id, 0, "c", [], p.answer, Verdict.CORRECT), Rollout(p.id, 1, "i", [], "0")
                topk = TopK(ids=np.arange(2 * k, dtype=np.int32).reshape(2, k),
                            logprobs=np.full((2, k), -1.0, np.float32), tail_logprob=np.full(2, -5.0, np.float32))
                states.append(ProblemState(
                    p, rollouts=[right, wrong], rollout_finish=["stop", "stop"], rollout_tokens=1, verified=True,
                    selection=Selection(right, wrong, "0"), student_prompt_ids=[1, 2], teacher_prompt_ids=[3, 4],
                    teacher=TeacherAnswer(tag, [5, 6], "stop", p.answer, topk), teacher_tokens=2))
            return states
        return process
    return for_config


class Looping:
    """A runner's own loop, in a thread of its own (Serve runs it on the replica's event loop)."""

    def __init__(self, runner: CurationRunner):
        self.runner = runner
        self.thread = threading.Thread(target=asyncio.run, args=(runner._loop(),), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.runner._stop.set()
        self.thread.join(timeout=30)


def wait_for(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_a_stale_holder_is_refused_and_the_job_ends_once(redis_dir):
    jobs = JobStore(redis_dir.url, prefix="t")
    job_id = jobs.create("alice", SPEC, problems=2, jobs_root="/r", idempotency_key=None, max_active=4)[0].id
    stale = jobs.claim("same-name", 0.05)
    time.sleep(0.1)
    assert jobs.reap(max_attempts=5) == 1
    holder = jobs.claim("same-name", 30)  # even a runner of the same name: the epoch tells them apart
    assert holder.job_id == job_id and holder.epoch == stale.epoch + 1
    for write in (lambda: jobs.renew(stale, 30), lambda: jobs.add_progress(stale, {"kept": 5}),
                  lambda: jobs.set_fields(stale, {"problems": 99}),
                  lambda: jobs.finish(stale, "failed", {"error": "stale"})):
        with pytest.raises(LeaseLost):
            write()
    record = jobs.get(job_id)
    assert (record.status, record.kept, record.problems, (record.error or "")[:6]) == (
        "running", 0, 2, "runner")
    jobs.add_progress(holder, {"kept": 2})
    jobs.finish(holder, "succeeded", {"result": {"rows": 2}})
    with pytest.raises(LeaseLost):
        jobs.finish(holder, "failed")  # a job ends once
    record = jobs.get(job_id)
    assert record.status == "succeeded" and record.kept == 2 and "failed" not in record.model_dump_json()


def test_two_runners_and_redis_paused_past_the_lease_store_each_problem_once(redis_dir, tmp_path, model_path):
    cfg = settings_json(redis_dir, tmp_path)
    jobs = JobStore(redis_dir.url, prefix="t")
    job_id = jobs.create("alice", SPEC, problems=8, jobs_root=str(tmp_path / "jobs"), idempotency_key=None,
                         max_active=4)[0].id
    calls, in_third, release = [], threading.Event(), threading.Event()

    def hold_the_third_batch(problems: list[Problem]) -> None:
        calls.append([p.id for p in problems])
        if len(calls) == 3:
            in_third.set()
            release.wait(60)

    a = CurationRunner(cfg, processor=fake_stages("A", hold_the_third_batch))
    b = CurationRunner(cfg, processor=fake_stages("B"))
    loop_a = Looping(a)
    assert in_third.wait(60)  # A committed two batches and holds the third
    loop_b = Looping(b)
    os.kill(redis_dir.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(LEASE_S + 2.0)  # past A's lease
    finally:
        os.kill(redis_dir.proc.pid, signal.SIGCONT)
    done = wait_for(lambda: (r := jobs.get(job_id)).status == "succeeded" and r)
    lost = a.stats["lease_lost"]
    release.set()  # A's third batch comes back: A must not commit it
    wait_for(lambda: a.stats["lease_lost"] > lost)
    loop_a.stop()
    loop_b.stop()

    assert done.runner == b.name and done.epoch >= 2 and done.kept == 8
    assert (a.stats["finished"], b.stats["finished"]) == (0, 1)  # one terminal transition
    store = LogitStore.open(f"{tmp_path}/jobs/{job_id}/curated")
    store.verify()
    stored = [pid for entry in store.manifest["shards"] for pid in entry["problem_ids"]]
    assert sorted(stored) == sorted(set(stored)) and len(stored) == 8
    by_writer = {row["problem_id"]: row["response_text"] for row in store.read_table().to_pylist()}
    assert {by_writer[pid] for pid in calls[2]} == {"B"}  # A's held batch was refused, B redid it
    assert jobs.get(job_id) == done  # nothing A did afterwards changed the record


def test_a_hung_engine_call_fails_the_job_after_batch_timeout_s(redis_dir, tmp_path, model_path):
    hang = threading.Event()
    runner = CurationRunner(settings_json(redis_dir, tmp_path, batch_timeout_s=1.0),
                            processor=fake_stages("A", lambda problems: hang.wait(60)))
    jobs = JobStore(redis_dir.url, prefix="t")
    job_id = jobs.create("alice", SPEC, problems=8, jobs_root=str(tmp_path / "jobs"), idempotency_key=None,
                         max_active=4)[0].id
    loop = Looping(runner)
    try:
        record = wait_for(lambda: (r := jobs.get(job_id)).status != "running" and r.attempts and r, 30)
    finally:
        hang.set()
        loop.stop()
    assert record.status == "failed" and record.resumable
    assert "batch_timeout_s=1.0" in record.error


def test_the_loaders_skip_reasons_reach_the_job_record(redis_dir, tmp_path, model_path):
    lines = ['{"id": "a", "question": "1+1?", "answer": "2"}', "{not json", '{"id": "b", "question": "2+2?"}',
             '{"id": "c", "question": "3+3?", "answer": "6"}']
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    spec = {"source": {"kind": "dataset", "path": str(tmp_path / "mixed.jsonl"), "split": None, "limit": 10},
            "rollout": None, "teacher": None, "seed": None}
    jobs = JobStore(redis_dir.url, prefix="t")
    job_id = jobs.create("alice", spec, problems=10, jobs_root=str(tmp_path / "jobs"), idempotency_key=None,
                         max_active=4)[0].id
    loop = Looping(CurationRunner(settings_json(redis_dir, tmp_path), processor=fake_stages("A")))
    try:
        record = wait_for(lambda: (r := jobs.get(job_id)).status == "succeeded" and r)
    finally:
        loop.stop()
    assert record.problems == 2 and record.kept == 2
    report = record.load_report
    assert "loaded 2 of 4 records, skipped 2" in report and "line 2" in report and "line 3" in report
