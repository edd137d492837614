"""A vLLM engine actor SIGKILLed in the middle of a live curation run loses no problem and
stores none twice: Ray Data restarts the actor and retries its batches, or the run fails
loudly and a rerun with the same config resumes from the store."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ssb.config import load_config
from ssb.data import load_problems
from ssb.store import LogitStore
from tests.conftest import tiny_curation_overrides

pytestmark = pytest.mark.slow

WORKER = "CurationWorker"
PROBLEMS = 6


def _committed(store_dir: Path) -> int:
    try:
        return len(json.loads((store_dir / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _curation_actors(ray: Any) -> dict[str, dict[str, Any]]:
    """This driver's CurationWorker actors on this node, by actor id, from this session's GCS.

    Not `ray.util.state.list_actors`: it goes through the dashboard, which tests do not start,
    and without one it falls back to 127.0.0.1:8265 — another Ray cluster's dashboard on a
    shared machine, whose actors share our job id ("01000000"). The GCS table is ours alone."""
    from ray._private import state

    ctx = ray.get_runtime_context()
    table = state.actors(job_id=ray.JobID.from_hex(ctx.get_job_id()))
    return {aid: a for aid, a in table.items()
            if WORKER in a["ActorClassName"] and a["Address"]["NodeID"] == ctx.get_node_id()}


class _Run(threading.Thread):
    """`run_curation` in the background; its summary or its exception once it returns."""

    def __init__(self, cfg: Any, on_commit: Any = None):
        super().__init__(daemon=True, name="curation")
        self.cfg, self.on_commit, self.summary, self.error = cfg, on_commit, None, None

    def run(self) -> None:
        from pipelines.curate import run_curation

        try:
            self.summary = run_curation(self.cfg, progress=False, on_commit=self.on_commit)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _gone(proc: Any) -> bool:
    """The process has exited (reaped or a zombie); pid reuse does not count as alive."""
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(predicate, timeout: float, what: str, step: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def test_sigkilled_engine_actor_mid_run_loses_and_duplicates_nothing(tmp_path, model_path, ray_session):
    """The kill happens inside the run's first commit callback: the driver is still in the
    middle of the run whatever the machine's speed (the batches left are still to commit)."""
    import psutil

    ray = ray_session
    # A commit after every batch of 2, so the first one comes with 4 of 6 problems still to go;
    # one batch in flight at a time, so the kill throws away one batch's work, not all of it.
    cfg = load_config(None, tiny_curation_overrides(tmp_path, n=PROBLEMS) + [
        "engine.batch_size=2", "engine.max_concurrent_batches=1", "curate.shard_rows=2",
        "curate.commit_every_s=0"])
    all_ids = {p.id for p in load_problems(cfg.data)[0]}
    assert len(all_ids) == PROBLEMS
    store_dir = Path(cfg.store_dir)
    before = set(_curation_actors(ray))  # earlier runs in this session (dead by now)
    t0 = time.monotonic()
    fault: dict[str, Any] = {}

    def inject(rows: list[dict[str, Any]]) -> None:
        """SIGKILLs the engine actor's worker process (a crash, not ray.kill's path), once."""
        if fault:
            return
        fault["t_commit"] = time.monotonic() - t0
        alive = {aid: a for aid, a in _curation_actors(ray).items() if aid not in before and a["State"] == "ALIVE"}
        assert len(alive) == 1, f"expected one live {WORKER} actor (engine.replicas=1): {alive}"
        (fault["actor_id"], actor), = alive.items()
        victim = psutil.Process(actor["Pid"])
        assert "ray::" in " ".join(victim.cmdline()) or victim.name().startswith("ray::"), victim.cmdline()
        fault["victim"] = victim
        fault["engine_children"] = victim.children(recursive=True)  # vLLM's EngineCore process(es)
        # forked from the fork server the actor started before importing vLLM (pipelines/engine.py
        # prestart_engine_core), itself a child of the actor: all of them go when it dies
        fault["core_parents"] = [(c.parent().ppid(), c.parent().cmdline()[-1]) for c in fault["engine_children"]
                                 if c.name().startswith("VLLM::EngineCore")]
        fault["committed"] = _committed(store_dir)
        fault["done"] = LogitStore.open(cfg.store_dir, allow_empty=True).done_ids()
        os.kill(victim.pid, signal.SIGKILL)
        _wait(lambda: _gone(victim), 30, "the killed pid to exit")

    run = _Run(cfg, on_commit=inject)
    run.start()
    run.join(timeout=1500)
    assert not run.is_alive(), "the run hung after its engine actor was killed"
    assert fault, f"no commit happened, so no fault was injected ({run.error!r})"
    if isinstance(run.error, AssertionError):
        raise run.error  # the injection itself failed, not the run
    # The run was mid-way when its actor died: one batch committed, the rest not.
    assert 0 < len(fault["done"]) <= 2 and fault["committed"] == 1, fault
    victim, engine_children, actor_id = fault["victim"], fault["engine_children"], fault["actor_id"]
    committed_at_kill, t_commit = fault["committed"], fault["t_commit"]
    (server_parent, server), = fault["core_parents"]
    assert server_parent == victim.pid and server.startswith("from multiprocessing.forkserver import main"), server
    # vLLM's engine process must not outlive its actor (1 GiB of KV cache, spinning on a socket).
    _wait(lambda: all(_gone(c) for c in engine_children), 120,
          f"the dead actor's engine processes to exit: {[c.pid for c in engine_children]}")

    # -- outcome: the run survived (actor restarted, batch retried) or failed loudly, then resumes --
    resumed = run.error is not None
    after_kill = _curation_actors(ray)[actor_id]
    if resumed:
        rerun = _Run(cfg)
        rerun.start()
        rerun.join(timeout=1500)
        assert not rerun.is_alive(), "the resumed run hung"
        assert rerun.error is None, f"the resumed run failed: {rerun.error!r} (first: {run.error!r})"
        summary = rerun.summary
        assert summary.already_done >= 1 and summary.already_done + summary.processed == PROBLEMS
    else:
        summary = run.summary
        # Ray Data restarted the same actor (a new process) and retried what it had in flight.
        assert after_kill["NumRestarts"] >= 1, after_kill
        assert after_kill["Pid"] != victim.pid, after_kill
        # The lost batch was redone exactly once from the driver's point of view.
        assert summary.processed == summary.problems == PROBLEMS, summary
    assert summary.kept + sum(summary.skipped.values()) == summary.processed

    # -- nothing lost, nothing stored twice, every shard intact --
    store = LogitStore.open(cfg.store_dir, allow_empty=True)
    store.verify()
    entries = store.manifest["shards"]
    kept = [pid for e in entries for pid in e["problem_ids"]]
    skipped = [pid for e in entries for pid in e["skipped"]]
    assert len(kept) == len(set(kept)), f"kept twice: {[p for p, n in Counter(kept).items() if n > 1]}"
    assert len(skipped) == len(set(skipped)), f"skipped twice: {[p for p, n in Counter(skipped).items() if n > 1]}"
    assert not set(kept) & set(skipped), f"both kept and skipped: {set(kept) & set(skipped)}"
    assert set(kept) | set(skipped) == all_ids, f"lost: {sorted(all_ids - set(kept) - set(skipped))}"
    assert store.done_ids() == all_ids
    rows = Counter(pid for path in store.shard_paths() for pid in pq.read_table(path, columns=["problem_id"])
                   .column("problem_id").to_pylist())
    assert rows == Counter(kept), f"shard rows differ from the manifest: {rows} vs {Counter(kept)}"
    assert all(n == 1 for n in rows.values()), f"a problem stored twice: {rows}"
    assert len(store.shard_paths()) == len([e for e in entries if e["name"]]) and committed_at_kill < len(entries)

    print(f"FAULTS injected=1 survived={int(not resumed)} resumed={int(resumed)} killed_pid={victim.pid} "
          f"restarts={after_kill['NumRestarts']} new_pid={after_kill['Pid']} engine_children={len(engine_children)} "
          f"first_commit_s={t_commit:.0f} total_s={time.monotonic() - t0:.0f} kept={len(kept)} "
          f"skipped={len(skipped)} lost={len(all_ids - store.done_ids())} duplicated={sum(rows.values()) - len(rows)} "
          f"shards_at_kill={committed_at_kill} shards={len(entries)} error={type(run.error).__name__ if resumed else None}")
